"""`--plot PATH` of `memtrain estimate` and `memtrain plan`: a stacked bar chart of the bytes one
device holds, by term, against the device's capacity (a PNG written with matplotlib's Agg canvas,
no display needed).

Device terms, stacked from the bottom: params, grads, optimizer, buffers (the gathered working set
of sharded layouts and fp8 scaling state), activations. Host and NVMe bytes (offload) are not on
the device: they stand in a second, hatched bar to the right of each device bar. The capacity line
is hardware.gpu_mem_gb; the dashed line below it is what the planner counts as usable
(x hardware.mem_usable). The stack is the sum of the terms (the estimate's `total`); a black tick
across each device bar marks the peak over the step's phases (`peak`), which the planner fits and
ranks by (terms that never coexist, e.g. all gradients and all activations, put it below the top).
"""

from __future__ import annotations

from pathlib import Path

from memtrain.memory.estimator import MemoryEstimate

GiB = 2**30
DEVICE_TERMS = ("params", "grads", "optimizer", "buffers", "activations")
OFF_DEVICE_TERMS = ("host", "nvme")
COLORS = {"params": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868", "buffers": "#8172b3",
          "activations": "#c44e52", "host": "#937860", "nvme": "#7f7f7f"}


def terms(est: MemoryEstimate) -> dict[str, float]:
    """GiB per term for one estimate (device terms sum to est.total)."""
    return {"params": est.params / GiB, "grads": est.grads / GiB, "optimizer": est.optimizer / GiB,
            "buffers": (est.gathered + est.precision_state) / GiB, "activations": est.activations / GiB,
            "host": est.host / GiB, "nvme": est.nvme / GiB}


def bar_chart(labels: list[str], estimates: list[MemoryEstimate], capacity_gib: float, usable: float, title: str):
    """The matplotlib Figure: one device bar (stacked DEVICE_TERMS) and one off-device bar
    (stacked OFF_DEVICE_TERMS, hatched) per label. Bar containers are labelled by term, so the
    plotted values can be read back (`figure.axes[0].containers`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(labels)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(len(labels)))
    values = [terms(e) for e in estimates]
    width = 0.38
    for group, offset, hatch in ((DEVICE_TERMS, -width / 2, None), (OFF_DEVICE_TERMS, width / 2, "//")):
        bottom = [0.0] * len(labels)
        for term in group:
            heights = [v[term] for v in values]
            ax.bar([x + offset for x in xs], heights, width, bottom=bottom, label=term, color=COLORS[term],
                   hatch=hatch, edgecolor="white" if hatch is None else "black", linewidth=0.5)
            bottom = [b + h for b, h in zip(bottom, heights)]
    peaks = [(e.peak or e.total) / GiB for e in estimates]
    ax.scatter([x - width / 2 for x in xs], peaks, marker="_", s=900 * width, color="black", linewidths=2.5,
               zorder=3, label="peak over the step")
    ax.axhline(capacity_gib, color="black", linewidth=1.2, label=f"device capacity {capacity_gib:g} GiB")
    ax.axhline(capacity_gib * usable, color="black", linewidth=1, linestyle="--",
               label=f"usable (x{usable:g})")
    ax.set_xticks(xs, labels, rotation=0 if len(labels) < 6 else 45, ha="center" if len(labels) < 6 else "right")
    ax.set_ylabel("GiB")
    ax.set_xlabel("left bar: on the device; right, hatched: host and NVMe per rank", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def write_png(fig, path: str | Path) -> Path:
    """Save the figure as PNG (Agg canvas); the folder must exist."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120)
    return path


def take_plot_path(args: list[str]) -> tuple[list[str], Path | None, str | None]:
    """(args without `--plot PATH`, the path or None, an error message or None). The path must end
    in .png and its folder exist: checked before anything is estimated."""
    if "--plot" not in args:
        return args, None, None
    i = args.index("--plot")
    value = args[i + 1] if i + 1 < len(args) else ""
    rest = args[:i] + args[i + 2:]
    if not value or value.startswith("-"):  # a word with '=' is a file name too (outputs/lr=0.1/m.png)
        return rest, None, "--plot needs a file name ending in .png, e.g. --plot memory.png"
    path = Path(value).expanduser()
    if path.suffix.lower() != ".png":
        return rest, None, f"--plot {value}: the chart is written as PNG; give a file name ending in .png"
    if not path.parent.resolve().is_dir():
        return rest, None, f"--plot {value}: the folder {path.parent} does not exist"
    return rest, path, None
