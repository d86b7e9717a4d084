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
    from memtrain.memory.planner import no_fit_message, plan, render_plan

    args = list(args)
    try:
        top = _take(args, "--top", 10)
        global_batch = _take(args, "--global-batch", 0) or None
        steps = _take(args, "--steps", 3, most=MAX_VALIDATE_STEPS)
    except ConfigError as exc:
        return fail(str(exc))
    as_json, run_validate = "--json" in args, "--validate" in args
    args = [a for a in args if a not in ("--json", "--validate")]
    unknown = [a for a in args if a.startswith("-")]
    if unknown:
        return fail(f"unknown option {unknown[0]!r} for plan (allowed: --json, --top K, --global-batch N, --validate, --steps N)")
    try:
        result = plan(args, global_batch=global_batch, verify_top=top)
    except ConfigError as exc:
        return fail(str(exc))
    if not result.rows:
        return fail(no_fit_message(result)) - 1  # exit 1: valid input, nothing fits
    validated = []
    if run_validate:
        from memtrain.memory.plan_validate import render_validation, validate_rows

        validated = validate_rows(result.rows[:top], steps)
    if as_json:
        out = {"hardware": result.hardware, "global_batch": result.global_batch, "considered": result.considered,
               "invalid": result.invalid, "rows": [r.as_dict() for r in result.rows[:top]]}
        if run_validate:
            out["validation"] = validated
        print(json.dumps(out, indent=2, default=str))
        return 0
    console = Console()
    console.print(render_plan(result, top))
    if run_validate:
        console.print(render_validation(validated))
    return 0
