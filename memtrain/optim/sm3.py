"""SM3 (Anil, Gupta, Koren & Singer 2019, "Memory-Efficient Adaptive Optimization", Algorithm
SM3-II), with the cover of a k-dimensional tensor made of its k families of slices (rows and
columns of a matrix, sec. 4 "co-dimension one slices").

For a parameter of shape [n_1, ..., n_k] the state is one accumulator mu_d of shape n_d per
dimension d (stored broadcastable, e.g. [R, 1] and [1, C] for a matrix), sum_d n_d numbers instead
of prod_d n_d; a vector (k = 1) keeps a full accumulator (its cover is the singletons: Adagrad):

    nu_t(i)   = min_d mu_{t-1,d}(i_d) + g_t(i)^2
    theta_t(i) = theta_{t-1}(i) - lr * g_t(i) / sqrt(nu_t(i))
    mu_t,d(j)  = max_{i: i_d = j} nu_t(i)

with g / sqrt(nu) taken as 0 where nu = 0. Optional heavy-ball momentum on the preconditioned
gradient (as in the paper's experiments, sec. 5): m_t = beta m_{t-1} + (1 - beta) g / sqrt(nu),
theta -= lr * m_t; momentum=0 (the default) keeps no moment at all. Decoupled weight decay
theta -= lr * wd * theta.

Under FSDP2 the parameter and its gradient are DTensors sharded on dim 0; the max over dim 0
becomes a reduction across the shards, which DTensor performs (the column accumulator is then
replicated), so the sharded run takes the same steps as one process.
"""

from __future__ import annotations

import torch

from memtrain.optim._dtensor import settle
from memtrain.optim._foreach import buckets, local, resolve


def _accumulators(nu: torch.Tensor) -> list[torch.Tensor]:
    """mu_d = max of nu over every dimension but d, kept broadcastable."""
    if nu.ndim <= 1:
        return [nu]
    dims = range(nu.ndim)
    return [settle(nu.amax(dim=tuple(e for e in dims if e != d), keepdim=True)) for d in dims]


class SM3(torch.optim.Optimizer):
    """foreach (default None: on): the elementwise parts (g^2, momentum, weight decay, the update) as
    multi-tensor ops over buckets of parameters (memtrain.optim._foreach); the cover's min/max stay
    per parameter. The same operations as the per-parameter loop (foreach=False)."""

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0,
                 foreach: bool | None = None):
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"SM3 needs lr > 0 and momentum in [0, 1), got lr={lr}, momentum={momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach))

    def _preconditioned(self, p: torch.Tensor, g2: torch.Tensor, momentum: float) -> torch.Tensor:
        """g / sqrt(nu) (0 where nu = 0), updating the accumulators (created on the first step)."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["accumulators"] = [torch.zeros_like(a) for a in _accumulators(g2)]
            if momentum > 0:
                state["momentum_buffer"] = torch.zeros_like(p)
        state["step"] += 1
        mus = state["accumulators"]
        nu = mus[0]
        for mu in mus[1:]:
            nu = torch.minimum(nu, mu)
        nu = nu + g2
        for mu, new in zip(mus, _accumulators(nu)):
            mu.copy_(new)
        return torch.where(nu > 0, p.grad / nu.sqrt(), torch.zeros_like(p.grad))

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
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p in params:
            update = self._preconditioned(p, p.grad * p.grad, beta)
            if beta > 0:
                buf = self.state[p]["momentum_buffer"]
                buf.mul_(beta).add_(update, alpha=1 - beta)
                update = buf
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr)

    def _foreach_step(self, params: list[torch.Tensor], group: dict) -> None:
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        for ids in buckets(params):
            bucket = [params[i] for i in ids]
            squares = torch._foreach_mul([p.grad for p in bucket], [p.grad for p in bucket])
            updates = [local(self._preconditioned(p, g2, beta)) for p, g2 in zip(bucket, squares)]
            del squares
            if beta > 0:
                bufs = [local(self.state[p]["momentum_buffer"]) for p in bucket]
                torch._foreach_mul_(bufs, beta)
                torch._foreach_add_(bufs, updates, alpha=1 - beta)
                updates = bufs
            ps = [local(p) for p in bucket]
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_add_(ps, updates, alpha=-lr)
