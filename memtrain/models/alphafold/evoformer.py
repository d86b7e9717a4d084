"""The Evoformer (Supplement 1.6, Algorithms 6-15).

Shapes: `*` batch dims, S = N_seq MSA rows, I, J, K residue indices (N_res each unless sharded),
H heads, C_m / C_z MSA / pair channels.

Every sub-module exposes its computation in pieces (`pair_bias`/`attend`, `project`/`combine`,
`triangle_bias`/`attend`/`orient`) whose composition is `forward`. A Dynamic Axial Parallelism
wrapper (memtrain.distributed.dap) runs the pieces on shards of the residue axes and inserts its
collectives between them; the pieces are therefore written so that a shard in gives the matching
slice of the full result out. Chunking (`chunk_size`, set from outside with
`memtrain.models.alphafold.primitives.set_chunk_size`) goes through `memtrain.memory.chunking`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from memtrain.models.chunking import chunk_layer
from memtrain.models.alphafold.primitives import (
    Attention,
    LayerNorm,
    Linear,
    SharedDropout,
    mask_bias,
    residual,
)


def _maybe_chunked(
    fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], chunk_size: int | None, no_batch_dims: int
) -> torch.Tensor:
    """fn(**inputs), or the same computed in chunks over the first `no_batch_dims` dims."""
    if chunk_size is None:
        return fn(**inputs)
    return chunk_layer(fn, inputs, chunk_size=chunk_size, no_batch_dims=no_batch_dims)


class MSARowAttentionWithPairBias(nn.Module):
    """Algorithm 7: attention along each MSA row (over residues), biased by the pair representation.

        b_ij^h = LinearNoBias(LayerNorm(z_ij))                   pair_bias
        m_si  <- GatedAttention(LayerNorm(m_s), bias b + mask)   attend

    Chunked (chunk_size) over the MSA rows.
    """

    def __init__(self, c_m: int, c_z: int, c_hidden: int = 32, no_heads: int = 8):
        super().__init__()
        self.layer_norm_m = LayerNorm(c_m)
        self.layer_norm_z = LayerNorm(c_z)
        self.linear_z = Linear(c_z, no_heads, bias=False, init="normal")
        self.mha = Attention(c_m, c_m, c_m, c_hidden, no_heads)
        self.chunk_size: int | None = None

    def pair_bias(self, z: torch.Tensor) -> torch.Tensor:
        """z [*, I, J, C_z] -> bias [*, H, I, J]. Per element of z: rows of z give rows of the bias."""
        return self.linear_z(self.layer_norm_z(z)).movedim(-1, -3)

    def attend(self, m: torch.Tensor, bias: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """m [*, S, N_res, C_m], bias [*, H, N_res, N_res], msa_mask [*, S, N_res] -> update [*, S, N_res, C_m].

        Works on any subset of the MSA rows (S may be a shard); the bias covers all residues."""
        m = self.layer_norm_m(m)
        inputs = {"m": m, "mask": msa_mask, "bias": bias.unsqueeze(-4)}  # bias [*, 1, H, N_res, N_res]: shared by rows
        return _maybe_chunked(self._attend, inputs, self.chunk_size, no_batch_dims=m.dim() - 2)

    def _attend(self, m: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """m [*, N_res, C_m], mask [*, N_res], bias [*, H, N_res, N_res] (`*` includes the row dim)."""
        return self.mha(m, m, [mask_bias(mask)[..., None, None, :], bias])

    def forward(self, m: torch.Tensor, z: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """m [*, S, N_res, C_m], z [*, N_res, N_res, C_z], msa_mask [*, S, N_res] -> [*, S, N_res, C_m]."""
        return self.attend(m, self.pair_bias(z), msa_mask)


class MSAColumnAttention(nn.Module):
    """Algorithm 8: gated self-attention along each MSA column (over sequences), no pair bias.

    The LayerNorm reads the transposed view of m, so its output is laid out [*, N_res, S, C_m] and
    the q, k, v and gate projections read it as it is (LayerNorm first, then the transpose, would
    make each of the four projections save its own contiguous copy). Chunked (chunk_size) over the
    columns (residues)."""

    def __init__(self, c_m: int, c_hidden: int = 32, no_heads: int = 8):
        super().__init__()
        self.layer_norm_m = LayerNorm(c_m)
        self.mha = Attention(c_m, c_m, c_m, c_hidden, no_heads)
        self.chunk_size: int | None = None

    def _attend(self, m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """m [*, S, C_m], mask [*, S] (`*` includes the column dim)."""
        return self.mha(m, m, [mask_bias(mask)[..., None, None, :]])

    def forward(self, m: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """m [*, S, N_res, C_m], msa_mask [*, S, N_res] -> [*, S, N_res, C_m]. Column-local: works on
        any subset of the columns."""
        m_t = self.layer_norm_m(m.transpose(-2, -3))  # [*, N_res, S, C_m], contiguous
        inputs = {"m": m_t, "mask": msa_mask.transpose(-1, -2)}
        out = _maybe_chunked(self._attend, inputs, self.chunk_size, no_batch_dims=m_t.dim() - 2)
        return out.transpose(-2, -3)


class Transition(nn.Module):
    """Algorithms 9 (MSA transition) and 15 (pair transition): a position-wise two-layer MLP

        x <- Linear(relu(Linear(LayerNorm(x))))      hidden width n * C, n = 4

    with the output zeroed at masked positions (as in OpenFold). Chunked over the leading batch
    dims, i.e. over rows of positions (the MSA's sequences, the pair's rows i), as OpenFold's
    chunk_layer does: each chunk is chunk_size rows of whole rows, not chunk_size positions."""

    def __init__(self, c: int, n: int = 4):
        super().__init__()
        self.layer_norm = LayerNorm(c)
        self.linear_1 = Linear(c, n * c, init="relu")
        self.linear_2 = Linear(n * c, c, init="final")
        self.chunk_size: int | None = None

    def _mlp(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.linear_2(torch.relu(self.linear_1(x)))
        if mask is None:
            return out
        # under autocast the fp32 mask as it is (a low-precision copy would be kept for the backward
        # pass; the update joins the fp32 stream anyway); without, in the stream's dtype
        mask = mask[..., None]
        return out * (mask if torch.is_autocast_enabled(out.device.type) else mask.to(out.dtype))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [*, N, C], mask [*, N] or None -> [*, N, C]."""
        x = self.layer_norm(x)
        inputs = {"x": x} if mask is None else {"x": x, "mask": mask}
        return _maybe_chunked(self._mlp, inputs, self.chunk_size, no_batch_dims=x.dim() - 2)


class OuterProductMean(nn.Module):
    """Algorithm 10: the MSA updates the pair representation through the mean over sequences of
    the outer product of two projections.

        a_si, b_sj = Linear(LayerNorm(m_si)), Linear(LayerNorm(m_sj))          project  (c = 32 each)
        z_ij = Linear(sum_s a_si (x) b_sj) / (sum_s mask_si mask_sj + 1e-3)    combine

    Chunked (chunk_size) over the first residue dim i of the output, one batch element at a time
    with b shared by every chunk (OpenFold's OuterProductMean._chop): chunk_layer would expand b
    over the chunked rows.
    """

    def __init__(self, c_m: int, c_z: int, c_hidden: int = 32, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.layer_norm = LayerNorm(c_m)
        self.linear_1 = Linear(c_m, c_hidden)
        self.linear_2 = Linear(c_m, c_hidden)
        self.linear_out = Linear(c_hidden * c_hidden, c_z, init="final")
        self.chunk_size: int | None = None

    def project(self, m: torch.Tensor, msa_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """m [*, S, N_res, C_m], msa_mask [*, S, N_res] -> a, b [*, S, N_res, c], zero at masked entries.
        Per element of m: any subset of residues (or sequences) gives the matching slice."""
        m = self.layer_norm(m)
        mask = msa_mask[..., None].to(m.dtype)
        return self.linear_1(m) * mask, self.linear_2(m) * mask

    def combine(
        self, a: torch.Tensor, b: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor
    ) -> torch.Tensor:
        """a [*, S, I, c], b [*, S, J, c], mask_a [*, S, I], mask_b [*, S, J] -> z update [*, I, J, C_z].

        a and b may cover different residue ranges (a DAP shard of i against all j)."""
        if self.chunk_size is not None and torch.is_autocast_enabled(a.device.type):
            # cast once here: each chunk's einsum would otherwise cast (and keep) all of b again
            dtype = torch.get_autocast_dtype(a.device.type)
            a, b = a.to(dtype), b.to(dtype)
        a_t, mask_a_t = a.transpose(-2, -3), mask_a.transpose(-1, -2)  # [*, I, S, c], [*, I, S]: i leads
        if self.chunk_size is None:
            return self._outer_mean(a_t, mask_a_t, b.unsqueeze(-4), mask_b.unsqueeze(-3))
        batch = a.shape[:-3]
        pieces = zip(
            a_t.reshape(-1, *a_t.shape[-3:]), mask_a_t.reshape(-1, *mask_a_t.shape[-2:]),
            b.expand(*batch, *b.shape[-3:]).reshape(-1, *b.shape[-3:]),
            mask_b.expand(*batch, *mask_b.shape[-2:]).reshape(-1, *mask_b.shape[-2:]),
        )
        out = [
            chunk_layer(partial(self._outer_mean, b=b_k, mask_b=mb_k), {"a": a_k, "mask_a": ma_k},
                        chunk_size=self.chunk_size, no_batch_dims=1)
            for a_k, ma_k, b_k, mb_k in pieces
        ]
        return torch.stack(out).reshape(*batch, *out[0].shape)

    def _outer_mean(
        self, a: torch.Tensor, mask_a: torch.Tensor, b: torch.Tensor, mask_b: torch.Tensor
    ) -> torch.Tensor:
        """a [*, S, c], mask_a [*, S], b [*, S, J, c], mask_b [*, S, J] -> [*, J, C_z] (`*` includes i;
        b and mask_b broadcast against it)."""
        outer = torch.einsum("...sc,...sjd->...jcd", a, b).flatten(-2)  # [*, J, c * c]
        norm = torch.einsum("...s,...sj->...j", mask_a, mask_b)[..., None]  # sequences present at both i and j
        # DISCREPANCY: Algorithm 10 applies the final Linear to the mean; AlphaFold's and OpenFold's
        # code apply it to the sum and divide the result, bias included, by (count + 1e-3). We
        # follow the code (the published weights were trained this way).
        # the division in the masks' dtype (fp32): counts above 256 are not exact in bf16
        return self.linear_out(outer) / (norm + self.eps)

    def forward(self, m: torch.Tensor, msa_mask: torch.Tensor) -> torch.Tensor:
        """m [*, S, N_res, C_m], msa_mask [*, S, N_res] -> [*, N_res, N_res, C_z]."""
        a, b = self.project(m, msa_mask)
        return self.combine(a, b, msa_mask, msa_mask)


class TriangleMultiplication(nn.Module):
    """Algorithms 11 (outgoing edges) and 12 (incoming edges).

        z = LayerNorm(z)
        a, b = sigmoid(Linear(z)) * Linear(z) (masked),  g = sigmoid(Linear(z))      project (c = 128)
        outgoing: z_ij = g_ij * Linear(LayerNorm(sum_k a_ik * b_jk))                combine
        incoming: z_ij = g_ij * Linear(LayerNorm(sum_k a_ki * b_kj))
    """

    def __init__(self, c_z: int, c_hidden: int = 128, outgoing: bool = True):
        super().__init__()
        self.outgoing = outgoing
        self.layer_norm_in = LayerNorm(c_z)
        self.linear_a_p = Linear(c_z, c_hidden)
        self.linear_a_g = Linear(c_z, c_hidden, init="gating")
        self.linear_b_p = Linear(c_z, c_hidden)
        self.linear_b_g = Linear(c_z, c_hidden, init="gating")
        self.linear_g = Linear(c_z, c_z, init="gating")
        self.layer_norm_out = LayerNorm(c_hidden)
        self.linear_z = Linear(c_hidden, c_z, init="final")

    def project(
        self, z: torch.Tensor, pair_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [*, I, J, C_z], pair_mask [*, I, J] -> a, b [*, I, J, c] (gated, masked), g [*, I, J, C_z].
        Per element of z: any block of z gives the matching block of a, b and g."""
        z = self.layer_norm_in(z)
        mask = pair_mask[..., None].to(z.dtype)
        a = mask * torch.sigmoid(self.linear_a_g(z)) * self.linear_a_p(z)
        b = mask * torch.sigmoid(self.linear_b_g(z)) * self.linear_b_p(z)
        return a, b, torch.sigmoid(self.linear_g(z))

    def combine(self, a: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Outgoing: a [*, I, K, c], b [*, J, K, c]; incoming: a [*, K, I, c], b [*, K, J, c];
        g [*, I, J, C_z] -> z update [*, I, J, C_z]. I and J need not be equal (DAP shards)."""
        if a.dtype == torch.float16:
            # a sum over N_res products can exceed fp16's 65504; form it in fp32 (as OpenFold does)
            with torch.autocast(device_type=a.device.type, enabled=False):
                p = self._triangle_sum(a.float(), b.float())
        else:
            p = self._triangle_sum(a, b)
        return g * self.linear_z(self.layer_norm_out(p))

    def _triangle_sum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.outgoing:
            return torch.einsum("...ikc,...jkc->...ijc", a, b)
        return torch.einsum("...kic,...kjc->...ijc", a, b)

    def forward(self, z: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """z [*, N_res, N_res, C_z], pair_mask [*, N_res, N_res] -> [*, N_res, N_res, C_z]."""
        return self.combine(*self.project(z, pair_mask))


class TriangleAttention(nn.Module):
    """Algorithms 13 (around the starting node) and 14 (around the ending node).

    Starting node, for each row i: queries z_ij, keys and values z_ik, bias b_jk = LinearNoBias(z_jk):
        z_ij <- GatedAttention_k(q_ij, k_ik, v_ik, bias b_jk^h + mask_ik)
    Ending node = the starting-node computation on the transposed pair representation (z_ij -> z_ji)
    with its own weights, transposed back (OpenFold's formulation; equal to Algorithm 14).
    `orient`/`orient_mask` do that transpose (identity for the starting node).

    Chunked (chunk_size) over the rows i of the oriented representation.
    """

    def __init__(self, c_z: int, c_hidden: int = 32, no_heads: int = 4, starting: bool = True):
        super().__init__()
        self.starting = starting
        self.layer_norm = LayerNorm(c_z)
        self.linear = Linear(c_z, no_heads, bias=False, init="normal")
        self.mha = Attention(c_z, c_z, c_z, c_hidden, no_heads)
        self.chunk_size: int | None = None

    def orient(self, x: torch.Tensor) -> torch.Tensor:
        """Pair tensor [*, I, J, C] -> the same for the starting node, [*, J, I, C] for the ending node."""
        return x if self.starting else x.transpose(-2, -3)

    def orient_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Pair mask [*, I, J] -> the same for the starting node, [*, J, I] for the ending node."""
        return mask if self.starting else mask.transpose(-1, -2)

    def triangle_bias(self, z: torch.Tensor) -> torch.Tensor:
        """Oriented z [*, I, J, C_z] -> bias [*, H, I, J]. Per element: rows of z give rows of the bias."""
        return self._bias(self.layer_norm(z))

    def attend(self, z: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Oriented z [*, I, J, C_z] (I may be a shard of rows), bias [*, H, J, J] (all rows j, k),
        oriented mask [*, I, J] -> oriented update [*, I, J, C_z]."""
        return self._attend(self.layer_norm(z), bias, mask)

    def _bias(self, z_normed: torch.Tensor) -> torch.Tensor:
        return self.linear(z_normed).movedim(-1, -3)

    def _attend(self, z_normed: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inputs = {"x": z_normed, "mask": mask, "bias": bias.unsqueeze(-4)}  # bias [*, 1, H, J, K]: shared by rows
        return _maybe_chunked(self._attend_rows, inputs, self.chunk_size, no_batch_dims=z_normed.dim() - 2)

    def _attend_rows(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [*, J, C_z], mask [*, K], bias [*, H, J, K] (`*` includes the row dim i)."""
        return self.mha(x, x, [mask_bias(mask)[..., None, None, :], bias])

    def forward(self, z: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """z [*, N_res, N_res, C_z], pair_mask [*, N_res, N_res] -> [*, N_res, N_res, C_z].

        = orient(attend(orient(z), triangle_bias(orient(z)), orient_mask(pair_mask))), with the
        LayerNorm computed once instead of in both pieces (same numbers, one activation fewer)."""
        z_normed = self.layer_norm(self.orient(z))
        return self.orient(self._attend(z_normed, self._bias(z_normed), self.orient_mask(pair_mask)))


class EvoformerBlock(nn.Module):
    """Algorithm 6, lines 2-11 (one block), in OpenFold's order:

        m += DropoutRowwise_0.15(MSARowAttentionWithPairBias(m, z))
        m += MSAColumnAttention(m)
        m += MSATransition(m)
        z += OuterProductMean(m)
        z += DropoutRowwise_0.25(TriangleMultiplicationOutgoing(z))
        z += DropoutRowwise_0.25(TriangleMultiplicationIncoming(z))
        z += DropoutRowwise_0.25(TriangleAttentionStartingNode(z))
        z += DropoutColumnwise_0.25(TriangleAttentionEndingNode(z))
        z += PairTransition(z)

    Row-wise dropout shares its mask over the rows (mask [*, 1, N, C]), column-wise over the
    columns (mask [*, N, 1, C]); Supplement 1.11.6.
    """

    def __init__(
        self,
        c_m: int,
        c_z: int,
        c_hidden_msa_att: int = 32,
        no_heads_msa: int = 8,
        c_hidden_opm: int = 32,
        c_hidden_mul: int = 128,
        c_hidden_pair_att: int = 32,
        no_heads_pair: int = 4,
        transition_n: int = 4,
        msa_dropout: float = 0.15,
        pair_dropout: float = 0.25,
    ):
        super().__init__()
        self.msa_att_row = MSARowAttentionWithPairBias(c_m, c_z, c_hidden_msa_att, no_heads_msa)
        self.msa_att_col = self.column_attention(c_m, c_hidden_msa_att, no_heads_msa)
        self.msa_transition = Transition(c_m, transition_n)
        self.outer_product_mean = OuterProductMean(c_m, c_z, c_hidden_opm)
        self.tri_mul_out = TriangleMultiplication(c_z, c_hidden_mul, outgoing=True)
        self.tri_mul_in = TriangleMultiplication(c_z, c_hidden_mul, outgoing=False)
        self.tri_att_start = TriangleAttention(c_z, c_hidden_pair_att, no_heads_pair, starting=True)
        self.tri_att_end = TriangleAttention(c_z, c_hidden_pair_att, no_heads_pair, starting=False)
        self.pair_transition = Transition(c_z, transition_n)
        self.msa_dropout_row = SharedDropout(msa_dropout, shared_dim=-3)
        self.pair_dropout_row = SharedDropout(pair_dropout, shared_dim=-3)
        self.pair_dropout_col = SharedDropout(pair_dropout, shared_dim=-2)

    def column_attention(self, c_m: int, c_hidden: int, no_heads: int) -> nn.Module:
        """The MSA column attention of line 3 (Algorithm 8; the extra-MSA block's is global)."""
        return MSAColumnAttention(c_m, c_hidden, no_heads)

    def forward(
        self, m: torch.Tensor, z: torch.Tensor, msa_mask: torch.Tensor, pair_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """m [*, S, N_res, C_m], z [*, N_res, N_res, C_z], msa_mask [*, S, N_res],
        pair_mask [*, N_res, N_res] -> (m, z) of the same shapes.

        With autograd off, the residual adds happen in place (m and z are then overwritten)."""
        m = residual(m, self.msa_dropout_row(self.msa_att_row(m, z, msa_mask)))
        m = residual(m, self.msa_att_col(m, msa_mask))
        m = residual(m, self.msa_transition(m, msa_mask))
        z = residual(z, self.outer_product_mean(m, msa_mask))
        z = residual(z, self.pair_dropout_row(self.tri_mul_out(z, pair_mask)))
        z = residual(z, self.pair_dropout_row(self.tri_mul_in(z, pair_mask)))
        z = residual(z, self.pair_dropout_row(self.tri_att_start(z, pair_mask)))
        z = residual(z, self.pair_dropout_col(self.tri_att_end(z, pair_mask)))
        z = residual(z, self.pair_transition(z, pair_mask))
        return m, z


class EvoformerStack(nn.Module):
    """Algorithm 6 (N blocks, `blocks`), then the single representation from the first MSA row:
    s_i = Linear(m_1i) (Algorithm 2 line 11, Supplement 1.6)."""

    def __init__(self, n_blocks: int, c_m: int, c_z: int, c_s: int, **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(EvoformerBlock(c_m, c_z, **block_kwargs) for _ in range(n_blocks))
        self.linear_s = Linear(c_m, c_s)

    def forward(
        self, m: torch.Tensor, z: torch.Tensor, msa_mask: torch.Tensor, pair_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """m [*, S, N_res, C_m], z [*, N_res, N_res, C_z], masks -> (m, z, s [*, N_res, C_s])."""
        for block in self.blocks:
            m, z = block(m, z, msa_mask, pair_mask)
        return m, z, self.linear_s(m[..., 0, :, :])
