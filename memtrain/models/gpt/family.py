"""The GPT decoder's declaration (memtrain.models.family): tensor, context and pipeline parallelism."""

from memtrain.models.family import Family

FAMILIES = (Family("gpt", "memtrain.models.gpt.spec", model_parallel=("tp", "sp", "pp")),)
