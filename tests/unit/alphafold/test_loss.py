"""Losses. fp32; FAPE sums O(10) A distances over F x P pairs, so rtol=1e-5 / atol=1e-5 covers
the reordering of those sums."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from memtrain.models.alphafold.heads import DistogramHead, MaskedMSAHead
from memtrain.models.alphafold.loss import (
    FAPE_AUX_WEIGHT,
    FAPE_FINAL_WEIGHT,
    LOSS_WEIGHTS,
    alphafold_loss,
    alphafold_loss_terms,
    backbone_frames,
    distogram_bins,
    distogram_loss,
    fape,
    fape_loss,
    masked_msa_loss,
)
from tests.unit.alphafold.helpers import random_batch, random_rigid, randomize_

TOL = {"rtol": 1e-5, "atol": 1e-5}


def structure(seed=0, b=2, n=6, p=9):
    gen = torch.Generator().manual_seed(seed)
    return random_rigid((b, n), gen), 10.0 * torch.randn(b, p, 3, generator=gen)


def test_fape_of_identical_structures_is_the_eps_floor():
    frames, pos = structure()
    fm, pm = torch.ones(2, 6), torch.ones(2, 9)
    # d = sqrt(0 + eps) for every pair: sqrt(1e-4) / Z = 1e-3
    torch.testing.assert_close(fape(frames, frames, fm, pos, pos, pm), torch.full((2,), 1e-3), rtol=1e-6, atol=0)
    torch.testing.assert_close(fape(frames, frames, fm, pos, pos, pm, eps=0.0), torch.zeros(2), rtol=0, atol=1e-6)


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
        total, count = 0.0, 0
        for i in (0, 2):
            for j in (0, 1, 3):
                local = frames.rot[0, i].T @ (pos[0, j] - frames.trans[0, i])
                local_true = true_frames.rot[0, i].T @ (true_pos[0, j] - true_frames.trans[0, i])
                d = math.sqrt(((local - local_true) ** 2).sum().item() + 1e-4)
                total += d if clamp is None else min(d, clamp)
                count += 1
        expected = torch.tensor([total / count / 10.0])
        torch.testing.assert_close(fape(frames, true_frames, fm, pos, true_pos, pm, clamp_distance=clamp), expected, **TOL)
    # far-off predictions: every distance clamps at 10 A, so FAPE = 10 / Z = 1
    far = fape(frames, true_frames, torch.ones(1, 3), pos + 1000.0, true_pos, torch.ones(1, 4))
    torch.testing.assert_close(far, torch.ones(1), rtol=0, atol=0)


def test_fape_loss_is_the_eps_floor_for_a_perfect_prediction():
    batch = random_batch(b=2, n_res=6)
    true = backbone_frames(batch["backbone_coords"])
    outputs = {
        "frames_rot": true.rot.expand(3, *true.rot.shape),
        "frames_trans": true.trans.expand(3, *true.trans.shape),
        "backbone_positions": batch["backbone_coords"],
    }
    assert FAPE_FINAL_WEIGHT + FAPE_AUX_WEIGHT == 1.0
    # backbone_frames recovers the frame each residue was built from: only the eps floor remains
    torch.testing.assert_close(fape_loss(outputs, batch), torch.full((2,), 1e-3), rtol=1e-3, atol=1e-6)


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


def test_total_loss_is_per_sample_and_weighted():
    batch = random_batch(b=2, n_seq=3, n_res=6, seed=1)
    gen = torch.Generator().manual_seed(0)
    outputs = {
        "frames_rot": random_rigid((3, 2, 6), gen).rot,
        "frames_trans": 5.0 * torch.randn(3, 2, 6, 3, generator=gen),
        "backbone_positions": 5.0 * torch.randn(2, 6, 3, 3, generator=gen),
        "distogram_logits": torch.randn(2, 6, 6, 64, generator=gen),
        "msa_logits": torch.randn(2, 3, 6, 23, generator=gen),
    }
    loss = alphafold_loss(outputs, batch)
    terms = alphafold_loss_terms(outputs, batch)
    assert loss.shape == (2,) and set(terms) == set(LOSS_WEIGHTS) == {"fape", "distogram", "masked_msa"}
    assert LOSS_WEIGHTS == {"fape": 1.0, "distogram": 0.3, "masked_msa": 2.0}
    torch.testing.assert_close(loss, terms["fape"] + 0.3 * terms["distogram"] + 2.0 * terms["masked_msa"], rtol=0, atol=0)
    # sample 0's loss does not depend on sample 1's predictions
    changed = {k: v.clone() for k, v in outputs.items()}
    for k, v in changed.items():
        if k.startswith("frames"):
            v[:, 1] += 1.0
        else:
            v[1] += 1.0
    changed_loss = alphafold_loss(changed, batch)
    assert changed_loss[0] == loss[0] and changed_loss[1] != loss[1]
