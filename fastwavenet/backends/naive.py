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
    state_type = HistoryState
    devices = ("cpu", "cuda")

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        self.weights = weights.to(device)

    @torch.no_grad()
    def forward(self, state: HistoryState, codes: torch.Tensor, cond=None) -> torch.Tensor:
        codes = codes.to(self.device)
        rf = self.config.receptive_field
        out = []
        for t in range(codes.shape[1]):
            state.append(codes[:, t], None if cond is None else cond[:, t].to(self.device), rf)
            # Streams that started later than others in the batch (the engine's pool) have columns from before
            # their start: those are masked to the training model's zero padding.
            valid = None if bool(state.valid.all()) else state.valid
            out.append(convolve(self.weights, self.config, state.history, state.cond, valid)[:, :, -1])
        return torch.stack(out, dim=1)
