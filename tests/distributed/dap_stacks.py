"""DAP for the extra-MSA stack and the template pair stack on every rank against the one-process
computation each rank can do alone (same seed everywhere): outputs, the inputs' gradients and
every parameter's gradient, with dropout on, for plain, activation-checkpointed and chunked
blocks, at sizes that need padding. Run on every rank of a batched launch by
tests.distributed.cases.dap_stacks; an assertion fails on the first mismatch."""

from __future__ import annotations

import copy

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    checkpoint_wrapper,
)

from memtrain.distributed.collectives import all_reduce_gradients
from memtrain.models.alphafold.extra_msa import ExtraMSAStack
from memtrain.models.alphafold.parallelize_stacks import (
    DAPExtraMSABlock,
    DAPExtraMSAStack,
    DAPTemplatePairBlock,
    DAPTemplatePairStack,
)
from memtrain.models.alphafold.primitives import set_chunk_size
from memtrain.models.alphafold.template import TemplatePairStack
from tests.unit.alphafold.helpers import randomize_

# fp32: the same terms summed in another order (over shards, then over the dap group). Gradients
# here are O(0.01-1) and the largest difference seen is 8e-6; run in fp64 (with the fp32 softmax
# casts removed) these checks agree to 1e-9, so what remains is rounding, far below the O(0.1) of
# a missing or doubled term.
TOL = {"rtol": 1e-4, "atol": 2e-5}


def swap(stack, block_cls, stack_cls, group):
    for block in stack.blocks:
        target = block._checkpoint_wrapped_module if hasattr(block, "_checkpoint_wrapped_module") else block
        target.__class__, target.dap_group = block_cls, group
    stack.__class__, stack.dap_group = stack_cls, group


def run(stack, inputs, n_grad, weight):
    """Forward (dropout seeded), loss = <out, weight>, backward -> (out, the first n_grad inputs'
    gradients); the parameters keep theirs."""
    leaves = [x.clone().requires_grad_(i < n_grad) for i, x in enumerate(inputs)]
    torch.manual_seed(1234)
    out = stack(*leaves)
    (out * weight).sum().backward()
    return out.detach(), [x.grad for x in leaves[:n_grad]]


def check(name, plain, dap, inputs, n_grad, weight, group):
    ref_out, ref_in = run(plain, inputs, n_grad, weight)
    out, grads_in = run(dap, inputs, n_grad, weight)
    all_reduce_gradients(dap.blocks, group)  # the sharded blocks' partial gradients
    ref_params = {n: p.grad for n, p in plain.named_parameters()}
    params = {n: p.grad for n, p in dap.named_parameters()}
    real = weight != 0
    torch.testing.assert_close(out[real], ref_out[real], **TOL, msg=lambda m: f"{name} output: {m}")
    for i, (g, r) in enumerate(zip(grads_in, ref_in)):
        torch.testing.assert_close(g, r, **TOL, msg=lambda m: f"{name} input {i} grad: {m}")
    assert params.keys() == ref_params.keys()
    for n, r in ref_params.items():
        assert r is not None and r.abs().sum() > 0, f"{name}: {n} has no gradient in the reference"
        # a gradient summed over many positions (the embedder's, over B T N^2 pairs) carries
        # rounding in proportion to its size
        scale = max(1.0, float(r.abs().max()))
        torch.testing.assert_close(params[n], r, rtol=TOL["rtol"], atol=TOL["atol"] * scale,
                                   msg=lambda m: f"{name} {n} (max |grad| {scale:.3g}): {m}")


def variants(plain):
    """(name, plain stack, its DAP copy) for plain, checkpointed and chunked blocks."""
    for variant in ("plain", "checkpointed", "chunked"):
        ref = copy.deepcopy(plain).train()
        if variant == "checkpointed":
            for i in range(len(ref.blocks)):
                ref.blocks[i] = checkpoint_wrapper(ref.blocks[i], preserve_rng_state=True)
        if variant == "chunked":
            set_chunk_size(ref, 2)
        yield variant, ref, copy.deepcopy(ref)


def check_stacks(group) -> list[str]:
    """Every check on this rank (a collective over `group`: call it on every rank); the names of
    the checks done."""
    done: list[str] = []
    torch.manual_seed(0)
    # extra-MSA stack: B 2, E 5 extra rows, N 7 residues (both padded to 6 and 8 on 2 ranks)
    extra = randomize_(ExtraMSAStack(2, c_e=8, c_z=6, c_hidden_msa_att=4, no_heads_msa=2, c_hidden_opm=3, c_hidden_mul=5,
                                     c_hidden_pair_att=4, no_heads_pair=2, transition_n=2), seed=1)
    e, z = torch.randn(2, 5, 7, 8), torch.randn(2, 7, 7, 6)
    extra_mask = (torch.rand(2, 5, 7) > 0.2).float()
    pair_mask = torch.ones(2, 7, 7)
    pair_mask[1, 5:, :] = pair_mask[1, :, 5:] = 0.0  # padding residues in the second sample
    extra_mask[1, :, 5:] = 0.0  # (the data pipeline masks every row there)
    # the loss reads only real residue pairs: outputs at padding are arbitrary (a fully masked row
    # averages its values, padding included), as the model's losses never read them
    weight = torch.randn(2, 7, 7, 6) * pair_mask[..., None]
    for variant, ref, dap in variants(extra):
        swap(dap, DAPExtraMSABlock, DAPExtraMSAStack, group)
        check(f"extra-MSA stack, {variant}", ref, dap, [e, z, extra_mask, pair_mask], 2, weight, group)
        done.append(f"extra-MSA stack, {variant}")

    # template pair stack: B 2, T 3 templates, N 7 residues, 88 feature channels
    templ = randomize_(TemplatePairStack(2, c_t=6, c_hidden_att=4, no_heads=2, c_hidden_mul=5, transition_n=2), seed=2)
    feat = torch.randn(2, 3, 7, 7, 88)
    t_mask = pair_mask[:, None].expand(2, 3, 7, 7).clone()
    weight = torch.randn(2, 3, 7, 7, 6) * t_mask[..., None]
    for variant, ref, dap in variants(templ):
        swap(dap, DAPTemplatePairBlock, DAPTemplatePairStack, group)
        check(f"template pair stack, {variant}", ref, dap, [feat, t_mask], 1, weight, group)
        done.append(f"template pair stack, {variant}")
    return done
