#!/usr/bin/env bash
# Submit a memtrain run to Slurm: options for sbatch, then -- and memtrain overrides, e.g.
#   scripts/slurm/submit.sh --nodes 4 --gpus-per-node 8 --time 12:00:00 -- +recipe=alphafold parallel=dap
# The arguments reach `memtrain submit` unchanged ("$@"); see docs/slurm.md.
set -euo pipefail
exec "${PYTHON:-python3}" -m memtrain.cli submit "$@"
