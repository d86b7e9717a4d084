"""Dynamic Axial Parallelism for the Evoformer (FastFold, Cheng et al. 2022, Section 3).

`apply_dap(model, group)` turns the model's EvoformerStack and its blocks into their DAP classes
in place (a class swap, as FSDP2's fully_shard does), so parameter names and the state dict stay
those of the plain model. Each block then runs the plain block's pieces on shards:

    layout            m [*, S, R, C_m]             z [*, R, R, C_z]
    rows              S split                       first residue axis (i) split
    columns           second axis (R) split         second residue axis (j) split

    m += Dropout(RowAttention.attend(m_rows, gather(pair_bias(z_rows))))
    m -> columns;  m += ColumnAttention(m);  m += Transition(m)
    z += OPM.combine(a_cols, gather(b_cols))           (m's column shard is z's row shard)
    m -> rows
    z += TriMulOut.combine(a_rows, gather(b_rows))
    z -> columns;  z += TriMulIn.combine(gather(a_cols), b_cols);  z -> rows
    z += TriAttStart.attend(z_rows, gather(bias(z_rows)))
    z -> columns;  z += TriAttEnd (transposed: rows of z^T), gather of its bias;  z += Transition;  z -> rows

Residues and MSA rows are zero-padded (masks 0) to a multiple of the dap degree. Dropout masks
are drawn at the unsharded, unpadded shape from the shared RNG, then padded and sliced, so a dap
run consumes the random stream exactly as one process does and matches it step for step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed import ProcessGroup

from memtrain.distributed.collectives import (
    all_reduce_gradients,
    gather,
    gather_replicated,
    local_shard,
    pad_to_multiple,
    scatter,
)
from memtrain.distributed.dap import col_to_row, row_to_col
from memtrain.models.alphafold.evoformer import EvoformerBlock, EvoformerStack
from memtrain.models.alphafold.primitives import SharedDropout, residual


def _dropout(drop: SharedDropout, x: torch.Tensor, shard_dim: int, true_sizes: dict[int, int],
             group: ProcessGroup) -> torch.Tensor:
    """drop(x_full) restricted to x, the shard along shard_dim of the padded x_full. The mask is
    drawn at the unpadded shape (`true_sizes` of the residue/sequence dims), i.e. from the same
    random numbers one process draws, then zero-padded and sliced."""
    if not drop.training or drop.p == 0.0:
        return x
    padded = list(x.shape)
    padded[shard_dim] *= dist.get_world_size(group)
    shape = list(padded)
    for dim, size in true_sizes.items():
        shape[dim] = size
    shape[drop.shared_dim] = padded[drop.shared_dim] = 1
    mask = F.dropout(x.new_ones(shape), p=drop.p, training=True)
    for dim in true_sizes:
        mask = pad_to_multiple(mask, dim, padded[dim])  # true size <= padded: pads up to exactly padded
    if drop.shared_dim % x.dim() != shard_dim % x.dim():
        mask = local_shard(mask, shard_dim, group)
    return x * mask


class DAPEvoformerBlock(EvoformerBlock):
    dap_group: ProcessGroup

    def forward(self, m: torch.Tensor, z: torch.Tensor, msa_mask: torch.Tensor, pair_mask: torch.Tensor,
                n_seq: int, n_res: int):
        """m [*, S/n, R, C_m] (this rank's MSA rows), z [*, R/n, R, C_z] (its pair rows), the whole
        msa_mask [*, S, R] and pair_mask [*, R, R] (S, R padded) -> (m, z) in the same layout.
        n_seq, n_res: the unpadded sizes, for dropout masks."""
        g = self.dap_group
        msa_sizes, pair_sizes = {-3: n_seq, -2: n_res}, {-3: n_res, -2: n_res}
        msa_rows, msa_cols = local_shard(msa_mask, -2, g), local_shard(msa_mask, -1, g)
        pair_rows, pair_cols = local_shard(pair_mask, -2, g), local_shard(pair_mask, -1, g)

        bias = gather(self.msa_att_row.pair_bias(z), -2, g)  # [*, H, R, R]
        m = residual(m, _dropout(self.msa_dropout_row, self.msa_att_row.attend(m, bias, msa_rows), -3, msa_sizes, g))
        m = row_to_col(m, g)  # [*, S, R/n, C_m]
        m = residual(m, self.msa_att_col(m, msa_cols))
        m = residual(m, self.msa_transition(m, msa_cols))
        a, b = self.outer_product_mean.project(m, msa_cols)
        z = residual(z, self.outer_product_mean.combine(a, gather(b, -2, g), msa_cols, msa_mask))
        m = col_to_row(m, g)

        a, b, gate = self.tri_mul_out.project(z, pair_rows)
        z = residual(z, _dropout(self.pair_dropout_row, self.tri_mul_out.combine(a, gather(b, -3, g), gate), -3, pair_sizes, g))
        z = row_to_col(z, g)  # [*, R, R/n, C_z]
        a, b, gate = self.tri_mul_in.project(z, pair_cols)
        z = residual(z, _dropout(self.pair_dropout_row, self.tri_mul_in.combine(gather(a, -2, g), b, gate), -2, pair_sizes, g))
        z = col_to_row(z, g)

        att = self.tri_att_start
        bias = gather(att.triangle_bias(z), -2, g)
        z = residual(z, _dropout(self.pair_dropout_row, att.attend(z, bias, pair_rows), -3, pair_sizes, g))
        z = row_to_col(z, g)
        att = self.tri_att_end
        zt = att.orient(z)  # [*, R/n, R, C_z]: rows of z^T are this rank's columns of z
        bias = gather(att.triangle_bias(zt), -2, g)
        update = att.orient(att.attend(zt, bias, att.orient_mask(pair_cols)))
        z = residual(z, _dropout(self.pair_dropout_col, update, -2, pair_sizes, g))
        z = residual(z, self.pair_transition(z, pair_cols))
        return m, col_to_row(z, g)


class DAPEvoformerStack(EvoformerStack):
    dap_group: ProcessGroup

    def forward(self, m: torch.Tensor, z: torch.Tensor, msa_mask: torch.Tensor, pair_mask: torch.Tensor):
        """Same contract as EvoformerStack.forward: whole, replicated tensors in and out; the
        blocks run on shards in between."""
        g, n = self.dap_group, dist.get_world_size(self.dap_group)
        n_seq, n_res = m.shape[-3], m.shape[-2]
        m = pad_to_multiple(pad_to_multiple(m, -3, n), -2, n)
        z = pad_to_multiple(pad_to_multiple(z, -3, n), -2, n)
        msa_mask = pad_to_multiple(pad_to_multiple(msa_mask, -2, n), -1, n)
        pair_mask = pad_to_multiple(pad_to_multiple(pair_mask, -2, n), -1, n)
        m, z = scatter(m, -3, g), scatter(z, -3, g)
        for block in self.blocks:
            m, z = block(m, z, msa_mask, pair_mask, n_seq, n_res)
        m = gather_replicated(m, -3, g)[..., :n_seq, :n_res, :]
        z = gather_replicated(z, -3, g)[..., :n_res, :n_res, :]
        return m, z, self.linear_s(m[..., 0, :, :])


def apply_dap(model: nn.Module, group: ProcessGroup) -> None:
    """Run model.evoformer with Dynamic Axial Parallelism over `group` (in place)."""
    stack = model.evoformer
    for block in stack.blocks:
        target = block._checkpoint_wrapped_module if hasattr(block, "_checkpoint_wrapped_module") else block
        target.__class__, target.dap_group = DAPEvoformerBlock, group
    stack.__class__, stack.dap_group = DAPEvoformerStack, group


def reduce_dap_gradients(model: nn.Module, group: ProcessGroup) -> None:
    """Sum the Evoformer blocks' partial gradients over the dap group (after backward)."""
    all_reduce_gradients(model.evoformer.blocks, group)
