"""The folded layout: the generator's weights, defined here once; every backend reads it.

All matrices are stored input-major, (in, out), so that y = x @ W, and a kernel computing one output vector streams
each weight row once:

    embed       (k_in, classes, R)   tap j of the input convolution (j = 0 oldest); the newest tap holds its bias.
                                     A one-hot convolution is a sum of table lookups.
                (1, 2, R)            scalar input: x = value * embed[0, 0] + embed[0, 1] (weight, then bias).
    dilated_w   (L, k, R, 2G)        tap j of layer l's dilated convolution (j = k - 1 is the current input);
                                     columns [:G] feed tanh, [G:] feed sigmoid.
    dilated_b   (L, 2G)
    out_w       (L, G, R + S)        residual and skip 1x1 convolutions fused into one matrix per layer
                                     (columns [:R] residual, [R:] skip); the last layer's residual columns are zero.
    out_b       (L, R + S)
    head1_w (S, H), head1_b (H), head2_w (H, O), head2_b (O)   O = config.output_channels

With L layers, R residual, G gate, S skip, H head channels, k taps. Blocks without bias store zero biases.

Conditioned models add (M mel bands, hop h, P speakers, E speaker channels):

    speaker_embed (P, E), speaker_w (L, E, 2G)          global term of layer l: speaker_embed[p] @ speaker_w[l]
                                                         (global_features: the caller's vector (E,) @ speaker_w[l])
    upsample_w (M, M, h), upsample_b (M)                 the transposed convolution, PyTorch's layout
    mel_w       (L, M, 2G)                               local term of layer l at t: features[:, t] @ mel_w[l]
    upsample_w (F, sum(s_i)), upsample_b (U)             upsampler "r9y9-transpose": U one-channel transposed
                                                         convolutions, kernels (F, s_i) side by side (second axis)
    upsample_in_w (M, M, 2p + 1), upsample_w (F, sum(2 s_i + 1))
                                                         upsampler "r9y9-convin": its input convolution (PyTorch's
                                                         conv1d layout) and U one-channel 2-D convolution kernels

`fold` (a training model -> this layout) and `unfold` (the way back) are here, beside the layout they write and
read; neither loads the training model's module on the inference path (`fold` reads the model it is given, `unfold`
imports it when called). Exporting a training checkpoint is fastwavenet/convert.py's (`export`).
`convolve` here is the whole-sequence forward over folded weights, for the `naive` backend and `score`: it needs
no training code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .config import WaveNetConfig

if TYPE_CHECKING:
    from .model import WaveNet


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
    upsample_in_w: torch.Tensor | None = None
    mel_w: torch.Tensor | None = None

    def to(self, device) -> "FoldedWeights":
        return FoldedWeights(**{name: t.to(device).contiguous() for name, t in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors present (conditioning ones only for conditioned models)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


PRECISIONS = ("float32", "bf16", "int8", "w8a8")


def add_precision_argument(parser, several: bool = False):
    """The command line's --precision (`several`: a comma-separated list, for bench)."""
    parser.add_argument("--precision", default="float32",
                        help="float32, bf16 or int8: weight matrices rounded to bf16 or int8 (1/2, 1/4 the bytes a "
                             "sample; docs/BENCHMARKS.md has what it costs in bits per sample); w8a8: int8 weights "
                             "and 8-bit activations (numba backends only)"
                        + ("; a comma-separated list measures each" if several else ""))

# The matrices a step streams: what bf16 stores in half the bytes and int8 in a quarter. Tables, biases and
# conditioning stay float32.
MATRICES = ("dilated_w", "out_w", "head1_w", "head2_w")


def int8_parts(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A folded matrix (in, out), or a stack of them (L, in, out) or (L, k, R, out) (one matrix per layer, its
    taps stacked), quantized per output column of each matrix: (q int8 of its shape, scale float32 of shape
    (out,) or (L, out)), symmetric, q in [-127, 127], the weight q * scale.

    scale is max|w| / 127 with its last 7 mantissa bits rounded off (17 significant bits), so that q * scale is exact
    in float32 for every q: the dequantized matrix then holds each column's max as exactly 127 * scale, and
    quantizing it again gives the same q and scale bit for bit (how the numba backend recovers them from the
    weights the Generator hands it)."""
    w = matrix.to(torch.float32)
    stacked = w.reshape(w.shape[0], -1, w.shape[-1]) if w.dim() > 2 else w[None]
    peak = stacked.abs().amax(dim=1)  # (L or 1, out)
    bits = (peak / 127).view(torch.int32)
    scale = ((bits + 0x40) & ~0x7F).view(torch.float32)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero column: q = 0
    q = torch.round(stacked / safe[:, None, :]).clamp(-127, 127).to(torch.int8)
    return q.reshape(matrix.shape), (scale if w.dim() > 2 else scale[0])


def _dequantized(matrix: torch.Tensor) -> torch.Tensor:
    q, scale = int8_parts(matrix)
    stacked = q.reshape(q.shape[0], -1, q.shape[-1]) if q.dim() > 2 else q[None]
    scale = scale if q.dim() > 2 else scale[None]
    return (stacked.to(torch.float32) * scale[:, None, :]).reshape(matrix.shape)


def rounded(weights: FoldedWeights, precision: str) -> FoldedWeights:
    """The weights a generator at `precision` computes with, still held as float32: for bf16, each matrix rounded
    to the nearest bf16 (ties to even); for int8, each matrix quantized per output column (`int8_parts`) and
    dequantized, q * scale (w8a8 too: its weights are int8's; the backend rounds the activations); float32 returns
    them as they are."""
    if precision not in PRECISIONS:
        from .errors import FastWaveNetError

        raise FastWaveNetError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    if precision == "float32":
        return weights
    if precision in ("int8", "w8a8"):
        changed = {name: _dequantized(getattr(weights, name)) for name in MATRICES}
    else:
        changed = {name: getattr(weights, name).to(torch.bfloat16).to(torch.float32) for name in MATRICES}
    return FoldedWeights(**{**weights.tensors(), **changed})


def expected_shapes(config: WaveNetConfig) -> dict[str, tuple[int, ...]]:
    c, r, g, s, h = (config.output_channels, config.residual_channels, config.gate_channels, config.skip_channels,
                     config.head_channels)
    n = config.layers
    shapes = {
        "embed": (1, 2, r) if config.scalar_input else (config.input_kernel_size, config.classes, r),
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
    if config.speakers or config.global_features:
        shapes["speaker_w"] = (n, config.speaker_channels, 2 * g)
    if config.n_mels:
        m = config.n_mels
        scales, f = config.upsample_scales, config.freq_axis_kernel_size
        if config.upsampler == "r9y9-transpose":
            shapes.update(upsample_w=(f, sum(scales)), upsample_b=(len(scales),))
        elif config.upsampler == "r9y9-convin":
            shapes.update(upsample_in_w=(m, m, 2 * config.cin_pad + 1), upsample_w=(f, sum(2 * s + 1 for s in scales)))
        else:
            shapes.update(upsample_w=(m, m, config.hop_length), upsample_b=(m,))
        shapes["mel_w"] = (n, m, 2 * g)
    return shapes


def gate_and_project(w: FoldedWeights, layer: int, z: torch.Tensor, x: torch.Tensor, last: bool):
    """One step of a layer after its dilated convolution: z (B, 2G) gate pre-activations, x (B, R) the layer's input.
    Returns (the next layer's input, this layer's skip (B, S)); the last layer has no residual output."""
    g, r = w.dilated_w.shape[-1] // 2, x.shape[1]
    gated = torch.tanh(z[:, :g]) * torch.sigmoid(z[:, g:])
    if last:
        return x, torch.addmm(w.out_b[layer, r:], gated, w.out_w[layer, :, r:])
    o = torch.addmm(w.out_b[layer], gated, w.out_w[layer])
    return x + o[:, :r], o[:, r:]


def embed_input(weights: FoldedWeights, config: WaveNetConfig, codes: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """The input stage of `convolve`: codes (B, T) -> the first layer's input (B, R, T), before `valid`'s mask."""
    w, k_in, T = weights, config.input_kernel_size, codes.shape[1]
    if config.scalar_input:
        return codes.to(torch.float32)[:, None, :] * w.embed[0, 0][None, :, None] + w.embed[0, 1][None, :, None]
    # The input convolution as table lookups; index `classes` (a zero row) stands for "before the start".
    table = torch.cat([w.embed, torch.zeros_like(w.embed[:, :1])], dim=1)  # (k_in, C + 1, R)
    if valid is not None:
        codes = torch.where(valid, codes, config.classes)
    padded = F.pad(codes, (k_in - 1, 0), value=config.classes)
    return sum(table[j][padded[:, j:j + T]] for j in range(k_in)).transpose(1, 2)  # (B, R, T)


@torch.no_grad()
def convolve(weights: FoldedWeights, config: WaveNetConfig, codes: torch.Tensor,
             cond: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The whole-sequence forward: codes (B, T) int64 (or, for scalar input, sample values (B, T) float32) ->
    outputs (B, O, T) float32 (logits, or a continuous distribution's parameters), with zeros before the start (the
    training model's causal padding). cond: per-layer gate terms (B, L, 2G, T), or None. valid: (B, T) bool, False
    at columns before a stream's start, which then act as that padding (every layer's input is zero there)."""
    w = weights
    k, r, g = config.kernel_size, config.residual_channels, config.gate_channels
    T = codes.shape[1]
    x = embed_input(w, config, codes, valid)
    mask = None if valid is None else valid[:, None, :].to(x.dtype)
    if mask is not None:
        x = x * mask
    skips = 0
    for layer, d in enumerate(config.dilations):
        kernel = w.dilated_w[layer].permute(2, 1, 0)  # (k, R, 2G) -> (2G, R, k): PyTorch's conv1d layout
        z = F.conv1d(F.pad(x, ((k - 1) * d, 0)), kernel, w.dilated_b[layer], dilation=d)
        if cond is not None:
            z = z + cond[:, layer, :, :T]
        gated = torch.tanh(z[:, :g]) * torch.sigmoid(z[:, g:])
        out = torch.einsum("bgt,go->bot", gated, w.out_w[layer]) + w.out_b[layer][:, None]
        x = x + out[:, :r]  # the last layer's residual columns are zero and x is not read after it
        if mask is not None:
            x = x * mask
        skips = skips + out[:, r:]
    hidden = F.relu(torch.einsum("bst,sh->bht", F.relu(skips), w.head1_w) + w.head1_b[:, None])
    return torch.einsum("bht,hc->bct", hidden, w.head2_w) + w.head2_b[:, None]


@torch.no_grad()
def fold(model: WaveNet) -> FoldedWeights:
    """Training model -> folded generator weights (float32, CPU). Reads the model's modules by name, so this
    module needs no import of fastwavenet.model."""
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
    """Folded weights -> a training model with the same function (training's `--init`, tests, tools that want the
    nn.Module)."""
    from .model import WaveNet  # here, not above: generating imports this module and never loads the training model

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
