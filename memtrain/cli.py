"""memtrain's command line: compose -> validate -> build -> train (or estimate).

    memtrain train [hydra overrides]            e.g. +recipe=protein_lm precision=bf16
    memtrain train -m optimizer=adamw,adafactor  (Hydra multirun)
    memtrain estimate [hydra overrides] [--json]

Every job's config is composed and validated before anything starts; a bad key, value, option or
combination is one paragraph naming the key and the allowed values, and exit code 2.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

from rich.console import Console
from rich.markup import escape

from memtrain.cli_help import command_help, usage, wants_help

# Hydra, torch and the models are imported where a command needs them, so help and config errors
# answer at once.

MAX_SWEEP_JOBS_CHECKED = 256
err = Console(stderr=True)


def _fail(message: str) -> int:
    err.print(f"[bold red]memtrain:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return 2


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of a multirun sweep (Hydra's basic sweeper: a cartesian
    product of the sweep overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from memtrain.config.errors import from_hydra

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise from_hydra(exc) from exc
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(job) for job in itertools.islice(itertools.product(*axes), MAX_SWEEP_JOBS_CHECKED)]


def train_command(args: list[str]) -> int:
    from memtrain.config.errors import ConfigError
    from memtrain.config.loader import load_config
    from memtrain.prereq import PrerequisiteError, check_runs_here, check_slurm, launcher_choice

    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = _overrides(args)
    try:
        jobs = [load_config(job) for job in (sweep_jobs(overrides) if multirun else [overrides])]
        if launcher_choice(overrides) == "slurm":  # the jobs run on the cluster's nodes, not here
            check_slurm("hydra/launcher=slurm", "Check the sweep with `memtrain submit --dry-run -- OVERRIDES`, or run "
                        "it on this machine without hydra/launcher=slurm.")
        elif not _print_only(args):
            for cfg in jobs:
                check_runs_here(cfg)
    except (ConfigError, PrerequisiteError) as exc:
        return _fail(str(exc))
    _run_hydra(args)
    return 0


def _overrides(args: list[str]) -> list[str]:
    """The Hydra overrides among `args`: not the flags, nor the value of Hydra's --cfg/--package."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a in ("--cfg", "-c", "--package", "-p", "--info", "-i")
        else:
            out.append(a)
    return out


def _print_only(args: list[str]) -> bool:
    """Hydra prints the config (--cfg) or its info (--info) and runs nothing."""
    return any(a in ("--cfg", "-c", "--info", "-i") for a in args)


def _run_hydra(args: list[str]) -> None:
    """Hand the command line to Hydra, which makes the run directory (or the multirun sweep)."""
    import hydra

    from memtrain.config.loader import CONF_DIR, register_all

    register_all()
    sys.argv = ["memtrain train", *args]
    from memtrain.cli import _train_job as job  # by module name, also under `python -m`: launchers pickle it

    hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")(job)()


def _train_job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from memtrain.config.validate import validate
    from memtrain.data.errors import DataFormatError
    from memtrain.distributed.launch import launch_workers, needs_launch
    from memtrain.engine.trainer import Trainer

    validate(cfg)
    hydra_cfg = HydraConfig.get()
    run_dir = cfg.trainer.run_dir or hydra_cfg.runtime.output_dir
    if needs_launch(cfg):
        launch_workers(cfg, list(hydra_cfg.overrides.task), run_dir)
        return
    from memtrain.engine.console import print_startup, summary, warnings_from_rank0_only

    warnings_from_rank0_only()
    print_startup(cfg, dict(hydra_cfg.runtime.choices))
    start = time.perf_counter()
    try:
        trainer = Trainer(cfg, run_dir)
        try:
            records = trainer.fit()
        finally:
            trainer.close()
    except (DataFormatError, FileNotFoundError) as exc:
        raise SystemExit(_fail(str(exc)))
    if trainer.env.is_main:
        latest = trainer.checkpointer.latest()
        Console().print(summary(records, trainer.step, time.perf_counter() - start, trainer.run_dir, latest),
                        highlight=False)


def estimate_command(args: list[str]) -> int:
    from memtrain.config.errors import ConfigError
    from memtrain.config.loader import load_config
    from memtrain.memory.estimator import estimate
    from memtrain.memory.report import render_table

    as_json = "--json" in args
    unknown = [a for a in args if a.startswith("-") and a != "--json"]
    if unknown:
        return _fail(f"unknown option {unknown[0]!r} for estimate (allowed: --json)")
    try:
        cfg = load_config([a for a in args if a != "--json"])
        result = estimate(cfg)
    except ConfigError as exc:
        return _fail(str(exc))
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        Console().print(render_table(cfg, result))
    return 0


def plan_command(args: list[str]) -> int:
    from memtrain.memory.plan_cli import plan_main

    return plan_main(args, _fail)


def export_command(args: list[str]) -> int:
    from memtrain.precision.export import export_quantized

    if len(args) != 2:
        return _fail("usage: memtrain export CHECKPOINT_DIR OUT_DIR (a step_<N>/ folder of a precision.qat run)")
    try:
        out = export_quantized(args[0], args[1])
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    Console().print(f"exported {args[0]} to {out}", highlight=False)
    return 0


def submit_command(args: list[str]) -> int:
    from memtrain.slurm.submit import submit_command as submit

    return submit(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"train": train_command, "estimate": estimate_command, "plan": plan_command, "export": export_command,
                "submit": submit_command}
    if command not in commands:
        return _fail(f"unknown command {command!r} (allowed: {', '.join(commands)}); memtrain --help lists them")
    if command != "submit" and wants_help(rest):  # submit's argparse prints its own
        print(command_help(command))
        return 0
    return commands[command](rest)


if __name__ == "__main__":
    sys.exit(main())
