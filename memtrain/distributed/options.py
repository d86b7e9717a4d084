"""The parallel options and the offloads each works with: the registry in memtrain.config.parallel_options (the config layer, which validation reads); re-exported here."""

from memtrain.config.parallel_options import (  # noqa: F401  (re-exported)
    OFFLOAD_OPTIONS,
    OFFLOAD_REGISTRY,
    PARALLEL_OPTIONS,
    PARALLEL_REGISTRY,
    Backend,
    DataParallel,
    OffloadOption,
    ParallelOption,
    Place,
    offload_option,
    parallel_option,
    parallel_options_for,
    parallel_options_with,
)
