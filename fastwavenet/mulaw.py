"""Mu-law companding and quantization, in NumPy and in torch (the same numbers from both).

Convention (that of basveeling/wavenet, whose piano data and trained model fastwavenet uses), with mu = classes - 1:

    y    = sign(x) * ln(1 + mu |x|) / ln(1 + mu)          x clipped to [-1, 1]
    code = min(floor((y + 1) / 2 * mu), mu)              an integer in [0, mu]

Dequantizing takes the centre of a code's bin, (code + 0.5) / mu * 2 - 1, clipped to [-1, 1], then expands.
Silence (x = 0) is code floor(mu / 2), 127 for 256 classes.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import FastWaveNetError


def _check_finite(finite: bool):
    if not finite:
        raise FastWaveNetError("audio contains NaN or infinite values")


def compress(x, mu: int = 255):
    """x in [-1, 1] (clipped) -> y in [-1, 1]. NumPy array or torch tensor."""
    if isinstance(x, torch.Tensor):
        _check_finite(bool(torch.isfinite(x).all()))
        x = x.clamp(-1.0, 1.0)
        return torch.sign(x) * torch.log1p(mu * x.abs()) / np.log1p(mu)
    x = np.asarray(x, dtype=np.float64)
    _check_finite(bool(np.isfinite(x).all()))
    x = np.clip(x, -1.0, 1.0)
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


def expand(y, mu: int = 255):
    """Inverse of `compress`: y in [-1, 1] -> x in [-1, 1]."""
    if isinstance(y, torch.Tensor):
        return torch.sign(y) * torch.expm1(y.abs() * np.log1p(mu)) / mu
    y = np.asarray(y, dtype=np.float64)
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def quantize(y, classes: int = 256):
    """Companded y in [-1, 1] -> integer codes in [0, classes - 1] (int64)."""
    mu = classes - 1
    if isinstance(y, torch.Tensor):
        return torch.clamp(torch.floor((y + 1) / 2 * mu), 0, mu).to(torch.int64)
    return np.clip(np.floor((np.asarray(y) + 1) / 2 * mu), 0, mu).astype(np.int64)


def dequantize(codes, classes: int = 256):
    """Integer codes -> companded y at the centre of each code's bin, in [-1, 1]."""
    mu = classes - 1
    if isinstance(codes, torch.Tensor):
        return torch.clamp((codes.to(torch.float64) + 0.5) / mu * 2 - 1, -1.0, 1.0)
    return np.clip((np.asarray(codes, dtype=np.float64) + 0.5) / mu * 2 - 1, -1.0, 1.0)


def encode(x, classes: int = 256):
    """Audio in [-1, 1] -> mu-law codes. NaN or infinity raises FastWaveNetError."""
    return quantize(compress(x, classes - 1), classes)


def decode(codes, classes: int = 256):
    """Mu-law codes -> audio in [-1, 1] (float64 for NumPy input, float64 tensor for torch input)."""
    return expand(dequantize(codes, classes), classes - 1)
