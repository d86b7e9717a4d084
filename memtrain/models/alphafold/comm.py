"""AlphaFold's model-parallel communication per optimizer step per device: Dynamic Axial
Parallelism (memtrain.models.alphafold.parallelize and parallelize_stacks; Cheng et al. 2022,
"FastFold", Section 4), read by `memtrain estimate` (`comm_bytes`) and the cost model of `memtrain
plan` through ModelSpec.comm_bytes. Conventions: memtrain.models.comm.

DAP shards three stacks, each block running its modules on row or column shards:

    stack                 blocks                  sharded tensors
    Evoformer             model.n_blocks          m [S, R, C_m] (S: the MSA rows and the template
                                                  torsion-angle rows), z [R, R, C_z]
    extra-MSA stack       model.n_extra_msa_blocks  e [E, R, C_e], z
    template pair stack   model.n_template_blocks   t [T, R, R, C_t]

with S, E and R zero-padded to a multiple of the dap degree. Per block forward, an Evoformer or
extra-MSA block all-gathers the row attention's pair bias [H_msa, R, R], the outer product's b
[S, R, C_opm], one triangle multiplication operand each way [R, R, C_mul] and both triangle
attentions' biases [H_pair, R, R], and switches m twice and z four times between rows and columns
(all-to-alls); a template pair block all-gathers both triangle attentions' biases [T, H_t, R, R] and
both triangle multiplications' operands [T, R, R, C_t_mul], and switches t four times. Each stack
scatters its inputs (whose gradients are all-gathered in the backward) and all-gathers its outputs
(the Evoformer m and z, the extra-MSA stack z, the template stack t).

Per optimizer step: every block's forward once per recycling iteration without grad
(model.num_recycles) plus, in the iteration with grad, its forward, its backward (a gather's
backward is a reduce-scatter of the same size, an all-to-all's the inverse all-to-all) and, for the
blocks activation checkpointing wraps, the recomputed forward (torch's non-reentrant checkpoint
stops before a block's last switch, which no saved tensor follows); each for trainer.grad_accum
micro-batches. The extra-MSA stack drops e after its last block, so that block's last switch of e
has no backward. After the backward the sharded blocks' partial gradients are all-reduced over the
dap group once (reduce_dap_gradients, in the parameter dtype). Element sizes: `stream_bytes`.
Checked against the bytes a step sends on 2 gloo ranks (tests/distributed/test_dap.py): equal in
fp32, an upper bound under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from memtrain.config.cfgview import node_key
from memtrain.config.parallel import ParallelDims
from memtrain.models.activation_checkpoint import checkpointed_block_ids
from memtrain.models.comm import FP32, CommContext, ring


@dataclass(frozen=True)
class DapStack:
    """One stack DAP shards, in elements of one sample, per block forward: `biases`, the attention
    biases it all-gathers (made by a Linear: in the compute dtype); `operands`, the masked operands
    it all-gathers (the triangle multiplications' and the outer product's, in the stream's dtype);
    `switched`, the representations it moves between rows and columns (an all-to-all sends (n-1)/n^2
    of each), of which `final` is the block's last switch, after every tensor its backward keeps
    (torch's non-reentrant checkpoint stops its recomputation before it), and `discarded` the one
    whose output the stack drops (no backward). `entry`: the stack's sharded inputs, whose gradients
    the backward all-gathers; `exit`: its outputs, all-gathered after its last block."""

    n_blocks: int
    biases: int
    operands: int
    switched: int
    final: int
    discarded: int
    entry: int
    exit: int


def _padded(size: int, dap: int) -> int:
    return -(-size // dap) * dap


def dap_stacks(cfg: DictConfig, dap: int) -> list[DapStack]:
    """The Evoformer, the extra-MSA stack and the template pair stack (those switched on) under
    DAP of degree `dap`, per sample (see the module docstring for what each block sends)."""
    m, d = cfg.model, cfg.data
    r = _padded(d.crop_size, dap)
    rr = r * r
    t = d.max_templates if m.templates else 0
    biases = rr * (m.n_heads_msa + 2 * m.n_heads_pair)  # the row attention's pair bias, both triangle attentions'

    def msa_operands(rows: int) -> int:
        return rr * 2 * m.c_hidden_mul + rows * r * m.c_hidden_opm  # a triangle operand each way, the outer product's b

    s = _padded(d.max_msa + t, dap)  # the template torsion-angle rows join the MSA
    stacks = [DapStack(m.n_blocks, biases, msa_operands(s), 2 * s * r * m.c_m + 4 * rr * m.c_z, final=rr * m.c_z,
                       discarded=0, entry=s * r * m.c_m + rr * m.c_z, exit=s * r * m.c_m + rr * m.c_z)]
    if m.n_extra_msa_blocks > 0:
        e = _padded(d.max_extra_msa, dap)
        stacks.append(DapStack(m.n_extra_msa_blocks, biases, msa_operands(e), 2 * e * r * m.c_e + 4 * rr * m.c_z,
                               final=rr * m.c_z, discarded=e * r * m.c_e, entry=e * r * m.c_e + rr * m.c_z,
                               exit=rr * m.c_z))
    if t > 0 and m.n_template_blocks > 0:
        pair = t * rr
        stacks.append(DapStack(m.n_template_blocks, pair * 2 * m.n_heads_template, pair * 2 * m.c_hidden_template_mul,
                               4 * pair * m.c_t, final=pair * m.c_t, discarded=0, entry=pair * m.c_t,
                               exit=pair * m.c_t))
    return stacks


_BLOCK_PARAMS: dict[str, int] = {}  # node_key(model config) -> sharded_block_params (plan asks many layouts of one model)


def sharded_block_params(mcfg: DictConfig) -> int:
    """Parameter elements of the blocks DAP shards (their gradients are partial sums over the dap
    group), counted on a build of model config `mcfg` on the meta device."""
    from memtrain.models.meta import build_on_meta
    from memtrain.models.spec import get_spec

    key = node_key(mcfg)
    if key not in _BLOCK_PARAMS:
        if len(_BLOCK_PARAMS) >= 64:
            _BLOCK_PARAMS.clear()
        spec = get_spec(mcfg.arch)
        model = build_on_meta(spec.build_model, mcfg)
        stacks = [spec.blocks(model), *(spec.block_stacks(model) if spec.block_stacks is not None else [])]
        _BLOCK_PARAMS[key] = sum(p.numel() for stack in stacks for p in stack.parameters())
    return _BLOCK_PARAMS[key]


def comm_bytes(cfg: DictConfig, dims: ParallelDims, ctx: CommContext) -> dict[str, dict[str, float]]:
    """{"dap": {all_gather_activations, all_to_all_activations, all_reduce_grads}} when dap > 1:
    bytes each device sends per optimizer step (module docstring). all_gather_activations holds
    the gathers, their backward reduce-scatters and the stacks' entry and exit gathers."""
    n = dims.dap
    if n == 1:
        return {}
    ac, recycles = cfg.activation_checkpoint, cfg.model.num_recycles
    stream = stream_bytes(cfg, ctx)
    gathered = switched = 0.0
    for st in dap_stacks(cfg, n):
        recomputed = len(checkpointed_block_ids(st.n_blocks, ac.mode, ac.policy, ac.every_k))
        passes = (recycles + 2) * st.n_blocks + recomputed  # forwards without grad, forward, backward, recompute
        gathered += passes * (st.biases * ctx.compute_bytes + st.operands * stream)
        gathered += ((recycles + 1) * st.exit + st.entry) * stream
        switched += ((recycles + 2) * st.n_blocks * st.switched - st.discarded + recomputed * (st.switched - st.final)) * stream
    scale = ctx.micro_batches * cfg.trainer.micro_batch_size * ring(n)
    grads = sharded_block_params(cfg.model) * ctx.param_bytes
    return {"dap": {"all_gather_activations": scale * gathered, "all_to_all_activations": scale * switched / n,
                    "all_reduce_grads": 2 * ring(n) * grads}}


def stream_bytes(cfg: DictConfig, ctx: CommContext) -> int:
    """Bytes of an element of the representations DAP switches and of the masked operands it
    gathers: fp32 under autocast (the masks are cast to a LayerNorm's output, which autocast runs
    in fp32, and the masked updates promote the residual streams), else the compute dtype. The
    extra-MSA and template stacks enter in the compute dtype and are promoted within their first
    block, so under autocast this counts a few of that block's tensors at fp32 that go in the
    compute dtype: an upper bound (tests/distributed/test_dap.py)."""
    from memtrain.config.errors import as_enum
    from memtrain.config.schema import DType

    pcfg = cfg.precision  # autocast when the dtypes differ (memtrain.precision.amp.Precision.uses_autocast)
    autocast = as_enum(pcfg.compute_dtype, DType) is not as_enum(pcfg.param_dtype, DType)
    return FP32 if autocast else ctx.compute_bytes
