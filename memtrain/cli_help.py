"""memtrain's help texts: `memtrain --help` and `memtrain COMMAND --help`. Read from the conf/ and
recipes/ folders only (no torch, no Hydra), so help is instant."""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("model", "parallel", "precision", "optimizer", "offload", "activation_checkpoint", "data", "trainer", "launcher",
          "hardware")

USAGE = """usage: memtrain COMMAND [hydra overrides] [options]      memtrain COMMAND --help for one command

commands:
  train     compose, check and train (add -m for a Hydra multirun sweep)
  estimate  per-device memory of a configuration, before a GPU is touched [--json] [--plot F.png]
  plan      the configurations that fit hardware.*, fastest to a trained model first [--top K] ...
  export    write a precision.qat checkpoint with integer weights: memtrain export CHECKPOINT OUT
  predict   a structure (PDB/mmCIF) from a trained AlphaFold: memtrain predict CHECKPOINT INPUT OUTPUT
  submit    sbatch a training run: memtrain submit [slurm options] -- [hydra overrides]

overrides: group choices (model=gpt_1b precision=bf16), keys (trainer.max_steps=100), recipes
(+recipe=protein_lm). A bad key, value or combination is one paragraph and exit code 2."""


def options(group: str) -> list[str]:
    """The options of config group `group` (conf/<group>/*.yaml; recipes for 'recipe')."""
    folder = _ROOT / ("recipes" if group == "recipe" else f"conf/{group}")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def groups_text() -> str:
    width = max(len(g) for g in GROUPS) + 2
    lines = [f"  {g + ':':<{width}}{' '.join(options(g))}" for g in GROUPS]
    lines.append(f"  {'+recipe=':<{width}}{' '.join(options('recipe'))}")
    lines.append(f"  {'hydra/launcher=':<{width}}{' '.join(options('hydra/launcher'))} (Hydra's own: basic, the default)")
    return "\n".join(lines)


def usage() -> str:
    return f"{USAGE}\n\nconfig groups (GROUP=OPTION):\n{groups_text()}"


TRAIN = """usage: memtrain train [hydra overrides] [-m] [--cfg job]

Compose conf/train.yaml with the overrides, check the result (and every job of a -m sweep), check
what the run needs on this machine (CUDA, libaio for offload=nvme, a rendezvous for several nodes,
a Slurm controller for hydra/launcher=slurm), then train. Workers start only after all of that.

  memtrain train                                   gpt_tiny on real protein sequences, 40 steps
  memtrain train +recipe=protein_lm trainer.max_steps=200
  memtrain train precision=bf16 activation_checkpoint=full parallel=ddp launcher.nproc_per_node=2
  memtrain train -m optimizer=adamw,adafactor      one job per value (Hydra multirun)
  memtrain train +recipe=alphafold --cfg job       print the composed config; train nothing

keys often set: trainer.max_steps trainer.micro_batch_size trainer.grad_accum trainer.device
trainer.save_every trainer.resume=auto|PATH hydra.run.dir=DIR launcher.nproc_per_node launcher.nnodes

{groups}

Output: hydra.run.dir (default outputs/<date>/<time>/): metrics.jsonl, checkpoints/step_<N>/."""

ESTIMATE = """usage: memtrain estimate [hydra overrides] [--json] [--plot FILE.png] [--from-run DIR]

Per-device memory of the composed configuration: parameters, gradients, optimizer states (exact,
from the parameter shapes on the meta device) and activations (analytic), with what moves to host
memory or NVMe, for the parallel layout's world size (launcher.nproc_per_node x launcher.nnodes).
Starts no process and needs no GPU, rendezvous or data.

  memtrain estimate +recipe=alphafold parallel=zero2 launcher.nproc_per_node=8
  memtrain estimate model=gpt_1b precision=bf16 data.seq_len=2048 trainer.micro_batch_size=4 --json

  --json            byte counts as JSON instead of the table
  --plot FILE.png   also write a stacked bar chart of the bytes by term against the GPU's memory
  --from-run DIR    start from the config stored in a run's newest checkpoint (or a step_<N>/ folder);
                    the overrides change it (parallel=fsdp launcher.nproc_per_node=8: that run sharded);
                    trainer.resume=DIR names a run the same way

{groups}"""

PLAN = """usage: memtrain plan [hydra overrides] [--json] [--top K] [--global-batch N] [--validate [--steps N]]
                     [--plot FILE.png]

Enumerate precision, activation checkpointing, micro-batch, optimizer, parallel layout, offload and
chunking for the composed model on hardware.* (hardware=h100|a100, hardware.gpus, hardware.nodes,
hardware.gpu_mem_gb, hardware.host_mem_gb), drop what is invalid or does not fit, and rank the rest
by predicted time to a trained model (step time x the steps the optimizer needs; near-ties go to the
simplest layout). Every row's `memtrain train` command is printed whole (docs/planner.md).

  memtrain plan model=gpt_1b hardware.gpu_mem_gb=24 --top 5
  memtrain plan +recipe=alphafold hardware=a100 hardware.gpus=8

  --json             rows as JSON
  --top K            show the best K rows (default 10)
  --global-batch N   sequences per optimizer step to keep fixed (default: the config's)
  --validate         run the top rows here for a few steps (shrunk to this machine's devices where
                     they need more): measured vs predicted memory and time, or why a row is skipped
  --steps N          steps per validated row (default 3)
  --plot FILE.png    also write a stacked bar chart of each row's bytes by term against the GPU's memory"""

EXPORT = """usage: memtrain export CHECKPOINT OUT

Write the integer weights of a precision.qat run's checkpoint (a checkpoints/step_<N>/ folder) to
the folder OUT: int8, packed int4 or packed ternary with their scales (docs/precision.md).

  memtrain export outputs/<date>/<time>/checkpoints/step_00000100 exported/"""

PREDICT = """usage: memtrain predict CHECKPOINT INPUT OUTPUT [--msa A3M] [--chain ID] [--device auto|cpu|cuda]

Build a trained AlphaFold from its checkpoint (a checkpoints/step_<N>/ folder; the config from its
meta.json, the weights through the allow-listed reader) and write the predicted structure of INPUT
(mmCIF .cif or A3M .a3m) to OUTPUT (.pdb or .cif), pLDDT in the B-factor column (docs/alphafold.md).

  memtrain predict outputs/<run>/checkpoints/step_00000030 4zey.cif 4zey_pred.pdb
  memtrain predict CHECKPOINT 2q2k.cif out.pdb --chain B --msa alignments/2q2k_A.a3m

  --msa A3M     the alignment for an mmCIF input
  --chain ID    which chain of an mmCIF input
  --device      auto (CUDA where visible), cpu or cuda"""

COMMANDS = {"train": TRAIN, "estimate": ESTIMATE, "plan": PLAN, "export": EXPORT, "predict": PREDICT}


def command_help(command: str) -> str:
    return COMMANDS[command].replace("{groups}", f"config groups (GROUP=OPTION):\n{groups_text()}")


def wants_help(args: list[str]) -> bool:
    """`--help` or `-h` before any `--` (after it, arguments belong to the job)."""
    head = args[:args.index("--")] if "--" in args else args
    return any(a in ("-h", "--help") for a in head)
