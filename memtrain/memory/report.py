"""The rich table printed by `memtrain estimate`."""

from __future__ import annotations

from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table

from memtrain.config.errors import as_enum
from memtrain.config.schema import ACMode
from memtrain.memory.estimator import MemoryEstimate
from memtrain.memory.host_memory import HostEstimate, host_estimate


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render_table(cfg: DictConfig, est: MemoryEstimate) -> Table:
    t = cfg.trainer
    title = (
        f"memtrain estimate: {est.n_params / 1e6:,.1f}M parameters, precision={cfg.precision.name}, "
        f"optimizer={cfg.optimizer._target_.rpartition('.')[2]}, activation_checkpoint={as_enum(cfg.activation_checkpoint.mode, ACMode).name}, "
        f"micro-batch {t.micro_batch_size} x seq {cfg.data.seq_len}\n"
        f"parallel={cfg.parallel.name} on {est.world_size} rank(s) (dp_replicate={est.dp_replicate}, "
        f"dp_shard={est.dp_shard}), offload={cfg.offload.name}"
    )
    table = Table(title=title, title_justify="left")
    # 80 columns: the labels get what the numbers leave (bytes up to 10^14 are 18 characters)
    table.add_column("per device", min_width=34, ratio=1)
    table.add_column("bytes", justify="right")
    table.add_column("", justify="right")
    table.add_column("share", justify="right")
    rows = [("parameters", est.params), ("gradients", est.grads), ("optimizer states", est.optimizer),
            *([("transient (gathered, buckets)", est.gathered)] if est.gathered else []), ("activations", est.activations)]
    for name, value in rows:
        table.add_row(name, f"{value:,}", human(value), f"{100 * value / est.total:.1f}%")
    for term in est.model_state_terms:  # DeepSpeed ZeRO: what each model-state row is made of
        if term["where"] == "device" and term["nbytes"]:
            table.add_row(escape(f"  {term['label']} [{term['phase']}]"), f"{term['nbytes']:,}", human(term["nbytes"]), "",
                          style="dim")
    blocks = est.activations_per_block
    if blocks:
        label = f"  per block, largest of {len(blocks)}" + ("" if len(set(blocks)) == 1 else
                                                           f" (first {human(blocks[0])}, last {human(blocks[-1])})")
        table.add_row(label, f"{max(blocks):,}", human(max(blocks)), "", style="dim")
        table.add_row("  outside the blocks", f"{est.activations_outside_blocks:,}", human(est.activations_outside_blocks), "", style="dim")
        if est.recompute_buffer:
            table.add_row("  recompute buffer", f"{est.recompute_buffer:,}", human(est.recompute_buffer), "", style="dim")
    table.add_row("total (sum of the terms)", f"{est.total:,}", human(est.total), "100%", style="bold")
    if est.phases:
        labels = {"forward": "forward end", "backward": "backward peak", "optimizer_step": "optimizer step"}
        for name, value in est.phases.items():
            table.add_row(f"  step phase: {labels.get(name, name)}", f"{value:,}", human(value),
                          f"{100 * value / est.total:.1f}%", style="dim")
    if est.peak:
        table.add_row("peak over the step", f"{est.peak:,}", human(est.peak), f"{100 * est.peak / est.total:.1f}%",
                      style="bold")
    for name, value in (("host memory (off the device)", est.host), ("nvme (on disk)", est.nvme)):
        if value:
            table.add_row(name, f"{value:,}", human(value), "", style="italic")
    host_rows(table, host_estimate(cfg, est))
    return table


def host_rows(table: Table, host: HostEstimate) -> None:
    """Host memory per node (memtrain.memory.host_memory): the start-up peak (of the build
    trainer.init_device resolves to, auto decided) and the steady-state peak, each with its per-rank
    terms."""
    where = "host = device (trainer.device=cpu)" if host.device_is_host else "host"
    for phase, value in (("startup", host.startup_per_node), ("steady", host.steady_per_node)):
        label = f"start-up ({host.init_device} build, wrap)" if phase == "startup" else "steady state (steps)"
        table.add_row(f"{where} per node ({host.ranks_per_node} ranks), {label}", f"{value:,}", human(value), "",
                      style="italic")
        for term in host.terms:
            if term["phase"] == phase:
                table.add_row(escape(f"  per rank: {term['label']} [{term['kind']}]"), f"{term['nbytes']:,}",
                              human(term["nbytes"]), "", style="dim")
