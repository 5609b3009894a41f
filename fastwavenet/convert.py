"""Training side of the folded layout: a training model -> folded weights (`fold`), and a training checkpoint -> a
model file (`export`). The way back, folded weights -> a training model, is `model.unfold` (training's `--init`
needs it, and training must not import this module, which imports training).

The layout itself is defined in fastwavenet/folded.py; the inference path never imports this module.
"""

from __future__ import annotations

import os

import torch

from .files import check_writable
from .folded import FoldedWeights
from .model import WaveNet, unfold  # noqa: F401  (unfold lives with the model; kept importable here)
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


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, sampling=None) -> ModelFile:
    """A training checkpoint (file or run directory) -> a model file at `out`, with `sampling` (a Sampling, or
    None) as its default rule."""
    check_writable(out)
    model = model_from_checkpoint(checkpoint)
    weights = fold(model)
    save_model(out, model.config, weights, sampling)
    return ModelFile(model.config, weights, sampling)


def export_model(source: str | os.PathLike, out: str | os.PathLike, request=None):
    """What `fastwavenet export` does: fold a training run or checkpoint (`source`) into a model file at `out`; or,
    given a model file (.safetensors), write it to `out` again with a new default sampling. `request`: a
    GenerationRequest whose sampling fields, those given, become the default sampling (over the model file's own).
    Returns the default sampling that the written file holds (a Sampling, or None)."""
    from .modelfile import load_model, set_default_sampling
    from .request import SAMPLING_FIELDS
    from .sampling import Sampling

    given = request is not None and any(getattr(request, name) is not None for name in SAMPLING_FIELDS)
    if str(source).endswith(".safetensors"):
        check_writable(out)
        loaded = load_model(source)
        sampling = request.sampling(loaded.sampling or Sampling()) if given else loaded.sampling
        set_default_sampling(source, sampling, out)
        return sampling
    sampling = request.sampling(Sampling()) if given else None
    export(source, out, sampling)
    return sampling
