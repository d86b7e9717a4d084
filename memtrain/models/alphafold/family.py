"""AlphaFold's declaration (memtrain.models.family): Dynamic Axial Parallelism of its representations."""

from memtrain.models.family import Family

FAMILIES = (Family("alphafold", "memtrain.models.alphafold.spec", model_parallel=("dap",)),)
