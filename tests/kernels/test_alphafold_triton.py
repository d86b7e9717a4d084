"""AlphaFold's attention modules with attention_backend=triton (fused attention and layer norm,
interpreter on CPU) equal attention_backend=naive: outputs, parameter and input gradients."""

import copy

import pytest
import torch

from memtrain.models.alphafold.evoformer import (
    MSARowAttentionWithPairBias,
    TriangleAttention,
)
from memtrain.models.alphafold.extra_msa import ExtraMSABlock
from memtrain.models.alphafold.primitives import (
    AttentionBackend,
    FusedLayerNorm,
    LayerNorm,
    set_attention_backend,
)
from memtrain.models.alphafold.template import TemplatePointwiseAttention
from tests.unit.alphafold.helpers import randomize_

# fp32 throughout; the naive path rounds nothing the kernel keeps in fp32, so the two differ only
# in summation order (~1e-6); 1e-4 is far below the O(0.1) change of a wrong gate or bias term.
ATOL = RTOL = 1e-4


def _compare(module, inputs):
    naive = module
    fused = copy.deepcopy(module)
    set_attention_backend(fused, "triton")
    assert any(isinstance(m, FusedLayerNorm) for m in fused.modules())
    outs, grads = [], []
    for mod in (naive, fused):
        xs = [x.detach().clone().requires_grad_(x.is_floating_point() and i == 0) for i, x in enumerate(inputs)]
        out = mod(*xs)
        g = torch.autograd.grad(out.square().sum(), [xs[0], *mod.parameters()], allow_unused=True)
        outs.append(out)
        grads.append(g)
    torch.testing.assert_close(outs[1], outs[0], atol=ATOL, rtol=RTOL)
    names = ["input"] + [n for n, _ in naive.named_parameters()]
    for name, a, b in zip(names, grads[1], grads[0]):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")
    set_attention_backend(fused, "naive")
    assert not any(isinstance(m, FusedLayerNorm) for m in fused.modules())
    assert all(type(m) is LayerNorm for m in fused.modules() if isinstance(m, LayerNorm))


def test_msa_row_attention_with_pair_bias_and_gate():
    torch.manual_seed(0)
    module = randomize_(MSARowAttentionWithPairBias(c_m=8, c_z=4, c_hidden=16, no_heads=2))
    m = torch.randn(1, 2, 9, 8)
    z = torch.randn(1, 9, 9, 4)
    mask = torch.ones(1, 2, 9)
    mask[0, 1, 6:] = 0
    # z also needs gradients: the pair bias's gradient flows through the fused dbias kernel
    naive, fused = module, copy.deepcopy(module)
    set_attention_backend(fused, "triton")
    res = []
    for mod in (naive, fused):
        mm, zz = m.clone().requires_grad_(), z.clone().requires_grad_()
        out = mod(mm, zz, mask)
        res.append((out, *torch.autograd.grad(out.square().sum(), [mm, zz, *mod.parameters()])))
    for i, (a, b) in enumerate(zip(res[1], res[0])):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda msg: f"item {i}: {msg}")


def test_triangle_attention_ending_node():
    torch.manual_seed(1)
    module = randomize_(TriangleAttention(c_z=8, c_hidden=16, no_heads=2, starting=False))
    z = torch.randn(1, 7, 7, 8)
    mask = torch.ones(1, 7, 7)
    # masked keys in every row of both orientations, but no fully masked row: there both paths
    # average values with weights from logits - 1e4, whose fp32 spacing (~1e-3) they round differently
    mask[0, 5:, 5:] = 0
    mask[0, 2, 6] = 0
    _compare(module, [z, mask])


def test_extra_msa_row_attention_with_narrow_heads():
    """The extra-MSA stack's row attention: 8 heads of 8 channels at C_e (here 2 heads of 8; the
    kernel pads the head dim to 16), the pair bias's gradient through the fused dbias kernel."""
    torch.manual_seed(2)
    block = randomize_(ExtraMSABlock(c_e=8, c_z=4, c_hidden_msa_att=8, no_heads_msa=2, c_hidden_opm=2, c_hidden_mul=4,
                                     c_hidden_pair_att=4, no_heads_pair=1, transition_n=1))
    e, z = torch.randn(1, 3, 9, 8), torch.randn(1, 9, 9, 4)
    mask = torch.ones(1, 3, 9)
    mask[0, 2, 5:] = 0
    naive, fused = block.msa_att_row, copy.deepcopy(block.msa_att_row)
    set_attention_backend(fused, "triton")
    res = []
    for mod in (naive, fused):
        ee, zz = e.clone().requires_grad_(), z.clone().requires_grad_()
        out = mod(ee, zz, mask)
        res.append((out, *torch.autograd.grad(out.square().sum(), [ee, zz, *mod.parameters()])))
    for i, (a, b) in enumerate(zip(res[1], res[0])):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda msg: f"item {i}: {msg}")


def test_template_pointwise_attention_over_templates():
    """Algorithm 17 through the kernel: one query per pair, the templates as keys, a padding
    template masked (a per-key bias), no gate."""
    torch.manual_seed(3)
    module = randomize_(TemplatePointwiseAttention(c_t=6, c_z=5, c_hidden=16, no_heads=2))
    t, z = torch.randn(1, 3, 5, 5, 6), torch.randn(1, 5, 5, 5)
    template_mask = torch.tensor([[1.0, 0.0, 1.0]])
    naive, fused = module, copy.deepcopy(module)
    set_attention_backend(fused, "triton")
    res = []
    for mod in (naive, fused):
        tt, zz = t.clone().requires_grad_(), z.clone().requires_grad_()
        out = mod(tt, zz, template_mask)
        res.append((out, *torch.autograd.grad(out.square().sum(), [tt, zz, *mod.parameters()])))
    for i, (a, b) in enumerate(zip(res[1], res[0])):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda msg: f"item {i}: {msg}")


def test_training_refuses_triton_without_cuda_or_interpreter_but_estimate_accepts_it(compose, monkeypatch):
    """Whether the kernels can run is a question about the machine that trains (memtrain.prereq),
    not about the config: validation and `memtrain estimate` accept the backend on any machine."""
    from memtrain.config.validate import validate
    from memtrain.memory.estimator import estimate
    from memtrain.prereq import PrerequisiteError, check_runs_here

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = compose("+recipe=alphafold_tiny", "model.attention_backend=triton", "trainer.device=cpu", tiny=False)
    validate(cfg)
    assert estimate(cfg).peak > 0
    with pytest.raises(PrerequisiteError, match="model.attention_backend=triton") as err:
        check_runs_here(cfg)
    assert "TRITON_INTERPRET" in str(err.value)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_runs_here(cfg)  # the interpreter is an explicit opt-in


def test_masked_keys_have_exactly_zero_weight_and_masked_rows_stay_finite():
    """tests/unit/alphafold/test_primitives.py's masking checks, for the triton backend."""
    from memtrain.models.alphafold.primitives import Attention, mask_bias

    torch.manual_seed(0)
    att = randomize_(Attention(8, 8, 8, c_hidden=16, no_heads=2))
    att.backend = AttentionBackend.triton
    x = torch.randn(3, 6, 8)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    changed = x.clone()
    changed[:, [2, 4]] = 100.0 * torch.randn(3, 2, 8)
    with torch.no_grad():
        out_a = att(x, x, [mask_bias(mask)])[:, [0, 1, 3, 5]]
        out_c = att(x, changed, [mask_bias(mask)])[:, [0, 1, 3, 5]]  # masked keys/values changed
        # exp2 of (-1e4 + O(10)) * log2(e) is exactly 0 in fp32: the masked keys contribute nothing
        torch.testing.assert_close(out_a, out_c, rtol=0, atol=0)
        half = copy.deepcopy(att).to(torch.float16)
        m2 = torch.zeros(2, 6, dtype=torch.float16)
        m2[0] = 1.0  # batch 1 fully masked
        out = half(x[:2].half(), x[:2].half(), [mask_bias(m2)[:, None, None, :]])
        assert torch.isfinite(out).all()
