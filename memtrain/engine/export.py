"""`memtrain export`: a QAT training checkpoint (step_<N>/, DCP shards and meta.json) to the integer
export of memtrain.precision.export (which describes the format and rebuilds it, load_quantized)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from memtrain.config.errors import ConfigError
from memtrain.engine.checkpoint import Checkpointer, CheckpointError, read_dcp_metadata, read_meta
from memtrain.errors import FileSystemError, file_system_error
from memtrain.precision.export import build_qat_model, export_model


def export_quantized(checkpoint_dir: str | Path, out: str | Path) -> Path:
    """Load a training checkpoint (step_<N>/ written by memtrain train with precision.qat) and write
    its integer export to folder `out`. Everything is checked before the model is built: the
    target is not a file, meta.json holds a QAT run's config, DCP's metadata (read with the safe
    unpickler) lists every tensor of that model with its shape, and its shards hold the bytes."""
    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    if out.exists() and not out.is_dir():
        raise FileSystemError(f"cannot export into {out}: it is a file; name a folder (it is created if missing)")
    meta = read_meta(checkpoint_dir)
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or \
            not isinstance(config.get("precision"), dict):
        raise CheckpointError(f"{checkpoint_dir / 'meta.json'} holds no run config (model, precision): export needs "
                              "the config of the QAT run that wrote the checkpoint")
    if str(config["precision"].get("qat", "none")) == "none":
        raise CheckpointError(f"{checkpoint_dir} was trained with precision.qat=none: nothing to quantize")
    cfg = _checked_config(config, checkpoint_dir)
    _check_tensors(cfg, read_dcp_metadata(checkpoint_dir), checkpoint_dir)
    model = build_qat_model(cfg)
    state = {"model": get_model_state_dict(model)}
    Checkpointer(checkpoint_dir.parent).load(checkpoint_dir, state)
    model.load_state_dict(state["model"])
    try:
        return export_model(model, cfg, out)
    except OSError as exc:
        raise file_system_error(exc, "cannot write the export to") from exc


def _checked_config(config: dict, checkpoint_dir: Path) -> DictConfig:
    """The stored config with its model and precision sections typed by their schemas (enum names
    become members; keys an older release did not write take their defaults) and value-checked."""
    from memtrain.config.schema import PrecisionConfig, model_schema, type_sections
    from memtrain.config.validate import check_values

    try:
        schema = model_schema(str(config["model"].get("arch")))
        config["precision"]  # a stored config without it is not memtrain's (KeyError)
        cfg = OmegaConf.create(config)
        type_sections(cfg, {"model": schema, "precision": PrecisionConfig})
        check_values(cfg.model, "model.")
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{checkpoint_dir / 'meta.json'}: its config is not valid "
                              f"({' '.join(str(exc).split())[:300]})") from exc
    return cfg


def _check_tensors(cfg: DictConfig, metadata, checkpoint_dir: Path) -> None:
    """The model's tensors (built on the meta device) against DCP's metadata, and the bytes they
    need against the shard files' size, before anything is allocated."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from memtrain.models.meta import build_on_meta

    stored = metadata.state_dict_metadata
    model = build_on_meta(build_qat_model, cfg)
    problems, needed = [], 0
    for name, tensor in model.state_dict().items():
        entry = stored.get(f"model.{name}")
        if not isinstance(entry, TensorStorageMetadata):
            problems.append(f"{name} is missing")
        elif tuple(entry.size) != tuple(tensor.shape):
            problems.append(f"{name} is {list(entry.size)} in the checkpoint, {list(tensor.shape)} in its config")
        else:
            needed += tensor.numel() * entry.properties.dtype.itemsize
    if problems:
        raise CheckpointError(f"{checkpoint_dir}: its tensors do not match the model of its meta.json: "
                              f"{'; '.join(problems[:5])}{f'; and {len(problems) - 5} more' if len(problems) > 5 else ''}")
    on_disk = sum(f.stat().st_size for f in checkpoint_dir.glob("*.distcp"))
    if needed > on_disk:
        raise CheckpointError(f"{checkpoint_dir}: the model needs {needed} bytes of weights but the shard files hold "
                              f"{on_disk}; the checkpoint is truncated or its metadata was edited")
