"""The decoder's loss: next-token cross entropy, either on full logits or fused with the output
projection and computed chunk by chunk over the tokens, so that the [B, S, V] logits never exist.

Shapes: N = B * S tokens, D model width, V vocabulary (V_r: this rank's vocabulary shard under
tensor parallelism).

Fused path (`model.loss_chunk`; the idea of Mishra's efficient_cross_entropy and Liger-Kernel's
fused linear cross entropy, Hsu et al. 2024, "Liger Kernel: Efficient Triton Kernels for LLM
Training", sec. 3.2): the output layer is replaced by a `LinearCrossEntropyHead` (same parameter
`output.weight`), whose forward returns `DeferredLogits` (its input h [B, S, D] and the head) instead
of logits. The loss then runs over chunks of C tokens: logits_c = h_c W^T [C, V] (in the compute
dtype, as autocast would), log-sum-exp and target logit in fp32, and, since the loss is the last
operation, the gradients at once:

    dlogits_c = softmax(logits_c) - onehot(y_c)       (rows of ignored targets: 0)
    dh_c = dlogits_c W        [C, D]      dW += dlogits_c^T h_c      [V, D], accumulated in fp32

The backward only scales dh and dW by the incoming gradient (the trainer's 1 / tokens and the fp16
loss scale). Memory: O(C V) transient instead of the plain path's several [N, V] fp32 tensors (the
logits, their log-softmax kept for backward, its gradient); dh [N, D] and dW [V, D] are held from
the loss to the backward (dW becomes the weight's .grad). The same three N x V x D matmuls as the
plain path.

Under tensor parallelism the head's weight is sharded over the vocabulary (Megatron-LM's vocabulary-
parallel cross entropy, Shoeybi et al. 2019, sec. 3): each rank computes logits [C, V_r] of its
shard; the row maxima are all-reduced (max), the sums of exponentials and the target logits (sum),
and dh's partial products are all-reduced once after the last chunk; no rank holds V columns.

On CUDA, when Liger-Kernel is installed and the head is not vocabulary-parallel, its Triton
`LigerFusedLinearCrossEntropyFunction` does the same computation (fp32 gradient accumulation).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
# Default chunk (model.loss_chunk=-1): 1024 tokens, fewer for a vocabulary so large that a chunk's
# fp32 logits would pass 2^26 elements (256 MiB), never under 128. Each chunk reads and writes the
# fp32 dW once (V x D x 8 bytes), so small chunks cost bandwidth: on a 2-core AVX-512 CPU at
# N = 2048, D = 512, V = 32000, chunks of 256 tokens were slower than the plain loss in bf16 and
# 1024 were not (scripts/bench/lm_vs_hf.py, docs/benchmarks.md).
DEFAULT_CHUNK_ROWS = 1024
DEFAULT_CHUNK_LOGITS = 2**26


def default_chunk(vocab: int) -> int:
    """Tokens per chunk when model.loss_chunk=-1 (see DEFAULT_CHUNK_ROWS)."""
    return max(128, min(DEFAULT_CHUNK_ROWS, DEFAULT_CHUNK_LOGITS // max(1, vocab)))


def compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would give F.linear here (the hidden states' own dtype without it)."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum over valid tokens of -log softmax(h W^T)[y]; gradients computed in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, dtype, group, vocab_start):
        # hidden [N, D], weight [V_r, D] (this rank's rows: global ids vocab_start + [0, V_r)),
        # targets [N] int64 (IGNORE_INDEX: not scored)
        n, v_local = hidden.shape[0], weight.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for start in range(0, n, chunk):
            h = hidden[start:start + chunk].to(dtype)
            y = targets[start:start + chunk]
            logits = (h @ w.T).float()  # [C, V_r]
            rows = torch.arange(h.shape[0], device=h.device)
            local_y = y - vocab_start
            on_rank = (local_y >= 0) & (local_y < v_local)  # ignored targets (-100) fall outside too
            safe_y = torch.where(on_rank, local_y, 0)
            target_logit = torch.where(on_rank, logits[rows, safe_y], 0.0)
            row_max = logits.amax(dim=1)
            if group is not None:
                dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            logits.sub_(row_max[:, None]).exp_()  # exp(logits - max), in place: the softmax numerator
            sums = torch.stack([logits.sum(dim=1), target_logit])
            if group is not None:
                dist.all_reduce(sums, group=group)
            valid = y != IGNORE_INDEX
            lse = row_max + sums[0].log()
            loss += torch.where(valid, lse - sums[1], 0.0).sum()
            if not (need_h or need_w):
                continue
            # dlogits = softmax - onehot(y), zero on ignored rows
            logits.mul_(torch.where(valid, 1.0 / sums[0], 0.0)[:, None])
            logits[rows, safe_y] -= on_rank.to(logits.dtype)
            g = logits.to(dtype)
            if need_h:
                grad_h[start:start + chunk] = g @ w
            if need_w:
                if dtype == torch.float32:
                    grad_w.addmm_(g.T, h)
                else:
                    grad_w += g.T @ h
        if need_h and group is not None:
            dist.all_reduce(grad_h, group=group)  # each rank's vocabulary shard contributed a part
        # kept as attributes, not save_for_backward: they are results, and activation offloading
        # (save_on_cpu) must not move the future weight gradient to the host and back
        ctx.grads = (grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("the fused linear cross entropy was already backpropagated; its gradients are "
                               "computed in the forward and released by the first backward that does not retain the graph")
        grad_h, grad_w = ctx.grads
        if _keep_graph():  # run again later (zero-bubble pipeline schedules: once for dh, once for dW): scaled copies
            grad_h = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
            grad_w = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        else:  # last use: scaled in place, no reference kept, so dW becomes the weight's .grad without a copy
            ctx.grads = None
            if grad_h is not None:
                grad_h.mul_(grad_loss.to(grad_h.dtype))
            if grad_w is not None:
                grad_w = grad_w.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None, None


def _keep_graph() -> bool:
    """Whether the running backward retains the graph (True, the safe answer, where torch cannot say)."""
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep is None else keep()


def liger_available(device: torch.device) -> bool:
    """Liger-Kernel's Triton fused linear cross entropy can run here: installed, on CUDA."""
    return device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def _liger_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX, reduction="sum",
                                            accum_dtype=torch.float32)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                         group: dist.ProcessGroup | None = None, vocab_start: int = 0,
                         backend: str = "auto") -> torch.Tensor:
    """Summed next-token cross entropy of the logits hidden @ weight^T, never materialised whole.

    hidden [*, D] (float), weight [V_r, D] (this rank's vocabulary rows, global ids vocab_start
    + [0, V_r); the whole vocabulary without tensor parallelism), targets [*] int64 class ids
    (IGNORE_INDEX = -100: not scored); chunk: tokens per chunk (>= 1); group: the tensor-parallel
    group the vocabulary is sharded over (None: not sharded). Returns the fp32 scalar
    sum over scored tokens of logsumexp(logits) - logits[target], equal to
    F.cross_entropy(hidden @ weight.T, targets, reduction="sum") up to summation order.
    Matmuls run in autocast's dtype when autocast is on (as F.linear would), the softmax in fp32.
    backend: "torch" (chunked torch code, any device), "liger" (Liger-Kernel, CUDA or Triton's
    interpreter; no vocabulary sharding), "auto" (liger on CUDA when installed and not sharded).
    Raises ValueError for chunk < 1 or a sharded liger request.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 token, got {chunk}")
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if backend == "auto":
        backend = "liger" if group is None and liger_available(hidden.device) else "torch"
    if backend == "liger":
        if group is not None:
            raise ValueError("Liger-Kernel's fused linear cross entropy has no vocabulary-parallel form")
        return _liger_linear_cross_entropy(hidden, weight, targets)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk, compute_dtype(hidden), group, vocab_start)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy of full logits [*, V] (in fp32) over the scored targets [*]."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="sum", ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class DeferredLogits:
    """What a LinearCrossEntropyHead returns instead of logits: its input and itself, so the loss
    can compute logits = hidden @ head.weight^T chunk by chunk. hidden [B, S, D]."""

    hidden: torch.Tensor
    head: "LinearCrossEntropyHead"

    def cross_entropy(self, targets: torch.Tensor) -> torch.Tensor:
        """Summed cross entropy over the scored targets [B, S] (fp32 scalar)."""
        return self.head.cross_entropy(self.hidden, targets)

    def logits(self) -> torch.Tensor:
        """The full logits [B, S, V] (for evaluation and tests; the training loss never forms them)."""
        return self.head.logits(self.hidden)


class LinearCrossEntropyHead(nn.Linear):
    """The decoder's output layer (weight [V, D], no bias) fused with its loss: forward(h [B, S, D])
    returns DeferredLogits, and `cross_entropy(h, targets)` computes the summed loss with
    `linear_cross_entropy` over chunks of `chunk` tokens. Under tensor parallelism (`shard_vocabulary`)
    the weight is a DTensor sharded over the vocabulary on the tp mesh."""

    def __init__(self, in_features: int, out_features: int, chunk: int, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.chunk = chunk
        self.tp_mesh = None  # set by shard_vocabulary
        self.sequence_sharded = False  # under parallel.tp_sp its input is this rank's positions

    @classmethod
    def replacing(cls, linear: nn.Linear, chunk: int) -> "LinearCrossEntropyHead":
        """A head holding `linear`'s own weight Parameter (ties and initial values kept)."""
        if type(linear) is not nn.Linear or linear.bias is not None:
            raise ValueError(f"the fused loss replaces a bias-free nn.Linear output layer, got {linear!r}")
        head = cls(linear.in_features, linear.out_features, chunk, device="meta")
        head.weight = linear.weight
        return head

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk={self.chunk}" + (", vocabulary-parallel" if self.tp_mesh is not None else "")

    def forward(self, hidden: torch.Tensor) -> DeferredLogits:
        return DeferredLogits(hidden, self)

    def _local(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(whole hidden states as a plain tensor, this rank's weight rows, their first vocabulary id)."""
        from torch.distributed.tensor import DTensor, Shard

        if self.sequence_sharded and not isinstance(hidden, DTensor):
            hidden = DTensor.from_local(hidden, self.tp_mesh, [Shard(1)])
        if isinstance(hidden, DTensor):  # sequence-sharded under parallel.tp_sp: gather the sequence
            hidden = hidden.full_tensor()  # its backward keeps this rank's positions of the (whole) dh
        weight = self.weight
        if isinstance(weight, DTensor):
            if self.tp_mesh is None or weight.device_mesh != self.tp_mesh:
                raise RuntimeError(
                    f"the fused loss head's weight is a DTensor sharded over {weight.device_mesh} when the loss runs, "
                    "not the tensor-parallel vocabulary shard: a data-parallel wrapper (FSDP2) has resharded it after "
                    "the forward. The module holding the head must keep its parameters gathered after the forward "
                    "(fully_shard(..., reshard_after_forward=False) on the root, as memtrain.distributed.fsdp does)")
            local = weight.to_local()
            return hidden, local, self.tp_mesh.get_local_rank() * local.shape[0]
        return hidden, weight, 0

    def cross_entropy(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden, weight, start = self._local(hidden)
        group = self.tp_mesh.get_group() if self.tp_mesh is not None else None
        return linear_cross_entropy(hidden, weight, targets, self.chunk, group=group, vocab_start=start)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        hidden, _, _ = self._local(hidden)
        weight = self.weight.full_tensor() if isinstance(self.weight, DTensor) else self.weight
        return F.linear(hidden, weight)


def shard_vocabulary(head: LinearCrossEntropyHead, tp_mesh, sequence_sharded: bool) -> None:
    """Tensor parallelism for the fused head: its weight becomes a DTensor sharded over the
    vocabulary (rows) on `tp_mesh` (V divisible by the tp degree: the shards are equal), and its loss
    the vocabulary-parallel one. sequence_sharded: its input is [B, S/tp, D] (Megatron sequence
    parallelism), gathered along the sequence for the loss."""
    from torch.distributed.tensor import Shard, distribute_tensor

    head.weight = nn.Parameter(distribute_tensor(head.weight.data, tp_mesh, [Shard(0)]), requires_grad=head.weight.requires_grad)
    head.tp_mesh, head.sequence_sharded = tp_mesh, sequence_sharded


def loss_fn(outputs: torch.Tensor | DeferredLogits, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross entropy (in fp32) and the number of scored tokens, from full logits
    [B, S, V] or from a fused head's DeferredLogits.

    The trainer divides by the token count of the whole optimizer step, so gradient accumulation
    gives the same gradient as one large batch."""
    if isinstance(outputs, DeferredLogits):
        loss = outputs.cross_entropy(targets)
    else:
        loss = cross_entropy(outputs, targets)
    return loss, (targets != IGNORE_INDEX).sum()
