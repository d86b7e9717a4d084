#!/usr/bin/env bash
# Install memtrain (editable, with the test extras) into the current Python environment.
# Where no NVIDIA GPU is present, torch's CPU build goes in first: from a local wheel cache if pip
# is configured with one, else from PyTorch's CPU index (a bare `torch` requirement would pull
# the multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install "torch>=2.11,<2.14"
  elif "$PY" -m pip download -q --no-index --no-deps torch==2.13.0 -d "$(mktemp -d)" 2>/dev/null; then
    "$PY" -m pip install torch==2.13.0  # pip's configured wheel folder has the CPU build: it wins
  else
    "$PY" -m pip install torch==2.13.0 --retries 1 --timeout 15 \
      --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" --extra-index-url https://pypi.org/simple
  fi
fi
# DeepSpeed builds its C++ ops on first use (just-in-time), not at install
DS_BUILD_OPS=0 "$PY" -m pip install -e ".[dev]"
