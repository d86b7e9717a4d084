"""What one Evoformer block saves for its backward pass, and what it costs in time, side by side:
memtrain's EvoformerBlock under each of its options (attention backend, chunking, dropout,
precision) vs a straightforward reference block written below from the supplement's algorithms
(Algorithms 6-15, the gated attention of 1.11.3: one plain op after another, no chunking), on the
same weights and inputs; and memtrain's block chunked vs unchunked.

Saved bytes are counted with torch.autograd.graph.saved_tensors_hooks: every tensor autograd saves
during the forward, each storage once (views share it), leaving out the parameters and the block's
inputs (m, z, the masks), which exist whatever the block does. Under bf16 autocast the weights'
bf16 copies are counted (both blocks make them). Time: forward + backward on this device, the
fastest of --repeats after one warm-up (the least disturbed by other work on a shared machine), the
variants interleaved so that drift hits all alike.

    python scripts/bench/evoformer_memory.py                       # sizes and options below, CPU
    python scripts/bench/evoformer_memory.py --sizes 64x128 --repeats 5 --markdown

The published widths (c_m 256, c_z 128, 8 x 32 MSA heads, 4 x 32 pair heads, c_opm 32, c_mul 128,
transitions x4). Before measuring, the script checks that the reference computes what memtrain's
block computes (dropout off, fp32).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import platform
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from memtrain.models.alphafold.evoformer import EvoformerBlock
from memtrain.models.alphafold.primitives import set_attention_backend, set_chunk_size

WIDTHS = dict(c_m=256, c_z=128, c_hidden_msa_att=32, no_heads_msa=8, c_hidden_opm=32, c_hidden_mul=128,
              c_hidden_pair_att=32, no_heads_pair=4, transition_n=4)
MIB = 2**20


# -- the reference block --------------------------------------------------------------------------------


def layer_norm(x, ln):
    return F.layer_norm(x.float(), ln.normalized_shape, ln.weight, ln.bias, ln.eps).to(x.dtype)


def linear(x, lin):
    return F.linear(x, lin.weight, lin.bias)


def gated_attention(x, att, biases):
    """Supplement 1.11.3: x [*, Q, C] -> [*, Q, C]; biases broadcast to [*, H, Q, K]."""
    h, c = att.no_heads, att.c_hidden
    q = linear(x, att.linear_q).unflatten(-1, (h, c)).transpose(-2, -3) / math.sqrt(c)  # [*, H, Q, c]
    k = linear(x, att.linear_k).unflatten(-1, (h, c)).transpose(-2, -3)
    v = linear(x, att.linear_v).unflatten(-1, (h, c)).transpose(-2, -3)
    logits = q @ k.transpose(-1, -2)
    for b in biases:
        logits = logits + b
    a = torch.softmax(logits.float(), dim=-1).to(v.dtype)
    o = (a @ v).transpose(-2, -3)  # [*, Q, H, c]
    g = torch.sigmoid(linear(x, att.linear_g)).unflatten(-1, (h, c))
    return linear((o * g).flatten(-2), att.linear_o)


def mask_bias(mask):
    return 1e9 * (mask - 1.0)


def row_attention(mod, m, z, msa_mask):  # Algorithm 7
    bias = linear(layer_norm(z, mod.layer_norm_z), mod.linear_z).movedim(-1, -3).unsqueeze(-4)  # [*, 1, H, N, N]
    return gated_attention(layer_norm(m, mod.layer_norm_m), mod.mha, [mask_bias(msa_mask)[..., :, None, None, :], bias])


def column_attention(mod, m, msa_mask):  # Algorithm 8, on the transposed MSA
    m_t = layer_norm(m.transpose(-2, -3), mod.layer_norm_m)
    out = gated_attention(m_t, mod.mha, [mask_bias(msa_mask.transpose(-1, -2))[..., :, None, None, :]])
    return out.transpose(-2, -3)


def transition(mod, x, mask):  # Algorithms 9, 15
    x = layer_norm(x, mod.layer_norm)
    return linear(torch.relu(linear(x, mod.linear_1)), mod.linear_2) * mask[..., None]


def outer_product_mean(mod, m, msa_mask):  # Algorithm 10 (the division after the Linear, as AF2's code)
    ln = layer_norm(m, mod.layer_norm)
    a = linear(ln, mod.linear_1) * msa_mask[..., None]
    b = linear(ln, mod.linear_2) * msa_mask[..., None]
    outer = torch.einsum("...sic,...sjd->...ijcd", a, b).flatten(-2)
    norm = torch.einsum("...si,...sj->...ij", msa_mask, msa_mask)[..., None]
    return linear(outer, mod.linear_out) / (norm + mod.eps)


def triangle_multiplication(mod, z, pair_mask):  # Algorithms 11, 12
    z = layer_norm(z, mod.layer_norm_in)
    mask = pair_mask[..., None]
    a = mask * torch.sigmoid(linear(z, mod.linear_a_g)) * linear(z, mod.linear_a_p)
    b = mask * torch.sigmoid(linear(z, mod.linear_b_g)) * linear(z, mod.linear_b_p)
    p = torch.einsum("...ikc,...jkc->...ijc", a, b) if mod.outgoing else torch.einsum("...kic,...kjc->...ijc", a, b)
    return torch.sigmoid(linear(z, mod.linear_g)) * linear(layer_norm(p, mod.layer_norm_out), mod.linear_z)


def triangle_attention(mod, z, pair_mask):  # Algorithms 13, 14 (14 on the transposed pair)
    if not mod.starting:
        z, pair_mask = z.transpose(-2, -3), pair_mask.transpose(-1, -2)
    z = layer_norm(z, mod.layer_norm)
    bias = linear(z, mod.linear).movedim(-1, -3).unsqueeze(-4)  # [*, 1, H, N, N]
    out = gated_attention(z, mod.mha, [mask_bias(pair_mask)[..., :, None, None, :], bias])
    return out if mod.starting else out.transpose(-2, -3)


def dropout(x, p, shared_dim):
    if p == 0.0:
        return x
    shape = list(x.shape)
    shape[shared_dim] = 1
    return x * F.dropout(x.new_ones(shape), p=p, training=True)


def reference_block(blk: EvoformerBlock, m, z, msa_mask, pair_mask):
    """Algorithm 6 in OpenFold's order, reading memtrain's block's weights."""
    p_m, p_z = blk.msa_dropout_row.p, blk.pair_dropout_row.p
    m = m + dropout(row_attention(blk.msa_att_row, m, z, msa_mask), p_m, -3)
    m = m + column_attention(blk.msa_att_col, m, msa_mask)
    m = m + transition(blk.msa_transition, m, msa_mask)
    z = z + outer_product_mean(blk.outer_product_mean, m, msa_mask)
    z = z + dropout(triangle_multiplication(blk.tri_mul_out, z, pair_mask), p_z, -3)
    z = z + dropout(triangle_multiplication(blk.tri_mul_in, z, pair_mask), p_z, -3)
    z = z + dropout(triangle_attention(blk.tri_att_start, z, pair_mask), p_z, -3)
    z = z + dropout(triangle_attention(blk.tri_att_end, z, pair_mask), p_z, -2)
    z = z + transition(blk.pair_transition, z, pair_mask)
    return m, z


# -- measurement ----------------------------------------------------------------------------------------


def saved_bytes(fn, exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while fn() runs, other than `exclude`'s."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    total = sum(seen.values())
    del out
    return total


def make_inputs(b: int, s: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(b, s, n, WIDTHS["c_m"], generator=g).requires_grad_()
    z = torch.randn(b, n, n, WIDTHS["c_z"], generator=g).requires_grad_()
    msa_mask = (torch.rand(b, s, n, generator=g) > 0.1).float()
    pair_mask = torch.ones(b, n, n)
    return m, z, msa_mask, pair_mask


def build(backend: str, chunk: int | None, dropout_on: bool) -> EvoformerBlock:
    torch.manual_seed(0)
    rates = dict(msa_dropout=0.15, pair_dropout=0.25) if dropout_on else dict(msa_dropout=0.0, pair_dropout=0.0)
    blk = EvoformerBlock(**WIDTHS, **rates).train()
    with torch.no_grad():  # give the zero-initialised final layers weights, so every path carries signal
        for name, p in blk.named_parameters():
            if p.dim() == 2 and p.abs().sum() == 0:
                p.normal_(0.0, 0.02)
    set_attention_backend(blk, backend)
    set_chunk_size(blk, chunk)
    return blk


def run_step(fn, dtype):
    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            m, z = fn()
        (m.float().square().mean() + z.float().square().mean()).backward()
    return step


def timed(steps: dict[str, callable], repeats: int) -> dict[str, float]:
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def check_reference_matches() -> float:
    blk = build("naive", None, False)
    m, z, msa_mask, pair_mask = make_inputs(1, 8, 16)
    with torch.no_grad():
        ours, ref = blk(m, z, msa_mask, pair_mask), reference_block(blk, m, z, msa_mask, pair_mask)
    err = max((a - b).abs().max().item() for a, b in zip(ours, ref))
    if err > 1e-3:
        raise SystemExit(f"the reference block disagrees with memtrain's (max abs difference {err:.2e})")
    return err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["16x32", "32x64", "64x128"], help="N_seq x N_res")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--backends", nargs="+", default=["naive", "sdpa"])
    parser.add_argument("--chunks", nargs="+", default=["none", "64"], help="chunk sizes ('none': unchunked)")
    parser.add_argument("--dropout", nargs="+", default=["off", "on"])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (0: saved bytes only)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables for docs/benchmarks.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    console = Console(width=200)
    err = check_reference_matches()
    console.print(f"reference == memtrain block (fp32, dropout off): max |difference| {err:.1e}")
    header = (f"{datetime.date.today()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads")
    rows, chunk_rows = [], []
    for size, b, prec in itertools.product(args.sizes, args.batch, args.precisions):
        s, n = map(int, size.split("x"))
        dtype = getattr(torch, prec)
        inputs = make_inputs(b, s, n)
        for dropout_on in (d == "on" for d in args.dropout):
            ref_blk = build("naive", None, dropout_on)
            ref_fn = lambda blk=ref_blk: reference_block(blk, *inputs)  # noqa: E731
            ref_bytes = saved_bytes(run_fn(ref_fn, dtype), [*ref_blk.parameters(), *inputs])
            steps = {"reference": run_step(ref_fn, dtype)}
            measured = {}
            for backend, chunk in itertools.product(args.backends, args.chunks):
                chunk_size = None if chunk == "none" else int(chunk)
                blk = build(backend, chunk_size, dropout_on)
                fn = lambda blk=blk: blk(*inputs)  # noqa: E731
                measured[(backend, chunk)] = saved_bytes(run_fn(fn, dtype), [*blk.parameters(), *inputs])
                steps[f"{backend}/{chunk}"] = run_step(fn, dtype)
            times = timed(steps, args.repeats) if args.repeats > 0 else dict.fromkeys(steps, math.nan)
            for (backend, chunk), nbytes in measured.items():
                rows.append(dict(size=f"{b} x {s} x {n}", precision=prec, dropout="on" if dropout_on else "off",
                                 backend=backend, chunk=chunk, memtrain=nbytes / MIB, reference=ref_bytes / MIB,
                                 t_memtrain=times[f"{backend}/{chunk}"], t_reference=times["reference"]))
            for backend in args.backends:
                for chunk in args.chunks:
                    if chunk != "none" and "none" in args.chunks:
                        chunk_rows.append(dict(size=f"{b} x {s} x {n}", precision=prec, backend=backend, chunk=chunk,
                                               dropout="on" if dropout_on else "off",
                                               t_chunked=times[f"{backend}/{chunk}"], t_plain=times[f"{backend}/none"]))
    table = Table(title=f"Evoformer block, saved for backward and time (forward + backward): {header}")
    for col in ("B x N_seq x N_res", "precision", "dropout", "backend", "chunk", "memtrain MiB", "reference MiB",
                "ratio", "memtrain s", "reference s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["size"], r["precision"], r["dropout"], r["backend"], r["chunk"], f"{r['memtrain']:.1f}",
                      f"{r['reference']:.1f}", f"{r['memtrain'] / r['reference']:.3f}", f"{r['t_memtrain']:.3f}",
                      f"{r['t_reference']:.3f}")
    console.print(table)
    chunk_table = Table(title="memtrain's block, chunked vs unchunked (time, forward + backward)")
    for col in ("B x N_seq x N_res", "precision", "dropout", "backend", "chunk", "chunked s", "unchunked s", "ratio"):
        chunk_table.add_column(col)
    for r in chunk_rows:
        chunk_table.add_row(r["size"], r["precision"], r["dropout"], r["backend"], r["chunk"], f"{r['t_chunked']:.3f}",
                            f"{r['t_plain']:.3f}", f"{r['t_chunked'] / r['t_plain']:.3f}")
    console.print(chunk_table)
    if args.markdown:
        print(f"\n{header}\n")
        print("| B x N_seq x N_res | precision | dropout | backend | chunk | memtrain MiB | reference MiB | ratio | memtrain s | reference s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['size']} | {r['precision']} | {r['dropout']} | {r['backend']} | {r['chunk']} | {r['memtrain']:.1f} | "
                  f"{r['reference']:.1f} | {r['memtrain'] / r['reference']:.3f} | {r['t_memtrain']:.3f} | {r['t_reference']:.3f} |")
        print("\n| B x N_seq x N_res | precision | dropout | backend | chunk | chunked s | unchunked s | ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in chunk_rows:
            print(f"| {r['size']} | {r['precision']} | {r['dropout']} | {r['backend']} | {r['chunk']} | {r['t_chunked']:.3f} | "
                  f"{r['t_plain']:.3f} | {r['t_chunked'] / r['t_plain']:.3f} |")


def run_fn(fn, dtype):
    def forward():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return fn()
    return forward


if __name__ == "__main__":
    main()
