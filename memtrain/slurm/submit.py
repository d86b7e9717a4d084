"""`memtrain submit`: defined in memtrain.submit (below memtrain.cli, which runs it; the job it
submits runs memtrain.slurm.job); re-exported here."""

from memtrain.submit import (  # noqa: F401  (re-exported)
    overrides_path,
    SubmitError,
    JobSpec,
    sbatch_lines,
    batch_script,
    validate_overrides,
    write_job,
    sbatch,
    parser,
    spec_from_args,
    split_argv,
    submit_command,
    _SAFE,
)
