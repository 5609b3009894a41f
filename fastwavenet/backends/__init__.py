"""The backends and how one is chosen.

    naive   recompute the receptive field for every sample (the baseline)       backends/naive.py
    torch   per-layer queues in PyTorch ops; CUDA graphs on the GPU             backends/torch_queues.py
    numba   the whole loop compiled for the CPU (kernels/cpu.py)                backends/numba_cpu.py
    triton  the whole loop in one Triton launch per chunk (kernels/gpu.py),    backends/triton_gpu.py
            8 or 16 streams per program, each weight row read once for them
    triton-stream  the same launch with one stream per program (matrix-vector products)

The interface they share is backends/base.py. This module holds the registry and the `auto` choice; it imports every
backend, and every backend imports base, so the interface cannot live here without an import cycle. A new backend
is one module beside these and one line in `registry`.
"""

from __future__ import annotations

import warnings

import torch

from ..config import WaveNetConfig
from ..errors import FastWaveNetError
from ..folded import FoldedWeights
from .base import Backend, full_fp32, resolve_device
from .naive import NaiveBackend
from .numba_cpu import NumbaBackend
from .torch_queues import TorchBackend
from .triton_gpu import TritonBackend, TritonStreamBackend


def registry() -> dict[str, type[Backend]]:
    return {"naive": NaiveBackend, "torch": TorchBackend, "numba": NumbaBackend, "triton": TritonBackend,
            "triton-stream": TritonStreamBackend}


def available_backends(device: torch.device | str) -> list[str]:
    device = torch.device(device)
    return [name for name, cls in registry().items() if cls.unavailable_reason(device) is None]


def _auto_order(device: torch.device) -> list[str]:
    """The order `auto` tries. On the CPU numba beats torch at every batch from 1 to 1024 and every preset
    (`fastwavenet bench`, docs/BENCHMARKS.md); on CUDA the Triton kernel comes first (not yet measured on a GPU)."""
    return ["numba", "torch"] if device.type == "cpu" else ["triton", "torch"]


_warned: set[tuple[str, str]] = set()


def make_backend(name: str, config: WaveNetConfig, weights: FoldedWeights, device: torch.device,
                 precision: str = "float32") -> Backend:
    """Build backend `name` ('auto' picks the fastest available); unsupported shapes fall back, saying so once."""
    backends = registry()
    if name == "auto":
        for candidate in _auto_order(device):
            cls = backends[candidate]
            if cls.unavailable_reason(device) is None and cls.unsupported_reason(config) is None:
                return cls(config, weights, device, precision)
        return TorchBackend(config, weights, device, precision)
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
        return TorchBackend(config, weights, device, precision)
    return cls(config, weights, device, precision)


__all__ = ["Backend", "NaiveBackend", "TorchBackend", "NumbaBackend", "TritonBackend", "TritonStreamBackend",
           "registry",
           "available_backends", "make_backend", "resolve_device", "full_fp32"]
