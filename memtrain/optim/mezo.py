"""MeZO: memory-efficient zeroth-order optimization (Malladi et al. 2023, "Fine-Tuning Language
Models with Just Forward Passes", Algorithm 1): SPSA with the random-seed trick.

One step with step seed s, perturbation scale eps, learning rate lr:

    z ~ N(0, I) from seed s (per parameter, in a fixed order; regenerated, never stored)
    theta <- theta + eps z;  l+ = L(theta; B)
    theta <- theta - 2 eps z; l- = L(theta; B)
    theta <- theta + eps z                               (restored)
    g = (l+ - l-) / (2 eps)                              (projected gradient, a scalar)
    theta <- theta - lr (g z + wd theta)                 (z regenerated from s)

Only forward passes, under torch.no_grad: no .grad is allocated, no optimizer state is kept, and
the memory is that of inference plus one parameter's z at a time. The loss closure returns the
loss over the whole (data-parallel) batch, so replicas that share the seed take the same step.
"""

from __future__ import annotations

from typing import Callable

import torch


class MeZO(torch.optim.Optimizer):
    zeroth_order = True  # the trainer runs memtrain.engine.zeroth_order instead of a backward

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0):
        if lr <= 0 or eps <= 0:
            raise ValueError(f"MeZO needs lr > 0 and eps > 0, got lr={lr}, eps={eps}")
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay))

    def _params(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    yield group, p

    def _perturb(self, seed: int, scale: float) -> None:
        """theta += scale * z(seed), z drawn parameter by parameter from one generator."""
        gen = None
        for _, p in self._params():
            if gen is None or gen.device != p.device:
                gen = torch.Generator(p.device).manual_seed(seed)
            z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=scale)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, seed: int = 0) -> tuple[float, float]:
        """One SPSA step; returns (loss at theta + eps z, projected gradient g)."""
        if closure is None:
            raise ValueError("MeZO needs a closure that evaluates the loss (no backward)")
        eps = self.param_groups[0]["eps"]
        self._perturb(seed, eps)
        loss_plus = torch.as_tensor(closure()).to(torch.float64)
        self._perturb(seed, -2 * eps)
        loss_minus = torch.as_tensor(closure()).to(torch.float64)
        self._perturb(seed, eps)
        # float64 as Python's arithmetic; one read of both numbers: g scales the update below
        loss_plus, grad = torch.stack([loss_plus, (loss_plus - loss_minus) / (2 * eps)]).tolist()
        gen = None
        for group, p in self._params():
            if gen is None or gen.device != p.device:
                gen = torch.Generator(p.device).manual_seed(seed)
            z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(z, alpha=-group["lr"] * grad)
        return loss_plus, grad
