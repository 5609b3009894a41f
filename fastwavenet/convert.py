"""Training side of the folded layout: a training model -> folded weights (`fold`), back (`unfold`, for tests and
tools that want the training model's form), and a training checkpoint -> a model file (`export`).

The layout itself is defined in fastwavenet/folded.py; the inference path never imports this module.
"""

from __future__ import annotations

import os

import torch

from .config import WaveNetConfig
from .files import check_writable
from .folded import FoldedWeights
from .model import WaveNet
from .modelfile import ModelFile, save_model
from .training import model_from_checkpoint


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
    """Folded weights -> a training model with the same function (for tests and tools that want the nn.Module)."""
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


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, sampling=None) -> ModelFile:
    """A training checkpoint (file or run directory) -> a model file at `out`, with `sampling` (a Sampling, or
    None) as its default rule."""
    check_writable(out)
    model = model_from_checkpoint(checkpoint)
    weights = fold(model)
    save_model(out, model.config, weights, sampling)
    return ModelFile(model.config, weights, sampling)
