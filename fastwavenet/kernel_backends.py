"""Adapters from the backend interface (backends.py) to the compiled kernels in `fastwavenet.kernels`."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import threading

import numpy as np
import torch

from .backends import Backend
from .state import QueueState


def _weights_out_major(weights, config):
    """The folded weights as NumPy arrays with every matrix transposed to (out, in), for the numba kernel."""
    w = {name: t.detach().cpu().numpy() for name, t in weights.tensors().items()}
    w["dilated_w"] = w["dilated_w"].reshape(config.layers, config.kernel_size * config.residual_channels, -1)
    for name in ("dilated_w", "out_w", "head1_w", "head2_w"):
        w[name] = np.ascontiguousarray(np.swapaxes(w[name], -1, -2))
    return {name: np.ascontiguousarray(a) for name, a in w.items()}


def _layer_offsets(config) -> tuple[np.ndarray, np.ndarray]:
    dilations = np.asarray(config.dilations, dtype=np.int64)
    sizes = (config.kernel_size - 1) * dilations
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return dilations, offsets


_PARALLEL_LOCK = threading.Lock()


def _parallel_guard():
    """numba's `workqueue` threading layer, used where neither OpenMP nor TBB is found (many macOS installs, for
    one), ends the process if two threads run parallel code at once. Calls are serialized unless the layer in use is
    one that is safe across threads (known after the first parallel call)."""
    import numba

    try:
        if numba.threading_layer() in ("omp", "tbb"):
            return contextlib.nullcontext()
    except ValueError:  # no parallel call yet
        pass
    return _PARALLEL_LOCK


class NumbaBackend(Backend):
    """The whole loop compiled with numba on the CPU, sampling included; streams in tiles across cores."""

    name = "numba"
    devices = ("cpu",)

    @classmethod
    def unavailable_reason(cls, device):
        if importlib.util.find_spec("numba") is None:
            return "numba is not installed"
        return super().unavailable_reason(device)

    def __init__(self, config, weights, device):
        super().__init__(config, weights, device)
        from .kernels import cpu

        self.kernels = cpu
        w = _weights_out_major(weights, config)
        dilations, offsets = _layer_offsets(config)
        self.args = (w["embed"], w["dilated_w"], w["dilated_b"], w["out_w"], w["out_b"], w["head1_w"],
                     w["head1_b"], w["head2_w"], w["head2_b"], dilations, offsets)

    @staticmethod
    def _tile(batch: int) -> int:
        threads = os.cpu_count() or 1
        try:
            import numba

            threads = numba.get_num_threads()
        except ImportError:
            pass
        return max(1, min(64, math.ceil(batch / threads)))

    @staticmethod
    def _cond(cond) -> np.ndarray:
        if cond is None:
            return np.zeros((0, 0, 0, 0), np.float32)
        return np.ascontiguousarray(cond.cpu().numpy(), np.float32)

    def forward(self, state: QueueState, codes: torch.Tensor, cond=None) -> torch.Tensor:
        codes = np.ascontiguousarray(codes.cpu().numpy())
        logits = np.empty((state.batch, codes.shape[1], self.config.classes), np.float32)
        with _parallel_guard():
            self.kernels.teacher_forced(codes, state.t, self._tile(state.batch), *self.args, state.queues.numpy(),
                                        state.inputs.numpy(), self._cond(cond), logits)
        state.t += codes.shape[1]
        return torch.from_numpy(logits)

    def generate(self, state: QueueState, n, u, sampling, cond=None):
        out = np.empty((state.batch, n), np.int64)
        last = state.last.numpy()
        with _parallel_guard():
            self.kernels.generate(last, state.t, np.ascontiguousarray(u, np.float32),
                                  np.float32(sampling.temperature), sampling.top_k, np.float32(sampling.top_p),
                                  sampling.argmax, self._tile(state.batch), *self.args, state.queues.numpy(),
                                  state.inputs.numpy(), self._cond(cond), out)
        state.t += n
        return torch.from_numpy(out)


class TritonBackend(Backend):
    """One Triton launch generates a chunk of samples for a batch of streams (time loop inside the kernel)."""

    name = "triton"
    devices = ("cuda",)

    @classmethod
    def unavailable_reason(cls, device):
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return None  # Triton's interpreter runs the kernel on the CPU (tests do this)
        return super().unavailable_reason(device)

    @classmethod
    def unsupported_reason(cls, config):
        from .kernels.gpu import unsupported_reason

        return unsupported_reason(config)

    def __init__(self, config, weights, device):
        super().__init__(config, weights, device)
        from .kernels import gpu

        self.kernels = gpu
        w = weights.to(device)
        self.w = {name: t for name, t in w.tensors().items()}
        self.w["dilated_w"] = self.w["dilated_w"].reshape(config.layers, -1, 2 * config.gate_channels).contiguous()
        dilations, offsets = _layer_offsets(config)
        self.dilations = torch.from_numpy(dilations).to(device)
        self.offsets = torch.from_numpy(offsets).to(device)

    def _run(self, state, codes, u, sampling, logits_out, codes_out, teacher, cond):
        cond = None if cond is None else cond.to(self.device).contiguous()
        self.kernels.run(codes=codes, t0=state.t, u=u, sampling=sampling, teacher=teacher, weights=self.w,
                         dilations=self.dilations, offsets=self.offsets, queues=state.queues, inputs=state.inputs,
                         cond=cond, logits_out=logits_out, codes_out=codes_out, config=self.config)

    def forward(self, state: QueueState, codes: torch.Tensor, cond=None) -> torch.Tensor:
        codes = codes.to(self.device).contiguous()
        B, T = codes.shape
        logits = torch.empty(B, T, self.config.classes, device=self.device)
        u = torch.zeros(T, B, device=self.device)
        out = torch.empty(B, T, dtype=torch.int64, device=self.device)
        self._run(state, codes, u, None, logits, out, True, cond)
        state.t += T
        return logits

    def generate(self, state: QueueState, n, u, sampling, cond=None):
        if sampling.truncates:
            # Top-k / top-p need a sort per sample; the kernel does temperature and argmax only.
            return super().generate(state, n, u, sampling, cond)
        B = state.batch
        codes = state.last.to(self.device).reshape(B, 1).contiguous()
        out = torch.empty(B, n, dtype=torch.int64, device=self.device)
        u = torch.from_numpy(np.ascontiguousarray(u)).to(self.device)
        self._run(state, codes, u, sampling, None, out, False, cond)
        state.t += n
        state.last = out[:, -1].clone()
        return out
