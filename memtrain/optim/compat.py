"""Which optimizers run with which parallel and precision options: defined in memtrain.config.optimizer_compat (the config layer, which validation reads); re-exported here."""

from memtrain.config.optimizer_compat import (  # noqa: F401  (re-exported)
    SHAPE_AWARE,
    ZEROTH_ORDER,
    CONF_OPTIMIZERS,
    optimizer_name,
    optimizer_class,
    validate_optimizer,
)
