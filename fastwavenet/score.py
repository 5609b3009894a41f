"""Teacher-forced likelihood of audio under a model, in bits per sample."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import audio, distributions
from .errors import FastWaveNetError
from .folded import convolve, rounded
from .generator import encode
from .modelfile import ModelFile, load_model


@torch.no_grad()
def score_codes(model: ModelFile, codes: np.ndarray, window: int = 16384, forward=None) -> float:
    """Mean negative log2-likelihood of codes[receptive_field:] given everything before, in bits per sample. For a
    scalar-input model, codes are sample values in [-1, 1], each scored as the probability of its level among
    `classes` levels (fastwavenet/distributions.py).

    The first receptive field is context only: predictions there see zero padding, not audio. The whole-sequence
    forward (`folded.convolve`, or `forward`: codes (T,) -> outputs (O, T) from zeros before the start) runs over
    windows of `window` predictions, each with a receptive field of context.
    """
    forward = forward or (lambda window_codes: convolve(model.weights, config, window_codes.unsqueeze(0))[0])
    config = model.config
    rf = config.receptive_field
    codes = torch.as_tensor(np.asarray(codes, dtype=np.float32 if config.scalar_input else np.int64))
    if codes.ndim != 1:
        raise FastWaveNetError(f"expected one sequence of codes, got shape {tuple(codes.shape)}")
    if len(codes) <= rf:
        raise FastWaveNetError(f"audio of {len(codes)} samples is too short to score: the model's receptive field "
                               f"is {rf} samples ({1000 * rf / config.sample_rate:.0f} ms)")
    total, count = 0.0, 0
    # Position p predicts code p + 1; score targets rf .. len-1, i.e. predictions from p = rf - 1.
    for first in range(rf - 1, len(codes) - 1, window):
        last = min(first + window, len(codes) - 1)  # predictions p in [first, last)
        start = first - (rf - 1)
        logits = forward(codes[start:last])[:, rf - 1:]  # (C, last - first)
        targets = codes[first + 1:last + 1]
        if config.scalar_input:
            total -= distributions.log_likelihood(config, logits, targets).sum().item()
        else:
            total += F.cross_entropy(logits.T, targets, reduction="sum").item()
        count += len(targets)
    return total / count / math.log(2)


def score_audio(model: ModelFile, samples: np.ndarray, forward=None) -> float:
    """Bits per sample of mono float audio already at the model's rate (`forward`: as in `score_codes`)."""
    return score_codes(model, encode(samples, model.config), forward=forward)


def _generator_forward(model: ModelFile, precision: str):
    """`score_codes`'s forward through the numba generator, teacher-forced from a fresh state (which starts from
    zeros, as the training model's padding does): for w8a8, whose 8-bit activations only that kernel computes."""
    from .generator import Generator

    gen = Generator(model, backend="numba", precision=precision)
    return lambda window_codes: gen.forward(gen.new_state(1), window_codes.unsqueeze(0))[0].T


def score_files(model: str | os.PathLike | ModelFile, paths, precision: str = "float32") -> list[dict]:
    """Bits per sample of each audio file (resampled to the model's rate): [{"path", "samples", "scored",
    "bits_per_sample"}], `scored` the samples predicted (all but the first receptive field, `score_codes`).
    precision "bf16" scores the model with its matrices rounded to bf16, as a bf16 generator computes; w8a8 runs the
    numba generator teacher-forced (its 8-bit activations are that kernel's), slower than the torch forward."""
    model = model if isinstance(model, ModelFile) else load_model(model)
    forward = _generator_forward(model, precision) if precision == "w8a8" else None
    model = ModelFile(model.config, rounded(model.weights, precision))
    results = []
    for path in paths:
        samples = audio.read(path, model.config.sample_rate)
        results.append({"path": str(path), "samples": len(samples),
                        "scored": len(samples) - model.config.receptive_field,
                        "bits_per_sample": score_audio(model, samples, forward)})
    return results
