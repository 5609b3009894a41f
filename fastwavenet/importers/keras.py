"""Import basveeling/wavenet (Keras 1, HDF5) checkpoints as fastwavenet model files.

That model, in fastwavenet's terms: classes = nb_output_bins, residual = gate = skip = nb_filters, head channels =
nb_output_bins, kernel 2, an input convolution of 2 taps with bias, dilation_depth + 1 layers per stack
(dilations 1 .. 2**dilation_depth), nb_stacks stacks, no bias in the blocks; the last block's residual convolution is
absent from the file, and fastwavenet's model has none either (its output would feed nothing).

Tap order. Keras 1 stores a convolution kernel as (out, in, taps, 1). Which tap meets the older input is written down
nowhere, so it was settled by likelihood, with `fastwavenet score` (bits per sample, after the first receptive field):

    audio                                                 taps as stored   input taps only   taps reversed
                                                                           reversed          (used)
    sample-temp1-seed100.wav (the model's own output)         13.97            13.44             4.42
    espeak-ng speech, resampled to 4 kHz                      16.32            16.51             6.69
    LJSpeech LJ001-0032 at 4 kHz (tests/data)                 17.03            16.03             6.53
    uniform noise in [-0.5, 0.5]                              36.53            36.24            16.51

(reversing only the dilated taps gave 11.40 on the model's own output).

With every tap reversed, the model's own temperature-1 output is likely under it and speech costs far fewer bits than
noise; any other order makes its own output cost more than a uniform guess (8 bits). So index 0 of a stored kernel
multiplies the newest input: Theano's convolution flips its kernels. (Noise costs more than 8 bits because the model
is confident that audio is smooth.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import WaveNetConfig
from ..errors import FastWaveNetError
from ..files import check_writable
from ..folded import fold
from ..model import WaveNet
from ..modelfile import ModelFile, save_model
from . import check_kinds

# Every config.json field read, with its JSON type in basveeling/wavenet's config.
CONFIG_KINDS = {**dict.fromkeys(("nb_filters", "dilation_depth", "nb_stacks", "nb_output_bins", "desired_sample_rate"),
                                "an integer"),
                **dict.fromkeys(("use_bias", "use_skip_connections", "use_ulaw"), "true or false")}


def config_from_keras(path: str | os.PathLike) -> WaveNetConfig:
    """basveeling/wavenet's config.json -> WaveNetConfig, refusing options fastwavenet's model does not have."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise FastWaveNetError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FastWaveNetError(f"config {path} is not UTF-8 text (a JSON file is)") from None
    except json.JSONDecodeError:
        raise FastWaveNetError(f"config {path} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise FastWaveNetError(f"config {path} must be a JSON object")
    needed = ("nb_filters", "dilation_depth", "nb_stacks", "nb_output_bins", "desired_sample_rate", "use_bias")
    missing = [k for k in needed if k not in raw]
    if missing:
        raise FastWaveNetError(f"config {path} is not a basveeling/wavenet config (missing {', '.join(missing)})")
    check_kinds(raw, CONFIG_KINDS, f"config {path}")
    if not raw.get("use_skip_connections", True):
        raise FastWaveNetError("models without skip connections are not supported")
    if not raw.get("use_ulaw", True):
        raise FastWaveNetError("models trained without mu-law are not supported")
    f, bins = raw["nb_filters"], raw["nb_output_bins"]
    return WaveNetConfig(sample_rate=raw["desired_sample_rate"], classes=bins, residual_channels=f,
                         gate_channels=f, skip_channels=f, head_channels=bins, kernel_size=2, input_kernel_size=2,
                         layers_per_stack=raw["dilation_depth"] + 1, stacks=raw["nb_stacks"], bias=raw["use_bias"])


def weight_table(config: WaveNetConfig) -> dict[str, tuple[str, str]]:
    """Keras weight name -> (fastwavenet parameter, how to place it). Read it as the import's specification."""
    table = {
        "initial_causal_conv_W": ("input.weight", "conv"),
        "initial_causal_conv_b": ("input.bias", "copy"),
        "convolution1d_65_W": ("head1.weight", "conv"),
        "convolution1d_65_b": ("head1.bias", "copy"),
        "convolution1d_66_W": ("head2.weight", "conv"),
        "convolution1d_66_b": ("head2.bias", "copy"),
    }
    for i, d in enumerate(config.dilations):
        stack = i // config.layers_per_stack
        k = i + 1  # blocks in build order: convolution1d_(2k-1) is the residual conv, convolution1d_(2k) the skip
        block = {f"dilated_conv_{d}_tanh_s{stack}": ("dilated", "tanh half"),
                 f"dilated_conv_{d}_sigm_s{stack}": ("dilated", "sigmoid half"),
                 f"convolution1d_{2 * k}": ("skip", "conv")}
        if i < config.layers - 1:
            block[f"convolution1d_{2 * k - 1}"] = ("residual", "conv")
        for keras_layer, (ours, how) in block.items():
            table[f"{keras_layer}_W"] = (f"blocks.{i}.{ours}.weight", how)
            if config.bias:
                table[f"{keras_layer}_b"] = (f"blocks.{i}.{ours}.bias", how)
    return table


def _read_hdf5(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The weights of a Keras HDF5 file by their short names, which must be those of `shapes` (name -> the shape
    PyTorch's layout wants; a convolution's trailing axis of 1 in Keras 1's (out, in, taps, 1) is not counted). Every
    dataset's name and shape is checked before any is read, so a file of another model is refused at once."""
    try:
        import h5py
    except ImportError:
        raise FastWaveNetError("importing Keras checkpoints needs h5py: pip install 'fastwavenet[import]'") from None
    if not path.is_file():
        raise FastWaveNetError(f"no such file: {path}")
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            datasets = {}
            for layer in group.attrs.get("layer_names", []):
                layer = layer.decode() if isinstance(layer, bytes) else layer
                for name in group[layer].attrs.get("weight_names", []):
                    name = name.decode() if isinstance(name, bytes) else name
                    datasets[name.split("/")[-1].split(":")[0]] = group[layer][name]
            if not datasets:
                raise FastWaveNetError(f"{path} holds no Keras layer weights")
            missing = sorted(set(shapes) - set(datasets))
            extra = sorted(set(datasets) - set(shapes))
            if missing or extra:
                detail = "; ".join(p for p in (f"missing {', '.join(missing[:4])}" if missing else "",
                                               f"unexpected {', '.join(extra[:4])}" if extra else "") if p)
                raise FastWaveNetError(f"{path} does not match its config ({detail})")
            for name, want in shapes.items():
                stored = tuple(datasets[name].shape)
                have = stored[:3] if len(stored) == 4 and stored[3] == 1 else stored
                if have != want:
                    raise FastWaveNetError(f"{name} has shape {have}, the config wants {want}")
            return {name: torch.from_numpy(dataset[()]) for name, dataset in datasets.items()}
    except OSError:
        raise FastWaveNetError(f"{path} is not an HDF5 file") from None
    except KeyError as exc:
        raise FastWaveNetError(f"{path} is not a Keras weights file ({exc})") from None


@torch.no_grad()
def import_keras(checkpoint: str | os.PathLike, config_path: str | os.PathLike) -> ModelFile:
    """Read a basveeling/wavenet checkpoint with its config.json; returns the model as folded weights."""
    config = config_from_keras(config_path)
    table = weight_table(config)
    model = WaveNet(config)
    params = dict(model.named_parameters())
    g = config.gate_channels
    halves = {"tanh half": slice(0, g), "sigmoid half": slice(g, 2 * g)}
    parts = {name: params[target][halves.get(how, slice(None))] for name, (target, how) in table.items()}
    weights = _read_hdf5(Path(checkpoint), {name: tuple(part.shape) for name, part in parts.items()})
    for name, part in parts.items():
        w = weights[name].to(torch.float32)
        if w.ndim == 4:
            # (out, in, taps, 1), Theano order -> PyTorch's (out, in, taps), taps reversed (see the docstring).
            w = w[:, :, :, 0].flip(-1)
        part.copy_(w)
    return ModelFile(config, fold(model.eval()))


def import_to_file(checkpoint, config_path, out) -> ModelFile:
    check_writable(out)
    model = import_keras(checkpoint, config_path)
    save_model(out, model.config, model.weights)
    return model
