"""memtrain's command line: compose -> validate -> build -> train (or estimate).

    memtrain train [hydra overrides]            e.g. +recipe=protein_lm precision=bf16
    memtrain train -m optimizer=adamw,adafactor  (Hydra multirun)
    memtrain estimate [hydra overrides] [--json] [--plot FILE.png]

Every job's config is composed and validated before anything starts; a bad key, value, option or
combination is one paragraph naming the key and the allowed values, and exit code 2.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from memtrain.cli_help import command_help, usage, wants_help
from memtrain.config.aliases import rename_overrides
from memtrain.errors import UserError, file_system_error, print_user_error

# Hydra, torch and the models are imported where a command needs them, so help and config errors
# answer at once.

OVERRIDE_COMMANDS = ("train", "estimate", "plan", "submit")  # the commands whose arguments include Hydra overrides
HYDRA_VERSION_BASE = "1.3"  # Hydra's defaults (no chdir into the run folder, ...) of this version
MAX_SWEEP_JOBS = 256  # a multirun of more jobs is refused: every job is composed and checked before any starts
err = Console(stderr=True)


def _fail(message: str) -> int:
    return print_user_error(message)


def _user_failure(exc: BaseException) -> SystemExit:
    """A failure the user caused, as one paragraph on stderr and exit code 2 (for SystemExit)."""
    if isinstance(exc, OSError) and not isinstance(exc, UserError):  # a UserError's message says it already
        exc = file_system_error(exc, "file-system error at")
    return SystemExit(_fail(str(exc)))


def _is_file_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and getattr(exc, "filename", None) is not None


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of a multirun sweep (Hydra's basic sweeper: a cartesian
    product of the sweep overrides). More than MAX_SWEEP_JOBS jobs are refused (ConfigError): each is
    composed and checked before any starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from memtrain.config.errors import ConfigError, from_hydra

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise from_hydra(exc) from exc
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            values = list(itertools.islice(o.sweep_string_iterator(), MAX_SWEEP_JOBS + 1))
            axes.append((key, [f"{key}={v}" for v in values]))
        else:
            axes.append((None, [o.input_line]))
    count = math.prod(len(values) for _, values in axes)
    if count > MAX_SWEEP_JOBS:
        sizes = ", ".join(f"{key}: {len(v) if len(v) <= MAX_SWEEP_JOBS else f'more than {MAX_SWEEP_JOBS}'}"
                          for key, v in axes if key is not None)
        raise ConfigError("-m", f"the sweep has more than {MAX_SWEEP_JOBS} jobs ({sizes}); memtrain composes and checks "
                                f"every job before starting any, for up to {MAX_SWEEP_JOBS} jobs: split the sweep into "
                                "smaller ones")
    return [list(job) for job in itertools.product(*(values for _, values in axes))]


# Hydra's flags that choose another primary config or config folder; memtrain composes and checks
# conf/train.yaml (its schema, its groups) before Hydra runs, so these are refused with what to use
CONFIG_SOURCE_FLAGS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def _config_source_refusal(args: list[str]) -> str | None:
    """The one-paragraph refusal of a CONFIG_SOURCE_FLAGS flag among `args`, or None."""
    for i, a in enumerate(args):
        flag, eq, value = a.partition("=")
        if flag not in CONFIG_SOURCE_FLAGS:
            continue
        value = value if eq else (args[i + 1] if i + 1 < len(args) else "DIR")
        if flag in ("--config-dir", "-cd"):
            return (f"{flag}: memtrain composes conf/train.yaml and checks it before Hydra starts; add a folder of "
                    f"config groups (e.g. recipe/NAME.yaml) with the override hydra.searchpath=[file://"
                    f"{Path(value).expanduser().absolute()}] instead")
        return (f"{flag}: memtrain composes its own primary config, conf/train.yaml, whose schema it checks; choose "
                "groups and recipes with overrides (model=..., +recipe=NAME; more folders with "
                "hydra.searchpath=[file://DIR])")
    return None


def train_command(args: list[str]) -> int:
    refusal = _config_source_refusal(args)
    if refusal:
        return _fail(refusal)
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = _overrides(args)
    single = _single_run(args)
    try:
        return _train(args, overrides, multirun, single)
    finally:
        if single:  # the Hydra application _compose_run registered
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()


def _train(args: list[str], overrides: list[str], multirun: bool, single: bool) -> int:
    from memtrain.config.loader import load_config
    from memtrain.prereq import check_runs_here, check_slurm, launcher_choice

    try:
        if single:  # composed once, as Hydra composes a run, then checked and run from that config
            hydra_app, run_cfg = _compose_run(overrides)
            if run_cfg is None:  # a config asked for a sweep (hydra.mode): hydra.main runs it
                from hydra.core.global_hydra import GlobalHydra

                GlobalHydra.instance().clear()
                single = False
        if single:
            jobs = [_job_config(run_cfg)]
        else:
            jobs = [load_config(job) for job in (sweep_jobs(overrides) if multirun else [overrides])]
        if launcher_choice(overrides) == "slurm":  # the jobs run on the cluster's nodes, not here
            check_slurm("hydra/launcher=slurm", "Check the sweep with `memtrain submit --dry-run -- OVERRIDES`, or run "
                        "it on this machine without hydra/launcher=slurm.")
        elif not _print_only(args):
            for cfg in jobs:
                check_runs_here(cfg)
    except UserError as exc:
        return _fail(str(exc))
    from memtrain.cli import _CHECKED as checked  # the module _train_job reads, also under `python -m`

    checked[:] = jobs  # a job whose config is one of these is not validated again in this process
    if single:
        return _run_composed(hydra_app, run_cfg)
    return _run_hydra(args)


# configs validated in this process (train_command), which _train_job does not validate again
_CHECKED: list = []


def _single_run(args: list[str]) -> bool:
    """A plain run: overrides only (no Hydra flag such as --multirun, --cfg or --config-dir, and
    no hydra.mode override), which memtrain composes once and hands to Hydra's run_job."""
    return all(not a.startswith("-") for a in args) and not any(a.lstrip("+~").startswith("hydra.mode") for a in args)


def _hydra_app():
    """The Hydra application `hydra.main` makes for memtrain/cli.py's `_train_job`: the same task
    name and config search path, registered as the global Hydra instance."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import (create_automatic_config_search_path,
                                       detect_calling_file_or_module_from_task_function, detect_task_name)

    from memtrain.cli import _train_job as job  # by module name, also under `python -m`
    from memtrain.config.loader import CONF_DIR, register_all

    register_all()
    version.setbase(HYDRA_VERSION_BASE)
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(job)
    search_path = create_automatic_config_search_path(calling_file, calling_module, str(CONF_DIR))
    return Hydra.create_main_hydra2(task_name=detect_task_name(calling_file, calling_module),
                                    config_search_path=search_path)


def _compose_run(overrides: list[str]):
    """(Hydra application, the run's config with its `hydra` node) composed once, as `hydra.main`
    composes a single run (RunMode.RUN, Hydra's own logging configured), or (application, None)
    when the composed config itself asks for a sweep (`hydra.mode: MULTIRUN` in a config file, which
    hydra.main reads before it runs anything). A config that leaves hydra.mode unset gets RUN and
    `hydra.mode=RUN` among its Hydra overrides, as hydra.main appends it. Composition errors, and
    the Hydra keys run_job resolves (hydra.run.dir, hydra.output_subdir, hydra.job.env_set) when
    they cannot resolve, are ConfigErrors naming the key."""
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict, read_write
    from omegaconf.errors import OmegaConfBaseException

    from memtrain.config.errors import from_hydra

    app = _hydra_app()
    try:
        cfg = app.compose_config("train", overrides=list(overrides), with_log_configuration=True, run_mode=RunMode.RUN)
        if cfg.hydra.mode == RunMode.MULTIRUN:
            return app, None
        for key in _RUN_JOB_KEYS:  # select resolves a value; a node's values are resolved by to_container
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            if OmegaConf.is_config(value):
                OmegaConf.to_container(value, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise from_hydra(exc) from exc
    if cfg.hydra.mode is None:  # as hydra.main's _run_app: the mode, and the override that set it
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = RunMode.RUN
            cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
    return app, cfg


# the keys of the `hydra` node that Hydra's run_job resolves while it makes the run folder
_RUN_JOB_KEYS = ("hydra.run.dir", "hydra.output_subdir", "hydra.job.env_set")


def _job_config(run_cfg):
    """The job's config of a run config (its `hydra` node dropped, as Hydra's run_job hands it to
    the task), resolved and validated (ConfigError)."""
    import copy

    from omegaconf import open_dict, read_write

    from memtrain.config.loader import check_config

    cfg = copy.deepcopy(run_cfg)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    check_config(cfg)
    return cfg


def _run_composed(app, run_cfg) -> int:
    """Hydra's single run (Hydra.run without its composition): the run folder, .hydra/ files and
    job logging from `run_cfg`, then `_train_job` with the job's config."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import run_job
    from hydra.types import HydraContext

    from memtrain.cli import _train_job as job

    callbacks = Callbacks(run_cfg)
    callbacks.on_run_start(config=run_cfg, config_name="train")
    try:
        ret = run_job(hydra_context=HydraContext(config_loader=app.config_loader, callbacks=callbacks),
                      task_function=job, config=run_cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
                      configure_logging=True)
        callbacks.on_run_end(config=run_cfg, config_name="train", job_return=ret)
        _ = ret.return_value  # raises the job's exception, as Hydra.run does
    except OSError as exc:
        if not _is_file_error(exc):
            raise
        return _fail(str(file_system_error(exc, "cannot write the run folder:")))
    return 0


def _split_option_values(args: list[str], options: tuple[str, ...]) -> list[str]:
    """`args` with each `--option=VALUE` of `options` written as `--option VALUE` (both forms are
    accepted, as argparse accepts them)."""
    out = []
    for a in args:
        name, eq, value = a.partition("=")
        out.extend([name, value] if eq and name in options else [a])
    return out


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


def _run_hydra(args: list[str]) -> int:
    """Hand the command line to Hydra, which makes the run directory (or the multirun sweep)."""
    import hydra

    from memtrain.config.loader import CONF_DIR, register_all

    register_all()
    sys.argv = ["memtrain train", *args]
    from memtrain.cli import _train_job as job  # by module name, also under `python -m`: launchers pickle it

    # Hydra prints its own traceback for an exception it meets (e.g. a run folder it cannot create)
    # unless told to re-raise it; file-system errors are then reported here as one paragraph
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra.main(config_path=str(CONF_DIR), config_name="train", version_base=HYDRA_VERSION_BASE)(job)()
    except OSError as exc:
        if not _is_file_error(exc):
            raise
        return _fail(str(file_system_error(exc, "cannot write the run folder:")))
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()  # the application hydra.main registered (a later compose makes its own)
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
    return 0


def _train_job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from memtrain.config.loader import check_config
    from memtrain.distributed.launch import launch_workers, launched, needs_launch, world_size
    from memtrain.engine.resume import check_resume, resume_path
    from memtrain.memory.capacity import check_fits_here, check_launch_here

    run_dir = cfg.trainer.run_dir or HydraConfig.get().runtime.output_dir
    try:
        if not any(cfg == checked for checked in _CHECKED):  # a job of another process, or recomposed by Hydra
            check_config(cfg)
        if needs_launch(cfg):
            check_launch_here(cfg)
        if not launched():  # a torchrun/srun worker: the job was sized where it was submitted
            check_fits_here(cfg, cfg.launcher.nproc_per_node)
        if needs_launch(cfg):
            path = resume_path(cfg, run_dir)
            if path is not None:  # refused here, before any worker starts
                check_resume(path, cfg, world_size(cfg))
            code = launch_workers(cfg, list(HydraConfig.get().overrides.task), run_dir)
            if code:
                raise SystemExit(code)
            return
        _train_here(cfg, run_dir)
    except UserError as exc:
        raise _user_failure(exc) from None
    except OSError as exc:
        if not _is_file_error(exc):
            raise
        raise _user_failure(exc) from None


def _train_here(cfg, run_dir: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    from memtrain.engine.checkpoint import step_dir_name
    from memtrain.engine.console import print_startup, summary, warnings_from_rank0_only
    from memtrain.engine.preemption import signal_name, under_slurm
    from memtrain.engine.trainer import Trainer

    warnings_from_rank0_only()
    print_startup(cfg, dict(HydraConfig.get().runtime.choices))
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    try:
        records = trainer.fit()
    finally:
        trainer.close()
    if not trainer.env.is_main and trainer.stop_signal is None:
        return
    if trainer.stop_signal is None:
        Console().print(summary(records, trainer.step, time.perf_counter() - start, trainer.run_dir,
                                trainer.checkpointer.latest()), highlight=False)
        return
    why = signal_name(trainer.stop_signal) if trainer.stop_signal else "a signal another rank received"
    if trainer.env.is_main:
        err.print(f"memtrain: stopped by {why} after step {trainer.step} of {cfg.trainer.max_steps}; checkpoint "
                  f"{trainer.checkpointer.folder / step_dir_name(trainer.step)}; continue with trainer.resume=auto "
                  f"hydra.run.dir={run_dir}", highlight=False, soft_wrap=True, markup=False)
    if not under_slurm():  # a Slurm job exits 0 and is requeued by its batch script (the marker)
        raise SystemExit(128 + (trainer.stop_signal or signal.SIGTERM))


def estimate_command(args: list[str]) -> int:
    from memtrain.config.loader import load_config
    from memtrain.memory.estimator import estimate
    from memtrain.memory.report import render_table

    from memtrain.memory.plot import take_plot_path

    for option in ("--from-run", "--plot"):
        if sum(a == option or a.startswith(f"{option}=") for a in args) > 1:
            return _fail(f"{option} is given twice; give it once")
    explicit_run = any(a.startswith("--from-run=") for a in args)  # its value is the folder, '=' and all
    args = _split_option_values(args, ("--from-run", "--plot"))
    args, plot_path, error = take_plot_path(list(args))
    if error:
        return _fail(error)
    run = None
    if "--from-run" in args:
        i = args.index("--from-run")
        run = args[i + 1] if i + 1 < len(args) else ""
        args = args[:i] + args[i + 2:]
        # a word with '=' after --from-run is an override (DIR forgotten), unless it names a folder:
        # Hydra's own folder names hold '=' (a sweep's override_dirname, hydra.run.dir=outputs/lr=0.1)
        forgotten = "=" in run and not explicit_run and not Path(run).expanduser().exists()
        if not run or run.startswith("-") or forgotten:
            return _fail("--from-run needs a run folder or a checkpoint folder (step_<N>/)")
    # trainer.resume=<checkpoint or run folder> names a run as --from-run does: its stored config, with
    # the other overrides on top ("what would this run need with parallel=fsdp instead")
    resumes = [a for a in args if a.lstrip("+").startswith("trainer.resume=")
               and a.split("=", 1)[1] not in ("", "none", "auto")]
    if resumes:
        if run is not None or len(resumes) > 1:
            return _fail("name the run once: --from-run DIR or trainer.resume=DIR, not both")
        run = resumes[0].split("=", 1)[1]
        args = [a for a in args if a != resumes[0]]
        if not (Path(run).expanduser() / "meta.json").is_file():  # what train takes there, no more
            return _fail(f"invalid configuration at 'trainer.resume': {run!r} is not a checkpoint folder (step_<N>/ "
                         "with meta.json); a run folder is named with --from-run DIR")
    as_json = "--json" in args
    unknown = [a for a in args if a.startswith("-") and a != "--json"]
    if unknown:
        return _fail(f"unknown option {unknown[0]!r} for estimate (allowed: --json, --plot FILE.png, --from-run DIR)")
    if run is not None:
        from memtrain.memory.from_run import config_from_run

        cfg = config_from_run(run, [a for a in args if a != "--json"])
    else:
        cfg = load_config([a for a in args if a != "--json"])
    result = estimate(cfg)
    if as_json:
        from memtrain.memory.host_memory import host_estimate

        print(json.dumps({**result.as_dict(), "host_memory": host_estimate(cfg, result).as_dict()}, indent=2))
    else:
        Console().print(render_table(cfg, result))
    if plot_path is not None:
        from memtrain.memory.plot import bar_chart, write_png

        hw = cfg.hardware
        fig = bar_chart([f"{cfg.parallel.name} x {result.world_size}"], [result], hw.gpu_mem_gb, hw.mem_usable,
                        f"memtrain estimate: {cfg.model.arch}, per device and rank")
        print(f"wrote {write_png(fig, plot_path)}", file=sys.stderr)
    return 0


def plan_command(args: list[str]) -> int:
    from memtrain.memory.plan_cli import plan_main

    return plan_main(_split_option_values(args, ("--top", "--global-batch", "--steps", "--plot")), _fail)


def export_command(args: list[str]) -> int:
    from memtrain.engine.export import export_quantized

    if len(args) != 2:
        return _fail("usage: memtrain export CHECKPOINT_DIR OUT_DIR (a step_<N>/ folder of a precision.qat run)")
    out = export_quantized(args[0], args[1])
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
    from memtrain.config.schema import Device

    if options.get("device", "auto") not in Device.__members__:
        raise ValueError(f"--device must be auto, cpu or cuda, got {options['device']!r}")
    return positional, options


def _typed_stored_config(cfg):
    """A checkpoint's stored config (meta.json, plain values) with the model and data sections,
    which prediction reads, typed by their schemas (memtrain.config.schema.type_sections; data keys
    this release does not read are left out). ConfigError naming the key for a value the schema
    refuses (e.g. model.attention_backend=Naive)."""
    from memtrain.config.schema import DataConfig, model_schema, type_sections

    type_sections(cfg, {"model": model_schema(cfg.model.arch), "data": DataConfig}, drop_unknown=("data",))
    return cfg


def predict_command(args: list[str]) -> int:
    """Load a checkpoint's model (its config from meta.json; weights through the checkpointer's
    allow-listed loader, which runs no code from the files) and write the predicted structure."""
    import torch
    from omegaconf import OmegaConf

    from memtrain.config.aliases import upgrade_stored_config
    from memtrain.config.errors import ConfigError
    from memtrain.data.errors import DataFormatError
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
        cfg = OmegaConf.create(upgrade_stored_config(meta["config"]))
        spec = get_spec(cfg.model.arch)
        cfg = _typed_stored_config(cfg)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _fail(f"{checkpoint} is not a memtrain checkpoint with its config in meta.json ({type(exc).__name__}: {exc})")
    except ConfigError as exc:
        return _fail(f"{meta_file}: {exc}")
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
    from memtrain.submit import submit_command as submit

    return submit(args)


class Terminated(BaseException):
    """SIGTERM outside a training loop (which stops at a step boundary itself): like Ctrl-C's
    KeyboardInterrupt, so the process ends with one line instead of silently."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    catch_term = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and threading.current_thread() is threading.main_thread()
    if catch_term:  # a handler already there (a Slurm job's) stays
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(argv)
    finally:
        if catch_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"train": train_command, "estimate": estimate_command, "plan": plan_command, "export": export_command,
                "submit": submit_command, "predict": predict_command}
    if command not in commands:
        return _fail(f"unknown command {command!r} (allowed: {', '.join(commands)}); memtrain --help lists them")
    if command != "submit" and wants_help(rest):  # submit's argparse prints its own
        print(command_help(command))
        return 0
    if command in OVERRIDE_COMMANDS:  # before memtrain's checks and Hydra (train's sys.argv) read them
        rest = rename_overrides(rest, "the command line")
    try:
        return commands[command](rest)
    except UserError as exc:  # bad input met by any command: one paragraph, exit 2
        return _fail(str(exc))
    except OSError as exc:
        if not _is_file_error(exc):
            raise
        return _fail(str(file_system_error(exc, "file-system error at")))
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which stops at a step boundary itself)
        err.print("memtrain: interrupted", highlight=False)
        return 128 + signal.SIGINT
    except Terminated:
        err.print("memtrain: terminated", highlight=False)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
