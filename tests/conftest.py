"""Shared by every test: the tiny model, the CLI runner, and the suite's conventions (tests/README.md):

- Threads are set deliberately: THREADS (MEMTRAIN_TEST_THREADS, default 1) for this process's torch
  and, through OMP_NUM_THREADS, for every process a test starts (CLI runs, torchrun workers, Slurm
  jobs' own setting aside). The suite runs on 2 cores with pytest-xdist's 2 workers; two threads per
  process there made in-process CPU training ~30x slower once the cores were shared.
- Markers: `slow` (left out of the fast tier, `pytest -m "not slow"`), `multiprocess` (starts
  several processes: torchrun, memtrain's launcher) and `slurm` (a real Slurm cluster). Under
  pytest-xdist the multiprocess and slurm tests all go to one worker, one at a time (xdist group
  "serial"), so they never compete with each other for the 2 cores or for ports.
- One-time builds live in cache folders under ~/.cache/memtrain (DeepSpeed's C++ ops in
  TORCH_EXTENSIONS_DIR, torch.compile's in TORCHINDUCTOR_CACHE_DIR, Triton's in TRITON_CACHE_DIR),
  which .ci/run fills before the tests (scripts/build_ops.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MEMTRAIN_CACHE_DIR", Path.home() / ".cache" / "memtrain"))
THREADS = int(os.environ.get("MEMTRAIN_TEST_THREADS", "1"))

# before torch is imported (here or in any process a test starts)
os.environ["OMP_NUM_THREADS"] = str(THREADS)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE / "torchinductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(CACHE / "triton"))

import torch  # noqa: E402

from memtrain.config.loader import compose_config  # noqa: E402

torch.set_num_threads(THREADS)
SERIAL = ("multiprocess", "slurm")  # markers whose tests run one at a time, on one xdist worker


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group markers
def pytest_collection_modifyitems(config, items):
    batched = [item for item in items if "launched" in getattr(item, "fixturenames", ())]
    for item in items:
        if any(item.get_closest_marker(m) for m in SERIAL):
            item.add_marker(pytest.mark.xdist_group("serial"))
    if batched:
        from tests.distributed.batch import launch_timeout

        # the first test of a world size waits for that size's whole batched launch (bounded by
        # its own timeout), plus a single-process reference
        for item in batched:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(600 + 2 * launch_timeout(len(batched))))

_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_process_group_left_behind():
    """A test that leaves a process group or a launch environment (RANK, WORLD_SIZE, MASTER_PORT...)
    in this xdist worker fails itself, and the leak is cleaned up: otherwise every later test in the
    worker would read it as a launched job (a CLI run inherits it and cannot bind MASTER_PORT)."""
    before = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    yield
    import torch.distributed as dist

    leaked = [k for k in _LAUNCH_ENV if os.environ.get(k) != before[k]]
    group = dist.is_available() and dist.is_initialized()
    for k in leaked:
        if before[k] is None:
            os.environ.pop(k)
        else:
            os.environ[k] = before[k]
    if group:
        dist.destroy_process_group()
    if leaked or group:
        pytest.fail(f"the test left behind {'a process group and ' if group else ''}the environment {leaked}",
                    pytrace=False)


@pytest.fixture
def make_trainer():
    """Trainer(cfg, run_dir, ...) for a test in this process; every trainer it made is closed when
    the test ends (a Trainer always holds a process group, one rank's too: Trainer.close destroys
    the group it made)."""
    from memtrain.engine.trainer import Trainer

    made = []

    def _make(*args, **kwargs):
        made.append(Trainer(*args, **kwargs))
        return made[-1]

    yield _make
    for trainer in reversed(made):  # a later trainer joined the group an earlier one made
        trainer.close()


# A model and batch small enough that a few optimizer steps take well under a second on 2 cores.
TINY = [
    "model=gpt_tiny",
    "model.dim=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "data=synthetic",
    "data.seq_len=32",
    "data.num_synthetic_tokens=20000",
    "trainer.micro_batch_size=4",
    "trainer.log_every=1",
    "trainer.device=cpu",
]


@pytest.fixture
def compose():
    def _compose(*overrides: str, tiny: bool = True):
        return compose_config((TINY if tiny else []) + list(overrides))

    return _compose


def end_session(proc: subprocess.Popen) -> None:
    """End `proc`, started with start_new_session=True, and every process it started (workers of
    torchrun or of memtrain's launcher): SIGTERM, then SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bounded(cmd: list[str], timeout: float, **kwargs) -> int | None:
    """Run `cmd` in a session of its own; past `timeout` seconds, end it and everything it
    started. The exit code, or None when it was stopped."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_session(proc)
        proc.wait()
        return None


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `memtrain ARGS` in a fresh interpreter, as a user would; past `timeout` seconds it and
    any workers it started are ended and subprocess.TimeoutExpired is raised."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "memtrain.cli", *args]
    proc = subprocess.Popen(cmd, cwd=cwd or REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_session(proc)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def write_file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    """tmp_path/name holding `content` (bytes written as they are)."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path
