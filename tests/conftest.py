from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memtrain.config.loader import compose_config

REPO = Path(__file__).resolve().parents[1]

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


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `memtrain ARGS` in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "memtrain.cli", *args],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def write_file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    """tmp_path/name holding `content` (bytes written as they are)."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path
