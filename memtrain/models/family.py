"""The model families and what each declares it supports: defined in memtrain.config.families (the
config layer, which validation reads); re-exported here."""

from memtrain.config.families import (  # noqa: F401  (re-exported)
    MODEL_PARALLEL_DIMS,
    Family,
    check_model_parallel,
    families,
    family,
    model_parallel_degrees,
    supporting,
)
