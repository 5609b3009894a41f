"""Import r9y9/wavenet_vocoder checkpoints (its 0.1 releases and its master branch) as fastwavenet model files.

The hparams file is JSON holding the run's hparams under r9y9's own names (hparams.py); the fields read:

    input_type              "raw" (scalar input, continuous output) or "mulaw-quantize" (classes); "mulaw" (scalar,
                            companded) is refused
    out_channels            raw: 3 x mixtures (logistic) or 2 (Normal); mulaw-quantize: quantize_channels is used
    output_distribution     "Logistic" (default) or "Normal"
    quantize_channels       classes of mulaw-quantize; for raw, the levels `score` discretizes to (default 65536)
    layers, stacks, residual_channels, gate_channels (both gate halves: tanh and sigmoid get half each),
    skip_out_channels, kernel_size, legacy (default true); weight normalization is read from the checkpoint
    cin_channels, upsample_conditional_features, upsample_scales, freq_axis_kernel_size    local conditioning (0.1)
    cin_channels, upsample_conditional_features, upsample_net, upsample_params (upsample_scales,
    freq_axis_kernel_size), cin_pad                                                         local conditioning (master)
    gin_channels, n_speakers, use_speaker_embedding (false: external features, a vector per stream)   global
    sample_rate, hop_size, fft_size, fmin, fmax, log_scale_min                             audio settings

Master-branch hparams are told from 0.1 ones by the fields master introduced (upsample_params, upsample_net,
cin_pad; its hparams.py has all three); they differ in the skip scaling (below), in having no biases on the conditioning
projections, and in the upsampler (ConvInUpsampleNetwork; fastwavenet/config.py describes both).

r9y9's network in fastwavenet's terms: a 1x1 input convolution (input_kernel_size 1), gated blocks with biases, the
head ReLU -> 1x1 (skip -> skip) -> ReLU -> 1x1 (skip -> outputs), so head_channels = skip_out_channels.

Everything constant at inference is folded into the weights, so the kernels run r9y9's models with no extra work:
- weight normalization: w = g * v / ||v||, the norm over every axis but the first (PyTorch's weight_norm, dim 0);
- the residual stream's scaling, x_{l+1} = (x_l + res_l) * sqrt(0.5): with c_l = sqrt(0.5) ** l and x_l = c_l * y_l,
  the generator keeps y_l (y_{l+1} = y_l + res_l / c_l), so layer l's dilated weights are multiplied by c_l (its bias
  is not: it meets no input) and its residual output weights and bias divided by c_l;
- the skip sum's scaling: 0.1's legacy models multiply the running sum by sqrt(0.5) after each layer past the
  first, so layer l's skip output enters the sum with sqrt(0.5) ** (L - max(l, 1)); the master branch multiplies
  the sum by sqrt(1 / L). Either factor goes into each layer's skip weights and bias, which is the same as scaling
  the head's input, since ReLU commutes with a positive scale (0.1's non-legacy models sum plainly);
- the biases of the conditioning projections (conv1x1c, conv1x1g) are added whenever the model runs, so they join
  the dilated convolution's bias;
- dropout is dropped (inference).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..config import WaveNetConfig
from ..errors import FastWaveNetError
from ..files import check_writable
from ..folded import FoldedWeights
from ..modelfile import ModelFile, save_model
from . import check_kinds

# Every hparams field read, with its JSON type in r9y9's hparams.py; NULLABLE ones may be null there (unset).
HPARAM_KINDS = {
    **dict.fromkeys(("layers", "stacks", "residual_channels", "gate_channels", "skip_out_channels", "kernel_size",
                     "sample_rate", "quantize_channels", "out_channels", "cin_channels", "gin_channels", "n_speakers",
                     "cin_pad", "hop_size", "fft_size", "freq_axis_kernel_size"), "an integer"),
    **dict.fromkeys(("log_scale_min", "fmin", "fmax"), "a number"),
    **dict.fromkeys(("legacy", "upsample_conditional_features", "use_speaker_embedding"), "true or false"),
    **dict.fromkeys(("input_type", "output_distribution", "upsample_net"), "a string"),
    "upsample_scales": "a list of integers",
    "upsample_params": "an object",
}
UPSAMPLE_PARAM_KINDS = {"upsample_scales": "a list of integers", "freq_axis_kernel_size": "an integer",
                        "upsample_activation": "a string", "mode": "a string"}
NULLABLE = ("n_speakers", "fmax", "upsample_scales")


def _read_hparams(path) -> dict:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise FastWaveNetError(f"cannot read hparams {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FastWaveNetError(f"hparams {path} are not UTF-8 text (a JSON file is)") from None
    except json.JSONDecodeError as exc:
        raise FastWaveNetError(f"hparams {path} are not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise FastWaveNetError(f"hparams {path} must be a JSON object")
    return raw


def is_master(hp: dict) -> bool:
    """Hparams of r9y9's master branch (which introduced these fields) rather than a 0.1 release."""
    return any(k in hp for k in ("upsample_params", "cin_pad", "upsample_net"))


def config_from_hparams(hp: dict) -> WaveNetConfig:
    """r9y9's hparams -> WaveNetConfig, refusing what fastwavenet does not run, naming the field."""
    needed = ("layers", "stacks", "residual_channels", "gate_channels", "skip_out_channels", "kernel_size",
              "sample_rate")
    missing = [k for k in needed if k not in hp]
    if missing:
        raise FastWaveNetError(f"hparams: missing {', '.join(missing)}")
    check_kinds(hp, HPARAM_KINDS, "hparams", NULLABLE)
    check_kinds(hp.get("upsample_params", {}), UPSAMPLE_PARAM_KINDS, "hparams: upsample_params", NULLABLE)
    input_type = hp.get("input_type", "raw")
    if input_type not in ("raw", "mulaw-quantize"):
        raise FastWaveNetError(f"hparams: input_type {input_type!r} is not supported (raw or mulaw-quantize)")
    if hp["stacks"] < 1:
        raise FastWaveNetError(f"hparams: stacks must be at least 1, got {hp['stacks']}")
    if hp["layers"] % hp["stacks"]:
        raise FastWaveNetError(f"hparams: layers {hp['layers']} is not a multiple of stacks {hp['stacks']}")
    if hp["gate_channels"] % 2:
        raise FastWaveNetError(f"hparams: gate_channels {hp['gate_channels']} is odd (it splits into two halves)")
    fields = dict(sample_rate=hp["sample_rate"], residual_channels=hp["residual_channels"],
                  gate_channels=hp["gate_channels"] // 2, skip_channels=hp["skip_out_channels"],
                  head_channels=hp["skip_out_channels"], kernel_size=hp["kernel_size"], input_kernel_size=1,
                  layers_per_stack=hp["layers"] // hp["stacks"], stacks=hp["stacks"], bias=True,
                  log_scale_min=float(hp.get("log_scale_min", -7.0)))
    quantize = hp.get("quantize_channels", 256 if input_type == "mulaw-quantize" else 65536)
    if input_type == "mulaw-quantize":
        fields.update(classes=quantize, output="softmax")
    else:
        distribution = hp.get("output_distribution", "Logistic")
        out = hp.get("out_channels", 30 if distribution == "Logistic" else 2)
        if distribution == "Logistic":
            if out % 3:
                raise FastWaveNetError(f"hparams: out_channels {out} is not 3 x mixtures (a logistic mixture)")
            fields.update(output="logistic_mixture", mixtures=out // 3)
        elif distribution == "Normal":
            if out != 2:
                raise FastWaveNetError(f"hparams: a Normal output has 2 channels, out_channels is {out}")
            fields.update(output="gaussian")
        else:
            raise FastWaveNetError(f"hparams: output_distribution {distribution!r} is not supported "
                                   f"(Logistic or Normal)")
        fields.update(scalar_input=True, classes=quantize)
    if hp.get("cin_channels", -1) > 0:
        if not hp.get("upsample_conditional_features", False):
            raise FastWaveNetError("hparams: features already at the sample rate (upsample_conditional_features "
                                   "false) are not supported")
        if is_master(hp):
            up = hp.get("upsample_params", {})
            if hp.get("upsample_net", "ConvInUpsampleNetwork") != "ConvInUpsampleNetwork":
                raise FastWaveNetError(f"hparams: upsample_net {hp['upsample_net']!r} is not supported "
                                       f"(ConvInUpsampleNetwork)")
            if up.get("upsample_activation", "none") != "none" or up.get("mode", "nearest") != "nearest":
                raise FastWaveNetError("hparams: upsample_params with an activation or a mode other than nearest "
                                       "are not supported")
            scales, freq = list(up.get("upsample_scales") or [4, 4, 4, 4]), up.get("freq_axis_kernel_size", 1)
            upsampler = dict(upsampler="r9y9-convin", cin_pad=hp.get("cin_pad", 0))
        else:
            scales, freq = list(hp.get("upsample_scales") or []), hp.get("freq_axis_kernel_size", 3)
            upsampler = dict(upsampler="r9y9-transpose")
        hop = hp.get("hop_size", math.prod(scales) if scales else 256)
        fields.update(n_mels=hp["cin_channels"], hop_length=hop, n_fft=max(hp.get("fft_size", 1024), hop),
                      fmin=float(hp.get("fmin", 0.0)), fmax=float(hp.get("fmax") or 0.0),
                      upsample_scales=tuple(scales), freq_axis_kernel_size=freq, **upsampler)
    if hp.get("gin_channels", -1) > 0:
        if not hp.get("use_speaker_embedding", True):  # the caller gives gin_channels values per stream
            fields.update(global_features=True, speaker_channels=hp["gin_channels"])
        elif not hp.get("n_speakers"):
            raise FastWaveNetError("hparams: gin_channels is set but n_speakers is not")
        else:
            fields.update(speakers=hp["n_speakers"], speaker_channels=hp["gin_channels"])
    return WaveNetConfig(**fields)


def r9y9_arguments(config: WaveNetConfig) -> dict:
    """The other way: the arguments of r9y9's WaveNet(...) that build a model of this shape (for side-by-side
    benchmarks), or a one-line error for a shape r9y9 cannot build."""
    if (config.input_kernel_size != 1 or config.head_channels != config.skip_channels or not config.bias
            or (config.n_mels and config.upsampler != "r9y9-transpose")):
        raise FastWaveNetError("r9y9's WaveNet has a 1x1 input convolution, head channels equal to skip channels, "
                               "biases and its own upsampler; this shape differs")
    return dict(out_channels=config.output_channels, layers=config.layers, stacks=config.stacks,
                residual_channels=config.residual_channels, gate_channels=2 * config.gate_channels,
                skip_out_channels=config.skip_channels, kernel_size=config.kernel_size,
                cin_channels=config.n_mels or -1,
                gin_channels=config.speaker_channels if config.speakers or config.global_features else -1,
                n_speakers=config.speakers or None, use_speaker_embedding=not config.global_features,
                upsample_conditional_features=bool(config.n_mels),
                upsample_scales=list(config.upsample_scales) or None,
                freq_axis_kernel_size=config.freq_axis_kernel_size, scalar_input=config.scalar_input)


def expected_parameters(config: WaveNetConfig) -> dict[str, tuple[int, ...]]:
    """r9y9 convolution name -> its weight shape (PyTorch layout), as r9y9's WaveNet builds it from these hparams.
    Read it as the import's specification. Biases are taken where the checkpoint has them (the master branch's
    conditioning projections and upsampler have none)."""
    r, g2, s, k = config.residual_channels, 2 * config.gate_channels, config.skip_channels, config.kernel_size
    out = config.output_channels
    table = {"first_conv": (r, config.input_channels, 1)}
    for i in range(config.layers):
        table[f"conv_layers.{i}.conv"] = (g2, r, k)
        if config.n_mels:
            table[f"conv_layers.{i}.conv1x1c"] = (g2, config.n_mels, 1)
        if config.speakers or config.global_features:
            table[f"conv_layers.{i}.conv1x1g"] = (g2, config.speaker_channels, 1)
        table[f"conv_layers.{i}.conv1x1_out"] = (r, g2 // 2, 1)
        table[f"conv_layers.{i}.conv1x1_skip"] = (s, g2 // 2, 1)
    table["last_conv_layers.1"] = (s, s, 1)
    table["last_conv_layers.3"] = (out, s, 1)
    if config.upsampler == "r9y9-transpose":
        for i, scale in enumerate(config.upsample_scales):  # ModuleList [ConvTranspose2d, ReLU] x U
            table[f"upsample_conv.{2 * i}"] = (1, 1, config.freq_axis_kernel_size, scale)
    elif config.upsampler == "r9y9-convin":
        table["upsample_net.conv_in"] = (config.n_mels, config.n_mels, 2 * config.cin_pad + 1)
        for i, scale in enumerate(config.upsample_scales):  # up_layers [Stretch2d, Conv2d] x U
            table[f"upsample_net.upsample.up_layers.{2 * i + 1}"] = (1, 1, config.freq_axis_kernel_size, 2 * scale + 1)
    return table


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FastWaveNetError(f"no such file: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign, truncated or unsafe files
        raise FastWaveNetError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise FastWaveNetError(f"{path} is not an r9y9/wavenet_vocoder checkpoint (no 'state_dict' in it)")
    state = checkpoint["state_dict"]
    if state and all(name.startswith("module.") for name in state):  # saved from DataParallel
        state = {name[len("module."):]: t for name, t in state.items()}
    return state


def _weights(state: dict[str, torch.Tensor], table: dict[str, tuple[int, ...]], others: tuple[str, ...]):
    """Each convolution's effective float64 weight and bias, checked against the table, weight norm folded; the
    state dict must hold exactly these and the `others`. Whether a convolution is weight-normalized is read from
    its names (weight_g, weight_v), not from the hparams: r9y9 0.1 normalizes its input convolution even when
    weight_normalization is off."""
    known = set(others) | {f"{conv}.{suffix}" for conv in table for suffix in ("weight", "weight_g", "weight_v",
                                                                                  "bias")}
    unknown = [n for n in state if n not in known]
    if unknown:
        raise FastWaveNetError(f"checkpoint parameter {unknown[0]!r} is not one this model's hparams have")
    for conv in table:
        normalized = f"{conv}.weight_g" in state or f"{conv}.weight_v" in state
        for suffix in ("weight_g", "weight_v") if normalized else ("weight",):
            if f"{conv}.{suffix}" not in state:
                raise FastWaveNetError(f"checkpoint lacks {conv}.{suffix}, which the hparams imply")
    for name in others:
        if name not in state:
            raise FastWaveNetError(f"checkpoint lacks {name}, which the hparams imply")
    weights = {}
    for conv, shape in table.items():
        if f"{conv}.weight_g" in state:
            g, v = state[f"{conv}.weight_g"].to(torch.float64), state[f"{conv}.weight_v"].to(torch.float64)
            if tuple(v.shape) != shape:
                raise FastWaveNetError(f"{conv}.weight_v has shape {tuple(v.shape)}, the hparams want {shape}")
            norm = v.flatten(1).norm(dim=1).reshape(g.shape)
            w = g * v / norm
        else:
            w = state[f"{conv}.weight"].to(torch.float64)
            if tuple(w.shape) != shape:
                raise FastWaveNetError(f"{conv}.weight has shape {tuple(w.shape)}, the hparams want {shape}")
        out = shape[1] if conv.startswith("upsample_conv") else shape[0]  # ConvTranspose2d: (in, out, ...)
        b = state[f"{conv}.bias"].to(torch.float64) if f"{conv}.bias" in state else torch.zeros(out, dtype=w.dtype)
        if tuple(b.shape) != (out,):
            raise FastWaveNetError(f"{conv}.bias has shape {tuple(b.shape)}, the hparams want ({out},)")
        weights[conv] = (w, b)
    return weights


@torch.no_grad()
def fold_r9y9(config: WaveNetConfig, state: dict[str, torch.Tensor], hp: dict) -> FoldedWeights:
    """r9y9 state dict -> folded weights (the folds are listed in the module docstring), computed in float64."""
    table = expected_parameters(config)
    w = _weights(state, table, ("embed_speakers.weight",) if config.speakers else ())
    n, r, g2 = config.layers, config.residual_channels, 2 * config.gate_channels
    master = is_master(hp)
    legacy = not master and bool(hp.get("legacy", True))
    first_w, first_b = w["first_conv"]
    if config.scalar_input:
        embed = torch.stack([first_w[:, 0, 0], first_b])[None]  # (1, 2, R): weight row, bias row
    else:
        embed = (first_w[:, :, 0].T + first_b)[None]  # (1, C, R), bias in the only tap
    dilated_w = torch.zeros(n, config.kernel_size, r, g2, dtype=torch.float64)
    dilated_b = torch.zeros(n, g2, dtype=torch.float64)
    out_w = torch.zeros(n, g2 // 2, r + config.skip_channels, dtype=torch.float64)
    out_b = torch.zeros(n, r + config.skip_channels, dtype=torch.float64)
    mel_w, speaker_w = [], []
    for i in range(n):
        c = math.sqrt(0.5) ** i  # x_i = c * y_i: the stream r9y9 keeps, over the one the generator keeps
        skip_scale = math.sqrt(0.5) ** (n - max(i, 1)) if legacy else math.sqrt(1.0 / n) if master else 1.0
        conv_w, conv_b = w[f"conv_layers.{i}.conv"]
        dilated_w[i] = conv_w.permute(2, 1, 0) * c  # (2G, R, k) -> (k, R, 2G), tap 0 the oldest
        dilated_b[i] = conv_b
        for proj, into in (("conv1x1c", mel_w), ("conv1x1g", speaker_w)):
            if f"conv_layers.{i}.{proj}" in w:
                pw, pb = w[f"conv_layers.{i}.{proj}"]
                into.append(pw[:, :, 0].T)
                dilated_b[i] += pb
        if i < n - 1:  # the last layer's residual output feeds nothing
            res_w, res_b = w[f"conv_layers.{i}.conv1x1_out"]
            out_w[i, :, :r] = res_w[:, :, 0].T / c
            out_b[i, :r] = res_b / c
        skip_w, skip_b = w[f"conv_layers.{i}.conv1x1_skip"]
        out_w[i, :, r:] = skip_w[:, :, 0].T * skip_scale
        out_b[i, r:] = skip_b * skip_scale
    head1_w, head1_b = w["last_conv_layers.1"]
    head2_w, head2_b = w["last_conv_layers.3"]
    extra = {}
    if config.upsampler == "r9y9-transpose":
        ups = [w[f"upsample_conv.{2 * i}"] for i in range(len(config.upsample_scales))]
        extra.update(upsample_w=torch.cat([u[0][0, 0] for u in ups], dim=1),
                     upsample_b=torch.cat([u[1] for u in ups]))
    elif config.upsampler == "r9y9-convin":
        ups = [w[f"upsample_net.upsample.up_layers.{2 * i + 1}"] for i in range(len(config.upsample_scales))]
        extra.update(upsample_in_w=w["upsample_net.conv_in"][0], upsample_w=torch.cat([u[0][0, 0] for u in ups], 1))
    if config.n_mels:
        extra["mel_w"] = torch.stack(mel_w)
    if config.speakers:
        embed_speakers = state["embed_speakers.weight"].to(torch.float64)
        if tuple(embed_speakers.shape) != (config.speakers, config.speaker_channels):
            raise FastWaveNetError(f"embed_speakers.weight has shape {tuple(embed_speakers.shape)}, the hparams "
                                   f"want {(config.speakers, config.speaker_channels)}")
        extra["speaker_embed"] = embed_speakers
    if config.speakers or config.global_features:
        extra["speaker_w"] = torch.stack(speaker_w)
    tensors = dict(embed=embed, dilated_w=dilated_w, dilated_b=dilated_b, out_w=out_w, out_b=out_b,
                   head1_w=head1_w[:, :, 0].T, head1_b=head1_b, head2_w=head2_w[:, :, 0].T, head2_b=head2_b, **extra)
    return FoldedWeights(**{name: t.to(torch.float32).contiguous() for name, t in tensors.items()})


def import_r9y9(checkpoint: str | os.PathLike, hparams: str | os.PathLike) -> ModelFile:
    """Read an r9y9/wavenet_vocoder checkpoint (torch.save of {"state_dict": ..., ...}) with its hparams JSON."""
    hp = _read_hparams(hparams)
    config = config_from_hparams(hp)
    weights = fold_r9y9(config, _state_dict(Path(checkpoint)), hp)
    return ModelFile(config, weights)


def import_to_file(checkpoint, hparams, out) -> ModelFile:
    check_writable(out)
    model = import_r9y9(checkpoint, hparams)
    save_model(out, model.config, model.weights)
    return model
