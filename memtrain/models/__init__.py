"""Model families. Importing this package registers every family's ModelSpec."""

from memtrain.models.alphafold import spec as _alphafold_spec  # noqa: F401
from memtrain.models.gpt import spec as _gpt_spec  # noqa: F401
from memtrain.models.weather import spec as _weather_spec  # noqa: F401
from memtrain.models.spec import ModelSpec, get_spec, register_spec

__all__ = ["ModelSpec", "get_spec", "register_spec"]
