"""The training WaveNet: full-sequence forward over mu-law codes. It is the specification every generator backend
must reproduce (tests/test_exactness.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import WaveNetConfig
from .errors import FastWaveNetError


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads on the left only, so output t sees inputs t - (k-1)*d .. t and nothing later."""

    def __init__(self, in_channels, out_channels, kernel_size, dilation=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x):
        return super().forward(F.pad(x, (self.left_pad, 0)))


class ResidualBlock(nn.Module):
    """Gated block: z = dilated_conv(x); g = tanh(z[:G]) * sigmoid(z[G:]); x + residual(g), skip(g).

    The last block has no residual convolution: its residual output would feed nothing.
    """

    def __init__(self, config: WaveNetConfig, dilation: int, last: bool):
        super().__init__()
        r, g = config.residual_channels, config.gate_channels
        self.dilated = CausalConv1d(r, 2 * g, config.kernel_size, dilation, bias=config.bias)
        self.residual = None if last else nn.Conv1d(g, r, 1, bias=config.bias)
        self.skip = nn.Conv1d(g, config.skip_channels, 1, bias=config.bias)

    def forward(self, x, cond=None):
        z = self.dilated(x)
        if cond is not None:
            z = z + cond
        a, b = z.chunk(2, dim=1)
        gated = torch.tanh(a) * torch.sigmoid(b)
        out = None if self.residual is None else x + self.residual(gated)
        return out, self.skip(gated)


def check_trainable(config: WaveNetConfig, what: str = "this model"):
    """Refuse, in one line, a config training cannot build: anything but softmax over mu-law classes with
    fastwavenet's own upsampler (imported r9y9 kinds)."""
    if config.output != "softmax" or config.upsampler != "transpose":
        raise FastWaveNetError(f"{what} is an imported kind ({config.output} output, {config.upsampler} upsampler); "
                               f"training covers softmax models over mu-law classes with fastwavenet's own upsampler")


class WaveNet(nn.Module):
    """codes (B, T) int64 in [0, classes) -> logits (B, classes, T) float32.

    logits[:, :, t] is the distribution of sample t + 1 given samples 0..t (and zeros before the start), and, for a
    conditioned model, the conditioning terms at t (see `conditioning`).
    """

    def __init__(self, config: WaveNetConfig):
        super().__init__()
        check_trainable(config)
        self.config = config
        self.input = CausalConv1d(config.classes, config.residual_channels, config.input_kernel_size)
        n = config.layers
        self.blocks = nn.ModuleList(ResidualBlock(config, d, last=i == n - 1) for i, d in enumerate(config.dilations))
        self.head1 = nn.Conv1d(config.skip_channels, config.head_channels, 1)
        self.head2 = nn.Conv1d(config.head_channels, config.classes, 1)
        g2 = 2 * config.gate_channels
        if config.speakers:
            self.speaker_embed = nn.Embedding(config.speakers, config.speaker_channels)
            self.speaker_proj = nn.Conv1d(config.speaker_channels, config.layers * g2, 1, bias=False)
        if config.n_mels:
            self.upsample = nn.ConvTranspose1d(config.n_mels, config.n_mels, config.hop_length,
                                               stride=config.hop_length)
            self.mel_proj = nn.Conv1d(config.n_mels, config.layers * g2, 1, bias=False)

    def upsample_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel frames (B, n_mels, F) -> features at the sample rate (B, n_mels, F * hop_length)."""
        return self.upsample(mel)

    def conditioning(self, features: torch.Tensor | None = None, speaker: torch.Tensor | None = None,
                     length: int | None = None) -> torch.Tensor | None:
        """Per-layer gate terms (B, L, 2G, T): mel_proj(features) + speaker_proj(embedding(speaker)).

        features (B, n_mels, T) are upsampled mel frames (`upsample_mel`); speaker (B,) int64. With speaker only,
        T is `length`. The projections of all layers are one 1x1 convolution, split by layer."""
        c = self.config
        if bool(c.n_mels) != (features is not None) or bool(c.speakers) != (speaker is not None):
            raise ValueError("conditioning inputs do not match the model's config")
        if not c.conditioned:
            return None
        terms = 0
        if features is not None:
            terms = self.mel_proj(features)
        if speaker is not None:
            terms = terms + self.speaker_proj(self.speaker_embed(speaker).unsqueeze(2))
        b = terms.shape[0]
        terms = terms.reshape(b, c.layers, 2 * c.gate_channels, -1)
        return terms if features is not None else terms.expand(-1, -1, -1, length)

    def forward(self, codes: torch.Tensor, cond: torch.Tensor | None = None, mel: torch.Tensor | None = None,
                speaker: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, T); a conditioned model takes either cond (B, L, 2G, >= T) from `conditioning`, or the raw
        inputs: mel frames (B, n_mels, >= T / hop) and/or speaker ids (B,)."""
        T = codes.shape[1]
        if self.config.conditioned and cond is None:
            features = None if mel is None else self.upsample_mel(mel)[:, :, :T]
            cond = self.conditioning(features, speaker, T)
        x = F.one_hot(codes, self.config.classes).transpose(1, 2).to(self.head1.weight.dtype)
        x = self.input(x)
        skips = 0
        for i, block in enumerate(self.blocks):
            x, skip = block(x, None if cond is None else cond[:, i, :, :T])
            skips = skips + skip
        return self.head2(F.relu(self.head1(F.relu(skips))))


def loss_bits(logits: torch.Tensor, codes: torch.Tensor, start: int) -> torch.Tensor:
    """Mean negative log-likelihood in bits per sample of codes[:, start+1:] under logits[:, :, start:-1].

    `start` is the first position whose prediction counts; training uses receptive_field - 1, where the full
    context is real audio.
    """
    nats = F.cross_entropy(logits[:, :, start:-1], codes[:, start + 1:])
    return nats / math.log(2)
