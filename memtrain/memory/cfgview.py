"""A read-only view of a composed config: defined in memtrain.config.cfgview (the config layer, which
the FLOPs model also reads); re-exported here."""

from memtrain.config.cfgview import (  # noqa: F401  (re-exported)
    ConfigView,
    node_key,
    with_values,
)
