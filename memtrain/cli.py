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
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from memtrain.config.errors import ConfigError, from_hydra
from memtrain.config.loader import CONF_DIR, load_config, register_all
from memtrain.config.validate import validate
from memtrain.data.errors import DataFormatError

USAGE = """usage: memtrain train [hydra overrides]      train (add -m for a Hydra multirun sweep)
       memtrain estimate [hydra overrides] [--json]   per-device memory, before a GPU is touched
       memtrain plan [hydra overrides] [--json] [--top K] [--global-batch N] [--validate [--steps N]]
                                                  what fits hardware.* and runs fastest
       memtrain export CHECKPOINT OUT               a precision.qat checkpoint with integer weights
       memtrain predict CHECKPOINT INPUT OUTPUT [--msa A3M] [--chain ID] [--device auto|cpu|cuda]
                                                  a structure (PDB/mmCIF) from a trained AlphaFold
       memtrain submit [slurm options] -- [hydra overrides]   sbatch a run (memtrain submit --help)

overrides: group choices (model=gpt_1b precision=bf16 checkpoint=full), keys
(trainer.max_steps=100), recipes (+recipe=protein_lm). Groups: model parallel precision optimizer
offload checkpoint data trainer hardware."""

MAX_SWEEP_JOBS_CHECKED = 256
err = Console(stderr=True)


def _fail(message: str) -> int:
    err.print(f"[bold red]memtrain:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return 2


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of a multirun sweep (Hydra's basic sweeper: a cartesian
    product of the sweep overrides)."""
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
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    try:
        for job in sweep_jobs(overrides) if multirun else [overrides]:
            load_config(job)
    except ConfigError as exc:
        return _fail(str(exc))
    _run_hydra(args)
    return 0


def _run_hydra(args: list[str]) -> None:
    """Hand the command line to Hydra, which makes the run directory (or the multirun sweep)."""
    import hydra

    register_all()
    sys.argv = ["memtrain train", *args]
    from memtrain.cli import _train_job as job  # by module name, also under `python -m`: launchers pickle it

    hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")(job)()


def _train_job(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from memtrain.distributed.launch import launch_workers, needs_launch
    from memtrain.engine.trainer import Trainer

    validate(cfg)
    hydra_cfg = HydraConfig.get()
    run_dir = cfg.trainer.run_dir or hydra_cfg.runtime.output_dir
    if needs_launch(cfg):
        launch_workers(cfg, list(hydra_cfg.overrides.task), run_dir)
        return
    try:
        trainer = Trainer(cfg, run_dir)
        try:
            trainer.fit()
        finally:
            trainer.close()
    except (DataFormatError, FileNotFoundError) as exc:
        raise SystemExit(_fail(str(exc)))
    if trainer.env.is_main:
        Console().print(f"done: step {trainer.step}; metrics in {trainer.run_dir / 'metrics.jsonl'}", highlight=False)


def estimate_command(args: list[str]) -> int:
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


PREDICT_USAGE = (
    "usage: memtrain predict CHECKPOINT INPUT OUTPUT [--msa A3M] [--chain ID] [--device auto|cpu|cuda]: "
    "CHECKPOINT a step_<N>/ folder of a training run, INPUT an mmCIF (.cif) or A3M (.a3m) file, OUTPUT a .pdb or "
    ".cif file to write"
)


def _parse_predict_args(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional arguments and the --msa/--chain/--device options; ValueError on anything else."""
    positional, options, i = [], {}, 0
    while i < len(args):
        if args[i] in ("--msa", "--chain", "--device"):
            if i + 1 >= len(args):
                raise ValueError(f"{args[i]} needs a value")
            options[args[i][2:]] = args[i + 1]
            i += 2
        elif args[i].startswith("-"):
            raise ValueError(f"unknown option {args[i]!r} (allowed: --msa, --chain, --device)")
        else:
            positional.append(args[i])
            i += 1
    if len(positional) != 3:
        raise ValueError(f"expected CHECKPOINT INPUT OUTPUT, got {len(positional)} argument(s)")
    if options.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {options['device']!r}")
    return positional, options


def predict_command(args: list[str]) -> int:
    """Load a checkpoint's model (its config from meta.json; weights through the checkpointer's
    allow-listed loader, which runs no code from the files) and write the predicted structure."""
    import torch
    from omegaconf import OmegaConf

    from memtrain.engine.checkpoint import CheckpointError, Checkpointer
    from memtrain.engine.trainer import resolve_device
    from memtrain.models import get_spec
    from memtrain.models.alphafold.structure_io import structure_format

    try:
        (checkpoint, input_path, output), options = _parse_predict_args(args)
        structure_format(output)
    except ValueError as exc:
        return _fail(f"{exc}\n{PREDICT_USAGE}")
    checkpoint = Path(checkpoint)
    meta_file = checkpoint / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
        cfg = OmegaConf.create(meta["config"])
        spec = get_spec(cfg.model.arch)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _fail(f"{checkpoint} is not a memtrain checkpoint with its config in meta.json ({type(exc).__name__}: {exc})")
    except ConfigError as exc:
        return _fail(str(exc))
    if spec.predict is None:
        return _fail(f"model.arch={cfg.model.arch} has no predict (only AlphaFold writes structures)")
    device = resolve_device(options.get("device", "auto"))
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda: no CUDA device is visible")
    try:
        with torch.device(device):
            model = spec.build_model(cfg.model)
        model.float()
        Checkpointer(checkpoint.parent).load(checkpoint, {"model": model.state_dict()})
        msa = Path(options["msa"]) if "msa" in options else None
        result = spec.predict(model, cfg, Path(input_path), Path(output), msa=msa, chain=options.get("chain"))
    except (CheckpointError, DataFormatError, FileNotFoundError) as exc:
        return _fail(str(exc))
    summary = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k != "output")
    Console().print(f"wrote {result['output']} ({summary})", highlight=False)
    return 0


def submit_command(args: list[str]) -> int:
    from memtrain.slurm.submit import submit_command as submit

    return submit(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"train": train_command, "estimate": estimate_command, "plan": plan_command, "export": export_command,
                "submit": submit_command, "predict": predict_command}
    if command not in commands:
        return _fail(f"unknown command {command!r} (allowed: {', '.join(commands)})\n{USAGE}")
    return commands[command](rest)


if __name__ == "__main__":
    sys.exit(main())
