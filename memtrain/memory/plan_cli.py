"""`memtrain plan`'s options: the ranked table or JSON, and --validate (run the top rows here)."""

from __future__ import annotations

import json
from typing import Callable

from rich.console import Console

from memtrain.config.errors import ConfigError


MAX_VALIDATE_STEPS = 1000  # --validate runs this many training steps per row at most


def _take(args: list[str], flag: str, default: int, most: int | None = None) -> int:
    if flag not in args:
        return default
    i = args.index(flag)
    value = args[i + 1] if i + 1 < len(args) else ""
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(flag, f"needs a positive integer, got {value!r}")
    if most is not None and int(value) > most:
        raise ConfigError(flag, f"at most {most}, got {value}")
    del args[i:i + 2]
    return int(value)


def plan_main(args: list[str], fail: Callable[[str], int]) -> int:
    from memtrain.memory.planner import no_fit_message, render_plan

    args = list(args)
    try:
        top = _take(args, "--top", 10)
        global_batch = _take(args, "--global-batch", 0) or None
        steps = _take(args, "--steps", 3, most=MAX_VALIDATE_STEPS)
    except ConfigError as exc:
        return fail(str(exc))
    from memtrain.memory.plot import take_plot_path

    args, plot_path, error = take_plot_path(args)
    if error:
        return fail(error)
    as_json, run_validate = "--json" in args, "--validate" in args
    args = [a for a in args if a not in ("--json", "--validate")]
    unknown = [a for a in args if a.startswith("-")]
    if unknown:
        return fail(f"unknown option {unknown[0]!r} for plan (allowed: --json, --top K, --global-batch N, --validate, --steps N, --plot FILE.png)")
    console, err = Console(), Console(stderr=True)
    try:
        result = _plan_with_progress(err, args, global_batch, top)
    except ConfigError as exc:
        return fail(str(exc))
    if not result.rows:
        return fail(no_fit_message(result)) - 1  # exit 1: valid input, nothing fits
    if not as_json:
        console.print(render_plan(result, top))
    if plot_path is not None:
        from memtrain.memory.plot import bar_chart, write_png

        hw, rows = result.hardware, result.rows[:top]
        fig = bar_chart([f"#{i}" for i in range(1, len(rows) + 1)], [r.estimate for r in rows], hw["gpu_mem_gb"],
                        hw["mem_usable"], f"memtrain plan: top {len(rows)} rows (numbered as in the table)")
        err.print(f"wrote {write_png(fig, plot_path)}", highlight=False)
    validated = []
    if run_validate:
        from memtrain.memory.plan_validate import render_validation_row, validate_rows

        out = err if as_json else console
        out.print(f"validating the top {min(top, len(result.rows))} row(s) here, {steps} step(s) each:")
        for i, entry in enumerate(validate_rows(result.rows[:top], steps), 1):
            validated.append(entry)
            out.print(render_validation_row(i, entry))
    if as_json:
        data = {"hardware": result.hardware, "global_batch": result.global_batch, "considered": result.considered,
                "invalid": result.invalid, "pruned": result.pruned, "rows": [r.as_dict() for r in result.rows[:top]]}
        if run_validate:
            data["validation"] = validated
        print(json.dumps(data, indent=2, default=str))
    return 0


def _plan_with_progress(err: Console, args: list[str], global_batch: int | None, top: int):
    """plan(), with a progress bar on stderr (a terminal only) while the space is walked."""
    from memtrain.memory.planner import plan

    if not err.is_terminal:
        return plan(args, global_batch=global_batch, verify_top=top)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("planning"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[considered]} candidates"), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("plan", total=1.0, considered=0)
        return plan(args, global_batch=global_batch, verify_top=top,
                    progress=lambda done, n: bar.update(task, completed=done, considered=n))
