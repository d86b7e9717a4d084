"""Spatial parallelism for Pangu-Weather: the latitude axis of one sample split over the ranks of
the spatial group, in whole windows at every stage (memtrain.distributed.spatial).

`apply_spatial(model, group)` swaps the classes of the model, its blocks and their attention in
place (as FSDP2's fully_shard does), so parameter names and the state dict are the plain model's.
With S ranks and the grid's latitude tokens H' a multiple of 2 w_lat S (checked by
`validate_spatial`), rank r holds latitude rows [r n_lat / S, (r + 1) n_lat / S) of the fields and
rows [r H'/S, (r + 1) H'/S) of the token grid (half that at the down-sampled stages), so

    patch embedding, patch merging/expanding, patch recovery     local (no padding, slabs stay aligned)
    window attention                                              local (whole windows)
    shifted windows: the roll by half a window along latitude     halo exchange with the neighbours
    the Earth-specific bias and the pole mask per window type     those of the global window rows
    output fields                                                 all-gathered along latitude

and the loss, with its latitude weights, runs on the gathered fields as in one process.
# DISCREPANCY: the loss is computed on the gathered output on every rank (backward: each rank keeps
# its slab's gradient) rather than on each slab and reduced; the fields are small next to the blocks'
# activations, which are what the sharding divides.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.distributed import ProcessGroup

from memtrain.config.errors import require
from memtrain.distributed.collectives import all_reduce_gradients, gather_replicated
from memtrain.distributed.spatial import cyclic_shift, slab
from memtrain.models.weather.pangu import EarthAttention3D, Pangu, token_grid
from memtrain.models.reset import GeneratorFor, set_table
from memtrain.models.weather.windows import WindowBlock

LAT = 2  # the latitude dim of the token grid x [B, Z, H, W, C]


def validate_spatial(cfg: DictConfig, degree: int) -> None:
    """The latitude slabs must be whole windows at both resolutions and need no padding anywhere."""
    m = cfg.model
    require(m.n_lat % m.patch_size[1] == 0, "model.n_lat",
            f"parallel.spatial={degree} splits latitude without padding: n_lat={m.n_lat} must be a multiple of the "
            f"patch's {m.patch_size[1]} (model.patch_size)")
    h = token_grid(m.n_levels, m.n_lat, m.n_lon, m.patch_size)[1]
    unit = 2 * m.window_size[1] * degree
    require(h % unit == 0, "model.n_lat",
            f"parallel.spatial={degree}: the {h} latitude tokens (model.n_lat={m.n_lat} / patch {m.patch_size[1]}) must be "
            f"a multiple of 2 x model.window_size[1] x parallel.spatial = {unit}, so that every rank holds whole windows "
            "at both resolutions")


class SpatialEarthAttention3D(EarthAttention3D):
    """EarthAttention3D on a latitude slab: `type_index` [T_local] selects the global window types
    (level, latitude window row) of this rank's windows from the bias table; `slab` is (latitude
    windows of the whole grid, this rank in the spatial group, the group's size)."""

    type_index: torch.Tensor
    slab: tuple[int, int, int]

    def local_types(self) -> torch.Tensor:
        return _local_types(self.n_types, *self.slab)

    def bias(self) -> torch.Tensor:
        return super().bias()[self.type_index]

    @torch.no_grad()
    def reset_parameters(self, generator_for: GeneratorFor | None = None) -> None:
        super().reset_parameters(generator_for)
        set_table(self, "type_index", self.local_types())


class SpatialWindowBlock(WindowBlock):
    """WindowBlock on a latitude slab: the shifted-window roll along latitude is a halo exchange;
    the mask holds this rank's window types only."""

    spatial_group: ProcessGroup

    def mask_table(self) -> torch.Tensor | None:
        table = super().mask_table()
        return None if table is None else table[self.attention.local_types()]

    def roll(self, x: torch.Tensor, sign: int) -> torch.Tensor:
        x = torch.roll(x, shifts=(sign * self.shift[0], sign * self.shift[2]), dims=(1, 3))
        return cyclic_shift(x, sign * self.shift[1], LAT, self.spatial_group)


class SpatialPangu(Pangu):
    spatial_group: ProcessGroup

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The plain model's contract: whole fields in (every rank of the group the same sample),
        whole fields out; the network runs on this rank's latitude slab in between."""
        g = self.spatial_group
        local = {"upper": slab(inputs["upper"], -2, g), "surface": slab(inputs["surface"], -2, g)}
        out = super().forward(local)
        return {k: gather_replicated(v, -2, g) for k, v in out.items()}


def _local_types(n_types: int, n_lat_windows: int, rank: int, n: int) -> torch.Tensor:
    """Global window-type indices (level window z, latitude window h -> z n_H + h) of this rank's
    windows, in the order window_partition lists the local ones."""
    per = n_lat_windows // n
    z = torch.arange(n_types // n_lat_windows)[:, None]
    h = torch.arange(rank * per, (rank + 1) * per)[None, :]
    return (z * n_lat_windows + h).flatten()


def apply_spatial(model: nn.Module, group: ProcessGroup) -> None:
    """Run a Pangu model on latitude slabs over `group` (in place)."""
    slice_to_slabs(model, dist.get_rank(group), dist.get_world_size(group))
    for block in model.blocks:
        target = block._checkpoint_wrapped_module if hasattr(block, "_checkpoint_wrapped_module") else block
        target.spatial_group = group
    model.spatial_group = group


def slice_to_slabs(model: nn.Module, rank: int, n: int) -> None:
    """apply_spatial's swap of classes and tables for rank `rank` of `n`, without the group: each
    attention's `type_index` and each shifted block's mask cut to the rank's window types (on the
    meta device too: a materialised model recomputes them in its reset_parameters)."""
    require(isinstance(model, Pangu), "parallel.spatial", f"spatial parallelism is implemented for Pangu, not {type(model).__name__}")
    for block in model.blocks:
        target = block._checkpoint_wrapped_module if hasattr(block, "_checkpoint_wrapped_module") else block
        att = target.attention
        att.__class__, att.slab = SpatialEarthAttention3D, (target.shape[1] // target.window[1], rank, n)
        index = att.local_types().to(att.earth_specific_bias.device)
        att.register_buffer("type_index", index, persistent=False)
        if target.mask is not None:
            target.register_buffer("mask", target.mask[index], persistent=False)
        target.__class__ = SpatialWindowBlock
    model.__class__ = SpatialPangu


def parallelize(model: nn.Module, mesh, cfg: DictConfig) -> None:
    if mesh["spatial"].size() > 1:
        apply_spatial(model, mesh["spatial"].get_group())


def reduce_gradients(model: nn.Module, mesh) -> None:
    """Sum every parameter's slab-partial gradient over the spatial group."""
    if mesh["spatial"].size() > 1:
        all_reduce_gradients(model, mesh["spatial"].get_group())
