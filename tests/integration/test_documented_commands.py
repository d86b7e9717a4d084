"""Every command that README.md and docs/*.md show works as written here, or refuses cleanly.

The commands are read from the docs themselves: each line of a code block that starts with
`memtrain `, `torchrun `, `python scripts/...`, `bash scripts/...` or `scripts/...` (after optional
VAR=value prefixes; a trailing backslash continues the line), and each inline `memtrain ...` or
`python scripts/...` span without a placeholder (`...`, `<...>`, an upper-case word). So a command
added to the docs is checked without touching this file.

How each one is checked:

- A command whose doc comment says what it needs that this machine may lack (`# needs a GPU`,
  `# needs 8 GPUs`, `# needs a Slurm cluster`, `# needs an NVMe folder`) is run as written and must
  refuse at once where that is missing: exit code 2, one paragraph naming what is missing, no
  traceback, within its budget.
- Any other command runs as written, unless SHRINK below states how it is made cheap (fewer
  steps, fewer processes, a smaller model): exit code 0 within its budget. Those that stay
  expensive even shrunk are `slow`; the fast tier then still composes and validates their
  overrides as written.
- `memtrain plan` commands are marked PLANNER: `memtrain plan` answers in minutes today, so they
  run in the slow tier with a long budget (to tighten once the planner answers in seconds).

memtrain commands of one process run in this process (`memtrain.cli.main`), in a temporary working
folder (Hydra's outputs/ and multirun/ land there); the others run as subprocesses bounded by
their budget. Budgets are bounds against hangs and minute-long waits on this 2-core machine, not
speed measurements.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, end_session

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:memtrain\s|torchrun\s|python3?\s+scripts/\S+\.py|"
                      r"bash\s+scripts/\S+\.sh|scripts/\S+\.(?:sh|py))")
_INLINE = re.compile(r"`((?:memtrain|python3? scripts/)[^`]*)`")
_PLACEHOLDER = re.compile(r"\.\.\.|<|\b[A-Z]{2,}\b(?!=)")
NEEDS = re.compile(r"\bneeds (a GPU|\d+ GPUs|a Slurm cluster|an NVMe folder)\b")


@dataclass(frozen=True)
class Doc:
    where: str  # file:line
    command: str
    comment: str = ""


def _code_lines(text: str):
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        elif fenced or (line.startswith("    ") and not line.lstrip().startswith("|")):
            yield n, line.strip()


def documented_commands() -> list[Doc]:
    docs = []
    for path in DOC_FILES:
        text, name = path.read_text(), path.relative_to(REPO)
        start, pending = 0, None
        for n, line in _code_lines(text):
            if pending is None and not _COMMAND.match(line):
                continue
            if pending is None:
                start, pending = n, ""
            code, _, comment = line.partition("  #")
            pending += " " + code.strip()
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            docs.append(Doc(f"{name}:{start}", " ".join(pending.split()), comment.strip()))
            pending = None
        for m in _INLINE.finditer(text):
            command = " ".join(m.group(1).split())
            if len(command.split()) > 2 and not _PLACEHOLDER.search(command):
                docs.append(Doc(f"{name}:{text[:m.start()].count(chr(10)) + 1}", command))
    return docs


@dataclass(frozen=True)
class How:
    """How a documented command is made cheap here. `set`: KEY=VALUE arguments that replace the
    same key's argument (or are appended); `replace`: exact argument substitutions; `slow`: left
    out of the fast tier; `multiprocess`: starts several processes; `full_slow`: also run as
    written in the slow tier; `budget`: seconds."""

    set: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    budget: float = 120
    slow: bool = False
    multiprocess: bool = False
    full_slow: bool = False
    run_first: str | None = None  # a documented command whose output this one reads (same folder)
    reason: str = ""


TWO_STEPS = ("trainer.max_steps=2",)
SMALL_DECODER = ("model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "data.seq_len=16",
                 "trainer.micro_batch_size=1", "trainer.log_every=50")
AF_TRAIN = "memtrain train +recipe=alphafold_tiny trainer.save_every=30 hydra.run.dir=outputs/af"
# predict reads the checkpoint AF_TRAIN wrote (2 steps here) and the data folder the docs name relative
# to the checkout (here wherever MEMTRAIN_DATA_DIR or the default puts it)
PREDICT = How(run_first=AF_TRAIN, slow=True, budget=300, replace=(
    ("outputs/af/checkpoints/step_00000030", "outputs/af/checkpoints/step_00000002"),),
    reason="trains alphafold_tiny for 2 steps first, then predicts a whole chain on the CPU")
QAT_TRAIN = "memtrain train precision.qat=int8 trainer.max_steps=100 trainer.save_every=100 hydra.run.dir=outputs/qat"
EVOFORMER_MEMORY_PARTS = ("python scripts/bench/evoformer_memory.py --sizes 64x128 --precisions float32 --backends naive "
                          "--dropout off --no-options --repeats 10 --threads 1 --markdown")
EVOFORMER_MEMORY_OPTIONS = "python scripts/bench/evoformer_memory.py --sizes 64x128 --repeats 0 --parts --markdown"
PLANNER = How(budget=180, reason="planner: 7-31 s each on the shared 2-core machine (docs/planner.md)")
# --validate trains each of the top rows here: a small decoder, one step, one GPU's worth of rows
VALIDATE = How(set=("model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "data.seq_len=32",
                    "hardware.gpus=1"), replace=(("3", "1"),), slow=True, budget=900,
               reason="trains every top row: a 2-layer decoder, 1 step each")

SHRINK: dict[str, How] = {
    "memtrain plan +recipe=protein_lm --validate --steps 3": VALIDATE,
    "memtrain plan +recipe=protein_lm precision=bf16 hardware.gpus=1 --validate --steps 3": VALIDATE,
    "memtrain train": How(set=TWO_STEPS, full_slow=True, reason="40 steps: 1-3 minutes on 2 cores"),
    "memtrain train +recipe=protein_lm": How(set=(*TWO_STEPS, "trainer.micro_batch_size=2", "data.seq_len=64"),
                                            reason="2000 steps of 33M parameters"),
    "memtrain train precision=bf16 activation_checkpoint=full trainer.max_steps=200": How(set=TWO_STEPS),
    "memtrain train -m optimizer=adamw,adafactor": How(set=TWO_STEPS, budget=180),
    "memtrain train parallel=fsdp offload=params_cpu": How(set=TWO_STEPS),
    "memtrain train parallel=ddp launcher.nproc_per_node=8": How(
        set=(*TWO_STEPS, "launcher.nproc_per_node=2"), slow=True, multiprocess=True, budget=300,
        reason="8 workers on 2 cores"),
    "torchrun --nproc_per_node 8 -m memtrain.cli train parallel=fsdp": How(
        set=TWO_STEPS, replace=(("8", "2"),), slow=True, multiprocess=True, budget=300, reason="8 workers on 2 cores"),
    QAT_TRAIN: How(set=SMALL_DECODER, budget=180, reason="100 steps: the model shrunk, the steps and saves as written"),
    "memtrain export outputs/qat/checkpoints/step_00000100 quantized/": How(run_first=QAT_TRAIN, budget=240),
    "memtrain export outputs/qat/checkpoints/step_00000100 exported/": How(run_first=QAT_TRAIN, budget=240),
    AF_TRAIN: How(set=(*TWO_STEPS, "trainer.save_every=2"), slow=True, budget=240, reason="30 steps of AlphaFold"),
    "memtrain train +recipe=alphafold_tiny": How(set=TWO_STEPS, full_slow=True, budget=240,
                                                 reason="about a minute as written"),
    "memtrain train model=gpt_small parallel=fsdp_tp launcher.nproc_per_node=8": How(
        set=(*TWO_STEPS, "launcher.nproc_per_node=4", "data.seq_len=64", "trainer.micro_batch_size=1"), slow=True,
        multiprocess=True, budget=420, reason="8 workers; 4 keep both dimensions (dp_shard 2 x tp 2)"),
    "memtrain train model=gpt_small parallel=ring data.seq_len=8192 model.max_seq_len=8192 launcher.nproc_per_node=4":
        How(set=(*TWO_STEPS, "launcher.nproc_per_node=2", "data.seq_len=512", "trainer.micro_batch_size=1"),
            slow=True, multiprocess=True, budget=420, reason="8192-token sequences on 4 workers"),
    "memtrain train parallel=fsdp trainer.init_device=meta launcher.nproc_per_node=2": How(
        set=TWO_STEPS, slow=True, multiprocess=True, budget=300),
    "memtrain train parallel=zero3 trainer.init_device=meta launcher.nproc_per_node=2": How(
        set=TWO_STEPS, slow=True, multiprocess=True, budget=300),
    "memtrain train parallel=pp launcher.nproc_per_node=4": How(set=TWO_STEPS, slow=True, multiprocess=True,
                                                                budget=300),
    "memtrain train parallel=pp parallel.pp=2 parallel.dp_replicate=2 launcher.nproc_per_node=4": How(
        set=TWO_STEPS, slow=True, multiprocess=True, budget=300),
    "memtrain train parallel=fsdp parallel.pp=2 parallel.pp_schedule=interleaved_1f1b parallel.pp_stages_per_rank=2 "
    "launcher.nproc_per_node=4": How(set=TWO_STEPS, slow=True, multiprocess=True, budget=300),
    "memtrain train parallel=pp_zbv launcher.nproc_per_node=2": How(set=TWO_STEPS, slow=True, multiprocess=True,
                                                                    budget=300),
    "python scripts/bench/comm_volume.py --model gpt_1b --devices 8 --seq-len 2048 --micro-batch 1": How(
        slow=True, reason="a fresh interpreter importing torch and memtrain: 5-25 s on 2 cores"),
    "bash scripts/setup.sh": How(reason="installs packages into this environment: only its syntax is checked"),
    "python scripts/bench/optimizers.py --smoke": How(slow=True, budget=300, reason="one process per optimizer"),
    "python scripts/bench/calibrate_estimator.py --smoke": How(slow=True, budget=300),
    "python scripts/bench/optimizer_step.py --optimizers adamw lion --repeats 2 --steps 3": How(
        slow=True, budget=300, reason="58.5M parameters' optimizer steps on CPU: 1-2 minutes on 2 cores"),
    "python3 scripts/bench/zero_step_memory.py": How(
        slow=True, budget=300, multiprocess=True,
        reason="a 2-rank DeepSpeed launch per config; tests/distributed/test_zero.py checks the same storages"),
    "python3 scripts/bench/zero_init_memory.py": How(
        slow=True, budget=300, multiprocess=True,
        reason="4 DeepSpeed cases in one 2-rank launch; tests/distributed/test_meta_init.py checks a smaller one"),
    # 19 configurations x two real steps: a minute or more on 2 busy cores
    "python scripts/bench/peak_vs_estimate.py": How(slow=True, budget=600),
    "TRITON_INTERPRET=1 python scripts/bench/evoformer_attention.py --smoke": How(slow=True, budget=300),
    "python scripts/bench/lm_vs_hf.py --device cpu --preset 58m --shape dim=256 n_layers=4 n_heads=4 micro_batch=2 "
    "seq_len=256 --repeats 2 --steps 3 --warmup 1": How(
        replace=(("2", "1"), ("3", "1")), slow=True, budget=600,
        reason="8 fresh processes per repetition: one repetition of one step here"),
    EVOFORMER_MEMORY_PARTS: How(set=("--smoke",), slow=True, budget=300, reason="minutes at 64 x 128 on 2 cores"),
    EVOFORMER_MEMORY_OPTIONS: How(set=("--smoke",), slow=True, budget=300, reason="minutes at 64 x 128 on 2 cores"),
    "python3 scripts/bench/gpu_suite.py --smoke --out /tmp/gpu_suite_smoke": How(
        set=("--parts=fp8_linear",), replace=(("/tmp/gpu_suite_smoke", "gpu_suite_smoke"),), slow=True, budget=600,
        reason="every part's smoke runs in tests/unit/test_gpu_suite.py (slow); here one part, into the test's folder"),
    "python3 scripts/bench/update_benchmarks.py FILES_AT/gpu_suite.json": How(
        run_first="python3 scripts/bench/gpu_suite.py --smoke --out /tmp/gpu_suite_smoke",
        replace=(("FILES_AT/gpu_suite.json", "gpu_suite_smoke/gpu_suite.json"),), set=("--check", "--allow-smoke"),
        slow=True, budget=120, reason="FILES_AT holds a GPU run's JSON; here a smoke run's, shown as a diff (--check)"),
}


def _expanded() -> list[Doc]:
    """The documented commands, `a && b` split into its commands, each command once."""
    seen, out = set(), []
    for doc in documented_commands():
        for part in doc.command.split(" && "):
            if part not in seen:
                seen.add(part)
                out.append(Doc(doc.where, part, doc.comment if part == doc.command.split(" && ")[-1] else ""))
    return out


DOCS = _expanded()


def _how(doc: Doc) -> How:
    if doc.command.startswith("memtrain plan"):
        return SHRINK.get(doc.command, PLANNER)
    if doc.command.startswith("memtrain predict"):
        return SHRINK.get(doc.command, PREDICT)
    return SHRINK.get(doc.command, How())


DOC_DATA = "../shared/data/proteins/"  # how the docs name the protein data: the default, next to the checkout


def shrunk(command: str, how: How) -> list[str]:
    from memtrain.data.sequences import default_protein_root

    args = [f"{default_protein_root()}/{a[len(DOC_DATA):]}" if a.startswith(DOC_DATA) else a
            for a in shlex.split(command)]
    for old, new in how.replace:
        args = [new if a == old else a for a in args]
    for setting in how.set:
        key = setting.split("=", 1)[0]
        hits = [i for i, a in enumerate(args) if a.split("=", 1)[0] == key]
        if hits:
            args[hits[0]] = setting
        else:
            args.append(setting)
    return args


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class Result:
    code: int | None  # None: stopped at the budget
    out: str
    err: str
    seconds: float
    argv: list[str] = field(default_factory=list)


def _env(args: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    while args and re.match(r"^[A-Z_][A-Z0-9_]*=", args[0]):
        key, _, value = args.pop(0).partition("=")
        env[key] = value
    return env, args


def run_subprocess(args: list[str], budget: float, cwd: Path) -> Result:
    env, args = _env(list(args))
    if args[0] in ("python", "python3"):
        args = [sys.executable, str(REPO / args[1]), *args[2:]]
    elif args[0] == "bash":
        args = ["bash", "-n", str(REPO / args[1])]  # SHRINK states why only the syntax
    elif args[0].startswith("scripts/"):
        args = [str(REPO / args[0]), *args[1:]]
    elif args[0] == "torchrun":
        args = [sys.executable, "-m", "torch.distributed.run", *args[1:]]
    elif args[0] == "memtrain":
        args = [sys.executable, "-m", "memtrain.cli", *args[1:]]
    start = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=budget)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        end_session(proc)
        out, err = proc.communicate()
        code = None
    return Result(code, out, err, time.monotonic() - start, args)


def run_in_process(args: list[str], capsys) -> Result:
    from memtrain import cli

    start = time.monotonic()
    argv = sys.argv
    try:
        code = cli.main(args[1:])
    except SystemExit as exc:  # Hydra ends a failed job with sys.exit
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err, time.monotonic() - start, args)


def run(args: list[str], how: How, cwd: Path, capsys) -> Result:
    in_process = args[0] == "memtrain" and not how.multiprocess and (args[1] != "submit" or "--dry-run" in args)
    if not in_process:
        return run_subprocess(args, how.budget, cwd)
    return run_in_process(args, capsys)


def _show(result: Result) -> str:
    return f"{shlex.join(result.argv)}\nexit {result.code} after {result.seconds:.1f} s\n{result.out[-3000:]}\n{result.err[-3000:]}"


def _needs_protein_data(args: list[str]) -> bool:
    from memtrain.data.sequences import default_protein_root

    plain = args[0] == "memtrain" and args[1] == "train" and not any("recipe=" in a or "data=" in a for a in args)
    reads = plain or "+recipe=protein_lm" in args or any(a.startswith(str(default_protein_root())) for a in args)
    return reads and not default_protein_root().is_dir()


# ---------------------------------------------------------------------------------------------
# what this machine lacks


def _missing(need: str) -> str | None:
    """Why this machine lacks `need` (as the docs write it), or None when it has it."""
    if "GPU" in need:
        import torch

        return None if torch.cuda.is_available() else "no CUDA device"
    if "Slurm" in need:
        from memtrain.prereq import slurm_unreachable

        return slurm_unreachable()
    return None if Path("/local/nvme").is_dir() else "no /local/nvme"  # the folder the documented command names


# what the one-paragraph refusal says for each need
REFUSAL_WORDS = {"GPU": ("GPU",), "Slurm": ("Slurm", "--dry-run"), "NVMe": ("offload.nvme_path",)}


def _refuses(doc: Doc) -> bool:
    return NEEDS.search(doc.comment) is not None and not doc.command.startswith("memtrain plan")  # plan: PLANNER


def _script(doc: Doc) -> str | None:
    """The benchmark script a command runs (python scripts/bench/X.py ...), else None."""
    m = re.search(r"python3? (scripts/\S+\.py)", doc.command)
    return m.group(1) if m else None


# each GPU benchmark's refusal once in the fast tier (its first documented command), together
FAST_REFUSALS = {}
for _doc in DOCS:
    if _refuses(_doc) and _script(_doc) is not None:
        FAST_REFUSALS.setdefault(_script(_doc), _doc.command)


def _params():
    for doc in DOCS:
        needs = NEEDS.search(doc.comment)
        how = _how(doc)
        marks = []
        if _refuses(doc):
            kind = next(k for k in REFUSAL_WORDS if k in needs.group(1))
            again = _script(doc) is not None and FAST_REFUSALS[_script(doc)] != doc.command
            slow_shell = doc.command.startswith("scripts/")  # the wrapper of `memtrain submit`: a fresh interpreter
            yield pytest.param(doc, kind, marks=[pytest.mark.slow] if again or slow_shell else [],
                               id=f"{doc.where} refuses: {doc.command}"[:150])
            continue
        if how.slow:
            marks.append(pytest.mark.slow)
        if how.multiprocess:
            marks.append(pytest.mark.multiprocess)
        yield pytest.param(doc, None, marks=marks, id=f"{doc.where}: {doc.command}"[:150])
        if how.full_slow:
            yield pytest.param(Doc(doc.where, doc.command, "as written"), None, marks=[pytest.mark.slow],
                               id=f"{doc.where} as written: {doc.command}"[:150])


@pytest.fixture(scope="module")
def script_refusals(tmp_path_factory):
    """The GPU benchmarks' refusals, run together (each imports torch; 3 at a time on 2 cores)."""
    cwd = tmp_path_factory.mktemp("bench")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {c: pool.submit(run_subprocess, shlex.split(c), 180, cwd) for c in FAST_REFUSALS.values()}
        return {command: f.result() for command, f in futures.items()}


@pytest.mark.parametrize("doc,refuses", list(_params()))
def test_documented_command(doc: Doc, refuses: str | None, tmp_path, monkeypatch, capsys, request):
    how = _how(doc)
    monkeypatch.chdir(tmp_path)
    if refuses is not None:
        reason = _missing(NEEDS.search(doc.comment).group(1))
        if reason is None:
            pytest.skip(f"this machine has what `{doc.command}` needs: it would really run")
        args = shlex.split(doc.command)
        if args[0] == "memtrain":
            result = run_in_process(args, capsys)
        elif doc.command in FAST_REFUSALS.values():
            result = request.getfixturevalue("script_refusals")[doc.command]
        else:
            result = run_subprocess(args, 180, tmp_path)
        words = REFUSAL_WORDS[refuses]
        assert result.code == 2, f"{doc.where}: expected a clean refusal (exit 2) here ({reason})\n{_show(result)}"
        assert "Traceback" not in result.err + result.out, _show(result)
        assert all(w in result.err for w in words), f"{doc.where}: the refusal should name {words}\n{_show(result)}"
        assert len(result.err.strip().splitlines()) <= 3, f"{doc.where}: one paragraph\n{_show(result)}"
        assert result.seconds < 120, f"{doc.where}: a refusal must come at once\n{_show(result)}"
        return
    args = shlex.split(doc.command) if doc.comment == "as written" else shrunk(doc.command, how)
    if _needs_protein_data(args):
        pytest.skip("real protein data not found (set MEMTRAIN_DATA_DIR)")
    if how.run_first is not None:
        first = run(shrunk(how.run_first, SHRINK[how.run_first]), SHRINK[how.run_first], tmp_path, capsys)
        assert first.code == 0, _show(first)
    result = run(args, how, tmp_path, capsys)
    assert result.code == 0, f"{doc.where}: `{doc.command}` failed here\n{_show(result)}"
    assert result.seconds < how.budget, f"{doc.where}: over its budget of {how.budget} s\n{_show(result)}"


def _slow_overrides():
    for doc in DOCS:
        how = _how(doc)
        args = shlex.split(doc.command)
        if how.slow and args[0] == "memtrain" and args[1] in ("train", "estimate", "plan") and "-m" not in args:
            yield pytest.param(doc, id=f"{doc.where}: {doc.command}"[:150])


@pytest.mark.parametrize("doc", list(_slow_overrides()))
def test_slow_command_composes_and_validates_as_written(doc: Doc):
    """The fast tier's check of the commands it does not run: their config is valid as written."""
    from memtrain.config.loader import load_config

    overrides = [a for a in shlex.split(doc.command)[2:] if not a.startswith("-") and not a.isdigit()]
    assert load_config(overrides) is not None


def test_commands_are_found_and_the_shrink_table_is_current():
    commands = {d.command for d in DOCS}
    assert len(commands) >= 40, sorted(commands)  # the docs show about 60; an extraction bug finds few
    stale = [c for c in SHRINK if c not in commands]
    assert not stale, f"SHRINK names commands no doc shows any more: {stale}"
    for doc in DOCS:
        needs = NEEDS.search(doc.comment)
        assert not (needs and doc.command in SHRINK and not doc.command.startswith("memtrain plan")), f"{doc.where}: a command marked '{needs.group(0)}' is checked " \
                                                      "to refuse, not shrunk"


def test_extraction_reads_code_blocks_continuations_and_inline_commands(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("Text `memtrain estimate model=gpt_1b --json` and `memtrain plan ...` and `memtrain train`.\n\n"
                    "    memtrain train a=1 \\\n        b=2   # needs a GPU\n    conf/  not a command\n"
                    "    TRITON_INTERPRET=1 python scripts/bench/x.py --smoke\n")
    monkeypatch.setattr(sys.modules[__name__], "DOC_FILES", [page])
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = {(d.command, d.comment) for d in documented_commands()}
    assert found == {("memtrain train a=1 b=2", "needs a GPU"),
                     ("TRITON_INTERPRET=1 python scripts/bench/x.py --smoke", ""),
                     ("memtrain estimate model=gpt_1b --json", "")}, found
