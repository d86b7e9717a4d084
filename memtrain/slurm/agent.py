"""torch's elastic agent (torchrun) for a Slurm job step, surviving SIGUSR1.

Slurm sends `--signal=USR1@N` (and `scancel --signal=USR1`) to every process of the job's steps:
the agent as well as its workers. torchrun has no handler for SIGUSR1, whose default action ends
the process, which would take the workers down before they can checkpoint. Here the agent ignores
SIGUSR1; its workers inherit the disposition until the trainer installs its own handler
(memtrain.engine.preemption), so a signal during start-up is not fatal either.

    python -m memtrain.slurm.agent [torchrun arguments]
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from torch.distributed.run import main as torchrun

    torchrun(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
