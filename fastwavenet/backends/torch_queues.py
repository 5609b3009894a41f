"""`torch`: the per-layer queues in plain PyTorch ops, one step at a time; on CUDA one step is captured in a CUDA
graph and replayed."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from ..folded import gate_and_project
from ..state import QueueState, input_dtype
from .base import Backend


class TorchBackend(Backend):
    """Per-layer queues with plain PyTorch ops. On CUDA one step is captured in a CUDA graph and replayed."""

    name = "torch"
    devices = ("cpu", "cuda")

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        c = config
        w = weights.to(device)
        self.w = w
        k, r = c.kernel_size, c.residual_channels
        self.dilated = w.dilated_w.reshape(c.layers, k * r, 2 * c.gate_channels)
        # The input taps get a zero row at index `classes`, which stands for "before the start" (-1).
        self.embed = torch.cat([w.embed, torch.zeros_like(w.embed[:, :1])], dim=1)
        layout = c.queue_layout()
        self.sizes = torch.from_numpy(layout.sizes).to(device)
        self.offsets = torch.from_numpy(layout.offsets).to(device)
        # Tap j of layer l (j = 0 oldest) reads the input of (k - 1 - j) * d steps ago.
        taps = torch.arange(k - 1, 0, -1)
        self.lags = (torch.from_numpy(layout.dilations)[:, None] * taps[None, :]).to(device)
        self._graph = None
        # One captured graph and its static buffers per backend: two threads sharing a Generator must neither
        # replay into each other's buffers nor capture while the other launches work.
        self._graph_lock = threading.Lock()

    @torch.no_grad()
    def _step(self, queues, inputs, codes, t, cond=None):
        """One step for every stream: consume codes (B,) at time t (0-dim tensor), with gate terms cond (B, L, 2G)
        or None; return the head's outputs (B, O). Scalar input: codes are sample values (B,) float32."""
        c, w = self.config, self.w
        n = c.layers
        if c.scalar_input:
            x = codes[:, None] * w.embed[0, 0] + w.embed[0, 1]
        else:
            x = self.embed[-1][codes]
        if c.input_kernel_size > 1:
            past = torch.where(inputs < 0, c.classes, inputs)
            for j in range(c.input_kernel_size - 1):
                x = x + self.embed[j][past[:, j]]
            inputs.copy_(torch.cat([inputs[:, 1:], codes.unsqueeze(1)], dim=1))
        reads = self.offsets.unsqueeze(1) + torch.remainder(t - self.lags, self.sizes.unsqueeze(1))  # (L, k-1)
        writes = self.offsets + torch.remainder(t, self.sizes)  # (L,)
        skip = None
        for layer in range(n):
            taps = queues.index_select(1, reads[layer]).flatten(1)  # (B, (k-1) R)
            queues.index_copy_(1, writes[layer:layer + 1], x.unsqueeze(1))
            z = torch.addmm(w.dilated_b[layer], torch.cat([taps, x], dim=1), self.dilated[layer])
            if cond is not None:
                z = z + cond[:, layer]
            x, s = gate_and_project(w, layer, z, x, last=layer == n - 1)
            skip = s if skip is None else skip + s
        h = F.relu(torch.addmm(w.head1_b, F.relu(skip), w.head1_w))
        return torch.addmm(w.head2_b, h, w.head2_w)

    def _step_state(self, state: QueueState, codes: torch.Tensor, cond) -> torch.Tensor:
        if self.device.type == "cuda":
            with self._graph_lock, torch.cuda.device(self.device):  # cuda:1 captures and replays on device 1
                logits = self._replay(state, codes, cond)
        else:
            logits = self._step(state.queues, state.inputs, codes, torch.tensor(state.t), cond)
        state.t += 1
        return logits

    def _replay(self, state: QueueState, codes: torch.Tensor, cond) -> torch.Tensor:
        """CUDA: replay a graph of one step, captured once per set of state tensors."""
        key = (state.queues.data_ptr(), state.inputs.data_ptr(), state.batch, cond is None)
        if self._graph is None or self._graph[0] != key:
            static_codes = torch.zeros(state.batch, dtype=input_dtype(self.config), device=self.device)
            static_t = torch.zeros((), dtype=torch.int64, device=self.device)
            static_cond = None if cond is None else torch.zeros_like(cond)
            saved = state.queues.clone(), state.inputs.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm up outside the graph, as capture requires
                self._step(state.queues, state.inputs, static_codes, static_t, static_cond)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_logits = self._step(state.queues, state.inputs, static_codes, static_t, static_cond)
            state.queues.copy_(saved[0])
            state.inputs.copy_(saved[1])
            self._graph = (key, graph, static_codes, static_t, static_cond, static_logits)
        _, graph, static_codes, static_t, static_cond, static_logits = self._graph
        static_codes.copy_(codes)
        static_t.fill_(state.t)
        if cond is not None:
            static_cond.copy_(cond)
        graph.replay()
        return static_logits.clone()

    def forward(self, state: QueueState, codes: torch.Tensor, cond=None) -> torch.Tensor:
        codes = codes.to(self.device)
        if cond is not None:
            cond = cond.to(self.device)
        return torch.stack([self._step_state(state, codes[:, i], None if cond is None else cond[:, i])
                            for i in range(codes.shape[1])], dim=1)
