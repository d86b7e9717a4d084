"""Running memtrain on Slurm clusters: `memtrain submit` writes and submits a batch script
(submit.py); inside the job, agent.py starts torch's elastic agent on each node and job.py is the
training entry of every rank, reading its overrides back from the run directory."""
