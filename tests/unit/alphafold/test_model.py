"""The whole model on tiny shapes (B=1, N_seq=4, N_res=10, c_m=16, c_z=8, 2 blocks), and the
published configuration's parameter count on the meta device."""

from __future__ import annotations

import re

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    checkpoint_wrapper,
)

from memtrain.models.alphafold.loss import alphafold_loss
from memtrain.models.alphafold.model import PUBLISHED, PUBLISHED_PARAMETERS, AlphaFold
from memtrain.models.alphafold.primitives import set_attention_backend, set_chunk_size
from tests.unit.alphafold.helpers import TINY, random_batch, randomize_

# fp32, the same math through different kernels or chunkings: the 2-block model's outputs and
# loss (O(1)-O(10)) agree to a few hundred ulps after backward's longer sums
TOL = {"rtol": 1e-4, "atol": 1e-5}


def tiny_model(num_recycles: int = 1, randomized: bool = True, **kwargs) -> AlphaFold:
    torch.manual_seed(0)
    model = AlphaFold(**{**TINY, **kwargs}, num_recycles=num_recycles)
    return randomize_(model, scale=0.3) if randomized else model


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = alphafold_loss(model(batch), batch)
    loss.sum().backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_published_parameter_count_on_meta():
    with torch.device("meta"):
        model = AlphaFold(**PUBLISHED)
    assert len(model.evoformer.blocks) == 48
    assert sum(p.numel() for p in model.evoformer.blocks[0].parameters()) == 1_829_952
    assert sum(p.numel() for p in model.structure_module.angle_resnet.parameters()) == 166_414
    assert sum(p.numel() for p in model.lddt_head.parameters()) == 73_010
    assert sum(p.numel() for p in model.experimentally_resolved_head.parameters()) == 14_245
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS == 93_229_082


def test_tiny_forward_backward_is_finite_for_every_parameter():
    """As initialised (zero "final" layers): a finite loss and a finite gradient for every parameter."""
    model = tiny_model(randomized=False).train()
    batch = random_batch(b=1, n_seq=4, n_res=10)
    out = model(batch)
    assert out["msa_logits"].shape == (1, 4, 10, 23) and out["distogram_logits"].shape == (1, 10, 10, 64)
    assert out["frames_rot"].shape == (2, 1, 10, 3, 3) and out["backbone_positions"].shape == (1, 10, 3, 3)
    loss = alphafold_loss(out, batch)
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    loss.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_every_parameter_reaches_the_loss():
    """With every weight random (no zero layers hiding a path), each parameter gets a non-zero
    gradient: nothing is built and left unused."""
    model = tiny_model().eval()
    _, grads = loss_and_grads(model, random_batch(b=1, n_seq=4, n_res=10))
    dead = [n for n, g in grads.items() if g.abs().sum() == 0]
    assert not dead


def test_naive_and_sdpa_backends_agree():
    model = tiny_model(num_recycles=0).eval()
    batch = random_batch(b=1, n_seq=4, n_res=10)
    loss_naive, grads_naive = loss_and_grads(model, batch)
    set_attention_backend(model, "sdpa")
    loss_sdpa, grads_sdpa = loss_and_grads(model, batch)
    torch.testing.assert_close(loss_sdpa, loss_naive, **TOL)
    for name in grads_naive:
        torch.testing.assert_close(grads_sdpa[name], grads_naive[name], **TOL, msg=lambda s, name=name: f"{name}: {s}")


def test_chunked_model_equals_unchunked():
    model = tiny_model(num_recycles=0).eval()
    batch = random_batch(b=1, n_seq=4, n_res=10)
    loss_full, grads_full = loss_and_grads(model, batch)
    set_chunk_size(model, 3)
    loss_chunked, grads_chunked = loss_and_grads(model, batch)
    torch.testing.assert_close(loss_chunked, loss_full, **TOL)
    for name in grads_full:
        torch.testing.assert_close(grads_chunked[name], grads_full[name], **TOL, msg=lambda s, name=name: f"{name}: {s}")


def test_activation_checkpointed_blocks_give_the_same_gradients():
    """Activation checkpointing wraps the blocks of the Evoformer, extra-MSA and template pair
    stacks from outside (non-reentrant, RNG state preserved): same loss and gradients, dropout
    included."""
    model = tiny_model(num_recycles=0).train()
    batch = random_batch(b=1, n_seq=4, n_res=10)
    torch.manual_seed(7)
    loss_ref, grads_ref = loss_and_grads(model, batch)
    stacks = [model.evoformer.blocks, model.extra_msa_stack.blocks, model.template_embedder.pair_stack.blocks]
    for blocks in stacks:
        for i in range(len(blocks)):
            blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=True)
    torch.manual_seed(7)
    loss_ckpt, grads_ckpt = loss_and_grads(model, batch)
    torch.testing.assert_close(loss_ckpt, loss_ref, rtol=0, atol=0)
    wrapped = 0
    for name, g in grads_ref.items():
        # the stacks' blocks (not the angle ResNet's, which activation checkpointing leaves alone)
        ckpt_name = re.sub(r"^((?:evoformer|extra_msa_stack|template_embedder\.pair_stack)\.blocks\.\d+)\.",
                           r"\1._checkpoint_wrapped_module.", name)
        wrapped += ckpt_name != name
        torch.testing.assert_close(grads_ckpt[ckpt_name], g, **TOL)
    assert wrapped == sum(len(list(b.parameters())) for b in stacks)


def test_dropout_is_reproducible_under_a_fixed_seed():
    model = tiny_model(num_recycles=0).train()
    batch = random_batch(b=1, n_seq=4, n_res=10)
    losses = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        losses.append(alphafold_loss(model(batch), batch))
    assert torch.equal(losses[0], losses[1]) and not torch.equal(losses[0], losses[2])


def test_recycling_runs_without_grad_except_the_last_iteration():
    model = tiny_model(num_recycles=2).eval()
    seen = []
    model.evoformer.register_forward_hook(lambda mod, args, out: seen.append(torch.is_grad_enabled()))
    batch = random_batch(b=1, n_seq=4, n_res=10)
    out = model(batch)
    assert seen == [False, False, True]
    assert out["pair"].requires_grad
    seen.clear()
    with torch.no_grad():
        model(batch)
    assert seen == [False, False, False]
    # the recycled inputs matter: a different recycle count gives different outputs
    no_recycle = tiny_model(num_recycles=0).eval()
    assert not torch.allclose(no_recycle(batch)["pair"], out["pair"])


def test_padding_does_not_change_the_real_residues():
    """Masked residues, MSA and extra-MSA rows and templates (padding from cropping/batching) only
    enter through masks: padding a batch with junk features leaves the outputs on the real entries
    and the loss unchanged."""
    model = tiny_model().eval()
    batch = random_batch(b=1, n_seq=4, n_res=10)
    padded = random_batch(b=1, n_seq=6, n_res=13, seed=9, n_extra=5, n_templ=3)  # junk everywhere
    for key, value in batch.items():
        if key == "template_mask":  # [B, N_templ]
            padded[key][:, :2] = value
        elif key == "resolution":  # [B]
            padded[key] = value
        elif value.dim() >= 3 and key not in ("target_feat", "backbone_coords") and not key.startswith(("atom14_", "torsion_", "alt_torsion_")):
            padded[key][:, : value.shape[1], :10] = value  # [B, rows, N_res, ...]
        else:  # [B, N_res, ...]
            padded[key][:, :10] = value
    for key in ("seq_mask", "backbone_mask", "atom14_gt_exists", "torsion_angles_mask"):
        padded[key][:, 10:] = 0.0
    for key in ("msa_mask", "bert_mask", "extra_msa_mask", "template_pseudo_beta_mask", "template_all_atom_mask",
                "template_torsion_angles_mask"):  # padding rows (MSA, extra MSA, templates) and residues
        rows = batch[key].shape[1]
        padded[key][:, rows:] = 0.0
        padded[key][:, :, 10:] = 0.0
    padded["template_mask"][:, 2:] = 0.0
    out, out_pad = model(batch), model(padded)
    torch.testing.assert_close(out_pad["pair"][:, :10, :10], out["pair"], **TOL)
    torch.testing.assert_close(out_pad["backbone_positions"][:, :10], out["backbone_positions"], **TOL)
    torch.testing.assert_close(alphafold_loss(out_pad, padded), alphafold_loss(out, batch), **TOL)


def test_bf16_autocast_forward_is_finite_and_close():
    model = tiny_model().eval()
    batch = random_batch(b=1, n_seq=4, n_res=10)
    ref = alphafold_loss(model(batch), batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert out["backbone_positions"].dtype == torch.float32  # the structure module runs in fp32
    loss = alphafold_loss(out, batch)
    assert torch.isfinite(loss).all()
    # bf16 (8-bit mantissa) through 2 blocks of matmuls: the loss moves by well under 5%
    torch.testing.assert_close(loss, ref, rtol=5e-2, atol=0)


@pytest.mark.parametrize("bad", [-1])
def test_rejects_a_negative_recycle_count(bad):
    with pytest.raises(ValueError, match="num_recycles"):
        AlphaFold(**TINY, num_recycles=bad)
