"""The benchmark harness that `fastwavenet bench` and benchmarks/ share: samples per second of every backend,
side by side with `naive` in the same run, on the same model."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .backends import available_backends
from .config import WaveNetConfig
from .errors import FastWaveNetError
from .files import atomic_path
from .generator import Generator
from .modelfile import ModelFile
from .sampling import Sampling
from .state import HistoryState

# The naive backend recomputes the receptive field per sample; past this batch it would take minutes per step.
NAIVE_MAX_BATCH = 8


@dataclass
class BenchResult:
    backend: str
    batch: int
    samples_per_s: float   # all streams together
    realtime_factor: float  # per stream: generated seconds per wall second, at the model's rate
    speedup_vs_naive: float | None
    first_call_s: float     # the first call of a few steps: compilation or cache loading, graph capture
    steps: int
    seconds: float


def machine() -> dict:
    """What the numbers ran on: CPU model and cores, GPU if any, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def random_model_file(config: WaveNetConfig, seed: int = 0) -> ModelFile:
    """Speed does not depend on the weights' values: a model of the shape as PyTorch initializes it will do."""
    from .convert import fold
    from .model import WaveNet

    torch.manual_seed(seed)
    return ModelFile(config, fold(WaveNet(config)))


def steady_state(gen: Generator, batch: int):
    """A new state as it is after a receptive field of steps. Naive recomputes its window, which is short until
    then, so it is timed at full length, as it runs in steady state; the queue backends cost the same at every step."""
    state = gen.new_state(batch)
    if isinstance(state, HistoryState):
        state.history = torch.full((batch, gen.config.receptive_field - 1), state.last[0].item(),
                                   dtype=torch.int64, device=state.history.device)
    return state


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: ModelFile, backend: str, batch: int, device: str = "cpu", min_seconds: float = 1.0,
            max_steps: int = 200_000, sampling: Sampling = Sampling()) -> BenchResult:
    """Generate with one backend and batch: a short first call (compile, warm-up), then a timed run that grows
    until it lasts at least `min_seconds`. Returns samples per second of the timed run."""
    gen = Generator(model, backend=backend, device=device)
    state = steady_state(gen, batch)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    gen.generate_codes(state, 2, sampling, rng)
    _sync(gen.device)
    first = time.perf_counter() - t0
    steps = 2
    while True:
        t0 = time.perf_counter()
        gen.generate_codes(state, steps, sampling, rng)
        _sync(gen.device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or steps >= max_steps:
            break
        steps = min(max_steps, max(steps * 2, int(steps * min_seconds / max(elapsed, 1e-6) * 1.2)))
    rate = steps * batch / elapsed
    return BenchResult(backend=gen.backend.name, batch=batch, samples_per_s=rate,
                       realtime_factor=rate / batch / model.config.sample_rate, speedup_vs_naive=None,
                       first_call_s=first, steps=steps, seconds=elapsed)


def run(model: ModelFile, backends: list[str], batches: list[int], device: str = "cpu", min_seconds: float = 1.0,
        naive_max_batch: int = NAIVE_MAX_BATCH, progress=None, sampling: Sampling = Sampling()) -> list[BenchResult]:
    """Every backend at every batch, `naive` included where the batch allows, with speedups over naive."""
    results = []
    for batch in batches:
        naive = None
        for backend in backends:
            if backend == "naive" and batch > naive_max_batch:
                continue
            naive_run = backend == "naive"
            result = measure(model, backend, batch, device, min(min_seconds, 0.5) if naive_run else min_seconds,
                             max_steps=64 if naive_run else 200_000, sampling=sampling)
            if backend == "naive":
                naive = result.samples_per_s
            results.append(result)
            if progress:
                progress(result)
        for result in results:
            if result.batch == batch and naive:
                result.speedup_vs_naive = result.samples_per_s / naive
    return results


def resolve_backends(names: list[str], device: str) -> list[str]:
    available = available_backends(torch.device(device))
    if names == ["all"]:
        return ["naive"] + [b for b in available if b != "naive"]
    for name in names:
        if name not in available:
            raise FastWaveNetError(f"backend {name!r} is not available on {device}; available: "
                                   f"{', '.join(available)}")
    return names if "naive" in names else ["naive", *names]


def table(results: list[BenchResult], config: WaveNetConfig, info: dict, sampling: Sampling = Sampling()) -> str:
    lines = [f"machine: {info['cpu']}, {info['cores']} cores" + (f", GPU {info['gpu']}" if "gpu" in info else ""),
             f"model: {config.layers} layers, residual {config.residual_channels}, skip {config.skip_channels}, "
             f"{config.classes} classes, {config.sample_rate} Hz",
             *([f"sampling: {sampling}"] if sampling != Sampling() else []),
             f"{'backend':<8} {'batch':>6} {'samples/s':>14} {'x realtime':>11} {'vs naive':>10} {'first call':>11}"]
    for r in results:
        speedup = f"{r.speedup_vs_naive:,.0f}x" if r.speedup_vs_naive else "-"
        lines.append(f"{r.backend:<8} {r.batch:>6} {r.samples_per_s:>14,.0f} {r.realtime_factor:>11.2f} "
                     f"{speedup:>10} {r.first_call_s:>10.2f}s")
    return "\n".join(lines)


def write_json(path, results: list[BenchResult], config: WaveNetConfig, info: dict, sampling: Sampling = Sampling()):
    payload = {"machine": info, "config": json.loads(config.to_json()), "date": time.strftime("%Y-%m-%d"),
               "sampling": asdict(sampling), "results": [asdict(r) for r in results]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise FastWaveNetError("--plot needs matplotlib: pip install 'fastwavenet[plot]'") from None
    return matplotlib


def plot(path, results: list[BenchResult], title: str):
    """samples/s against batch size, one line per backend, log scales."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in dict.fromkeys(r.backend for r in results):
        rows = [r for r in results if r.backend == backend]
        ax.plot([r.batch for r in rows], [r.samples_per_s for r in rows], marker="o", label=backend)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (streams)")
    ax.set_ylabel("samples/s, all streams")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
