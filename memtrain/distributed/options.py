"""The parallel options and the offloads each works with: defined in memtrain.config.parallel_options (the config layer, which validation reads); re-exported here."""

from memtrain.config.parallel_options import (  # noqa: F401  (re-exported)
    _EVERY,
    PARALLEL_OFFLOADS,
    PARALLEL_MODEL_DIMS,
    PARALLEL_OPTIONS,
    OFFLOAD_OPTIONS,
    parallel_options_for,
    parallel_options_with,
)
