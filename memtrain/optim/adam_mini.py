"""Adam-mini (Zhang et al. 2024, "Adam-mini: Use Fewer Learning Rates To Gain More",
Algorithm 1): Adam's first moment per element, but one second moment per block of the
Hessian's block-diagonal structure (sec. 2.3, "partition principle"):

    query and key projections   one v per attention head: W_q [H*Dh, D] viewed as [H, Dh*D]
                                (W_k by key/value head under grouped-query attention)
    other matrices              one v per output neuron (per row of the [out, in] weight):
                                value, output projection, feed-forward
    embedding and output layer  a v per element, i.e. AdamW (the authors' implementation keeps
                                Adam for these: their rows are tokens, updated rarely)
    vectors (norms, biases)     one v for the whole tensor

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    v_{t,b} = beta2 v_{t-1,b} + (1 - beta2) mean_{i in b} g_{t,i}^2
    theta_t = theta_{t-1} - lr * (m_t / (1 - beta1^t)) / (sqrt(v_{t,b} / (1 - beta2^t)) + eps)
              - lr * wd * theta_{t-1}

The block of each parameter comes with its param group: `build_param_groups` reads the model
(modules with `wq`, `wk` Linear children and `n_heads`, `n_kv_heads`, as memtrain's GPT attention)
and the names of the embedding/output modules (`adamw_names`).

Under FSDP2 a parameter is a DTensor sharded on rows. Per-row and per-tensor statistics are torch
reductions on it (the per-tensor one reduces across the shards). Per-head statistics need whole
heads, which a shard boundary may cut: the per-row means (R numbers) are gathered, the H head
means computed on every rank alike (a plain [H] state) and spread back over this rank's rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from memtrain.optim._dtensor import settle
from memtrain.optim._foreach import buckets, local, resolve

ROW, HEAD, FULL, TENSOR = "row", "head", "full", "tensor"


def partition(model: nn.Module, adamw_names: tuple[str, ...] = ("tok_embeddings", "output")) -> dict[int, tuple[str, int]]:
    """id(param) -> (block kind, heads); heads only for kind 'head'."""
    kinds: dict[int, tuple[str, int]] = {}
    for name, module in model.named_modules():
        if hasattr(module, "wq") and hasattr(module, "wk") and hasattr(module, "n_heads"):
            kinds[id(module.wq.weight)] = (HEAD, module.n_heads)
            kinds[id(module.wk.weight)] = (HEAD, getattr(module, "n_kv_heads", module.n_heads))
        if name.rpartition(".")[2] in adamw_names:
            for p in module.parameters(recurse=False):
                kinds[id(p)] = (FULL, 0)
    for p in model.parameters():
        kinds.setdefault(id(p), (ROW, 0) if p.ndim >= 2 else (TENSOR, 0))
    return kinds


def _head_mean_sq(g: torch.Tensor, heads: int) -> torch.Tensor:
    """mean of g^2 over each head's rows and all columns: [H] (plain tensor, same on every rank)."""
    rows = (g * g).mean(dim=tuple(range(1, g.ndim)))
    if isinstance(rows, DTensor):
        rows = rows.full_tensor()
    return rows.view(heads, -1).mean(dim=1)


def _per_row(v_head: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[H] -> a tensor broadcastable against `like` [R, ...] (each head's v on its rows), as a
    DTensor with like's placements when `like` is one (this rank's rows, no communication)."""
    rows = v_head.repeat_interleave(like.shape[0] // v_head.numel()).view(-1, *([1] * (like.ndim - 1)))
    if isinstance(like, DTensor):
        return distribute_tensor(rows, like.device_mesh, like.placements, src_data_rank=None)
    return rows


class AdamMini(torch.optim.Optimizer):
    """foreach (default None: on): the moment, weight-decay and parameter updates as multi-tensor ops
    over buckets of parameters (memtrain.optim._foreach); the per-block statistics stay per
    parameter. The same operations as the per-parameter loop (foreach=False)."""

    def __init__(self, params, lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, adamw_names: tuple[str, ...] = ("tok_embeddings", "output"),
                 foreach: bool | None = None):
        if lr <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam-mini needs lr > 0 and betas in [0, 1), got lr={lr}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      block=ROW, heads=0, foreach=foreach))

    @staticmethod
    def build_param_groups(model: nn.Module, weight_decay: float, adamw_names=("tok_embeddings", "output")) -> list[dict]:
        """One group per (block kind, heads); weight decay on matrices only, as memtrain's other
        optimizers."""
        kinds = partition(model, tuple(adamw_names))
        groups: dict[tuple[str, int], list] = {}
        for p in model.parameters():
            if p.requires_grad:
                groups.setdefault(kinds[id(p)], []).append(p)
        return [{"params": ps, "block": kind, "heads": heads,
                 "weight_decay": weight_decay if kind != TENSOR else 0.0}
                for (kind, heads), ps in groups.items()]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            kind, heads = group["block"], group["heads"]
            params = [p for p in group["params"] if p.grad is not None]
            squares = []
            for p in params:
                g = p.grad
                if kind == HEAD:
                    sq = _head_mean_sq(g, heads)
                elif kind == ROW:
                    sq = (g * g).mean(dim=tuple(range(1, g.ndim)), keepdim=True)
                elif kind == TENSOR:
                    sq = settle((g * g).mean())
                else:
                    sq = g * g
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(sq)
                state["step"] += 1
                squares.append(sq)
            step = self._foreach_step if resolve(group["foreach"]) else self._single_tensor_step
            step(params, squares, group)
        return loss

    def _single_tensor_step(self, params: list[torch.Tensor], squares: list[torch.Tensor], group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd, kind = group["lr"], group["eps"], group["weight_decay"], group["block"]
        for p, sq in zip(params, squares):
            state = self.state[p]
            t = float(state["step"])
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.lerp_(sq, 1 - beta2)
            denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
            if kind == HEAD:
                denom = _per_row(denom, p)
            if wd:
                p.mul_(1 - lr * wd)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))

    def _foreach_step(self, params: list[torch.Tensor], squares: list[torch.Tensor], group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd, kind = group["lr"], group["eps"], group["weight_decay"], group["block"]
        for ids in buckets(params):
            states = [self.state[params[i]] for i in ids]
            steps = [float(s["step"]) for s in states]
            ps = [local(params[i]) for i in ids]
            torch._foreach_lerp_([local(s["exp_avg"]) for s in states], [local(params[i].grad) for i in ids], 1 - beta1)
            vs = [local(s["exp_avg_sq"]) for s in states]
            torch._foreach_lerp_(vs, [local(squares[i]) for i in ids], 1 - beta2)
            denoms = torch._foreach_div(vs, [1 - beta2**t for t in steps])
            torch._foreach_sqrt_(denoms)
            torch._foreach_add_(denoms, eps)
            if kind == HEAD:  # [H] -> this rank's rows (the head of each row), as the parameter's local shard
                denoms = [local(_per_row(d, params[i])) for d, i in zip(denoms, ids)]
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            # denominators broadcast against the parameters (a row's, a tensor's): per pair, as addcdiv_ does
            torch._foreach_addcdiv_(ps, [local(s["exp_avg"]) for s in states], denoms, [-lr / (1 - beta1**t) for t in steps])


def block_count(kind: str, heads: int, shape: torch.Size) -> int:
    """How many second-moment entries Adam-mini keeps for a parameter of this shape."""
    return {HEAD: heads, ROW: shape[0] if shape else 1, TENSOR: 1, FULL: math.prod(shape)}[kind]
