"""The backends and how one is chosen.

    naive   recompute the receptive field for every sample (the baseline)       backends/naive.py
    torch   per-layer queues in PyTorch ops; CUDA graphs on the GPU             backends/torch_queues.py
    numba   the whole loop compiled for the CPU (kernels/cpu.py)                backends/numba_cpu.py
    numba-split    numba with each product split between the cores where the batch has fewer streams than cores
    triton  the whole loop in one Triton launch per chunk (kernels/gpu.py),    backends/triton_gpu.py
            8 or 16 streams per program, each weight row read once for them
    triton-stream  the same launch with one stream per program (matrix-vector products)
    triton-spread  one stream over many SMs, a barrier between layer phases (kernels/gpu_spread.py)
    triton-layers  one launch per layer phase over tiles of streams x column blocks, from a CUDA graph
                   (kernels/gpu_layers.py)
    onnxruntime    the exported ONNX step (onnx_step.py) run by ONNX Runtime    backends/onnxruntime_step.py
    torch-compile  torch's step through torch.compile (and a CUDA graph on CUDA) backends/torch_compile.py

The interface they share is backends/base.py. This module holds the registry and the `auto` choice; it imports every
backend, and every backend imports base, so the interface cannot live here without an import cycle. A new backend
is one module beside these and one line in `registry`.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..config import WaveNetConfig
from ..errors import FastWaveNetError
from ..files import cache_root
from ..folded import FoldedWeights
from .base import Backend, full_fp32, resolve_device
from .naive import NaiveBackend
from .numba_cpu import NumbaBackend, NumbaSplitBackend, numba_threads
from .onnxruntime_step import OnnxRuntimeBackend
from .torch_compile import TorchCompileBackend
from .torch_queues import TorchBackend
from .triton_gpu import TritonBackend, TritonLayersBackend, TritonSpreadBackend, TritonStreamBackend


def registry() -> dict[str, type[Backend]]:
    return {"naive": NaiveBackend, "torch": TorchBackend, "numba": NumbaBackend, "numba-split": NumbaSplitBackend,
            "triton": TritonBackend, "triton-stream": TritonStreamBackend, "triton-spread": TritonSpreadBackend,
            "triton-layers": TritonLayersBackend,
            "onnxruntime": OnnxRuntimeBackend, "torch-compile": TorchCompileBackend}


def backend_choices() -> str:
    """The --backend help: every name the option takes."""
    return "auto, " + ", ".join(registry())


def available_backends(device: torch.device | str) -> list[str]:
    device = torch.device(device)
    return [name for name, cls in registry().items() if cls.unavailable_reason(device) is None]


def _auto_order(device: torch.device) -> list[str]:
    """The order `auto` tries; `_trial_candidates` says which of the available ones it times. On the CPU numba beats
    torch at every batch from 1 to 1024 and every preset (`fastwavenet bench`, docs/BENCHMARKS.md), so torch is
    taken only where numba is missing; numba or numba-split by a trial. On CUDA no order has been measured, so
    `auto` times each available one and this order only breaks ties."""
    return (["numba", "numba-split", "torch"] if device.type == "cpu"
            else ["triton", "triton-stream", "triton-spread", "triton-layers", "torch"])


def _trial_candidates(candidates: list[str], device: torch.device, batch: int) -> list[str]:
    """Those of `candidates` (available, in `_auto_order`) that `auto` times at `batch` streams (`choose_by_trial`);
    with fewer than two it takes the first candidate untimed. On CUDA every one. On the CPU numba against
    numba-split where the batch has fewer streams than numba's threads (whether splitting each product pays depends
    on the model's size and the machine: docs/BENCHMARKS.md, "One stream on every core"); from as many streams as
    threads they run the same code, so none."""
    if device.type == "cuda":
        return candidates
    if "numba-split" in candidates and batch < numba_threads():
        return ["numba", "numba-split"]
    return []


# Steps a trial times per candidate (after a warm-up call and an untimed call), and the seconds after which it stops
# early: a candidate that other work on the cores slows (numba-split's barriers wait for the layer's other parts) is
# not timed for long.
TRIAL_STEPS = 64
TRIAL_SECONDS = 0.5


def auto_cache_path() -> Path:
    """Where `auto`'s trial results are kept: auto-backend.json in `cache_root()`."""
    return cache_root() / "auto-backend.json"


def _trial_key(config: WaveNetConfig, device: torch.device, precision: str, batch: int) -> str:
    """What a trial's result depends on: the device's model (on the CPU with numba's thread count), the software,
    the model's shape, precision, batch."""
    from importlib.metadata import PackageNotFoundError, version

    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        import platform

        where = f"{platform.processor() or platform.machine()}, {numba_threads()} numba threads"
    software = [f"torch {torch.__version__}"]
    for package in ("triton", "numba"):
        try:
            software.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    shape = hashlib.sha256(config.to_json().encode()).hexdigest()[:16]
    return f"{where} | {', '.join(software)} | model {shape} | {precision} | batch {batch}"


def trial_rate(backend: Backend, batch: int, steps: int = TRIAL_STEPS, seconds: float = TRIAL_SECONDS) -> float:
    """Samples/s of `backend` generating up to `steps` samples for `batch` streams (plain sampling, zero
    conditioning), after a warm-up call and an untimed call (compilation, graph capture at this shape). On CUDA one
    call of `steps` (graphs are captured per call size); on the CPU calls of 8 steps until `steps` or `seconds`."""
    from .. import distributions
    from ..sampling import Sampling

    c = backend.config
    piece = steps if backend.device.type == "cuda" else min(8, steps)
    with full_fp32(backend.device):
        backend.warm_up(Sampling())
        state = backend.new_state(batch, 0)  # what the streams start from does not change the work
        cond = (torch.zeros(batch, piece, c.layers, 2 * c.gate_channels, device=backend.device)
                if c.conditioned else None)
        u = np.random.default_rng(0).random((piece, batch) + distributions.uniform_shape(c), dtype=np.float32)
        backend.generate(state, piece, u, Sampling(), cond).cpu()
        if backend.device.type == "cuda":
            torch.cuda.synchronize(backend.device)
        done, t0 = 0, time.perf_counter()
        while done < steps and (done == 0 or time.perf_counter() - t0 < seconds):
            backend.generate(state, piece, u, Sampling(), cond).cpu()  # .cpu() waits for the device
            done += piece
        return batch * done / (time.perf_counter() - t0)


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, unreadable or corrupt: trials run again and rewrite it
        return {}
    return cache if isinstance(cache, dict) else {}


def kept_choices() -> dict[str, str]:
    """The backend `auto` chose for each trial key, as kept in `auto_cache_path()` (empty if none)."""
    return {key: entry["backend"] for key, entry in _read_cache(auto_cache_path()).items()
            if isinstance(entry, dict) and isinstance(entry.get("backend"), str)}


_trials: dict[str, str] = {}  # this process's choices by trial key (the file may be unwritable)


def choose_by_trial(candidates: list[str], config: WaveNetConfig, weights: FoldedWeights, device: torch.device,
                    precision: str = "float32", batch: int = 1, rate=None, built: dict | None = None) -> str:
    """The fastest of `candidates` (available, supporting this model) at `batch` streams, by a short measured trial
    at first use, said on stderr; the choice is kept per device model, software versions, model shape, precision
    and batch in this process and in `auto_cache_path()`, so later runs reuse it without measuring. Ties and
    failed trials fall back to the candidates' order. `rate(backend, batch)` measures one (default `trial_rate`);
    `built`, if given, receives the backends the trial built, by name, so the caller need not build the winner again."""
    import sys

    rate = rate or trial_rate

    key = _trial_key(config, device, precision, batch)
    path = auto_cache_path()
    chosen = _trials.get(key) or _read_cache(path).get(key, {}).get("backend")
    if chosen in candidates:
        return chosen
    rates: dict[str, float] = {}
    built = {} if built is None else built
    for name in candidates:
        try:
            built[name] = registry()[name](config, weights, device, precision)
            rates[name] = rate(built[name], batch)
        except Exception as exc:  # a backend that fails here is not chosen; the others still can be
            print(f"fastwavenet: auto: {name} failed its trial ({type(exc).__name__}: {exc})", file=sys.stderr)
    if not rates:
        return candidates[0]
    chosen = max(candidates, key=lambda name: rates.get(name, -1.0))  # max keeps the first of equals
    _trials[key] = chosen
    said = ", ".join(f"{name} {rates[name]:,.0f}" for name in candidates if name in rates)
    try:
        from ..files import write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        cache = _read_cache(path)
        cache[key] = {"backend": chosen, "samples_per_s": rates, "date": time.strftime("%Y-%m-%d")}
        write_json(path, cache)
        kept = f"kept in {path}"
    except (OSError, FastWaveNetError) as exc:  # no place to keep it: this process still remembers
        kept = f"not kept in {path}: {exc.strerror if isinstance(exc, OSError) else exc}"
    print(f"fastwavenet: auto: {said} samples/s at batch {batch} -> {chosen} ({kept})", file=sys.stderr)
    return chosen


_warned: set[tuple[str, str]] = set()


def make_backend(name: str, config: WaveNetConfig, weights: FoldedWeights, device: torch.device,
                 precision: str = "float32", batch: int = 1) -> Backend:
    """Build backend `name`; unsupported shapes fall back, saying so once. 'auto' takes the fastest of
    `_trial_candidates` at `batch` streams by a measured trial (`choose_by_trial`), else the first available of
    `_auto_order`; the backend then serves every batch."""
    backends = registry()
    if name == "auto":
        candidates = [candidate for candidate in _auto_order(device)
                      if backends[candidate].unavailable_reason(device) is None
                      and backends[candidate].unsupported_reason(config) is None
                      and precision in backends[candidate].precisions]
        if not candidates:
            return TorchBackend(config, weights, device, precision)
        timed = _trial_candidates(candidates, device, batch)
        if len(timed) > 1:
            built: dict[str, Backend] = {}  # the trial's own backends: the winner is used as it is
            chosen = choose_by_trial(timed, config, weights, device, precision, batch, built=built)
            return built.get(chosen) or backends[chosen](config, weights, device, precision)
        return backends[candidates[0]](config, weights, device, precision)
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


__all__ = ["Backend", "NaiveBackend", "TorchBackend", "NumbaBackend", "NumbaSplitBackend", "TritonBackend",
           "TritonStreamBackend", "OnnxRuntimeBackend", "TorchCompileBackend", "registry",
           "available_backends", "make_backend", "resolve_device", "full_fp32", "choose_by_trial", "trial_rate",
           "auto_cache_path", "cache_root", "kept_choices"]
