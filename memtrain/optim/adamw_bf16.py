"""AdamW (Loshchilov & Hutter 2019, Algorithm 2) with both moments stored in bfloat16.

The step is computed in float32 from the upcast moments and applied to the (float32) parameters
exactly as AdamW; only the stored moments are rounded to bfloat16, with stochastic rounding
(round up with probability equal to the dropped fraction: unbiased, E[SR(x)] = x). Round-to-nearest
would stall the second moment: bfloat16 keeps 8 significant bits, so once (1 - beta2) g^2 / v falls
under 2^-9 (beta2 = 0.95 and a steady gradient already give 0.05 g^2 / v; beta2 = 0.999 gives 2^-10)
every update of v rounds back to the old value. The rounding noise comes from a generator seeded
with `seed`, so data-parallel replicas round alike.

bfloat16 parameters (precision.param_dtype=bfloat16: pure bf16 training, no fp32 master copy) get
the same float32 update, stochastically rounded back to bfloat16 (Zamirai et al. 2020, "Revisiting
BFloat16 Training"): with round-to-nearest every update under half an ulp of its weight is lost.

State per parameter: exp_avg and exp_avg_sq, 2 + 2 bytes per element (AdamW in fp32: 8).
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

from memtrain.optim._foreach import buckets, local, resolve


def stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 x -> bfloat16, rounding up with probability (dropped low 16 bits) / 2^16."""
    local = x.to_local() if isinstance(x, DTensor) else x
    bits = local.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, generator=generator, dtype=torch.int32, device=bits.device)
    rounded = ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # exact: low bits are zero
    if isinstance(x, DTensor):
        return DTensor.from_local(rounded, x.device_mesh, x.placements, shape=x.shape, stride=x.stride())
    return rounded


class AdamWBF16(torch.optim.Optimizer):
    """foreach (default None: on): the moment and parameter updates as multi-tensor ops over buckets
    of parameters (memtrain.optim._foreach); the stochastic rounding stays per tensor, in the
    per-parameter loop's order, so both draw the same noise and give the same result."""

    # bfloat16 parameters are updated in float32 and stochastically rounded back (with
    # stochastic_rounding=True), so they train without an fp32 master copy (memtrain.optim.compat)
    updates_bf16_params_stochastically = True

    def __init__(self, params, lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, stochastic_rounding: bool = True, seed: int = 0, foreach: bool | None = None):
        if lr <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW needs lr > 0 and betas in [0, 1), got lr={lr}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach))
        self.stochastic_rounding, self.seed = stochastic_rounding, seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _round(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stochastic_rounding:
            return x.to(torch.bfloat16)
        device = x.device
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return stochastic_round_bf16(x, self._generators[device])

    def _update_target(self, p: torch.Tensor) -> torch.Tensor:
        """What the update is applied to: p itself, or a float32 copy of a bfloat16 p that is then
        rounded back stochastically."""
        return p.float() if p.dtype == torch.bfloat16 and self.stochastic_rounding else p

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16)
                state["step"] += 1
            if resolve(group["foreach"]):
                self._foreach_step(params, group)
            else:
                self._single_tensor_step(params, group)
        return loss

    def _single_tensor_step(self, params: list[torch.Tensor], group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in params:
            g = p.grad.float()
            state = self.state[p]
            t = float(state["step"])
            m = state["exp_avg"].float().lerp_(g, 1 - beta1)
            v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
            # bfloat16 parameters (precision.param_dtype=bfloat16, no fp32 master copy): the update
            # is applied in float32 and the result rounded stochastically, since round-to-nearest
            # drops every update under half a bfloat16 ulp of the weight (lr 1e-4 on weights of
            # 0.02 already: ulp 1.2e-4); E[SR(w + u)] = w + u keeps small updates in expectation
            target = self._update_target(p)
            if wd:
                target.mul_(1 - lr * wd)
            target.addcdiv_(m.to(target.dtype), denom.to(target.dtype), value=-lr / (1 - beta1**t))
            if target is not p:
                p.copy_(self._round(target))
            state["exp_avg"].copy_(self._round(m))
            state["exp_avg_sq"].copy_(self._round(v))

    def _foreach_step(self, params: list[torch.Tensor], group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for ids in buckets(params):
            states = [self.state[params[i]] for i in ids]
            ps = [local(params[i]) for i in ids]
            targets = [self._update_target(p) for p in ps]  # bf16 parameters: a float32 copy (as above)
            gs = [local(params[i].grad).float() for i in ids]
            steps = [float(s["step"]) for s in states]
            ms = [local(s["exp_avg"]).float() for s in states]
            vs = [local(s["exp_avg_sq"]).float() for s in states]
            torch._foreach_lerp_(ms, gs, 1 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
            denoms = torch._foreach_div(vs, [1 - beta2**t for t in steps])
            torch._foreach_sqrt_(denoms)
            torch._foreach_add_(denoms, eps)
            if wd:
                torch._foreach_mul_(targets, 1 - lr * wd)
            torch._foreach_addcdiv_(targets, [m.to(p.dtype) for m, p in zip(ms, targets)],
                                    [d.to(p.dtype) for d, p in zip(denoms, targets)], [-lr / (1 - beta1**t) for t in steps])
            # the per-parameter loop's rounding order: the parameter (if bf16), m, then v
            for p, target, s, m, v in zip(ps, targets, states, ms, vs):
                if target is not p:
                    p.copy_(self._round(target))
                local(s["exp_avg"]).copy_(self._round(m))
                local(s["exp_avg_sq"]).copy_(self._round(v))
