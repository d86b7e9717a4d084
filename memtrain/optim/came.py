"""CAME: Confidence-guided Adaptive Memory Efficient optimization (Luo et al. 2023, ACL,
Algorithm 1).

For a matrix gradient G [..., R, C] (factored, as Adafactor):

    r_t = beta2 r_{t-1} + (1 - beta2) mean_cols(G^2 + eps1)          [..., R]
    c_t = beta2 c_{t-1} + (1 - beta2) mean_rows(G^2 + eps1)          [..., C]
    v_t = r_t c_t / mean(r_t)                                        (rank-1 second moment)
    u_t = G / sqrt(v_t);  u_t /= max(1, RMS(u_t) / d)                (update clipping)
    m_t = beta1 m_{t-1} + (1 - beta1) u_t
    U_t = (u_t - m_t)^2                                              (instability)
    R_t = beta3 R_{t-1} + (1 - beta3) mean_cols(U_t + eps2)
    C_t = beta3 C_{t-1} + (1 - beta3) mean_rows(U_t + eps2)
    S_t = R_t C_t / mean(R_t)
    theta_t = theta_{t-1} - lr * m_t / sqrt(S_t)

(the paper writes r_t C_t / (1^T r_t) with sums: the same ratio, with means the row statistics stay
O(1)). A vector keeps a full second moment and takes m_t as its update, as the authors'
implementation does (no factored confidence for 1-D parameters). Decoupled weight decay
theta -= lr * wd * theta.

State per [R, C] matrix: m (R*C) + r, R_conf (R each) + c, C_conf (C each). Every reduction is a
torch op, so under FSDP2 (DTensor sharded on rows) the means over rows reduce across the shards.
"""

from __future__ import annotations

import torch

from memtrain.optim._dtensor import settle
from memtrain.optim._foreach import buckets, local, resolve


def _rank1(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """row [..., R], col [..., C] -> row c / mean(row): [..., R, C]."""
    return (row / settle(row.mean(dim=-1, keepdim=True))).unsqueeze(-1) * col.unsqueeze(-2)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return settle(x.square().mean()).sqrt()


class CAME(torch.optim.Optimizer):
    """foreach (default None: on): the elementwise parts (G^2 + eps1, the first moment, weight decay,
    the update) as multi-tensor ops over buckets of parameters (memtrain.optim._foreach); the
    factored statistics stay per parameter. The same operations as the per-parameter loop
    (foreach=False)."""

    def __init__(self, params, lr: float = 2e-4, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 eps: tuple[float, float] = (1e-30, 1e-16), d: float = 1.0, weight_decay: float = 0.0,
                 foreach: bool | None = None):
        if lr <= 0 or len(betas) != 3 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"CAME needs lr > 0 and three betas in [0, 1), got lr={lr}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=tuple(eps), d=d, weight_decay=weight_decay,
                                      foreach=foreach))

    def _init_state(self, p: torch.Tensor, sq: torch.Tensor) -> None:
        state = self.state[p]
        if state:
            return
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p)
        if p.ndim >= 2:
            state["exp_avg_sq_row"] = torch.zeros_like(sq.mean(dim=-1))
            state["exp_avg_sq_col"] = torch.zeros_like(settle(sq.mean(dim=-2)))
            state["exp_avg_res_row"] = torch.zeros_like(sq.mean(dim=-1))
            state["exp_avg_res_col"] = torch.zeros_like(settle(sq.mean(dim=-2)))
        else:
            state["exp_avg_sq"] = torch.zeros_like(p)

    def _scaled_update(self, p: torch.Tensor, sq: torch.Tensor, group: dict) -> torch.Tensor:
        """u_t: the gradient over the square root of the (factored) second moment, clipped."""
        _, beta2, _ = group["betas"]
        state, g = self.state[p], p.grad
        if p.ndim >= 2:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.lerp_(sq.mean(dim=-1), 1 - beta2)
            col.lerp_(settle(sq.mean(dim=-2)), 1 - beta2)
            u = g / _rank1(row, col).sqrt()
        else:
            v = state["exp_avg_sq"]
            v.lerp_(sq, 1 - beta2)
            u = g / v.sqrt()
        return u / (_rms(u) / group["d"]).clamp(min=1.0)

    def _confident_update(self, p: torch.Tensor, u: torch.Tensor, group: dict) -> torch.Tensor:
        """m_t / sqrt(S_t) for a matrix (the factored confidence), m_t for a vector."""
        _, _, beta3 = group["betas"]
        state = self.state[p]
        m = state["exp_avg"]
        if p.ndim < 2:
            return m
        res = (u - m).square() + group["eps"][1]
        res_row, res_col = state["exp_avg_res_row"], state["exp_avg_res_col"]
        res_row.lerp_(res.mean(dim=-1), 1 - beta3)
        res_col.lerp_(settle(res.mean(dim=-2)), 1 - beta3)
        return m / _rank1(res_row, res_col).sqrt()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            step = self._foreach_step if resolve(group["foreach"]) else self._single_tensor_step
            step(params, group)
        return loss

    def _single_tensor_step(self, params: list[torch.Tensor], group: dict) -> None:
        beta1 = group["betas"][0]
        lr, wd = group["lr"], group["weight_decay"]
        for p in params:
            sq = p.grad * p.grad + group["eps"][0]
            self._init_state(p, sq)
            self.state[p]["step"] += 1
            u = self._scaled_update(p, sq, group)
            self.state[p]["exp_avg"].lerp_(u, 1 - beta1)
            update = self._confident_update(p, u, group)
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr)

    def _foreach_step(self, params: list[torch.Tensor], group: dict) -> None:
        beta1 = group["betas"][0]
        lr, wd = group["lr"], group["weight_decay"]
        for ids in buckets(params):
            bucket = [params[i] for i in ids]
            squares = torch._foreach_mul([p.grad for p in bucket], [p.grad for p in bucket])
            torch._foreach_add_(squares, group["eps"][0])
            us = []
            for p, sq in zip(bucket, squares):
                self._init_state(p, sq)
                self.state[p]["step"] += 1
                us.append(self._scaled_update(p, sq, group))
            del squares
            torch._foreach_lerp_([local(self.state[p]["exp_avg"]) for p in bucket], [local(u) for u in us], 1 - beta1)
            updates = [local(self._confident_update(p, u, group)) for p, u in zip(bucket, us)]
            ps = [local(p) for p in bucket]
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_add_(ps, updates, alpha=-lr)
