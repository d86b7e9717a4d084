"""Running memtrain on Slurm clusters: `memtrain submit` (memtrain.submit, re-exported as
submit.py) writes and submits a batch script; inside the job, agent.py starts torch's elastic agent
on each node and job.py is the training entry of every rank, reading its overrides back from the
run directory and running `memtrain train` through memtrain.cli."""
