"""Lion: EvoLved Sign Momentum (Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms", Algorithm 2).

One moment m per parameter (same shape and dtype as the parameter), no second moment:

    c_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    theta_t = theta_{t-1} - lr * (sign(c_t) + lambda * theta_{t-1})
    m_t = beta2 * m_{t-1} + (1 - beta2) * g_t

Every operation is elementwise, so it runs unchanged on FSDP2's DTensor shards and on DeepSpeed's
flat ZeRO partitions.
"""

from __future__ import annotations

import torch

from memtrain.optim._foreach import buckets, local, resolve


class Lion(torch.optim.Optimizer):
    """foreach (default None: on): the step as multi-tensor ops over buckets of parameters
    (memtrain.optim._foreach), the same operations as the per-parameter loop (foreach=False)."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0,
                 foreach: bool | None = None):
        if lr <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Lion needs lr > 0 and betas in [0, 1), got lr={lr}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
            step = _foreach_step if resolve(group["foreach"]) else _single_tensor_step
            step(params, [self.state[p]["exp_avg"] for p in params], group)
        return loss


def _single_tensor_step(params: list[torch.Tensor], moments: list[torch.Tensor], group: dict) -> None:
    beta1, beta2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]
    for p, m in zip(params, moments):
        g = p.grad
        update = (m * beta1 + g * (1 - beta1)).sign_()  # sign(c_t)
        if wd:
            p.mul_(1 - lr * wd)  # - lr * lambda * theta_{t-1}
        p.add_(update, alpha=-lr)
        m.lerp_(g, 1 - beta2)  # m_t = beta2 m + (1 - beta2) g


def _foreach_step(params: list[torch.Tensor], moments: list[torch.Tensor], group: dict) -> None:
    beta1, beta2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]
    for ids in buckets(params):
        ps = [local(params[i]) for i in ids]
        gs = [local(params[i].grad) for i in ids]
        ms = [local(moments[i]) for i in ids]
        update = torch._foreach_mul(ms, beta1)
        torch._foreach_add_(update, torch._foreach_mul(gs, 1 - beta1))
        torch._foreach_sign_(update)
        if wd:
            torch._foreach_mul_(ps, 1 - lr * wd)
        torch._foreach_add_(ps, update, alpha=-lr)
        torch._foreach_lerp_(ms, gs, 1 - beta2)
