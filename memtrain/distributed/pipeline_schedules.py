"""Pipeline schedules and the config checks of pipeline parallelism: defined in memtrain.config.pipeline_schedules (the config layer, which validation reads); re-exported here."""

from memtrain.config.pipeline_schedules import (  # noqa: F401  (re-exported)
    ScheduleRule,
    SCHEDULES,
    PIPELINE_PARALLEL,
    PIPELINE_OFFLOAD,
    stage_ids,
    validate_pipeline,
)
