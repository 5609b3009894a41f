"""Choosing the next code from logits with host-supplied uniforms, so a seed fixes the output.

The rule (every backend implements exactly this, in its own arithmetic):
1. argmax: the largest logit (lowest index on ties); no uniform is used.
2. otherwise p = softmax(logits / temperature);
3. top_k > 0 keeps the k most probable classes; top_p < 1 keeps the smallest set of most probable classes whose
   probability reaches top_p (always at least one);
4. the code is the first class c, in class order, whose cumulative kept probability exceeds u * (total kept);
   where rounding leaves no such class (u within a rounding step of 1), the last kept class.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch

from .errors import FastWaveNetError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    argmax: bool = False

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise FastWaveNetError(f"temperature must be a positive number, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise FastWaveNetError(f"top-k must be 0 (off) or a positive integer, got {self.top_k}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise FastWaveNetError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def truncates(self) -> bool:
        return self.top_k > 0 or self.top_p < 1

    def overridden(self, **given) -> "Sampling":
        """This rule with the given fields (those not None) in place of its own: a model's default sampling
        with what the user asked for on top."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


def sample(logits: torch.Tensor, u: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """logits (B, C) float32, u (B,) in [0, 1) -> codes (B,) int64, by the rule above (torch, any device)."""
    if sampling.argmax:
        return logits.argmax(dim=1)
    p = torch.softmax(logits / sampling.temperature, dim=1)
    if sampling.truncates:
        p = _truncate(p, sampling)
    cdf = p.cumsum(dim=1)
    target = (u.to(p.dtype) * cdf[:, -1]).unsqueeze(1)
    codes = (cdf <= target).sum(dim=1)
    # codes == C only when rounding leaves the whole cumulative sum at or below u * total (u near 1): take the last
    # class that was kept, never one that truncation dropped (a dropped class is a full-scale click).
    classes = torch.arange(p.shape[1], device=p.device)
    last_kept = torch.where(p > 0, classes, 0).amax(dim=1)
    return torch.where(codes < p.shape[1], codes, last_kept)


def per_stream(sampling: "Sampling | Sequence[Sampling]", batch: int) -> list[Sampling]:
    """One Sampling per stream: a single one shared by all, or a sequence of `batch` of them."""
    if isinstance(sampling, Sampling):
        return [sampling] * batch
    sampling = list(sampling)
    if len(sampling) != batch or not all(isinstance(s, Sampling) for s in sampling):
        raise FastWaveNetError(f"sampling: give one Sampling or one per stream ({batch}), got {len(sampling)}")
    return sampling


def sample_streams(logits: torch.Tensor, u: torch.Tensor, samplings: Sequence[Sampling]) -> torch.Tensor:
    """`sample` with each stream's own rule: streams that share a rule are sampled together."""
    first = samplings[0]
    if all(s == first for s in samplings):
        return sample(logits, u, first)
    codes = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    for rule in set(samplings):
        rows = torch.tensor([i for i, s in enumerate(samplings) if s == rule], device=logits.device)
        codes[rows] = sample(logits[rows], u[rows], rule)
    return codes


def _truncate(p: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    sorted_p, order = p.sort(dim=1, descending=True, stable=True)
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if sampling.top_k > 0:
        keep[:, sampling.top_k:] = False
    if sampling.top_p < 1:
        before = sorted_p.cumsum(dim=1) - sorted_p  # probability of the classes ranked above each one
        keep &= before < sampling.top_p
    mask = torch.zeros_like(keep).scatter_(1, order, keep)
    return torch.where(mask, p, torch.zeros_like(p))
