"""Multi-process cases, batched: every selected case of every test module under tests/distributed
runs in one torchrun launch per world size, and each case's own test asserts on its own result.

Starting gloo workers costs far more than the three tiny steps a case trains (an interpreter,
torch's imports and a rendezvous per rank), so the cases are not launched one by one. A module
declares its cases and parametrizes its test over them:

    CASES = {
        "ddp": Case(2, "train", (*TINY, "parallel=ddp")),
        "fsdp-no-reshard": Case(2, "train", (*TINY, "parallel=fsdp", ...), slow=True),
    }

    @pytest.mark.parametrize("case", batched(__name__, CASES))
    def test_matches_single_process(case, launched, reference):
        result = launched(case)           # this case's result (rank 0's return value)
        ...assert on it, naming `case`

The session fixture `launched` (tests/distributed/conftest.py) looks at the tests this session
selected, and on the first request launches every selected case of that world size in one
`torchrun` of tests/distributed/batch_worker.py: the process group is made once and each case
builds its own Trainer in it. A case's function (tests/distributed/cases.py, named by `fn`) runs
on every rank and gets its own folder; rank 0's return value is the case's result.

A case that raises (on any rank) or hangs ends its launch: its test fails with the traceback, or
with the launch's log; the cases after it run in a fresh launch, so every other case still
reports for itself. A case with `slow=True` is left out of the fast tier (`-m "not slow"`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO, run_bounded

HERE = Path(__file__).parent
BATCH_WORKER = HERE / "batch_worker.py"

# seconds a collective may wait for the other ranks before it fails (gloo's default is 30 min): far
# above any step of these tiny cases on a loaded machine, far below a test run's patience
COLLECTIVE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Case:
    """One multi-process case: `fn` (a function of tests/distributed/cases.py) called on every one
    of `nproc` ranks as fn(folder, *args). "{dir}" in an argument is replaced by the case's folder.
    `prepare` (a function of tests/distributed/cases.py) runs once in the test process, with the
    folder, before the launch (e.g. to write a data set the ranks only read). A case whose
    `requires` (importable module names) are missing is skipped and left out of the launch."""

    nproc: int
    fn: str
    args: tuple[str, ...] = ()
    slow: bool = False
    prepare: str | None = None
    requires: tuple[str, ...] = ()

    @property
    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


REGISTRY: dict[str, Case] = {}


def batched(module: str, cases: dict[str, Case]) -> list:
    """Register a module's cases; the parameters for `@pytest.mark.parametrize("case", ...)`:
    each case's key ("<module>::<name>"), with its name as the test id and `slow` as a marker."""
    short = module.rsplit(".", 1)[-1].removeprefix("test_")
    params = []
    for name, case in cases.items():
        key = f"{short}::{name}"
        if key in REGISTRY and REGISTRY[key] != case:
            raise ValueError(f"two batched cases are named {key}")
        REGISTRY[key] = case
        marks = [pytest.mark.slow] if case.slow else []
        if case.missing:
            marks.append(pytest.mark.skip(reason=f"needs {', '.join(case.missing)}"))
        params.append(pytest.param(key, id=name, marks=marks))
    return params


def _folder_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


class Launches:
    """Results of the selected cases, launched lazily: one torchrun per world size, on the first
    request for a case of that size."""

    def __init__(self, selected: list[str], root: Path, env: dict[str, str]):
        unknown = [k for k in selected if k not in REGISTRY]
        if unknown:
            raise ValueError(f"not registered with batched(): {unknown}")
        self.selected, self.root, self.env = selected, root, env
        self.outcome: dict[str, tuple[str, Any]] = {}  # key -> ("ok", result) | ("error", message)
        self.launched: set[int] = set()

    def folder(self, key: str) -> Path:
        return self.root / _folder_name(key)

    def __call__(self, key: str) -> Any:
        """The case's result (rank 0's return value); fails the calling test if the case raised,
        hung or did not run."""
        if key not in REGISTRY:
            raise ValueError(f"{key} is not registered with batched()")
        nproc = REGISTRY[key].nproc
        if key not in self.selected:  # e.g. asked for by a test that was not collected with it
            self.selected.append(key)
            self.launched.discard(nproc)
        if nproc not in self.launched:
            self.launched.add(nproc)
            keys = [k for k in self.selected if REGISTRY[k].nproc == nproc and k not in self.outcome]
            # DeepSpeed's cases last: ZeRO-3 patches module construction and keeps global state,
            # none of which a later case should meet
            self._run(sorted(keys, key=lambda k: any(a.startswith("parallel=zero") for a in REGISTRY[k].args)), nproc)
        status, value = self.outcome[key]
        if status != "ok":
            pytest.fail(f"case {key}: {value}", pytrace=False)
        return value

    def _run(self, keys: list[str], nproc: int) -> None:
        attempt, crashes = 0, 0
        while keys:
            attempt += 1
            crashed = self._launch(keys, nproc, attempt)
            keys = [k for k in keys if k not in self.outcome]
            crashes = crashes + 1 if crashed else 0
            if crashes == 3 and keys:  # three launches in a row died without a Python error: give up
                for k in keys:
                    self.outcome[k] = ("error", "not run: three launches in a row before it died without a Python "
                                                f"exception; the last log ({self.last_log}) ends:\n{_tail(self.last_log)}")
                return

    def _launch(self, keys: list[str], nproc: int, attempt: int) -> bool:
        """One torchrun of `keys`, which stops at the first case that fails; records the outcome of
        every case up to that one. Returns whether that one died without a Python error."""
        spec = []
        for key in keys:
            case, folder = REGISTRY[key], self.folder(key)
            folder.mkdir(parents=True, exist_ok=True)
            for stale in (*folder.glob("error_rank*.txt"), folder / "result.pt"):
                stale.unlink(missing_ok=True)
            if case.prepare:
                _resolve(case.prepare)(folder)
            spec.append({"key": key, "fn": case.fn, "dir": str(folder),
                         "args": [a.replace("{dir}", str(folder)) for a in case.args]})
        tag = f"{nproc}ranks-{attempt}"
        spec_file = self.root / f"launch-{tag}.json"
        spec_file.write_text(json.dumps({"collective_timeout_s": COLLECTIVE_TIMEOUT_S, "cases": spec}, indent=1))
        log = self.root / f"launch-{tag}.log"
        timeout = launch_timeout(len(keys))
        with log.open("w") as f:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   str(BATCH_WORKER), str(spec_file)]
            returncode = run_bounded(cmd, timeout, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT)
            ended = f"the launch was stopped after {timeout} s" if returncode is None else None
        self.last_log = log
        for key in keys:
            folder = self.folder(key)
            errors = sorted(folder.glob("error_rank*.txt"))
            if errors:
                tracebacks = "\n".join(f"--- {p.stem.removeprefix('error_')}:\n{p.read_text()}" for p in errors)
                self.outcome[key] = ("error", f"raised in the workers\n{tracebacks}")
                return False  # the launch ended here
            if (folder / "result.pt").exists():
                self.outcome[key] = ("ok", torch.load(folder / "result.pt", weights_only=True))
                continue
            # neither a result nor a Python error: it crashed, hung or was killed while running
            self.outcome[key] = ("error", f"no result ({ended or 'the workers died without a Python exception'}); "
                                          f"the launch's log ({log}) ends:\n{_tail(log)}")
            return True
        return False


def run_cases(root: Path, cases: dict[str, tuple[str, list[str]]], nproc: int, timeout: float) -> dict[str, Path]:
    """One torchrun of the batch worker outside pytest (the benchmarks in scripts/bench/): each case
    key -> (function name in tests/distributed/cases.py, overrides) runs in its own folder under
    `root`, where it leaves result.pt. Returns key -> folder; raises subprocess.CalledProcessError
    or TimeoutExpired when the launch fails."""
    folders, spec = {}, []
    for key, (fn, args) in cases.items():
        folders[key] = root / _folder_name(key)
        folders[key].mkdir(parents=True, exist_ok=True)
        spec.append({"key": key, "fn": fn, "dir": str(folders[key]), "args": list(args)})
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps({"collective_timeout_s": COLLECTIVE_TIMEOUT_S, "cases": spec}))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    str(BATCH_WORKER), str(spec_file)], cwd=REPO, env=worker_env(), check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL)
    return folders


def launch_timeout(n_cases: int) -> float:
    """Seconds a launch of n cases may take: generous (under load a case takes a minute or two,
    a launch's start tens of seconds); a hang ends there."""
    return 300 + 180 * n_cases


def _tail(path: Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return text[-chars:]


def _resolve(name: str):
    from tests.distributed import cases

    return getattr(cases, name)


def worker_env() -> dict[str, str]:
    """The workers' environment: one thread each, the repository importable (cases live in the
    tests package)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


class Lazy(dict):
    """A dict that computes a missing value on first access: references a test module needs for
    some of its cases only (e.g. one per micro-batch size), made for the cases selected."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = value = self.make(key)
        return value
