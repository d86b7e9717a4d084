"""Latitude-weighted errors (WeatherBench, Rasp et al. 2020, eq. 1-2): each grid row weighted by
cos(latitude) normalized to mean 1, so every area of the globe counts equally.

    MSE_v,l = mean_{h,w} L(h) (pred - truth)^2        RMSE_v,l = sqrt(MSE_v,l) (per sample, then averaged)
"""

from __future__ import annotations

import torch

SURFACE_WEIGHT = 0.25  # Pangu-Weather weights the surface loss by 0.25 against the upper-air loss


def weighted_squared_error(pred: torch.Tensor, truth: torch.Tensor, lat_weight: torch.Tensor) -> torch.Tensor:
    """pred, truth [B, ..., H, W], lat_weight [B, H] -> mean_{h,w} L(h) (pred - truth)^2, [B, ...] in fp32."""
    err = (pred.float() - truth.float()) ** 2
    w = lat_weight.float().view(lat_weight.shape[0], *([1] * (err.dim() - 3)), lat_weight.shape[1], 1)
    return (err * w).mean(dim=(-2, -1))


def weather_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-sample loss, mean latitude-weighted MSE of the upper-air variables (over variables and
    levels) + SURFACE_WEIGHT x that of the surface variables; and the number of samples.
    # DISCREPANCY: Pangu-Weather and FuXi train with a (latitude-weighted) L1 loss; the weather recipes
    # use the latitude-weighted MSE, the quantity RMSE, their headline metric, is made of.
    """
    upper = weighted_squared_error(outputs["upper"], targets["upper"], targets["lat_weight"]).mean(dim=(1, 2))
    surface = weighted_squared_error(outputs["surface"], targets["surface"], targets["lat_weight"]).mean(dim=1)
    per_sample = upper + SURFACE_WEIGHT * surface
    return per_sample.sum(), torch.tensor(per_sample.shape[0])


def rmse_per_variable(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], upper_names: list[str],
                      surface_names: list[str], levels: list[int]) -> dict[str, float]:
    """{"rmse/z500": ..., "rmse/t2m": ...}: latitude-weighted RMSE in physical units (the normalized
    error times the variable's standard deviation), per sample, averaged over the micro-batch."""
    return {k: float(v) for k, v in rmse_tensors(outputs, targets, upper_names, surface_names, levels).items()}


def rmse_tensors(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], upper_names: list[str],
                 surface_names: list[str], levels: list[int]) -> dict[str, torch.Tensor]:
    """rmse_per_variable's values as 0-dim tensors on the outputs' device (not read: the
    trainer's metric means read them on logged steps only)."""
    with torch.no_grad():
        up = weighted_squared_error(outputs["upper"], targets["upper"], targets["lat_weight"]).sqrt()
        up = (up * targets["upper_std"].float()).mean(0)  # [V_u, L]
        sf = weighted_squared_error(outputs["surface"], targets["surface"], targets["lat_weight"]).sqrt()
        sf = (sf * targets["surface_std"].float()).mean(0)  # [V_s]
    out = {f"rmse/{v}{lv}": up[i, j] for i, v in enumerate(upper_names) for j, lv in enumerate(levels)}
    out.update({f"rmse/{v}": sf[i] for i, v in enumerate(surface_names)})
    return out
