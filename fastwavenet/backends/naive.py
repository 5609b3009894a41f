"""`naive`: recompute the whole receptive field for every sample, as a plain WaveNet implementation does. It is the
baseline the others are measured against."""

from __future__ import annotations

import torch

from ..folded import convolve
from ..state import HistoryState
from .base import Backend


class NaiveBackend(Backend):
    """Runs the whole-sequence forward (`folded.convolve`) over the last receptive field for every sample."""

    name = "naive"
    devices = ("cpu", "cuda")

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        self.weights = weights.to(device)

    def new_state(self, batch: int, silence) -> HistoryState:
        return HistoryState.new(self.config, batch, silence, self.device)

    @torch.no_grad()
    def forward(self, state: HistoryState, codes: torch.Tensor, cond=None) -> torch.Tensor:
        codes = codes.to(self.device)
        rf = self.config.receptive_field
        out = []
        for t in range(codes.shape[1]):
            state.history = torch.cat([state.history, codes[:, t:t + 1]], dim=1)[:, -rf:]
            window = None
            if cond is not None:
                step = cond[:, t].to(self.device).unsqueeze(3)  # (B, L, 2G, 1)
                state.cond = torch.cat([state.cond, step], dim=3)[:, :, :, -rf:]
                window = state.cond
            out.append(convolve(self.weights, self.config, state.history, window)[:, :, -1])
            state.t += 1
        return torch.stack(out, dim=1)
