"""Losses (Supplement 1.9), each against a hand-derived value or a direct loop. fp32 unless stated;
FAPE sums O(10) A distances over F x P pairs, so rtol=1e-5 / atol=1e-5 covers the reordering of
those sums."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from memtrain.models.alphafold import residue_constants as rc
from memtrain.models.alphafold.all_atom import atom14_to_frames, restype_table, torsion_angles_to_frames
from memtrain.models.alphafold.heads import DistogramHead, MaskedMSAHead
from memtrain.models.alphafold.loss import (
    LOSS_WEIGHTS,
    alphafold_loss,
    alphafold_loss_terms,
    backbone_fape_loss,
    backbone_frames,
    distogram_bins,
    distogram_loss,
    experimentally_resolved_loss,
    fape,
    masked_msa_loss,
    plddt_loss,
    sidechain_fape_loss,
    torsion_angle_loss,
)
from tests.unit.alphafold.helpers import random_batch, random_rigid, randomize_

TOL = {"rtol": 1e-5, "atol": 1e-5}
EPS = 1e-4  # fape's default eps (A^2 in the root, and on each normaliser)


def structure(seed=0, b=2, n=6, p=9):
    gen = torch.Generator().manual_seed(seed)
    return random_rigid((b, n), gen), 10.0 * torch.randn(b, p, 3, generator=gen)


def test_fape_of_identical_structures_is_the_eps_floor():
    frames, pos = structure()
    fm, pm = torch.ones(2, 6), torch.ones(2, 9)
    # every d = sqrt(eps); sum over 6 x 9 pairs of sqrt(eps) / Z, divided by (eps + 6)(eps + 9)
    expected = 54 * math.sqrt(EPS) / 10.0 / ((EPS + 6) * (EPS + 9))
    torch.testing.assert_close(fape(frames, frames, fm, pos, pos, pm), torch.full((2,), expected), rtol=1e-6, atol=0)
    torch.testing.assert_close(fape(frames, frames, fm, pos, pos, pm, eps=0.0), torch.zeros(2), rtol=0, atol=1e-6)


def test_fape_normaliser_has_eps_on_frames_and_positions_separately():
    """OpenFold's compute_fape: sum / (eps + sum frames_mask) / (eps + sum positions_mask). With
    eps = 1 the difference from (eps + F * P) is large enough to see; every frame masked gives 0."""
    frames, pos = structure(0, b=1, n=3, p=4)
    true_frames, true_pos = structure(1, b=1, n=3, p=4)
    fm, pm = torch.ones(1, 3), torch.ones(1, 4)
    total = fape(frames, true_frames, fm, pos, true_pos, pm, clamp_distance=None, eps=1.0) * (1 + 3) * (1 + 4)
    local = frames.unsqueeze(-1).invert_apply(pos.unsqueeze(-3))
    local_true = true_frames.unsqueeze(-1).invert_apply(true_pos.unsqueeze(-3))
    direct = torch.sqrt((local - local_true).square().sum(-1) + 1.0).sum() / 10.0
    torch.testing.assert_close(total, direct[None], **TOL)
    assert fape(frames, true_frames, torch.zeros(1, 3), pos, true_pos, pm).item() == 0.0


def test_fape_is_invariant_to_a_global_rigid_motion():
    frames, pos = structure(0)
    true_frames, true_pos = structure(1)
    fm, pm = torch.ones(2, 6), torch.ones(2, 9)
    ref = fape(frames, true_frames, fm, pos, true_pos, pm, clamp_distance=None)
    g = random_rigid((2,), torch.Generator().manual_seed(5), scale=20.0)
    moved_frames = g.unsqueeze(-1).compose(frames)
    moved_pos = g.unsqueeze(-1).apply(pos)
    torch.testing.assert_close(fape(moved_frames, true_frames, fm, moved_pos, true_pos, pm, clamp_distance=None), ref, **TOL)
    moved_true = g.unsqueeze(-1).compose(true_frames)
    moved_true_pos = g.unsqueeze(-1).apply(true_pos)
    torch.testing.assert_close(
        fape(moved_frames, moved_true, fm, moved_pos, moved_true_pos, pm, clamp_distance=None), ref, **TOL
    )


def test_fape_matches_a_loop_and_clamps():
    frames, pos = structure(0, b=1, n=3, p=4)
    true_frames, true_pos = structure(1, b=1, n=3, p=4)
    fm, pm = torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    for clamp in (None, 10.0):
        total = 0.0
        for i in (0, 2):
            for j in (0, 1, 3):
                local = frames.rot[0, i].T @ (pos[0, j] - frames.trans[0, i])
                local_true = true_frames.rot[0, i].T @ (true_pos[0, j] - true_frames.trans[0, i])
                d = math.sqrt(((local - local_true) ** 2).sum().item() + EPS)
                total += d if clamp is None else min(d, clamp)
        expected = torch.tensor([total / 10.0 / (EPS + 2) / (EPS + 3)])
        torch.testing.assert_close(fape(frames, true_frames, fm, pos, true_pos, pm, clamp_distance=clamp), expected, **TOL)
    # far-off predictions: every distance clamps at 10 A, so FAPE = 10 / Z * 12 / ((eps + 3)(eps + 4))
    far = fape(frames, true_frames, torch.ones(1, 3), pos + 1000.0, true_pos, torch.ones(1, 4))
    torch.testing.assert_close(far, torch.tensor([12.0 / ((EPS + 3) * (EPS + 4))]), rtol=1e-6, atol=0)


def perfect_outputs(batch, layers: int = 3) -> dict[str, torch.Tensor]:
    """The outputs of a model that predicts the ground truth exactly (torsions included)."""
    aatype = batch["aatype"]
    true = backbone_frames(batch["backbone_coords"])
    frames = atom14_to_frames(aatype, batch["atom14_gt_positions"], batch["atom14_gt_exists"])["frames"]
    angles = batch["torsion_angles_sin_cos"]
    return {
        "frames_rot": true.rot.expand(layers, *true.rot.shape),
        "frames_trans": true.trans.expand(layers, *true.trans.shape),
        "angles": angles.expand(layers, *angles.shape),
        "unnormalized_angles": angles.expand(layers, *angles.shape),
        "all_frames_rot": frames.rot,
        "all_frames_trans": frames.trans,
        "atom14_positions": batch["atom14_gt_positions"] * restype_table("ATOM14_MASK", aatype)[..., None],
    }


def test_backbone_and_sidechain_fape_are_the_eps_floor_for_a_perfect_prediction():
    batch = random_batch(b=2, n_res=6)
    outputs = perfect_outputs(batch)
    # backbone_frames recovers the frame each residue was built from: only the eps floor remains
    floor = math.sqrt(EPS) / 10.0
    torch.testing.assert_close(backbone_fape_loss(outputs, batch), torch.full((2,), floor), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(sidechain_fape_loss(outputs, batch), torch.full((2,), floor), rtol=1e-3, atol=1e-6)


def test_sidechain_fape_renames_symmetric_atoms_but_not_others():
    """Supplement 1.8.5: a prediction with a PHE's ring atoms named the other way round (CD1 <-> CD2,
    CE1 <-> CE2: the ring turned by pi about chi2) scores like the true naming; swapping LEU's CD1
    and CD2, which the neighbours resolve and AlphaFold does not rename, is penalised."""
    batch = random_batch(b=1, n_res=6, seed=3)
    phe, leu = rc.RESTYPES.index("F"), rc.RESTYPES.index("L")
    batch["aatype"][0, 2], batch["aatype"][0, 4] = phe, leu
    # rebuild the ground truth with these residue types
    from tests.unit.alphafold.helpers import rebuild_ground_truth

    rebuild_ground_truth(batch, seed=3)
    floor = sidechain_fape_loss(perfect_outputs(batch), batch)
    for residue, turned, swap in ((2, True, {6: 7, 7: 6, 8: 9, 9: 8}), (4, False, {6: 7, 7: 6})):
        outputs = perfect_outputs(batch)
        atoms = outputs["atom14_positions"].clone()
        for a, b in swap.items():
            atoms[0, residue, a] = outputs["atom14_positions"][0, residue, b]
        outputs["atom14_positions"] = atoms
        if turned:  # the predicted chi2 frame turns with the ring (alt frame): chi2 + pi
            angles = batch["torsion_angles_sin_cos"].clone()
            angles[0, residue, 4] *= -1.0
            frames = torsion_angles_to_frames(backbone_frames(batch["backbone_coords"]), angles, batch["aatype"])
            outputs["all_frames_rot"], outputs["all_frames_trans"] = frames.rot, frames.trans
            torch.testing.assert_close(sidechain_fape_loss(outputs, batch), floor, rtol=1e-3, atol=1e-6)
        else:
            assert sidechain_fape_loss(outputs, batch) > floor + 1e-3


def test_torsion_loss_by_hand_with_pi_periodic_alternatives():
    """Algorithm 27 on one residue of ASP (chi2 pi-periodic) and one of LYS (not), two layers."""
    asp, lys = rc.RESTYPES.index("D"), rc.RESTYPES.index("K")
    true = torch.zeros(1, 2, 7, 2)
    true[..., 1] = 1.0  # every angle 0: (sin, cos) = (0, 1)
    alt = true.clone()
    alt[0, 0, 4] = -alt[0, 0, 4]  # ASP chi2 + pi
    mask = torch.zeros(1, 2, 7)
    mask[0, 0, 3:5] = 1.0  # ASP chi1, chi2
    mask[0, 1, 3:7] = 1.0  # LYS chi1..chi4
    pred = true.clone().expand(2, 1, 2, 7, 2).clone()
    pred[:, 0, 0, 4] = torch.tensor([0.0, -1.0])  # ASP chi2 = pi: the alternative, no error
    pred[:, 0, 1, 4] = torch.tensor([0.0, -1.0])  # LYS chi2 = pi: |(0,-1) - (0,1)|^2 = 4
    pred[1, 0, 1, 3] = torch.tensor([1.0, 0.0])  # layer 2, LYS chi1 = pi/2: error 2
    raw = 2.0 * pred  # norm 2 everywhere: | |l| - 1 | = 1
    batch = {
        "aatype": torch.tensor([[asp, lys]]), "torsion_angles_sin_cos": true, "alt_torsion_angles_sin_cos": alt,
        "torsion_angles_mask": mask, "seq_mask": torch.ones(1, 2),
    }
    out = torsion_angle_loss({"angles": pred, "unnormalized_angles": raw}, batch)
    # layer 1: (0 + 0 + 0 + 4 + 0 + 0) / 6; layer 2: (0 + 0 + 2 + 4 + 0 + 0) / 6
    torch.testing.assert_close(out["supervised_chi"], torch.tensor([(4 / 6 + 6 / 6) / 2]), rtol=1e-5, atol=0)
    torch.testing.assert_close(out["angle_norm"], torch.tensor([1.0]), rtol=1e-5, atol=0)


def test_distogram_bins_and_loss():
    pos = torch.zeros(1, 5, 3)
    pos[0, 1:, 0] = torch.tensor([1.0, 2.2, 2.4, 30.0])
    bins = distogram_bins(pos)
    # 64 bins over 2-22 A, width 0.3125: <2.3125 -> 0, 2.4 -> 1, >21.6875 -> 63
    assert bins[0].tolist()[0] == [0, 0, 0, 1, 63]
    assert torch.equal(bins, bins.transpose(-1, -2))
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 5, 64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0]])
    loss = distogram_loss(logits, pos, mask)
    keep = [0, 1, 2, 4]
    expected = F.cross_entropy(logits[0][keep][:, keep].reshape(-1, 64), bins[0][keep][:, keep].reshape(-1))
    torch.testing.assert_close(loss, expected[None], **TOL)


def test_heads_shapes_and_symmetry():
    torch.manual_seed(0)
    dist = randomize_(DistogramHead(8))
    logits = dist(torch.randn(2, 5, 5, 8))
    assert logits.shape == (2, 5, 5, 64)
    torch.testing.assert_close(logits, logits.transpose(1, 2), rtol=0, atol=0)
    msa = MaskedMSAHead(16)
    assert msa(torch.randn(2, 3, 5, 16)).shape == (2, 3, 5, 23)


def test_masked_msa_loss_averages_over_bert_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 23)
    true_msa = torch.randint(0, 23, (2, 3, 4))
    bert = (torch.rand(2, 3, 4) < 0.5).float()
    loss = masked_msa_loss(logits, true_msa, bert)
    for b in range(2):
        sel = bert[b].bool()
        expected = F.cross_entropy(logits[b][sel], true_msa[b][sel])
        torch.testing.assert_close(loss[b], expected, **TOL)


def test_plddt_loss_targets_the_binned_lddt_and_filters_by_resolution():
    """A perfect CA trace has lDDT 1 everywhere: target bin 49 of 50. Samples outside 0.1-3 A score 0."""
    batch = random_batch(b=3, n_res=7, seed=2)
    batch["resolution"] = torch.tensor([2.0, 0.0, 3.5])
    ca = batch["atom14_gt_positions"][..., 1, :]
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0))
    loss = plddt_loss(logits, batch, ca)
    expected = F.cross_entropy(logits[0], torch.full((7,), 49))
    torch.testing.assert_close(loss, torch.stack([expected, torch.tensor(0.0), torch.tensor(0.0)]), **TOL)
    # a CA moved by 3 A: its pairs within 15 A score the thresholds 4 A only (0.25) -> lower bins
    moved = ca.clone()
    moved[0, 3, 0] += 3.0
    assert plddt_loss(logits, batch, moved)[0] != loss[0]


def test_experimentally_resolved_loss_by_hand():
    """One glycine (atoms N, CA, C, O of 37) with O unresolved: BCE over those 4 atom37 slots."""
    gly = rc.RESTYPES.index("G")
    batch = {
        "aatype": torch.tensor([[gly]]),
        "atom14_gt_exists": torch.tensor([[[1.0, 1.0, 1.0, 0.0] + [0.0] * 10]]),
        "seq_mask": torch.ones(1, 1), "resolution": torch.tensor([1.5]),
    }
    logits = torch.randn(1, 1, 37, generator=torch.Generator().manual_seed(1))
    # atom37 order: N 0, CA 1, C 2, CB 3, O 4
    slots, target = [0, 1, 2, 4], torch.tensor([1.0, 1.0, 1.0, 0.0])
    expected = F.binary_cross_entropy_with_logits(logits[0, 0, slots], target)
    torch.testing.assert_close(experimentally_resolved_loss(logits, batch), expected[None], **TOL)


def random_outputs(b: int, n: int, s: int, layers: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    angles = torch.randn(layers, b, n, 7, 2, generator=gen)
    return {
        "frames_rot": random_rigid((layers, b, n), gen).rot,
        "frames_trans": 5.0 * torch.randn(layers, b, n, 3, generator=gen),
        "angles": angles / angles.norm(dim=-1, keepdim=True),
        "unnormalized_angles": angles,
        "all_frames_rot": random_rigid((b, n, 8), gen).rot,
        "all_frames_trans": 5.0 * torch.randn(b, n, 8, 3, generator=gen),
        "atom14_positions": 5.0 * torch.randn(b, n, 14, 3, generator=gen),
        "distogram_logits": torch.randn(b, n, n, 64, generator=gen),
        "msa_logits": torch.randn(b, s, n, 23, generator=gen),
        "lddt_logits": torch.randn(b, n, 50, generator=gen),
        "experimentally_resolved_logits": torch.randn(b, n, 37, generator=gen),
    }


def test_total_loss_is_per_sample_and_weighted():
    batch = random_batch(b=2, n_seq=3, n_res=6, seed=1)
    outputs = random_outputs(2, 6, 3)
    loss = alphafold_loss(outputs, batch)
    terms = alphafold_loss_terms(outputs, batch)
    assert loss.shape == (2,) and set(terms) == set(LOSS_WEIGHTS)
    assert LOSS_WEIGHTS == {
        "fape_backbone": 0.5, "fape_sidechain": 0.5, "supervised_chi": 0.5, "angle_norm": 0.01,
        "distogram": 0.3, "masked_msa": 2.0, "plddt": 0.01, "experimentally_resolved": 0.01,
    }
    assert all(t.shape == (2,) and (t > 0).all() for t in terms.values())
    torch.testing.assert_close(loss, sum(LOSS_WEIGHTS[k] * v for k, v in terms.items()), rtol=0, atol=0)
    # sample 0's loss does not depend on sample 1's predictions
    changed = {k: v.clone() for k, v in outputs.items()}
    for k, v in changed.items():
        if v.shape[0] == 3:  # per-layer outputs [L, B, ...]
            v[:, 1] += 1.0
        else:
            v[1] += 1.0
    changed_loss = alphafold_loss(changed, batch)
    assert changed_loss[0] == loss[0] and changed_loss[1] != loss[1]
