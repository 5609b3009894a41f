"""The backend registry: `naive` (recompute the receptive field), `torch` (queues in PyTorch ops; CUDA graphs on
GPU), and adapters to the compiled kernels in `fastwavenet.kernels` (`numba` on CPU, `triton` on GPU).

Every backend takes the folded weights of export.py and offers:
    new_state(batch)                       a zeroed state (QueueState, or HistoryState for naive)
    forward(state, codes, cond)            codes (B, T) int64 -> logits (B, T, classes) float32, advancing the state
    generate(state, n, u, sampling, cond)  n codes per stream from uniforms u (n, B), consuming state.last first
cond is None for plain models, else the per-layer gate terms of those steps, (B, T or n, L, 2G) float32.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .config import WaveNetConfig
from .errors import FastWaveNetError
from .export import FoldedWeights, unfold
from .sampling import Sampling, sample
from .state import HistoryState, QueueState


class Backend:
    name = "?"
    devices = ("cpu",)

    def __init__(self, config: WaveNetConfig, weights: FoldedWeights, device: torch.device):
        self.config, self.device = config, device

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """None if this backend can run on `device`, else why not."""
        return None if device.type in cls.devices else f"runs on {' or '.join(cls.devices)} only"

    @classmethod
    def unsupported_reason(cls, config: WaveNetConfig) -> str | None:
        """None if this backend handles models of this shape, else why not."""
        return None

    def new_state(self, batch: int) -> QueueState:
        c = self.config
        return QueueState(
            queues=torch.zeros(batch, c.queue_length, c.residual_channels, device=self.device),
            inputs=torch.full((batch, c.input_kernel_size - 1), -1, dtype=torch.int64, device=self.device),
            last=torch.zeros(batch, dtype=torch.int64, device=self.device))

    def generate(self, state, n: int, u: np.ndarray, sampling: Sampling, cond=None) -> torch.Tensor:
        """The plain loop: one step and one sample per code. Compiled backends override it."""
        u = torch.from_numpy(u).to(self.device)
        out = torch.empty(state.batch, n, dtype=torch.int64, device=self.device)
        last = state.last.to(self.device)
        for i in range(n):
            logits = self.forward(state, last.unsqueeze(1), None if cond is None else cond[:, i:i + 1])[:, 0]
            last = sample(logits, u[i], sampling)
            out[:, i] = last
        state.last = last.clone()
        return out


class NaiveBackend(Backend):
    """Recomputes the full receptive field with the training model for every sample: the baseline."""

    name = "naive"
    devices = ("cpu", "cuda")

    def __init__(self, config, weights, device):
        super().__init__(config, weights, device)
        self.model = unfold(weights, config).to(device)

    def new_state(self, batch: int) -> HistoryState:
        c = self.config
        return HistoryState(history=torch.zeros(batch, 0, dtype=torch.int64, device=self.device),
                            last=torch.zeros(batch, dtype=torch.int64, device=self.device),
                            cond=torch.zeros(batch, c.layers, 2 * c.gate_channels, 0, device=self.device))

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
            out.append(self.model(state.history, window)[:, :, -1])
            state.t += 1
        return torch.stack(out, dim=1)


class TorchBackend(Backend):
    """Per-layer queues with plain PyTorch ops. On CUDA one step is captured in a CUDA graph and replayed."""

    name = "torch"
    devices = ("cpu", "cuda")

    def __init__(self, config, weights, device):
        super().__init__(config, weights, device)
        c = config
        w = weights.to(device)
        self.w = w
        k, r = c.kernel_size, c.residual_channels
        self.dilated = w.dilated_w.reshape(c.layers, k * r, 2 * c.gate_channels)
        # The input taps get a zero row at index `classes`, which stands for "before the start" (-1).
        self.embed = torch.cat([w.embed, torch.zeros_like(w.embed[:, :1])], dim=1)
        sizes = [(k - 1) * d for d in c.dilations]
        offsets = np.cumsum([0] + sizes[:-1])
        as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.int64, device=device)  # noqa: E731
        self.sizes = as_tensor(sizes)
        self.offsets = as_tensor(offsets)
        # Tap j of layer l (j = 0 oldest) reads the input of (k - 1 - j) * d steps ago.
        self.lags = as_tensor([[(k - 1 - j) * d for j in range(k - 1)] for d in c.dilations])
        self._graph = None

    @torch.no_grad()
    def _step(self, queues, inputs, codes, t, cond=None):
        """One step for every stream: consume codes (B,) at time t (0-dim tensor), with gate terms cond (B, L, 2G)
        or None; return logits (B, classes)."""
        c, w = self.config, self.w
        r, g, n = c.residual_channels, c.gate_channels, c.layers
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
            gated = torch.tanh(z[:, :g]) * torch.sigmoid(z[:, g:])
            if layer == n - 1:
                s = torch.addmm(w.out_b[layer, r:], gated, w.out_w[layer, :, r:])
            else:
                o = torch.addmm(w.out_b[layer], gated, w.out_w[layer])
                x = x + o[:, :r]
                s = o[:, r:]
            skip = s if skip is None else skip + s
        h = F.relu(torch.addmm(w.head1_b, F.relu(skip), w.head1_w))
        return torch.addmm(w.head2_b, h, w.head2_w)

    def _step_state(self, state: QueueState, codes: torch.Tensor, cond) -> torch.Tensor:
        if self.device.type == "cuda":
            logits = self._replay(state, codes, cond)
        else:
            logits = self._step(state.queues, state.inputs, codes, torch.tensor(state.t), cond)
        state.t += 1
        return logits

    def _replay(self, state: QueueState, codes: torch.Tensor, cond) -> torch.Tensor:
        """CUDA: replay a graph of one step, captured once per set of state tensors."""
        key = (state.queues.data_ptr(), state.inputs.data_ptr(), state.batch, cond is None)
        if self._graph is None or self._graph[0] != key:
            static_codes = torch.zeros(state.batch, dtype=torch.int64, device=self.device)
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


def _kernel_backends() -> dict[str, type]:
    from .kernel_backends import NumbaBackend, TritonBackend

    return {"numba": NumbaBackend, "triton": TritonBackend}


def registry() -> dict[str, type]:
    return {"naive": NaiveBackend, "torch": TorchBackend, **_kernel_backends()}


def available_backends(device: torch.device | str) -> list[str]:
    device = torch.device(device)
    return [name for name, cls in registry().items() if cls.unavailable_reason(device) is None]


def _auto_order(device: torch.device) -> list[str]:
    """The order `auto` tries. On the CPU numba beats torch at every batch from 1 to 1024 and every preset
    (`fastwavenet bench`, docs/BENCHMARKS.md); on CUDA the Triton kernel comes first (not yet measured on a GPU)."""
    return ["numba", "torch"] if device.type == "cpu" else ["triton", "torch"]


_warned: set[tuple[str, str]] = set()


def make_backend(name: str, config: WaveNetConfig, weights: FoldedWeights, device: torch.device) -> Backend:
    """Build backend `name` ('auto' picks the fastest available); unsupported shapes fall back, saying so once."""
    backends = registry()
    if name == "auto":
        for candidate in _auto_order(device):
            cls = backends[candidate]
            if cls.unavailable_reason(device) is None and cls.unsupported_reason(config) is None:
                return cls(config, weights, device)
        return TorchBackend(config, weights, device)
    if name not in backends:
        raise FastWaveNetError(f"unknown backend {name!r}; backends: auto, {', '.join(backends)}")
    cls = backends[name]
    reason = cls.unavailable_reason(device)
    if reason is not None:
        raise FastWaveNetError(f"backend {name!r} is not available on {device.type} ({reason}); "
                               f"available: {', '.join(available_backends(device))}")
    reason = cls.unsupported_reason(config)
    if reason is not None:
        if (name, reason) not in _warned:
            _warned.add((name, reason))
            warnings.warn(f"backend {name!r} does not support this model ({reason}); using 'torch'", stacklevel=2)
        return TorchBackend(config, weights, device)
    return cls(config, weights, device)
