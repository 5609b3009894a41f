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

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch

from .errors import FastWaveNetError, shown


# Temperatures outside this range are refused. Below 1e-3 the rule is argmax in all but name (a gap of 0.01 between
# two logits becomes a factor e**10), and far below it logits / temperature overflow float32 (under about 1e-38 for
# logits near 1) and the output turns constant; above 1e3 every class is about equally likely (a gap of 10 becomes
# 1 %): noise, whatever the model. argmax says the first; nothing useful lies past the second.
TEMPERATURE_RANGE = (1e-3, 1e3)
# The kernels take top_k as a 32-bit integer; a model's own classes bound it tighter (GenerationRequest.check).
TOP_K_MAX = 2**31 - 1


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    argmax: bool = False

    def __post_init__(self):
        # Range checks compare, never convert: float() of an integer of 400 digits raises OverflowError. A bool is
        # an int to Python, and no number here.
        low, high = TEMPERATURE_RANGE
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not low <= self.temperature <= high:
            raise FastWaveNetError(f"temperature must be a number in [{low:g}, {high:g}] (below, use argmax), "
                                   f"got {shown(self.temperature)}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 0 <= self.top_k <= TOP_K_MAX:
            raise FastWaveNetError(f"top-k must be 0 (off) or a positive integer up to 2**31 - 1, "
                                   f"got {shown(self.top_k)}")
        if isinstance(self.top_p, bool) or not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise FastWaveNetError(f"top-p must be a number in (0, 1], got {shown(self.top_p)}")
        if not isinstance(self.argmax, bool):
            raise FastWaveNetError(f"argmax must be true or false, got {shown(self.argmax)}")

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
    if not isinstance(sampling, (list, tuple)) or not all(isinstance(s, Sampling) for s in sampling):
        raise FastWaveNetError(f"sampling must be a Sampling, or a list of one per stream, got {shown(sampling)}")
    if len(sampling) != batch:
        raise FastWaveNetError(f"sampling: give one Sampling or one per stream ({batch}), got {len(sampling)}")
    return list(sampling)


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
