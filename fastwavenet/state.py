"""Generation state, owned by the caller: what one backend advances, step by step, for B streams."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import WaveNetConfig


def input_dtype(config: WaveNetConfig) -> torch.dtype:
    """What a stream consumes and generates: int64 class codes, or float32 sample values for scalar input."""
    return torch.float32 if config.scalar_input else torch.int64


@dataclass
class QueueState:
    """Per-stream generation state of the queue backends (the caller owns it; several may share one Generator).

    queues: (B, queue_length, R) float32, layer l's ring of (k - 1) * d_l past inputs at its offset;
    inputs: (B, k_in - 1) int64, the last codes seen by the input convolution, oldest first, -1 before the start;
    last:   (B,) int64, the newest code not yet consumed (float32, the newest sample value, for scalar input);
    t:      steps consumed so far (the same for every stream).
    """

    queues: torch.Tensor
    inputs: torch.Tensor
    last: torch.Tensor
    t: int = 0

    @classmethod
    def new(cls, config: WaveNetConfig, batch: int, silence, device: torch.device) -> "QueueState":
        """The state of `batch` streams before their first step: empty rings, the input taps before the start,
        silence as the first code to consume."""
        return cls(queues=torch.zeros(batch, config.queue_length, config.residual_channels, device=device),
                   inputs=torch.full((batch, config.input_kernel_size - 1), -1, dtype=torch.int64, device=device),
                   last=torch.full((batch,), silence, dtype=input_dtype(config), device=device))

    @property
    def batch(self) -> int:
        return self.last.shape[0]

    def copy(self) -> "QueueState":
        return QueueState(self.queues.clone(), self.inputs.clone(), self.last.clone(), self.t)

    def reset(self, silence):
        self.queues.zero_()
        self.inputs.fill_(-1)
        self.last.fill_(silence)
        self.t = 0


@dataclass
class HistoryState:
    """State of the `naive` backend: the last receptive-field codes (or sample values) of each stream,
    (B, <= receptive_field), and for conditioned models their gate terms, (B, L, 2G, <= receptive_field)."""

    history: torch.Tensor
    last: torch.Tensor
    cond: torch.Tensor
    t: int = 0

    @classmethod
    def new(cls, config: WaveNetConfig, batch: int, silence, device: torch.device) -> "HistoryState":
        return cls(history=torch.zeros(batch, 0, dtype=input_dtype(config), device=device),
                   last=torch.full((batch,), silence, dtype=input_dtype(config), device=device),
                   cond=torch.zeros(batch, config.layers, 2 * config.gate_channels, 0, device=device))

    @property
    def batch(self) -> int:
        return self.last.shape[0]

    def copy(self) -> "HistoryState":
        return HistoryState(self.history.clone(), self.last.clone(), self.cond.clone(), self.t)

    def reset(self, silence):
        self.history = self.history[:, :0]
        self.cond = self.cond[..., :0]
        self.last.fill_(silence)
        self.t = 0
