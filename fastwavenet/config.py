"""`WaveNetConfig`: every shape of a model in one dataclass, validated once, serialized as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import FastWaveNetError

# Rough ceiling on parameters (float32): a config above it would exhaust memory before it trained a step.
MAX_PARAMETERS = 500_000_000
OUTPUTS = ("softmax", "logistic_mixture", "gaussian")
UPSAMPLERS = ("transpose", "r9y9-transpose", "r9y9-convin")


@dataclass(frozen=True)
class WaveNetConfig:
    """The shape of a WaveNet.

    Layer order: a causal convolution of `input_kernel_size` taps maps the one-hot input (`classes` channels) to
    `residual_channels`; then `stacks` stacks of `layers_per_stack` gated residual blocks whose dilations are
    1, 2, 4, ..., 2**(layers_per_stack - 1) in each stack; then the head: sum of skips -> ReLU -> 1x1 to
    `head_channels` -> ReLU -> 1x1 to `classes` logits.

    `bias` switches the biases of the blocks (dilated, residual and skip convolutions); the input convolution and
    the two head convolutions always have biases.

    Input and output (fastwavenet/distributions.py states each rule):
    - `scalar_input`: the input convolution reads the previous sample's value in [-1, 1] (one channel, 1 tap)
      instead of a one-hot class code;
    - `output`: "softmax" (logits over `classes` mu-law classes; needs class input), or, for scalar input,
      "logistic_mixture" (3 x `mixtures` outputs: mixture logits, means, log scales clamped below at
      `log_scale_min`) or "gaussian" (2 outputs: mean, log scale, clamped likewise). With a continuous output,
      `classes` is the number of levels over [-1, 1] that `score` discretizes the likelihood to (r9y9's
      quantize_channels).

    Conditioning, both added to every layer's gate input (before tanh and sigmoid):
    - global: `speakers` > 0 gives a learned embedding of `speaker_channels` per speaker (or any class), projected
      by a 1x1 convolution per layer; `global_features` instead takes a vector of `speaker_channels` values per
      stream from the caller (r9y9's external global features) and projects it the same way;
    - local: `n_mels` > 0 conditions on a log-mel spectrogram (librosa: `n_fft`, `hop_length`, `fmin`, `fmax` in
      Hz, 0 meaning sample_rate / 2; natural log of max(mel, 1e-5)), upsampled to the sample rate by a learned
      transposed convolution (kernel and stride `hop_length`: frame i becomes samples i*hop .. (i+1)*hop - 1) and
      projected by a 1x1 convolution per layer. r9y9/wavenet_vocoder's upsamplers are the others (mel frames are
      then whatever the model was trained on, given as (frames, n_mels) as r9y9's preprocessing writes them):
      "r9y9-transpose" (its 0.1 releases): a stack of one-channel 2-D transposed convolutions, kernel
      (`freq_axis_kernel_size`, s) and stride (1, s) for each s in `upsample_scales` (product `hop_length`), each
      followed by ReLU; frame i alone makes samples i*hop .. (i+1)*hop - 1.
      "r9y9-convin" (its master branch's ConvInUpsampleNetwork): a convolution over 2 * `cin_pad` + 1 frames
      (no padding, no bias; the mel is edge-padded by `cin_pad` frames at both ends first, as r9y9 does), then for
      each s: nearest-neighbour stretch by s in time and a one-channel 2-D convolution, kernel
      (`freq_axis_kernel_size`, 2s + 1), zero padding, no bias. Its samples depend on neighbouring frames.
    """

    sample_rate: int = 16000
    classes: int = 256
    residual_channels: int = 64
    gate_channels: int = 64
    skip_channels: int = 256
    head_channels: int = 256
    kernel_size: int = 2
    input_kernel_size: int = 2
    layers_per_stack: int = 10
    stacks: int = 2
    bias: bool = True
    speakers: int = 0
    speaker_channels: int = 16
    n_mels: int = 0
    hop_length: int = 256
    n_fft: int = 1024
    fmin: float = 0.0
    fmax: float = 0.0
    scalar_input: bool = False
    output: str = "softmax"
    mixtures: int = 10
    log_scale_min: float = -7.0
    upsampler: str = "transpose"
    upsample_scales: tuple = ()
    freq_axis_kernel_size: int = 3
    cin_pad: int = 0
    global_features: bool = False

    def __post_init__(self):
        if isinstance(self.upsample_scales, list):  # from JSON
            object.__setattr__(self, "upsample_scales", tuple(self.upsample_scales))
        ints = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.type in ("int", int) and f.name not in ("speakers", "n_mels", "cin_pad")}
        for name in ("speakers", "n_mels", "cin_pad"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FastWaveNetError(f"config: {name} must be 0 (off) or a positive integer, got {value!r}")
        for name, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FastWaveNetError(f"config: {name} must be a positive integer, got {value!r}")
        if self.global_features and self.speakers:
            raise FastWaveNetError("config: global_features replaces the speaker embedding; set speakers to 0")
        for name in ("bias", "scalar_input", "global_features"):
            if not isinstance(getattr(self, name), bool):
                raise FastWaveNetError(f"config: {name} must be true or false, got {getattr(self, name)!r}")
        if self.output not in OUTPUTS:
            raise FastWaveNetError(f"config: output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.scalar_input == (self.output == "softmax"):
            raise FastWaveNetError("config: a softmax output needs class input (scalar_input false); "
                                   "logistic_mixture and gaussian outputs need scalar input")
        if self.scalar_input and self.input_kernel_size != 1:
            raise FastWaveNetError(f"config: scalar input reads one tap (input_kernel_size 1), "
                                   f"got {self.input_kernel_size}")
        if not (isinstance(self.log_scale_min, (int, float)) and math.isfinite(self.log_scale_min)):
            raise FastWaveNetError(f"config: log_scale_min must be a number, got {self.log_scale_min!r}")
        if self.upsampler not in UPSAMPLERS:
            raise FastWaveNetError(f"config: upsampler must be one of {', '.join(UPSAMPLERS)}, "
                                   f"got {self.upsampler!r}")
        if self.n_mels and self.r9y9_features:
            scales = self.upsample_scales
            if (not scales or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in scales)
                    or math.prod(scales) != self.hop_length):
                raise FastWaveNetError(f"config: upsample_scales must be positive integers whose product is "
                                       f"hop_length {self.hop_length}, got {list(scales)}")
            if self.freq_axis_kernel_size % 2 == 0:
                raise FastWaveNetError(f"config: freq_axis_kernel_size must be odd (the mel axis keeps its size), "
                                       f"got {self.freq_axis_kernel_size}")
        if self.classes < 2:
            raise FastWaveNetError(f"config: classes must be at least 2, got {self.classes}")
        if self.kernel_size < 2:
            raise FastWaveNetError(f"config: kernel_size must be at least 2 (1 would see no past), "
                                   f"got {self.kernel_size}")
        if self.layers_per_stack > 24:
            raise FastWaveNetError(f"config: layers_per_stack {self.layers_per_stack} gives dilations beyond 2**23")
        if self.sample_rate > 384_000:
            raise FastWaveNetError(f"config: sample_rate {self.sample_rate} Hz is beyond any audio format")
        if self.n_mels:
            top = self.fmax or self.sample_rate / 2
            if not (0 <= self.fmin < top <= self.sample_rate / 2):
                raise FastWaveNetError(f"config: need 0 <= fmin < fmax <= sample_rate / 2, got fmin {self.fmin}, "
                                       f"fmax {self.fmax} at {self.sample_rate} Hz")
            if self.n_fft < self.hop_length:
                raise FastWaveNetError(f"config: n_fft {self.n_fft} is shorter than hop_length {self.hop_length}")
        if self.parameter_count() > MAX_PARAMETERS:
            raise FastWaveNetError(
                f"config: {self.parameter_count():,} parameters would exhaust memory (limit {MAX_PARAMETERS:,})")

    @property
    def dilations(self) -> list[int]:
        """Dilation of every block, in order: 1, 2, ..., 2**(layers_per_stack-1), repeated `stacks` times."""
        return [2 ** i for i in range(self.layers_per_stack)] * self.stacks

    @property
    def output_channels(self) -> int:
        """Outputs of the head: logits of `classes`, 3 x `mixtures` mixture parameters, or a Gaussian's 2."""
        return {"softmax": self.classes, "logistic_mixture": 3 * self.mixtures, "gaussian": 2}[self.output]

    @property
    def input_channels(self) -> int:
        return 1 if self.scalar_input else self.classes

    @property
    def layers(self) -> int:
        return self.layers_per_stack * self.stacks

    @property
    def receptive_field(self) -> int:
        """Number of input samples (the current one included) that one output logit depends on.

        receptive_field = (input_kernel_size - 1) + (kernel_size - 1) * sum(dilations) + 1

        Each causal convolution of k taps and dilation d reaches (k - 1) * d samples further into the past; the
        reaches add up along the chain, and the final +1 is the current sample. For `standard` this is
        1 + 2 * 1023 + 1 = 2048 samples. tests/test_model.py measures it by perturbing inputs.
        """
        return (self.input_kernel_size - 1) + (self.kernel_size - 1) * sum(self.dilations) + 1

    @property
    def queue_length(self) -> int:
        """Past activations the incremental generator keeps per stream, all layers together."""
        return (self.kernel_size - 1) * sum(self.dilations)

    def queue_layout(self) -> "QueueLayout":
        """Where each layer's ring of past inputs lies in a stream's block of `queue_length` slots."""
        dilations = np.asarray(self.dilations, dtype=np.int64)
        sizes = (self.kernel_size - 1) * dilations
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return QueueLayout(dilations, sizes, offsets)

    def parameter_count(self) -> int:
        r, g, s, h, c, k = (self.residual_channels, self.gate_channels, self.skip_channels, self.head_channels,
                            self.output_channels, self.kernel_size)
        b = 1 if self.bias else 0
        per_layer = k * r * 2 * g + b * 2 * g + g * s + b * s + g * r + b * r
        last_residual = g * r + b * r  # the last block's residual output feeds nothing, so it has no weights
        conditioning = 0
        if self.speakers or self.global_features:
            conditioning += self.speakers * self.speaker_channels + self.layers * self.speaker_channels * 2 * g
        if self.n_mels:
            m = self.n_mels
            f = self.freq_axis_kernel_size
            upsampler = {"transpose": m * m * self.hop_length + m,
                         "r9y9-transpose": sum(f * s + 1 for s in self.upsample_scales),
                         "r9y9-convin": m * m * (2 * self.cin_pad + 1)
                         + sum(f * (2 * s + 1) for s in self.upsample_scales)}[self.upsampler]
            conditioning += upsampler + self.layers * m * 2 * g
        return (self.input_kernel_size * self.input_channels * r + r + self.layers * per_layer - last_residual
                + s * h + h + h * c + c + conditioning)

    @property
    def r9y9_features(self) -> bool:
        """The mel frames are r9y9's (an r9y9 upsampler), given as (frames, n_mels)."""
        return self.upsampler.startswith("r9y9")

    @property
    def conditioned(self) -> bool:
        return bool(self.speakers or self.global_features or self.n_mels)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "WaveNetConfig":
        if not isinstance(data, dict):
            raise FastWaveNetError("config: expected a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FastWaveNetError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "WaveNetConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FastWaveNetError(f"config: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str) -> "WaveNetConfig":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise FastWaveNetError(f"cannot read config {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise FastWaveNetError(f"cannot read config {path}: not UTF-8 text (a JSON file is)") from None
        try:
            return cls.from_json(text)
        except FastWaveNetError as exc:
            raise FastWaveNetError(f"{path}: {exc}") from None

    def replace(self, **changes) -> "WaveNetConfig":
        return dataclasses.replace(self, **changes)


class QueueLayout(NamedTuple):
    """The queue layout, defined here once. Layer l keeps a ring of sizes[l] = (k - 1) * dilations[l] past inputs
    at slots offsets[l] .. offsets[l] + sizes[l] - 1 of a stream's queue block. At time t, tap j (0 = oldest) reads
    slot offsets[l] + (t - (k - 1 - j) * d) mod sizes[l]; the current input is then written at
    offsets[l] + t mod sizes[l], the slot of the oldest tap, already read. (L,) int64 arrays each."""

    dilations: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray


PRESETS: dict[str, WaveNetConfig] = {
    "tiny": WaveNetConfig(sample_rate=4410, classes=256, residual_channels=8, gate_channels=8, skip_channels=16,
                          head_channels=16, layers_per_stack=4, stacks=2),
    "small": WaveNetConfig(sample_rate=16000, residual_channels=32, gate_channels=32, skip_channels=128,
                           head_channels=128, layers_per_stack=10, stacks=2),
    "standard": WaveNetConfig(sample_rate=16000, residual_channels=64, gate_channels=64, skip_channels=256,
                              head_channels=256, layers_per_stack=10, stacks=2),
    "large": WaveNetConfig(sample_rate=16000, residual_channels=128, gate_channels=128, skip_channels=256,
                           head_channels=256, layers_per_stack=10, stacks=3),
    # The shape of r9y9/wavenet_vocoder's published LJSpeech mixture model (its hparams: 24 layers, 4 stacks,
    # residual and gate 512 (256 per half), skip 256, kernel 3, 10 logistics, 80 mel bands upsampled 4x4x4x4).
    "r9y9-ljspeech": WaveNetConfig(sample_rate=22050, classes=65536, residual_channels=512, gate_channels=256,
                                   skip_channels=256, head_channels=256, kernel_size=3, input_kernel_size=1,
                                   layers_per_stack=6, stacks=4, scalar_input=True, output="logistic_mixture",
                                   mixtures=10, log_scale_min=-32.23619130191664, n_mels=80, hop_length=256,
                                   n_fft=1024, fmin=125.0, fmax=7600.0, upsampler="r9y9-transpose",
                                   upsample_scales=(4, 4, 4, 4)),
    # `standard` as r9y9 builds it (scalar input, 10 logistics, 1x1 input convolution), for side-by-side figures
    # on a shape small enough that per-step overhead, not weight traffic, decides r9y9's speed.
    "r9y9-standard": WaveNetConfig(sample_rate=16000, classes=65536, residual_channels=64, gate_channels=64,
                                   skip_channels=256, head_channels=256, kernel_size=2, input_kernel_size=1,
                                   layers_per_stack=10, stacks=2, scalar_input=True, output="logistic_mixture",
                                   mixtures=10),
}


MEMINFO = "/proc/meminfo"


def available_memory() -> int | None:
    """Bytes of memory this process could take now: Linux's MemAvailable (free memory plus caches the kernel can
    drop), else the machine's RAM where the OS tells only that, else None."""
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: float, what: str):
    """Refuse, with a clear message, work whose buffers alone would exceed the memory this machine has free."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise FastWaveNetError(f"{what} would need about {nbytes / 2**30:,.1f} GiB, more than the "
                               f"{available / 2**30:,.1f} GiB this machine has free")


def preset(name: str) -> WaveNetConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise FastWaveNetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
