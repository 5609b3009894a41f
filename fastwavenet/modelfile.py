"""Model files: safetensors holding the folded weights, with the format, its version, the config and a checksum of
the tensor data in the metadata. Reading refuses anything malformed with one line naming the file."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import WaveNetConfig
from .distributions import check_rules
from .errors import FastWaveNetError
from .files import atomic_path, write_failed
from .folded import FoldedWeights, expected_shapes
from .sampling import Sampling

MODEL_FORMAT = "fastwavenet-model"
MODEL_VERSION = "1"


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: the config, the folded weights, and the sampling its maker measured as the best
    default (None: the plain rule, temperature 1)."""

    config: WaveNetConfig
    weights: FoldedWeights
    sampling: Sampling | None = None

    def __post_init__(self):
        # (one made in code, not read from a file: the kernels take their shapes from the config)
        check_weights(self.config, self.weights)


def check_weights(config: WaveNetConfig, weights: FoldedWeights):
    """A one-line error unless `weights` are folded weights of `config`'s shapes."""
    if not isinstance(config, WaveNetConfig) or not isinstance(weights, FoldedWeights):
        raise FastWaveNetError(f"a model is a WaveNetConfig and its FoldedWeights, got {type(config).__name__} and "
                               f"{type(weights).__name__}")
    shapes = expected_shapes(config)
    for name, tensor in weights.tensors().items():
        if tuple(tensor.shape) != shapes[name]:
            raise FastWaveNetError(f"weights {name} have shape {tuple(tensor.shape)}, config wants {shapes[name]}")


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, shape and bytes, in name order. safetensors checks a file's header, not its
    data, so without this a flipped bit in a weight loads silently. (3.5 MB of `standard` weights: about 3 ms.)"""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_model(path: str | os.PathLike, config: WaveNetConfig, weights: FoldedWeights,
               sampling: Sampling | None = None):
    """Write a model file atomically: safetensors, with the format, its version, the config, the checksum and, if
    given, the default sampling (metadata "sampling": JSON of its fields)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    check_weights(config, weights)
    tensors = {k: v.contiguous().cpu() for k, v in weights.tensors().items()}
    for name, tensor in tensors.items():  # load_model refuses them: a file that could never be loaded is not written
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FastWaveNetError(f"weights {name} hold NaN or infinite values (did the training diverge?); "
                                   f"not written")
    metadata = {"format": MODEL_FORMAT, "format_version": MODEL_VERSION, "config": config.to_json(),
                "sha256": checksum(tensors)}
    if sampling is not None:
        check_rules(config, [sampling])
        metadata["sampling"] = json.dumps(sampling.to_dict(), sort_keys=True)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # (an I/O error inside it, a full disk: not an OSError)
            raise write_failed(Path(path), exc) from None


def load_model(path: str | os.PathLike) -> ModelFile:
    """Read and check a model file: safetensors, our format and version, tensors matching the config, the checksum
    of their data, finite values. Files written before checksums existed load with a warning."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FastWaveNetError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for foreign or truncated files
        raise FastWaveNetError(f"{path} is not a readable safetensors model file ({type(exc).__name__})") from None
    if metadata.get("format") != MODEL_FORMAT:
        raise FastWaveNetError(f"{path} is not a fastwavenet model file (no '{MODEL_FORMAT}' metadata)")
    if metadata.get("format_version") != MODEL_VERSION:
        raise FastWaveNetError(f"{path} has model format version {metadata.get('format_version')}; "
                               f"this fastwavenet reads version {MODEL_VERSION}")
    config = WaveNetConfig.from_json(metadata.get("config", "null"))
    shapes = expected_shapes(config)
    if set(tensors) != set(shapes):
        missing, extra = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
        raise FastWaveNetError(f"{path}: tensors do not match the format (missing {missing}, extra {extra})")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise FastWaveNetError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                                   f"its config wants {shape}")
        if tensors[name].dtype != torch.float32:
            raise FastWaveNetError(f"{path}: tensor {name} is {tensors[name].dtype}, expected float32")
    stored = metadata.get("sha256")
    if stored is None:
        warnings.warn(f"{path} carries no checksum (written before fastwavenet stored one): corruption of its "
                      f"weights cannot be detected; re-save it to add one", stacklevel=2)
    elif stored != checksum(tensors):
        raise FastWaveNetError(f"{path} is corrupt: its weights do not match the checksum stored with them")
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise FastWaveNetError(f"{path}: tensor {name} holds NaN or infinite values")
    return ModelFile(config, FoldedWeights(**tensors), _default_sampling(path, metadata.get("sampling"), config))


def _default_sampling(path, text: str | None, config: WaveNetConfig) -> Sampling | None:
    """The stored rule, checked as every rule is (Sampling's bounds, and against the model's output)."""
    if text is None:
        return None
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict) or set(fields) - {"temperature", "top_k", "top_p", "argmax"}:
            raise ValueError("not an object of sampling fields")
        sampling = Sampling(**fields)
        check_rules(config, [sampling])
        return sampling
    except (ValueError, TypeError, FastWaveNetError) as exc:
        raise FastWaveNetError(f"{path}: its default sampling is malformed ({exc})") from None


def set_default_sampling(path: str | os.PathLike, sampling: Sampling | None, out: str | os.PathLike | None = None):
    """Store `sampling` (None: none) as the default of the model file at `path`, written to `out` (default: in
    place, atomically)."""
    loaded = load_model(path)
    save_model(out or path, loaded.config, loaded.weights, sampling)


def model_info(path: str | os.PathLike) -> dict:
    """Config, parameter count, receptive field and file size of a model file."""
    loaded = load_model(path)
    config = loaded.config
    return {
        "path": str(path),
        "config": json.loads(config.to_json()),
        "parameters": config.parameter_count(),
        "receptive_field_samples": config.receptive_field,
        "receptive_field_ms": 1000.0 * config.receptive_field / config.sample_rate,
        "file_bytes": Path(path).stat().st_size,
        "default_sampling": None if loaded.sampling is None else loaded.sampling.to_dict(),
    }


def describe(info: dict) -> str:
    """`model_info`'s dict as the lines `fastwavenet info` prints."""
    config = info["config"]
    lines = [f"model: {info['path']} ({info['file_bytes'] / 1e6:.2f} MB)",
             f"parameters: {info['parameters']:,}",
             f"receptive field: {info['receptive_field_samples']} samples "
             f"({info['receptive_field_ms']:.1f} ms at {config['sample_rate']} Hz)"]
    lines += [f"  {key}: {config[key]}" for key in sorted(config)]
    if info["default_sampling"] is not None:
        rule = ", ".join(f"{k} {v}" for k, v in info["default_sampling"].items())
        lines.append(f"default sampling: {rule} (the command line overrides it field by field)")
    return "\n".join(lines)
