"""The benchmark harness that `fastwavenet bench` and benchmarks/ share: samples per second of every backend,
side by side with `naive` in the same run, on the same model."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .backends import available_backends, registry
from .config import WaveNetConfig
from .errors import FastWaveNetError
from . import files
from .generator import Generator
from .folded import FoldedWeights, add_precision_argument, expected_shapes
from .modelfile import ModelFile
from .request import add_sampling_arguments, arg_positive_integer, arg_positive_number
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
    of_limit: float | None = None  # samples_per_s / this machine's limit at this batch (Limits.samples_per_s)
    # the limit that binds at this batch: "weights" (their reads), "flops" (float32 FMA; the CPU's sgemm), "int8" (w8a8
    # rows: the kernel's int8 products in registers, Limits.int8_gops) or "tensor" (a GPU's tensor cores, for the
    # backends whose products run there: 3xTF32)
    bound_by: str | None = None
    # The limits this row is held against, measured just before it (machines drift by tens of per cent in minutes)
    limit_sgemm_gflops: float | None = None
    limit_weight_passes_per_s: float | None = None
    # all cores together (Limits.split_passes_per_s): the batch-1 limit of rows that split one tile over every core
    limit_split_passes_per_s: float | None = None
    split: bool = False  # one tile split over every core (Backend.splits): held to all cores' weight passes
    # samples_per_s x FLOPs per sample / the FMA peak of numba's target code (Limits.fma_gflops): vendor-neutral
    # (on a GPU: the FMA rate, or for tensor-core backends the tensor cores' 3xTF32 rate, limit_tensor_gflops)
    of_peak: float | None = None
    limit_fma_gflops: float | None = None
    limit_tensor_gflops: float | None = None
    limit_int8_gops: float | None = None  # w8a8 rows: their arithmetic limit and their peak (Limits.int8_gops)
    speedup_vs_r9y9: float | None = None  # over r9y9's incremental_forward (one stream), measured in the same run
    precision: str = "float32"  # of the weight matrices (bf16: rounded, and 16-bit in the numba kernel)


def machine() -> dict:
    """What the numbers ran on: CPU model, cores and vector ISA, numba's target, GPU if any, library versions."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's lines are enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    info = {"cpu": cpu, "cores": os.cpu_count(), "isa": vector_isa(flags, platform.machine()),
            "numba_cpu_name": os.environ.get("NUMBA_CPU_NAME", "host"), "torch": torch.__version__,
            "platform": platform.platform()}
    try:
        from .kernels.cpu import BLOCK, VECTOR_BITS
    except ImportError:  # numba missing
        pass
    else:  # what the numba kernel compiles for (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES apply)
        info["numba_vector_bits"] = VECTOR_BITS
        info["numba_blocks"] = BLOCK._asdict()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def vector_isa(flags: set[str], arch: str) -> str:
    """The widest vector instruction set the CPU offers: avx512f, avx2, avx, sse2 (x86) or neon (ARM)."""
    for isa in ("avx512f", "avx2", "avx"):
        if isa in flags:
            return isa
    if arch in ("aarch64", "arm64") or "asimd" in flags:
        return "neon"
    return "sse2" if "sse2" in flags else arch


# Bytes of a float32 weight over the bytes of the same weight in each narrower precision.
_NARROW = {"bf16": 2, "int8": 4, "w8a8": 4}


@dataclass
class Limits:
    """This machine's own limits, measured in the same run as the figures they are held against.

    batched: torch's float32 matmul (2048 x 2048 x 2048, all of torch's threads) in GFLOP/s, divided by the
    model's FLOPs per sample: samples/s if every multiply-add ran at sgemm speed.
    batch 1: passes/s of one core reading a buffer of the model's weight bytes front to back (the numba kernel's
    lone-stream product, `limits.read_passes`): samples/s if each sample read every weight once at that speed.
    A batch of B streams may reach at most min(B x that, the batched limit). A backend that splits one tile of
    fewer streams than threads over every core (`numba-split`) is held to the passes/s of all numba's threads
    reading their shares of such a buffer at once (`limits.read_passes_split`) instead. Narrow weights are fewer
    bytes: bf16 rows are held to twice the passes, int8 and w8a8 to four times.
    peak: fused multiply-adds in registers on full vectors of numba's target ISA, on all of numba's threads
    (`limits.fma_peak`), in GFLOP/s: what no code of that ISA can beat, whoever made the CPU. A vendor's sgemm
    need not reach it (MKL on AMD reached 40-50 % of it), so rows are held against both.
    int8: w8a8's products are integer multiply-adds, not float32 fmas: its rows are held to the kernel's own int8
    products in registers on all of numba's threads instead of sgemm and the FMA peak (`limits.int8_peak`: AMX's
    tiles where the kernel uses them, else `vpdpbusd`; GOP/s, two operations a multiply-add; 0 where neither)."""

    sgemm_gflops: float
    threads: int
    flops_per_sample: float
    weight_bytes: int
    weight_passes_per_s: float
    fma_gflops: float = 0.0  # 0: not measured (numba missing)
    fma_threads: int = 0
    split_passes_per_s: float = 0.0  # 0: not measured (numba missing)
    split_threads: int = 0
    int8_gops: float = 0.0  # 0: not measured (numba missing, or no int8 products of the kernel's own)
    int8_threads: int = 0

    @property
    def batched_samples_per_s(self) -> float:
        return self.sgemm_gflops * 1e9 / self.flops_per_sample

    def arithmetic_samples_per_s(self, precision: str = "float32") -> float:
        """The batched limit of a precision's rows: sgemm's, or for w8a8 the int8 products' where measured."""
        if precision == "w8a8" and self.int8_gops:
            return self.int8_gops * 1e9 / self.flops_per_sample
        return self.batched_samples_per_s

    def passes_per_s(self, precision: str = "float32", split: bool = False) -> float:
        """Passes over the weights a second at batch 1, in the precision's bytes: one core's, or where `split` all
        `split_threads` cores' together."""
        passes = self.split_passes_per_s if split and self.split_passes_per_s else self.weight_passes_per_s
        return passes * _NARROW.get(precision, 1)

    def samples_per_s(self, batch: int, precision: str = "float32", split: bool = False,
                      tensor_cores: bool = False) -> float:
        return min(batch * self.passes_per_s(precision, split), self.arithmetic_samples_per_s(precision))

    def bound_by(self, batch: int, precision: str = "float32", split: bool = False, tensor_cores: bool = False) -> str:
        """Which limit binds at this batch: "weights" (the batch-1 limit times the batch), "flops" (sgemm) or, for
        w8a8 where measured, "int8"."""
        if batch * self.passes_per_s(precision, split) < self.arithmetic_samples_per_s(precision):
            return "weights"
        return "int8" if precision == "w8a8" and self.int8_gops else "flops"

    def best(self, other: "Limits | None") -> "Limits":
        """Each limit the higher of the two measurements (machines drift; best against best compares like with
        like)."""
        if other is None:
            return self
        return replace(self, sgemm_gflops=max(self.sgemm_gflops, other.sgemm_gflops),
                       weight_passes_per_s=max(self.weight_passes_per_s, other.weight_passes_per_s),
                       fma_gflops=max(self.fma_gflops, other.fma_gflops),
                       split_passes_per_s=max(self.split_passes_per_s, other.split_passes_per_s),
                       int8_gops=max(self.int8_gops, other.int8_gops))


@dataclass
class GpuLimits:
    """A GPU's own limits, measured in the same run as the figures they are held against (measure_gpu_limits).

    batched: the float32 FMA rate (`gpu_limits.fma_chains_kernel`: chains of dependent fused multiply-adds in
    registers on every SM, Triton-compiled as the generation kernel is) in GFLOP/s, divided by the model's FLOPs per
    sample: the limit of the backends that compute on CUDA cores (torch with TF32 off, backends.base; triton-stream;
    triton-spread). The backends whose products run on tensor cores (`Backend.tensor_cores`: triton, triton-layers)
    take three TF32 products for each float32 one (3xTF32), so theirs is the tf32 matmul rate over 3.
    batch 1: passes/s over the model's weight bytes of the whole chip reading a buffer of about that size while it
    sits in L2 (`gpu_limits.read_passes_kernel`): samples/s if each sample read every weight once at that speed;
    bf16 weights, which the Triton backends hold in 16 bits, are half the bytes: twice the passes (int8 is held in
    float32 on the GPU). A batch of B streams may reach at most min(B x that, the batched limit). The
    device-to-device copy bandwidth (HBM) and the bf16 tensor-core rate are measured for reference."""

    gpu: str
    flops_per_sample: float
    weight_bytes: int
    l2_bytes: int                 # the device's L2 cache; the weight-read limit is an L2 figure only below it
    weight_passes_per_s: float    # reads of all the weight bytes per second, from L2
    fma_gflops: float             # float32 FMA, GFLOP/s (2 per fused multiply-add)
    copy_gbps: float              # device-to-device tensor copy, GB/s (bytes read + bytes written)
    bf16_tflops: float            # torch.matmul of 8192 x 8192 x 8192 in bf16 (tensor cores), TFLOP/s
    tf32_tflops: float            # the same in float32 with TF32 allowed (tensor cores), TFLOP/s

    @property
    def batched_samples_per_s(self) -> float:
        return self.fma_gflops * 1e9 / self.flops_per_sample

    def arithmetic_gflops(self, tensor_cores: bool = False) -> float:
        """The arithmetic rate that binds a batched row: float32 FMA, or 3xTF32 on tensor cores."""
        return self.tf32_tflops * 1e3 / 3 if tensor_cores else self.fma_gflops

    def _limits(self, batch: int, precision: str, tensor_cores: bool) -> tuple[float, float]:
        """(the weights' limit at this batch, the arithmetic's), samples/s."""
        passes = self.weight_passes_per_s * (2 if precision == "bf16" else 1)
        return batch * passes, self.arithmetic_gflops(tensor_cores) * 1e9 / self.flops_per_sample

    def samples_per_s(self, batch: int, precision: str = "float32", split: bool = False,
                      tensor_cores: bool = False) -> float:
        return min(self._limits(batch, precision, tensor_cores))

    def bound_by(self, batch: int, precision: str = "float32", split: bool = False, tensor_cores: bool = False) -> str:
        weights, arithmetic = self._limits(batch, precision, tensor_cores)
        return "weights" if weights < arithmetic else "tensor" if tensor_cores else "flops"

    def best(self, other: "GpuLimits | None") -> "GpuLimits":
        if other is None:
            return self
        return replace(self, **{name: max(getattr(self, name), getattr(other, name)) for name in (
            "weight_passes_per_s", "fma_gflops", "copy_gbps", "bf16_tflops", "tf32_tflops")})


def flops_per_sample(config: WaveNetConfig) -> float:
    """Floating-point operations of one step of one stream: 2 per multiply-add of every matrix-vector product (the
    last layer's residual product is skipped; the input lookups and conditioning terms are not counted)."""
    r, g, s, h = config.residual_channels, config.gate_channels, config.skip_channels, config.head_channels
    per_layer = config.kernel_size * r * 2 * g + g * (r + s)
    return 2.0 * (config.layers * per_layer - g * r + s * h + h * config.output_channels)


def weight_bytes(model: ModelFile) -> int:
    """Bytes of the matrices a step reads (float32): the dilated, output and head matrices."""
    w = model.weights
    return 4 * sum(t.numel() for t in (w.dilated_w, w.out_w, w.head1_w, w.head2_w))


def measure_limits(model: ModelFile, seconds: float = 0.5) -> Limits:
    """Measure this machine's limits for `model` (see Limits), about `seconds` each."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t0))
    nbytes = weight_bytes(model)
    passes_per_s = split_passes_per_s = fma = int8 = 0.0
    fma_threads = split_threads = int8_threads = 0
    try:
        import numba
    except ImportError:  # numba missing: the batch-1 limits and the peak are not measured
        pass
    else:
        fma, fma_threads = measure_fma_peak(seconds)
        int8, int8_threads = measure_int8_peak(seconds)
        split_threads = numba.get_num_threads()
        passes_per_s, split_passes_per_s = weight_passes(nbytes, split_threads, seconds)
    return Limits(sgemm_gflops=best / 1e9, threads=torch.get_num_threads(), flops_per_sample=flops_per_sample(
        model.config), weight_bytes=nbytes, weight_passes_per_s=passes_per_s, fma_gflops=fma,
        fma_threads=fma_threads, split_passes_per_s=split_passes_per_s, split_threads=split_threads, int8_gops=int8,
        int8_threads=int8_threads)


def weight_passes(nbytes: int, threads: int, seconds: float = 0.5) -> tuple[float, float]:
    """Passes a second over `nbytes` of float32 through the kernel's lone-stream product (`limits.read_passes`): on
    one core, and on `threads` numba threads at once, each reading its own share (`limits.read_passes_split`, 0.0
    where there are fewer rows than threads). The batch-1 limits of `Limits`; numba required."""
    from .limits import READ_COLUMNS, read_passes, read_passes_split

    rows = max(1, nbytes // 4 // READ_COLUMNS)
    buffer = np.random.default_rng(0).standard_normal((rows, READ_COLUMNS)).astype(np.float32)
    alone = _passes_per_s(lambda n: read_passes(buffer, n), seconds)
    together = 0.0
    if rows >= threads:  # each thread its share of the rows (the few left over: their part of a pass)
        shares = buffer[:rows - rows % threads].reshape(threads, -1, READ_COLUMNS)
        together = _passes_per_s(lambda n: read_passes_split(shares, n), seconds) * shares.size / buffer.size
    return alone, together


def _passes_per_s(passes: Callable[[int], object], seconds: float) -> float:
    """Calls of `passes(n)` (n passes over a buffer) a second: one call first (compile or load), then doubling n
    until a call lasts `seconds`."""
    passes(1)
    n, elapsed = 8, 0.0
    while elapsed < seconds:
        n *= 2
        t0 = time.perf_counter()
        passes(n)
        elapsed = time.perf_counter() - t0
    return n / elapsed


def measure_fma_peak(seconds: float = 0.5) -> tuple[float, int]:
    """The FMA peak of numba's target code on all numba threads (GFLOP/s, threads): the best of runs of about 50 ms
    each over `seconds`."""
    from .backends.numba_cpu import numba_threads
    from .kernels.cpu import BLOCK
    from .limits import PEAK_CHAINS, fma_peak

    threads = numba_threads()
    return _best_rate(lambda n: fma_peak(n, threads), 2.0 * PEAK_CHAINS * BLOCK.lanes * threads, seconds), threads


def measure_int8_peak(seconds: float = 0.5) -> tuple[float, int]:
    """The kernel's int8 products in registers on all numba threads (GOP/s, threads; 0, 0 where it has none of its
    own): `limits.int8_peak`, timed as `measure_fma_peak` is."""
    from .backends.numba_cpu import numba_threads
    from .limits import int8_macs_per_iteration, int8_peak

    macs = int8_macs_per_iteration()
    if not macs:
        return 0.0, 0
    threads = numba_threads()
    return _best_rate(lambda n: int8_peak(n, threads), 2.0 * macs * threads, seconds), threads


def _best_rate(run: Callable[[int], object], per_iteration: float, seconds: float) -> float:
    """The best rate (in G of `per_iteration`'s unit a second) of `run(iterations)`: one call first (compile or
    load), then runs of about 50 ms each (so that starting the threads does not count) over `seconds`."""
    iterations, elapsed = 1 << 6, 0.0
    run(iterations)
    while elapsed < 0.05:
        iterations *= 4
        t0 = time.perf_counter()
        run(iterations)
        elapsed = time.perf_counter() - t0
    best = per_iteration * iterations / elapsed
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        run(iterations)
        best = max(best, per_iteration * iterations / (time.perf_counter() - t0))
    return best / 1e9


def _best_cuda_seconds(work: Callable[[], None], seconds: float) -> float:
    """The shortest time of `work` on the current CUDA device (CUDA events), in seconds, over repeats for about
    `seconds` after one untimed call."""
    work()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start.record()
        work()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def measure_gpu_limits(model: ModelFile, device: str = "cuda", seconds: float = 0.25) -> GpuLimits | None:
    """Measure the GPU's limits for `model` (see GpuLimits), the best of about `seconds` of repeats each (a few
    seconds in all, the probes' compiles included); None without Triton, which compiles two of the probes."""
    if importlib.util.find_spec("triton") is None:
        return None
    from .gpu_limits import fma_chains_kernel, read_passes_kernel

    device = torch.device(device)
    with torch.cuda.device(device):
        props = torch.cuda.get_device_properties(device)
        sms = props.multi_processor_count

        # Copy: 1 GiB, far past any L2, so HBM is read and written.
        source = torch.empty(1 << 28, dtype=torch.float32, device=device).fill_(1.0)
        target = torch.empty_like(source)
        copy_gbps = 2 * source.numel() * 4 / _best_cuda_seconds(lambda: target.copy_(source), seconds) / 1e9

        # The weights' bytes in L2: many passes in one launch, so the launch costs little beside them. The buffer
        # is padded to the same number of 4 KB chunks for every program (none waits on another), and its read rate
        # counted in passes over the weights' own bytes.
        nbytes = weight_bytes(model)
        block, programs = 1024, 4 * sms
        chunks = -(-nbytes // (4 * block * programs)) * programs
        weights = torch.ones(chunks * block, dtype=torch.float32, device=device)
        partial = torch.empty(programs, dtype=torch.float32, device=device)
        passes = max(16, int(2e9 // (chunks * block * 4)))  # about 2 GB read per launch
        read_s = _best_cuda_seconds(lambda: read_passes_kernel[(programs,)](weights, chunks, passes, partial,
                                                                           BLOCK=block), seconds)
        weight_passes_per_s = passes * weights.numel() * 4 / read_s / nbytes

        # FMA: 4 programs of 128 threads per SM, 16 chains per thread, 8 FMAs per loop iteration.
        chains, unroll, iterations = 2048, 8, 1 << 14
        sums = torch.empty(4 * sms, dtype=torch.float32, device=device)
        fma_s = _best_cuda_seconds(lambda: fma_chains_kernel[(sums.numel(),)](sums, iterations, BLOCK=chains,
                                                                              UNROLL=unroll, num_warps=4), seconds)
        fma_gflops = 2 * unroll * chains * iterations * sums.numel() / fma_s / 1e9

        n = 8192
        a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        bf16 = 2 * n ** 3 / _best_cuda_seconds(lambda: torch.matmul(a, b), seconds) / 1e12
        a, b = a.float(), b.float()
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for float32 matmuls, the user's setting after
        try:
            tf32 = 2 * n ** 3 / _best_cuda_seconds(lambda: torch.matmul(a, b), seconds) / 1e12
        finally:
            torch.set_float32_matmul_precision(saved)
    return GpuLimits(gpu=props.name, flops_per_sample=flops_per_sample(model.config), weight_bytes=nbytes,
                     l2_bytes=props.L2_cache_size, weight_passes_per_s=weight_passes_per_s, fma_gflops=fma_gflops,
                     copy_gbps=copy_gbps, bf16_tflops=bf16, tf32_tflops=tf32)


def random_model_file(config: WaveNetConfig, seed: int = 0) -> ModelFile:
    """Speed does not depend on the weights' values: a model of the shape as PyTorch initializes it will do (for
    shapes fastwavenet does not train, such as imported r9y9 models, each weight drawn with variance 1 / fan-in)."""
    torch.manual_seed(seed)
    if config.output == "softmax" and config.upsampler == "transpose":
        from .folded import fold
        from .model import WaveNet

        return ModelFile(config, fold(WaveNet(config)))
    tensors = {name: torch.randn(shape) / np.sqrt(shape[-2] if len(shape) > 1 else 1.0)
               for name, shape in expected_shapes(config).items()}
    return ModelFile(config, FoldedWeights(**tensors))


def steady_state(gen: Generator, batch: int):
    """A new state as it is after a receptive field of steps. Naive recomputes its window, which is short until
    then, so it is timed at full length, as it runs in steady state; the queue backends cost the same at every step."""
    state = gen.new_state(batch)
    if isinstance(state, HistoryState):
        c = gen.config
        state.history = torch.full((batch, c.receptive_field - 1), state.last[0].item(), dtype=state.last.dtype,
                                   device=state.history.device)
        state.valid = torch.ones(batch, c.receptive_field - 1, dtype=torch.bool, device=state.history.device)
        if c.conditioned:
            state.cond = torch.zeros(batch, c.layers, 2 * c.gate_channels, c.receptive_field - 1,
                                     device=state.history.device)
    return state


def bench_conditioning(gen: Generator, batch: int, steps: int):
    """Conditioning that covers `steps` samples for a conditioned model (random mel frames, speaker 0), or None:
    its gate terms are part of what generating costs. One mel and speaker for every stream, so the terms are made
    once a call and read for every stream (`Conditioning.terms`); streams given their own mels cost more
    (recipes/vocode_streams.py: 0.72x for r9y9's shape at w8a8, 0.86x in float32, 64 streams)."""
    c = gen.config
    if not c.conditioned:
        return None
    mel = torch.rand(c.n_mels, -(-steps // c.hop_length)) if c.n_mels else None
    speaker = 0 if c.speakers else np.zeros(c.speaker_channels) if c.global_features else None
    return gen.conditioning(batch, mel, speaker)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: ModelFile, backend: str, batch: int, device: str = "cpu", min_seconds: float = 1.0,
            max_steps: int = 200_000, sampling: Sampling = Sampling(), precision: str = "float32") -> BenchResult:
    """Generate with one backend and batch: a short first call (compile, warm-up), then a timed run that grows
    until it lasts at least `min_seconds`. Returns samples per second of the timed run."""
    gen = Generator(model, backend=backend, device=device, precision=precision)
    state = steady_state(gen, batch)
    rng = np.random.default_rng(0)
    # Enough frames for every timed run: each is at most max_steps and they double, so 3 x max_steps suffice.
    cond = bench_conditioning(gen, batch, 3 * max_steps + 2)
    t0 = time.perf_counter()
    gen.generate_codes(state, 2, sampling, rng, cond)
    _sync(gen.device)
    first = time.perf_counter() - t0
    steps = 2
    while True:
        t0 = time.perf_counter()
        gen.generate_codes(state, steps, sampling, rng, cond)
        _sync(gen.device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or steps >= max_steps:
            break
        steps = min(max_steps, max(steps * 2, int(steps * min_seconds / max(elapsed, 1e-6) * 1.2)))
    rate = steps * batch / elapsed
    return BenchResult(backend=gen.backend.name, batch=batch, samples_per_s=rate,
                       realtime_factor=rate / batch / model.config.sample_rate, speedup_vs_naive=None,
                       first_call_s=first, steps=steps, seconds=elapsed, precision=precision,
                       split=gen.backend.splits(batch))


def measure_r9y9(config: WaveNetConfig, min_seconds: float = 1.0) -> BenchResult:
    """r9y9/wavenet_vocoder's own generator (its `incremental_forward`, one stream, as its synthesis.py runs it:
    weight norm removed first) on a model of the same shape, for the side-by-side figure. Needs `wavenet_vocoder`
    (the test extra); the model must be one the r9y9 importer can describe (fastwavenet.importers.r9y9)."""
    import warnings

    try:
        import wavenet_vocoder
    except ImportError:
        raise FastWaveNetError("--r9y9 needs r9y9's code: pip install wavenet_vocoder==0.1.1") from None
    from .importers.r9y9 import r9y9_arguments

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecated torch calls (weight_norm, backward hooks)
        model = wavenet_vocoder.WaveNet(**r9y9_arguments(config)).eval()
        model.make_generation_fast_()
    hop = config.hop_length if config.n_mels else 1

    def generate(steps: int) -> int:
        steps = -(-steps // hop) * hop  # whole frames: r9y9 upsamples the mel to exactly T samples
        c = torch.rand(1, config.n_mels, steps // hop) if config.n_mels else None
        g = (torch.zeros(1, 1, dtype=torch.long) if config.speakers else
             torch.zeros(1, config.speaker_channels, 1) if config.global_features else None)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.incremental_forward(c=c, g=g, T=steps, softmax=True, quantize=True,
                                      log_scale_min=config.log_scale_min)
        return steps

    t0 = time.perf_counter()
    generate(hop)
    first = time.perf_counter() - t0
    steps = hop
    while True:
        t0 = time.perf_counter()
        steps = generate(steps)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            break
        steps = max(steps * 2, int(steps * min_seconds / max(elapsed, 1e-6) * 1.2))
    rate = steps / elapsed
    return BenchResult(backend="r9y9", batch=1, samples_per_s=rate, realtime_factor=rate / config.sample_rate,
                       speedup_vs_naive=None, first_call_s=first, steps=steps, seconds=elapsed)


def measure_rows(model: ModelFile, backends: list[str], batches: list[int], device: str = "cpu",
                 min_seconds: float = 1.0, naive_max_batch: int = NAIVE_MAX_BATCH, progress=None,
                 sampling: Sampling = Sampling(), limits: Limits | GpuLimits | None = None,
                 precisions: list[str] = ("float32",),
                 remeasure: Callable[[], Limits] | None = None, repeat: int = 1) -> list[BenchResult]:
    """Every backend at every batch and precision, `naive` (float32) included where the batch allows, with
    speedups over naive and, given the machine's limits, the share of the limit each reached.

    With `remeasure`, the limits are measured again just before each measurement (not naive's) and each row is held
    against those. With `repeat` > 1 every row but naive's is measured that many times, in rounds over all rows (so
    each row's measurements are spread over the run), and keeps its best, held against the best limits measured
    before its own measurements: on a machine whose speed drifts, best against best compares like with like."""
    rows = [(batch, backend, precision) for batch in batches for backend in backends
            if not (backend == "naive" and batch > naive_max_batch)
            for precision in (["float32"] if backend == "naive" else precisions)]
    best: dict = {}
    best_limits: dict = {}
    rounds = max(1, repeat)
    for round_ in range(rounds):
        for key in rows:
            batch, backend, precision = key
            naive_run = backend == "naive"
            if naive_run and round_ > 0:
                continue
            if remeasure is not None and not naive_run:
                limits = remeasure()
            result = measure(model, backend, batch, device, min(min_seconds, 0.5) if naive_run else min_seconds,
                             max_steps=64 if naive_run else 200_000, sampling=sampling, precision=precision)
            if key in best:
                result.first_call_s = best[key].first_call_s  # the first call is the first round's
            if key not in best or result.samples_per_s > best[key].samples_per_s:
                best[key] = result
            if limits is not None:
                best_limits[key] = limits.best(best_limits.get(key))
            if progress and (naive_run or round_ == rounds - 1):
                _hold(best[key], best_limits.get(key))
                progress(best[key])
    results = [best[key] for key in rows]
    for key, result in zip(rows, results):
        _hold(result, best_limits.get(key))
    for batch in batches:
        naive = next((r.samples_per_s for r in results if r.backend == "naive" and r.batch == batch), None)
        for result in results:
            if result.batch == batch and naive:
                result.speedup_vs_naive = result.samples_per_s / naive
    return results


def _hold(result: BenchResult, limits: Limits | GpuLimits | None):
    """Set a result's share of the machine's limit at its batch and precision, which limit binds there, and the
    limits it is held to."""
    cls = registry().get(result.backend)
    tensor = isinstance(limits, GpuLimits) and cls is not None and cls.tensor_cores
    limit = None if limits is None else limits.samples_per_s(result.batch, result.precision, result.split, tensor)
    if limit:
        result.of_limit = result.samples_per_s / limit
        result.bound_by = limits.bound_by(result.batch, result.precision, result.split, tensor)
        result.limit_weight_passes_per_s = limits.weight_passes_per_s
        if isinstance(limits, Limits):
            result.limit_sgemm_gflops = limits.sgemm_gflops
            result.limit_split_passes_per_s = limits.split_passes_per_s or None
    int8 = isinstance(limits, Limits) and result.precision == "w8a8" and limits.int8_gops
    if int8:  # w8a8: its own arithmetic's peak
        result.of_peak = result.samples_per_s * limits.flops_per_sample / (limits.int8_gops * 1e9)
        result.limit_int8_gops = limits.int8_gops
    elif limits is not None and limits.fma_gflops:
        peak = limits.arithmetic_gflops(True) if tensor else limits.fma_gflops
        result.of_peak = result.samples_per_s * limits.flops_per_sample / (peak * 1e9)
        result.limit_fma_gflops = limits.fma_gflops
        result.limit_tensor_gflops = peak if tensor else None


def resolve_backends(names: list[str], device: str) -> list[str]:
    available = available_backends(torch.device(device))
    if names == ["all"]:
        return ["naive"] + [b for b in available if b != "naive"]
    for name in names:
        if name not in available:
            raise FastWaveNetError(f"backend {name!r} is not available on {device}; available: "
                                   f"{', '.join(available)}")
    return names if "naive" in names else ["naive", *names]


def row_name(backend: str, precision: str) -> str:
    return backend if precision == "float32" else f"{backend}/{precision}"


def table(results: list[BenchResult], config: WaveNetConfig, info: dict, sampling: Sampling = Sampling(),
          limits: Limits | GpuLimits | None = None, names: list[str] = ()) -> str:
    """The run's header lines and its rows; `names`: every row name the run will print, so that a table printed a
    row at a time keeps its columns in line."""
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, {info.get('isa', '?')}"
             + (f" (numba target {info['numba_cpu_name']})" if info.get("numba_cpu_name", "host") != "host" else "")
             + (f", numba kernel {info['numba_vector_bits']}-bit vectors" if "numba_vector_bits" in info else "")
             + (f", GPU {info['gpu']}" if "gpu" in info else ""),
             f"model: {config.layers} layers, residual {config.residual_channels}, skip {config.skip_channels}, "
             + (f"{config.classes} classes" if config.output == "softmax" else
                f"{config.output.replace('_', ' ')} ({config.output_channels} outputs)")
             + (f", {config.n_mels} mel bands (one mel for every stream)" if config.n_mels else "")
             + f", {config.sample_rate} Hz",
             *([f"sampling: {sampling}"] if sampling != Sampling() else [])]
    if isinstance(limits, GpuLimits):
        where = "in L2" if limits.weight_bytes <= limits.l2_bytes else "larger than L2: from memory"
        lines.append(f"limits: fp32 FMA {limits.fma_gflops:,.0f} GFLOP/s / {limits.flops_per_sample / 1e6:.2f} MFLOP "
                     f"per sample = {limits.batched_samples_per_s:,.0f} samples/s batched; the GPU reads the "
                     f"{limits.weight_bytes / 1e6:.2f} MB of weights ({where}, L2 {limits.l2_bytes / 1e6:.0f} MB) "
                     f"{limits.weight_passes_per_s:,.0f} times/s (batch-1 limit)")
        lines.append(f"tensor cores: matmul tf32 {limits.tf32_tflops:,.0f} TFLOP/s, so 3xTF32 (the float32 products of "
                     f"the tensor-core backends, whose rows are held to it) {limits.tf32_tflops / 3:,.0f}; bf16 "
                     f"{limits.bf16_tflops:,.0f} TFLOP/s; device-to-device copy {limits.copy_gbps:,.0f} GB/s "
                     f"(read + write)")
    elif limits is not None:
        lines.append(f"limits: sgemm {limits.sgemm_gflops:,.0f} GFLOP/s on {limits.threads} threads / "
                     f"{limits.flops_per_sample / 1e6:.2f} MFLOP per sample = {limits.batched_samples_per_s:,.0f} "
                     f"samples/s batched; one core streams the {limits.weight_bytes / 1e6:.2f} MB of weights "
                     f"{limits.weight_passes_per_s:,.0f} times/s (batch-1 limit)"
                     + (f", {limits.split_threads} cores their shares {limits.split_passes_per_s:,.0f} times/s "
                        f"(numba-split's)" if limits.split_passes_per_s else ""))
        if limits.fma_gflops:
            bits = info.get("numba_vector_bits")
            lines.append(f"peak: fused multiply-adds in registers, {bits}-bit vectors (numba's target), "
                         f"{limits.fma_threads} threads: {limits.fma_gflops:,.0f} GFLOP/s (the `of peak` column: "
                         f"any vendor's CPU, any row)")
        if limits.int8_gops:
            from .kernels.cpu import HAS_AMX, HAS_VNNI

            kind = "AMX tiles" if HAS_AMX else "VNNI" if HAS_VNNI else "AVX2's byte pairs"
            lines.append(f"int8: the kernel's int8 multiply-adds in registers ({kind}), "
                         f"{limits.int8_threads} threads: {limits.int8_gops:,.0f} GOP/s (w8a8 rows' batched limit and "
                         f"peak, in place of sgemm's and the FMA peak)")
        again = [r for r in results if r.limit_sgemm_gflops is not None]
        if again:
            sgemm = [r.limit_sgemm_gflops for r in again]
            passes = [r.limit_weight_passes_per_s for r in again]
            peaks = [r.limit_fma_gflops for r in again if r.limit_fma_gflops]
            lines.append(f"limits measured again before each row, each row held against its own (the best of those "
                         f"before its runs, if repeated): sgemm "
                         f"{min(sgemm):,.0f}-{max(sgemm):,.0f} GFLOP/s, weights {min(passes):,.0f}-"
                         f"{max(passes):,.0f} passes/s"
                         + (f", peak {min(peaks):,.0f}-{max(peaks):,.0f} GFLOP/s" if peaks else ""))
    labels = [row_name(r.backend, r.precision) for r in results]
    width = max([10, *map(len, names), *map(len, labels)])  # `numba-split/int8`, `triton-stream` keep the columns
    lines.append(f"{'backend':<{width}} {'batch':>6} {'samples/s':>14} {'x realtime':>11} {'vs naive':>10} "
                 f"{'of limit':>9} {'bound by':>8} {'of peak':>8} {'first call':>11}")
    for r, name in zip(results, labels):
        speedup = f"{r.speedup_vs_naive:,.0f}x" if r.speedup_vs_naive else "-"
        share = f"{100 * r.of_limit:.0f} %" if r.of_limit is not None else "-"
        peak = f"{100 * r.of_peak:.0f} %" if r.of_peak is not None else "-"
        lines.append(f"{name:<{width}} {r.batch:>6} {r.samples_per_s:>14,.0f} {r.realtime_factor:>11.2f} "
                     f"{speedup:>10} {share:>9} {r.bound_by or '-':>8} {peak:>8} {r.first_call_s:>10.2f}s")
    return "\n".join(lines)


def write_results(path, results: list[BenchResult], config: WaveNetConfig, info: dict,
                  sampling: Sampling = Sampling(), limits: Limits | GpuLimits | None = None):
    """The run as JSON: machine, model config, date, sampling, every row, and the limits measured first ("kind":
    "cpu" or "gpu", then the fields of Limits or GpuLimits)."""
    payload = {"machine": info, "config": json.loads(config.to_json()), "date": time.strftime("%Y-%m-%d"),
               "sampling": asdict(sampling), "results": [asdict(r) for r in results],
               "limits": None if limits is None else {"kind": "gpu" if isinstance(limits, GpuLimits) else "cpu",
                                                      **asdict(limits),
                                                      "batched_samples_per_s": limits.batched_samples_per_s}}
    files.write_json(path, payload)


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise FastWaveNetError("--plot needs matplotlib: pip install 'fastwavenet[plot]'") from None
    return matplotlib


def plot(path, results: list[BenchResult], title: str, limits: Limits | GpuLimits | None = None):
    """samples/s against batch size, one line per backend, log scales; with `limits`, the machine's limit at each
    batch (float32) dashed, and the rates no row is held against (the CPU's FMA peak; a GPU's tensor-core matmuls)
    dotted, in samples/s at the model's FLOPs per sample."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for backend, precision in dict.fromkeys((r.backend, r.precision) for r in results):
        rows = [r for r in results if (r.backend, r.precision) == (backend, precision)]
        label = backend if precision == "float32" else f"{backend}/{precision}"
        ax.plot([r.batch for r in rows], [r.samples_per_s for r in rows], marker="o", label=label)
    if limits is not None:
        batches = np.geomspace(min(r.batch for r in results), max(r.batch for r in results), 64)  # the knee too
        ax.plot(batches, [limits.samples_per_s(b) for b in batches], "k--", label="limit (weight reads, then flops)")
        beyond = ({"bf16 tensor cores": limits.bf16_tflops * 1e3, "tf32 tensor cores": limits.tf32_tflops * 1e3}
                  if isinstance(limits, GpuLimits) else {"FMA peak": limits.fma_gflops} if limits.fma_gflops else {})
        for (label, gflops), style in zip(beyond.items(), ("k:", "C7:")):
            ax.axhline(gflops * 1e9 / limits.flops_per_sample, linestyle=style[-1], color=style[:-1], label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (streams)")
    ax.set_ylabel("samples/s, all streams")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _batch_sizes(text: str) -> list[int]:
    """--batch: comma-separated positive integers."""
    try:
        values = [int(v) for v in text.split(",")]  # ("1,,2" is a typo, not 1 and 2)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_benchmark_arguments(parser: argparse.ArgumentParser):
    """`fastwavenet bench`'s flags: `benchmark`'s arguments (the backends and precisions comma-separated)."""
    shape = parser.add_mutually_exclusive_group()  # both given: one would be ignored
    shape.add_argument("--preset", default="standard", help="model shape, randomly initialized (default standard)")
    shape.add_argument("--model", help="a model file instead of a preset")
    parser.add_argument("--backend", default="all", help="all, or a comma-separated list (naive is always included)")
    parser.add_argument("--batch", type=_batch_sizes, default=[1, 8, 64],
                        help="comma-separated batch sizes (default 1,8,64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-seconds", type=arg_positive_number, default=1.0, help="shortest timed run (default 1)")
    parser.add_argument("--repeat", type=arg_positive_integer, default=1,
                        help="measure each row this many times, in rounds over all rows, and keep the best, held "
                             "against the best limits measured before it (default 1; for machines whose speed "
                             "drifts)")
    add_precision_argument(parser, several=True)
    parser.add_argument("--r9y9", action="store_true",
                        help="also time r9y9/wavenet_vocoder's own incremental_forward on the same shape, one stream "
                             "(needs wavenet_vocoder==0.1.1)")
    add_sampling_arguments(parser)
    parser.add_argument("--json", help="write the results as JSON")
    parser.add_argument("--plot", help="write a PNG plot of samples/s against batch size")


def benchmark(model: str | os.PathLike | None = None, preset: str = "standard", backends: list[str] = ("all",),
              batches: list[int] = (1, 8, 64), device: str = "cpu", precisions: list[str] = ("float32",),
              sampling: Sampling = Sampling(), min_seconds: float = 1.0, repeat: int = 1, r9y9: bool = False,
              json_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None
              ) -> list[BenchResult]:
    """What `fastwavenet bench` does: samples/s of each backend (beside naive) at each batch size and precision, on
    a model file or a preset's shape with random weights; each row printed as it is measured, then the table (and
    the machine's limits, CPU or GPU, measured in the same run); optionally r9y9's own generation, a JSON file and a
    plot. Every option is checked before measuring starts."""
    from .backends import resolve_device
    from .config import preset as named_preset
    from .folded import PRECISIONS
    from .modelfile import load_model

    resolve_device(device)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:  # now, not after minutes of measuring
        raise FastWaveNetError(f"unknown precision {unknown[0]!r}; choose {' or '.join(PRECISIONS)}")
    for path in (json_path, plot_path):
        if path:  # fail now, not after minutes of measuring
            files.check_writable(path)
    if plot_path:
        require_matplotlib()
    model_file = load_model(model) if model else random_model_file(named_preset(preset))
    backends = resolve_backends(list(backends), device)
    if backends == ["naive"] and min(batches) > NAIVE_MAX_BATCH:
        raise FastWaveNetError(f"nothing to measure: naive runs at batches up to {NAIVE_MAX_BATCH} only (a step past "
                               f"that takes minutes)")
    info = machine()
    # The machine's own limits, measured in this run (on the CPU again before each row, since a CPU's speed drifts),
    # so figures from different machines can be compared.
    on_cpu = torch.device(device).type == "cpu"
    limits = measure_limits(model_file) if on_cpu else measure_gpu_limits(model_file, device)
    names = [row_name(b, p) for b in backends for p in precisions]  # the header's and every row's column widths
    print(table([], model_file.config, info, sampling, limits, names))
    remeasure = (lambda: measure_limits(model_file, 0.25)) if on_cpu else None
    results = measure_rows(model_file, backends, list(batches), device, min_seconds=min_seconds, sampling=sampling,
                  limits=limits, precisions=list(precisions), remeasure=remeasure, repeat=repeat,
                  progress=lambda r: print(table([r], model_file.config, info, names=names).splitlines()[-1],
                                           flush=True))
    if r9y9:
        theirs = measure_r9y9(model_file.config, min_seconds=min_seconds)
        print(table([theirs], model_file.config, info, names=names).splitlines()[-1], flush=True)
        for r in results:
            if r.backend == "naive" and r.batch == 1:
                theirs.speedup_vs_naive = theirs.samples_per_s / r.samples_per_s
            elif r.backend != "naive":
                r.speedup_vs_r9y9 = r.samples_per_s / theirs.samples_per_s
        results.append(theirs)
    print()
    print(table(results, model_file.config, info, sampling, limits, names))
    for r in results:
        if r.speedup_vs_r9y9:
            print(f"{r.backend} at batch {r.batch}: {r.speedup_vs_r9y9:,.1f}x r9y9's incremental_forward "
                  f"(one stream, same shape, same run)")
    if json_path:
        write_results(json_path, results, model_file.config, info, sampling, limits)
        print(f"wrote {json_path}")
    if plot_path:
        plot(plot_path, results, f"{model or preset} on {info.get('gpu', info['cpu'])}", limits)
        print(f"wrote {plot_path}")
    return results
