"""Cross-field checks of QAT and FP8 settings: defined in memtrain.config.quantization (the config layer, which validation reads); re-exported here."""

from memtrain.config.quantization import (  # noqa: F401  (re-exported)
    validate_quantization,
)
