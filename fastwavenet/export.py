"""Folding training weights into the generator's layout, and reading and writing model files (safetensors).

The folded layout is defined here, once; every backend reads it. All matrices are stored input-major, (in, out),
so that y = x @ W, and a kernel computing one output vector streams each weight row once:

    embed       (k_in, classes, R)   tap j of the input convolution (j = 0 oldest); the newest tap holds its bias.
                                     A one-hot convolution is a sum of table lookups.
    dilated_w   (L, k, R, 2G)        tap j of layer l's dilated convolution (j = k - 1 is the current input);
                                     columns [:G] feed tanh, [G:] feed sigmoid.
    dilated_b   (L, 2G)
    out_w       (L, G, R + S)        residual and skip 1x1 convolutions fused into one matrix per layer
                                     (columns [:R] residual, [R:] skip); the last layer's residual columns are zero.
    out_b       (L, R + S)
    head1_w (S, H), head1_b (H), head2_w (H, classes), head2_b (classes)

With L layers, R residual, G gate, S skip, H head channels, k taps. Blocks without bias store zero biases.

Conditioned models add (M mel bands, hop h, P speakers, E speaker channels):

    speaker_embed (P, E), speaker_w (L, E, 2G)          global term of layer l: speaker_embed[p] @ speaker_w[l]
    upsample_w (M, M, h), upsample_b (M)                 the transposed convolution, PyTorch's layout
    mel_w       (L, M, 2G)                               local term of layer l at t: features[:, t] @ mel_w[l]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from .audio import give_default_permissions
from .config import WaveNetConfig
from .errors import FastWaveNetError
from .model import WaveNet

MODEL_FORMAT = "fastwavenet-model"
MODEL_VERSION = "1"


@dataclass(frozen=True)
class FoldedWeights:
    """Immutable generator weights in the folded layout above (float32 tensors, all on one device)."""

    embed: torch.Tensor
    dilated_w: torch.Tensor
    dilated_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    head1_w: torch.Tensor
    head1_b: torch.Tensor
    head2_w: torch.Tensor
    head2_b: torch.Tensor
    speaker_embed: torch.Tensor | None = None
    speaker_w: torch.Tensor | None = None
    upsample_w: torch.Tensor | None = None
    upsample_b: torch.Tensor | None = None
    mel_w: torch.Tensor | None = None

    def to(self, device) -> "FoldedWeights":
        return FoldedWeights(**{name: t.to(device).contiguous() for name, t in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors present (conditioning ones only for conditioned models)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def expected_shapes(config: WaveNetConfig) -> dict[str, tuple[int, ...]]:
    c, r, g, s, h = (config.classes, config.residual_channels, config.gate_channels, config.skip_channels,
                     config.head_channels)
    n = config.layers
    shapes = {
        "embed": (config.input_kernel_size, c, r),
        "dilated_w": (n, config.kernel_size, r, 2 * g),
        "dilated_b": (n, 2 * g),
        "out_w": (n, g, r + s),
        "out_b": (n, r + s),
        "head1_w": (s, h),
        "head1_b": (h,),
        "head2_w": (h, c),
        "head2_b": (c,),
    }
    if config.speakers:
        shapes["speaker_embed"] = (config.speakers, config.speaker_channels)
        shapes["speaker_w"] = (n, config.speaker_channels, 2 * g)
    if config.n_mels:
        m = config.n_mels
        shapes.update(upsample_w=(m, m, config.hop_length), upsample_b=(m,), mel_w=(n, m, 2 * g))
    return shapes


@torch.no_grad()
def fold(model: WaveNet) -> FoldedWeights:
    """Training model -> folded generator weights (float32, CPU)."""
    config = model.config
    r, g, s = config.residual_channels, config.gate_channels, config.skip_channels
    n = config.layers
    f32 = lambda t: t.detach().to("cpu", torch.float32)  # noqa: E731
    embed = f32(model.input.weight).permute(2, 1, 0).clone()  # (R, C, k_in) -> (k_in, C, R)
    embed[-1] += f32(model.input.bias)
    dilated_w = torch.stack([f32(b.dilated.weight).permute(2, 1, 0) for b in model.blocks])  # (L, k, R, 2G)
    dilated_b = torch.zeros(n, 2 * g)
    out_w = torch.zeros(n, g, r + s)
    out_b = torch.zeros(n, r + s)
    for i, block in enumerate(model.blocks):
        if block.dilated.bias is not None:
            dilated_b[i] = f32(block.dilated.bias)
        if block.residual is not None:
            out_w[i, :, :r] = f32(block.residual.weight)[:, :, 0].T
            if block.residual.bias is not None:
                out_b[i, :r] = f32(block.residual.bias)
        out_w[i, :, r:] = f32(block.skip.weight)[:, :, 0].T
        if block.skip.bias is not None:
            out_b[i, r:] = f32(block.skip.bias)
    per_layer = lambda conv: f32(conv.weight)[:, :, 0].reshape(n, 2 * g, -1).transpose(1, 2).contiguous()  # noqa: E731
    conditioning = {}
    if config.speakers:
        conditioning.update(speaker_embed=f32(model.speaker_embed.weight), speaker_w=per_layer(model.speaker_proj))
    if config.n_mels:
        conditioning.update(upsample_w=f32(model.upsample.weight), upsample_b=f32(model.upsample.bias),
                            mel_w=per_layer(model.mel_proj))
    return FoldedWeights(
        embed=embed.contiguous(), dilated_w=dilated_w.contiguous(), dilated_b=dilated_b, out_w=out_w, out_b=out_b,
        head1_w=f32(model.head1.weight)[:, :, 0].T.contiguous(), head1_b=f32(model.head1.bias),
        head2_w=f32(model.head2.weight)[:, :, 0].T.contiguous(), head2_b=f32(model.head2.bias), **conditioning)


@torch.no_grad()
def unfold(weights: FoldedWeights, config: WaveNetConfig) -> WaveNet:
    """Folded weights -> a training model with the same function (what the `naive` backend runs)."""
    model = WaveNet(config)
    r = config.residual_channels
    embed = weights.embed.clone()
    bias = embed[-1].mean(dim=0)  # any split of the newest tap's bias is exact: one-hot picks one row
    embed[-1] -= bias
    model.input.weight.copy_(embed.permute(2, 1, 0))
    model.input.bias.copy_(bias)
    for i, block in enumerate(model.blocks):
        block.dilated.weight.copy_(weights.dilated_w[i].permute(2, 1, 0))
        if block.dilated.bias is not None:
            block.dilated.bias.copy_(weights.dilated_b[i])
        if block.residual is not None:
            block.residual.weight.copy_(weights.out_w[i, :, :r].T[:, :, None])
            if block.residual.bias is not None:
                block.residual.bias.copy_(weights.out_b[i, :r])
        block.skip.weight.copy_(weights.out_w[i, :, r:].T[:, :, None])
        if block.skip.bias is not None:
            block.skip.bias.copy_(weights.out_b[i, r:])
    model.head1.weight.copy_(weights.head1_w.T[:, :, None])
    model.head1.bias.copy_(weights.head1_b)
    model.head2.weight.copy_(weights.head2_w.T[:, :, None])
    model.head2.bias.copy_(weights.head2_b)
    stacked = lambda w: w.transpose(1, 2).reshape(-1, w.shape[1], 1)  # (L, in, 2G) -> (L * 2G, in, 1)  # noqa: E731
    if config.speakers:
        model.speaker_embed.weight.copy_(weights.speaker_embed)
        model.speaker_proj.weight.copy_(stacked(weights.speaker_w))
    if config.n_mels:
        model.upsample.weight.copy_(weights.upsample_w)
        model.upsample.bias.copy_(weights.upsample_b)
        model.mel_proj.weight.copy_(stacked(weights.mel_w))
    return model.eval()


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: the config and the folded weights."""

    config: WaveNetConfig
    weights: FoldedWeights


def save_model(path: str | os.PathLike, config: WaveNetConfig, weights: FoldedWeights):
    """Write a model file atomically: safetensors, with the format, its version and the config in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    shapes = expected_shapes(config)
    for name, tensor in weights.tensors().items():
        if tuple(tensor.shape) != shapes[name]:
            raise FastWaveNetError(f"weights {name} have shape {tuple(tensor.shape)}, config wants {shapes[name]}")
    tmp = path.with_name(f".{path.name}.tmp")
    metadata = {"format": MODEL_FORMAT, "format_version": MODEL_VERSION, "config": config.to_json()}
    try:
        save_file({k: v.contiguous().cpu() for k, v in weights.tensors().items()}, str(tmp), metadata=metadata)
        give_default_permissions(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FastWaveNetError(f"cannot write {path}: {exc.strerror}") from None


def load_model(path: str | os.PathLike) -> ModelFile:
    """Read and check a model file: safetensors, our format and version, tensors matching the config."""
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
    return ModelFile(config, FoldedWeights(**tensors))


def export(checkpoint: str | os.PathLike, out: str | os.PathLike) -> ModelFile:
    """A training checkpoint (file or run directory) -> a model file at `out`."""
    from .audio import check_writable
    from .train import model_from_checkpoint

    check_writable(out)
    model = model_from_checkpoint(checkpoint)
    weights = fold(model)
    save_model(out, model.config, weights)
    return ModelFile(model.config, weights)


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
    }
