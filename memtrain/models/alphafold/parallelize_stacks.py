"""Dynamic Axial Parallelism for the extra-MSA stack and the template pair stack (the Evoformer's
is in parallelize.py, whose layout and collectives these follow).

Extra-MSA stack: its blocks are Evoformer blocks with global column attention (column-local like
the Evoformer's column attention), so they run DAPEvoformerBlock's forward unchanged: the extra
MSA e [*, E, N_res, C_e] is split along its rows E (row attention with the gathered pair bias),
then along the residues (global column attention, transition, outer product mean), switched by
row_to_col / col_to_row; the pair representation as in the Evoformer. E and N_res are padded to a
multiple of the dap degree.

Template pair stack: t [*, T, N_res, N_res, C_t] is split along its first residue axis i, every
template alike, and each block runs

    t += TriAttStart.attend(t_rows, gather(bias(t_rows)))
    t -> columns;  t += TriAttEnd (transposed: rows of t^T), gather of its bias;  t -> rows
    t += TriMulOut.combine(a_rows, gather(b_rows))
    t -> columns;  t += TriMulIn.combine(gather(a_cols), b_cols);  t += Transition;  t -> rows

The embedding Linear before the stack, its final LayerNorm, the point-wise attention and the
angle embedder run replicated. Dropout masks are drawn at the unsharded, unpadded shape from the
shared random stream and sliced, as in the Evoformer, so a dap run matches one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from memtrain.distributed.collectives import (
    gather,
    gather_replicated,
    local_shard,
    pad_to_multiple,
    scatter,
)
from memtrain.distributed.dap import col_to_row, row_to_col
from memtrain.models.alphafold.extra_msa import ExtraMSABlock, ExtraMSAStack
from memtrain.models.alphafold.parallelize import DAPEvoformerBlock, _dropout
from memtrain.models.alphafold.primitives import residual
from memtrain.models.alphafold.template import TemplatePairBlock, TemplatePairStack


def _unwrap(block):
    return block._checkpoint_wrapped_module if hasattr(block, "_checkpoint_wrapped_module") else block


class DAPExtraMSABlock(ExtraMSABlock, DAPEvoformerBlock):
    """An ExtraMSABlock running DAPEvoformerBlock.forward (the same pieces, sharded)."""


class DAPExtraMSAStack(ExtraMSAStack):
    dap_group: ProcessGroup

    def forward(self, e: torch.Tensor, z: torch.Tensor, extra_msa_mask: torch.Tensor, pair_mask: torch.Tensor):
        """Same contract as ExtraMSAStack.forward: whole, replicated tensors in and out."""
        g, n = self.dap_group, dist.get_world_size(self.dap_group)
        n_extra, n_res = e.shape[-3], e.shape[-2]
        e = pad_to_multiple(pad_to_multiple(e, -3, n), -2, n)
        z = pad_to_multiple(pad_to_multiple(z, -3, n), -2, n)
        extra_msa_mask = pad_to_multiple(pad_to_multiple(extra_msa_mask, -2, n), -1, n)
        pair_mask = pad_to_multiple(pad_to_multiple(pair_mask, -2, n), -1, n)
        e, z = scatter(e, -3, g), scatter(z, -3, g)
        for block in self.blocks:
            e, z = block(e, z, extra_msa_mask, pair_mask, n_extra, n_res)
        return gather_replicated(z, -3, g)[..., :n_res, :n_res, :]


class DAPTemplatePairBlock(TemplatePairBlock):
    dap_group: ProcessGroup

    def forward(self, t: torch.Tensor, mask: torch.Tensor, n_res: int) -> torch.Tensor:
        """t [*, R/n, R, C_t] (this rank's rows i; `*` includes T), the whole mask [*, R, R]
        (R padded) -> t in the same layout. n_res: the unpadded size, for dropout masks."""
        g = self.dap_group
        sizes = {-3: n_res, -2: n_res}
        rows, cols = local_shard(mask, -2, g), local_shard(mask, -1, g)
        att = self.tri_att_start
        bias = gather(att.triangle_bias(t), -2, g)
        t = residual(t, _dropout(self.dropout_row, att.attend(t, bias, rows), -3, sizes, g))
        t = row_to_col(t, g)  # [*, R, R/n, C_t]
        att = self.tri_att_end
        tt = att.orient(t)  # [*, R/n, R, C_t]: rows of t^T are this rank's columns of t
        bias = gather(att.triangle_bias(tt), -2, g)
        update = att.orient(att.attend(tt, bias, att.orient_mask(cols)))
        t = residual(t, _dropout(self.dropout_col, update, -2, sizes, g))
        t = col_to_row(t, g)
        a, b, gate = self.tri_mul_out.project(t, rows)
        t = residual(t, _dropout(self.dropout_row, self.tri_mul_out.combine(a, gather(b, -3, g), gate), -3, sizes, g))
        t = row_to_col(t, g)
        a, b, gate = self.tri_mul_in.project(t, cols)
        t = residual(t, _dropout(self.dropout_row, self.tri_mul_in.combine(gather(a, -2, g), b, gate), -2, sizes, g))
        t = residual(t, self.pair_transition(t, cols))
        return col_to_row(t, g)


class DAPTemplatePairStack(TemplatePairStack):
    dap_group: ProcessGroup

    def forward(self, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Same contract as TemplatePairStack.forward: whole, replicated tensors in and out."""
        g, n = self.dap_group, dist.get_world_size(self.dap_group)
        n_res = feat.shape[-2]
        t = self.embedder(feat)
        t = scatter(pad_to_multiple(pad_to_multiple(t, -3, n), -2, n), -3, g)
        mask = pad_to_multiple(pad_to_multiple(mask, -2, n), -1, n)
        for block in self.blocks:
            t = block(t, mask, n_res)
        return self.layer_norm(gather_replicated(t, -3, g)[..., :n_res, :n_res, :])


def apply_dap_stacks(model, group: ProcessGroup) -> None:
    """Run the model's extra-MSA stack and template pair stack with DAP over `group` (in place,
    class swaps: parameter names and the state dict stay those of the plain model)."""
    if model.extra_msa_stack is not None:
        for block in model.extra_msa_stack.blocks:
            target = _unwrap(block)
            target.__class__, target.dap_group = DAPExtraMSABlock, group
        model.extra_msa_stack.__class__, model.extra_msa_stack.dap_group = DAPExtraMSAStack, group
    if model.template_embedder is not None:
        stack = model.template_embedder.pair_stack
        for block in stack.blocks:
            target = _unwrap(block)
            target.__class__, target.dap_group = DAPTemplatePairBlock, group
        stack.__class__, stack.dap_group = DAPTemplatePairStack, group


def dap_stack_blocks(model) -> list:
    """The sharded blocks whose partial gradients are summed over the dap group."""
    stacks = []
    if model.extra_msa_stack is not None:
        stacks.append(model.extra_msa_stack.blocks)
    if model.template_embedder is not None:
        stacks.append(model.template_embedder.pair_stack.blocks)
    return stacks
