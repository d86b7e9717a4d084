"""`memtrain estimate --plot` and `memtrain plan --plot`: a PNG whose bars are the estimator's terms."""

from __future__ import annotations

import importlib.util
import json

import pytest

from memtrain.config.loader import load_config
from memtrain.memory.estimator import estimate
from memtrain.memory.planner import plan
from memtrain.memory.plot import (
    DEVICE_TERMS,
    OFF_DEVICE_TERMS,
    GiB,
    bar_chart,
    take_plot_path,
    write_png,
)
from tests.conftest import TINY

pytestmark = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
PNG = b"\x89PNG\r\n\x1a\n"


def plotted(fig) -> dict[str, list[float]]:
    """Bar heights per term, read back from the figure's bar containers."""
    return {c.get_label(): [p.get_height() for p in c.patches] for c in fig.axes[0].containers}


def peak_marks(fig) -> list[float]:
    """The heights of the per-bar peak ticks, read back from the figure's scatter collection."""
    (marks,) = [c for c in fig.axes[0].collections if c.get_label() == "peak over the step"]
    return [y for _, y in marks.get_offsets()]


def test_estimate_chart_has_every_term_and_the_capacity_line(tmp_path):
    cfg = load_config([*TINY, "parallel=zero3", "launcher.nproc_per_node=2", "offload=optimizer_cpu",
                       "precision=bf16", "hardware.gpu_mem_gb=0.01"])
    est = estimate(cfg)
    fig = bar_chart(["zero3"], [est], 0.01, 0.9, "t")
    bars = plotted(fig)
    assert set(bars) == set(DEVICE_TERMS) | set(OFF_DEVICE_TERMS)
    assert sum(bars[t][0] for t in DEVICE_TERMS) == pytest.approx(est.total / GiB)
    assert est.peak and peak_marks(fig) == pytest.approx([est.peak / GiB])
    assert est.host > 0 and bars["host"][0] == pytest.approx(est.host / GiB)  # the offloaded optimizer states
    lines = [ln.get_ydata()[0] for ln in fig.axes[0].lines]
    assert lines == pytest.approx([0.01, 0.009])
    out = write_png(fig, tmp_path / "m.png")
    assert out.read_bytes()[:8] == PNG


def test_plan_and_estimate_write_the_png_from_the_command_line(tmp_path, capsys):
    from memtrain.cli import estimate_command, plan_command

    png = tmp_path / "memory.png"
    assert estimate_command([*TINY, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG
    png = tmp_path / "plan.png"
    base = [*TINY, "precision=fp32", "optimizer=adamw", "hardware.gpus=1", "hardware.gpu_mem_gb=1"]
    assert plan_command([*base, "--top", "3", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG
    # one bar per ranked row, the same bytes as the rows'
    p = plan(base, verify_top=3)
    assert len(p.rows) >= 3  # checkpoint none, selective, full
    fig = bar_chart(["1", "2", "3"], [r.estimate for r in p.rows[:3]], 1, 0.9, "t")
    bars = plotted(fig)
    # the stack is the sum of the terms; the tick, what the rows are fitted and ranked by: the step's peak
    assert [sum(bars[t][i] for t in DEVICE_TERMS) for i in range(3)] == pytest.approx(
        [r.estimate.total / GiB for r in p.rows[:3]])
    assert peak_marks(fig) == pytest.approx([r.peak_bytes / GiB for r in p.rows[:3]])


def test_bad_plot_paths_are_refused_before_anything_runs(tmp_path):
    assert take_plot_path(["a=1"]) == (["a=1"], None, None)
    for args, words in ((["--plot"], "needs a file name"), (["--plot", "x.svg"], "ending in .png"),
                        (["--plot", str(tmp_path / "no" / "x.png")], "does not exist")):
        _, path, error = take_plot_path(args)
        assert path is None and words in error


def test_plot_takes_a_file_name_with_an_equals_sign(tmp_path):
    """A chart next to a Hydra run (outputs/lr=0.1/memory.png) is a file name like any other."""
    from memtrain.memory.plot import take_plot_path

    folder = tmp_path / "lr=0.1"
    folder.mkdir()
    for args in (["--plot", str(folder / "memory.png")], ["--plot", str(tmp_path / "a=b.png")]):
        rest, path, error = take_plot_path(args)
        assert error is None and str(path) == args[1] and rest == [], (args, error)


def test_plan_takes_the_option_eq_value_forms_as_estimate_does(tmp_path, capsys):
    """`memtrain plan --top=3 --plot=FILE.png` as `--top 3 --plot FILE.png` (argparse's two forms,
    which estimate takes too)."""
    from memtrain.cli import plan_command

    png = tmp_path / "plan.png"
    base = [*TINY, "precision=fp32", "optimizer=adamw", "hardware.gpus=1", "hardware.gpu_mem_gb=1"]
    assert plan_command([*base, "--top=3", f"--plot={png}", "--json"]) == 0
    assert png.read_bytes()[:8] == PNG
    assert len(json.loads(capsys.readouterr().out)["rows"]) == 3
