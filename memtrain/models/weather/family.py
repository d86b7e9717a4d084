"""The weather models' declarations (memtrain.models.family): Pangu splits its latitude grid over
ranks (spatial parallelism); FuXi has no model parallelism."""

from memtrain.models.family import Family

FAMILIES = (
    Family("pangu", "memtrain.models.weather.spec", model_parallel=("spatial",)),
    Family("fuxi", "memtrain.models.weather.spec"),
)
