"""Continuous output distributions over sample values in [-1, 1] (r9y9/wavenet_vocoder's): a mixture of logistics
and a Gaussian. The sampling rule every backend implements, and the discretized likelihood that `score` reports.

The head's outputs y of one step:
    logistic_mixture   y[:K] mixture logits, y[K:2K] means, y[2K:3K] log scales      (K = config.mixtures)
    gaussian           y[0] mean, y[1] log scale
Log scales are clamped below at config.log_scale_min, as r9y9 does in training and sampling.

The sampling rule, with two host-supplied uniforms u0, u1 per sample (float64 throughout):
1. the component k (mixture only): with argmax, the largest logit (the lowest index on ties); otherwise the first
   component whose cumulative softmax(logits / temperature) exceeds u0 * total, the last one where rounding leaves
   none (the rule of fastwavenet/sampling.py for classes);
2. with argmax, x = mean_k; otherwise v = u1 clamped to [U_EDGE, 1 - U_EDGE] (1e-5: a draw is never infinite,
   r9y9's bound) and x = mean_k + temperature * exp(log_scale_k) * Q(v), the inverse CDF: Q(v) = log(v) - log(1 - v) for
   the logistic, the standard normal quantile for the Gaussian;
3. x is clamped to [-1, 1].
Temperature thus divides the mixture logits and multiplies the scale: 1 is the model's own distribution, towards 0
the likeliest component's mean. top-k and top-p are defined over classes and do not apply here.

Likelihood: a sample x is scored as the probability of its level among `classes` levels spread over [-1, 1] (half
width 1 / (classes - 1)): CDF(x + half) - CDF(x - half), with the outermost levels taking the tails, as r9y9's
discretized_mix_logistic_loss does (its rule for levels of tiny mass included).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import WaveNetConfig
from .errors import FastWaveNetError
# KERNEL_CODES: the `distribution` code both kernels take for each output, read by the backends from here.
from .kernels.sampling_constants import KERNEL_CODES, U_EDGE  # noqa: F401
from .sampling import Sampling


def check_rules(config: WaveNetConfig, samplings: Sequence[Sampling]):
    """Refuse sampling options that a model's output does not have."""
    if config.output != "softmax" and any(s.truncates for s in samplings):
        raise FastWaveNetError(f"top-k and top-p choose among classes; this model's output is a {config.output} "
                               f"over sample values (use temperature or argmax)")
    for s in samplings:
        if s.top_k > config.classes:
            raise FastWaveNetError(f"top-k {s.top_k} is more than this model's {config.classes} classes")


def uniform_shape(config: WaveNetConfig) -> tuple[int, ...]:
    """The uniforms one sample of one stream takes, as a shape to append: () for classes, (2,) for a continuous
    output (u0 picks the component, u1 makes the draw)."""
    return () if config.output == "softmax" else (2,)


def _parameters(config: WaveNetConfig, y: torch.Tensor, k: torch.Tensor | None):
    """(mean, log scale) of component k of each row of y (B, O), float64."""
    y = y.to(torch.float64)
    if config.output == "gaussian":
        mean, log_scale = y[:, 0], y[:, 1]
    else:
        K = config.mixtures
        rows = torch.arange(y.shape[0], device=y.device)
        mean, log_scale = y[rows, K + k], y[rows, 2 * K + k]
    return mean, log_scale.clamp(min=config.log_scale_min)


def sample(config: WaveNetConfig, y: torch.Tensor, u: torch.Tensor, samplings: Sequence[Sampling]) -> torch.Tensor:
    """y (B, O) head outputs, u (B, 2) uniforms -> sample values (B,) float32 in [-1, 1], by the rule above, each
    stream by its own Sampling."""
    check_rules(config, samplings)
    y64, u = y.to(torch.float64), u.to(torch.float64)
    temperature = torch.tensor([s.temperature for s in samplings], dtype=torch.float64, device=y.device)
    argmax = torch.tensor([s.argmax for s in samplings], device=y.device)
    k = None
    if config.output == "logistic_mixture":
        logits = y64[:, :config.mixtures]
        best = logits.argmax(dim=1)
        p = torch.exp((logits - logits.gather(1, best[:, None])) / temperature[:, None])
        cdf = p.cumsum(dim=1)
        drawn = (cdf <= (u[:, 0] * cdf[:, -1])[:, None]).sum(dim=1).clamp(max=config.mixtures - 1)
        k = torch.where(argmax, best, drawn)
    mean, log_scale = _parameters(config, y, k)
    v = u[:, 1].clamp(U_EDGE, 1 - U_EDGE)
    if config.output == "gaussian":
        quantile = torch.special.ndtri(v)
    else:
        quantile = torch.log(v) - torch.log1p(-v)
    x = torch.where(argmax, mean, mean + temperature * torch.exp(log_scale) * quantile)
    return x.clamp(-1.0, 1.0).to(torch.float32)


def log_likelihood(config: WaveNetConfig, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Natural-log probability of each sample x (T,) in [-1, 1] under outputs y (O, T), discretized to
    config.classes levels (module docstring). Returns (T,) float64."""
    y, x = y.to(torch.float64).T, x.to(torch.float64)  # (T, O)
    half = 1.0 / (config.classes - 1)
    if config.output == "gaussian":
        means, log_scales, log_weights = y[:, :1], y[:, 1:2], torch.zeros_like(y[:, :1])
    else:
        K = config.mixtures
        means, log_scales, log_weights = y[:, K:2 * K], y[:, 2 * K:], F.log_softmax(y[:, :K], dim=1)
    log_scales = log_scales.clamp(min=config.log_scale_min)
    centred = x[:, None] - means
    inv = torch.exp(-log_scales)
    plus, minus, mid = inv * (centred + half), inv * (centred - half), inv * centred
    if config.output == "gaussian":
        normal = torch.distributions.Normal(0.0, 1.0)
        log_cdf_plus = torch.special.log_ndtr(plus)
        log_sf_minus = torch.special.log_ndtr(-minus)
        delta = normal.cdf(plus) - normal.cdf(minus)
        log_pdf_mid = normal.log_prob(mid) - log_scales
    else:
        log_cdf_plus = plus - F.softplus(plus)
        log_sf_minus = -F.softplus(minus)
        delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)
    # A level of tiny mass: the density at its centre times its width (r9y9's rule).
    inner = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_pdf_mid + math.log(2 * half))
    edge = torch.where(x[:, None] > 0.999, log_sf_minus, inner)
    log_probs = torch.where(x[:, None] < -0.999, log_cdf_plus, edge) + log_weights
    return torch.logsumexp(log_probs, dim=1)
