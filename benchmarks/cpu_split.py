"""One stream on every core (issue 38, item 2): batch-1 samples/s of the numba kernel with each layer split
between numba's threads (`cpu.generate_split`) against the one-thread tile (`cpu.generate`, tile 1: one core
works, the others wait), paired rounds in one process, for each precision; first, what one of the split kernel's
barriers costs (`cpu._claim`, `_done`, `_wait` with nothing to do between them).

    python benchmarks/cpu_split.py [PRESET] [STEPS] [ROUNDS] [PRECISIONS]
        (default r9y9-ljspeech 300 5 float32,bf16,int8,w8a8)

Prints the barrier's cost, then per precision the best round of each and their ratio, and beside them the rates
at which the kernels read their weights and at which the kernel's lone-stream product streams as many bytes of
float32 on one thread and on all of them, each its own share (`bench.weight_passes`, the batch-1 limits of
`fastwavenet bench`: the ceiling splitting meets where a step is bound by reading its weights; a plain numba loop
over 8-byte words, used here until 2026-12-06, read a fifth of that). Through the backends that `auto` chooses
between: `fastwavenet bench --backend numba,numba-split --batch 1`."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from numba import njit, prange

from fastwavenet import distributions, preset
from fastwavenet.backends.numba_cpu import NumbaBackend, _aligned, _no_cond, numba_threads
from fastwavenet.bench import random_model_file, weight_passes
from fastwavenet.generator import silence_code
from fastwavenet.kernels import cpu


@njit(parallel=True)
def _barriers(parts, phases, sync):
    """`phases` phases of `parts` empty parts each, as the split kernel claims, marks and waits for them."""
    for tid in prange(parts):
        for phase in range(phases):
            for j in range(parts):
                part = (tid + j) % parts
                if cpu._claim(sync, part, phase):
                    cpu._done(sync, part, phase)
            cpu._wait(sync, parts, phase)


def barrier_cost(parts: int, phases: int = 200_000) -> float:
    """Microseconds a phase of `parts` empty parts takes on numba's threads (best of 3)."""
    _barriers(parts, 10, np.full((parts, 16), -1, np.int64))  # compile or load
    best = float("inf")
    for _ in range(3):
        sync = np.full((parts, 16), -1, np.int64)
        start = time.perf_counter()
        _barriers(parts, phases, sync)
        best = min(best, (time.perf_counter() - start) / phases)
    return best * 1e6


def weight_bytes(weights) -> int:
    """Bytes of matrices a step reads: the w8a8 layouts where given, else the matrices as stored."""
    names = ("dilated_v", "out_v", "head1_v", "head2_v") if cpu._is_w8a8(weights) else \
        ("dilated_w", "out_w", "head1_w", "head2_w")
    return sum(getattr(weights, name).nbytes for name in names)


def uniforms(config, steps: int) -> np.ndarray:
    """Fixed uniforms for `steps` steps of one stream, as the kernel's `u` takes them."""
    return np.random.default_rng(0).random((steps, 1) + distributions.uniform_shape(config),
                                           dtype=np.float32).reshape(steps, 1, -1)


_MADE: dict = {}


def _blocks(kernel, weights, parts: int):
    """`kernel`'s `split_blocks` of `weights` for `parts` parts, aligned as the backend aligns them; made once per
    kernel, weights and parts (a vocoder's float32 blocks are 95 MB of copies)."""
    key = (id(kernel), id(weights), parts)
    if key not in _MADE:  # the weights are kept with their blocks, so their id is not reused meanwhile
        _MADE[key] = (weights, tuple(_aligned(a) for a in kernel.split_blocks(weights, parts)))
    return _MADE[key][1]


def generate_rate(kernel, backend, weights, u, split: int = 0):
    """One timed call generating u.shape[0] steps of one stream from a fresh state, plain sampling: `kernel` (a
    kernels/cpu.py module, this one or an older copy) `generate_split` on `split` threads (the blocks for
    that many parts, by the kernel's own `split_blocks`, made before the clock starts), else `generate` at tile 1.
    Returns (samples/s, the codes)."""
    config, steps = backend.config, u.shape[0]
    state = backend.new_state(1, silence_code(config))
    out = np.empty((1, steps), np.float32 if config.scalar_input else np.int64)
    rule = (np.ones(1, np.float32), np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, np.bool_))
    args = (state.last.numpy(), config.scalar_input, distributions.KERNEL_CODES[config.output],
            float(config.log_scale_min), 0, u, *rule)
    arrays = (state.queues.numpy(), state.inputs.numpy(), _no_cond(), out)
    blocks = _blocks(kernel, weights, split) if split else ()
    start = time.perf_counter()
    if split:
        kernel.generate_split(*args, weights, *arrays, split, *blocks)
    else:
        kernel.generate(*args, 1, weights, *arrays)
    return steps / (time.perf_counter() - start), out


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "r9y9-ljspeech"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    config = preset(name)
    model = random_model_file(config, 0)
    precisions = sys.argv[4].split(",") if len(sys.argv) > 4 else ["float32", "bf16", "int8", "w8a8"]
    threads = numba_threads()
    print(f"a barrier of {threads} threads: {barrier_cost(threads):.2f} us", flush=True)
    for precision in precisions:
        backend = NumbaBackend(config, model.weights, torch.device("cpu"), precision)
        weights = backend._kernel_weights(1)
        u = uniforms(config, steps)

        def run(split: bool) -> float:
            return generate_rate(cpu, backend, weights, u, threads if split else 0)[0]

        run(False), run(True)  # compile or load, warm
        one, split = [], []
        for _ in range(rounds):
            one.append(run(False))
            split.append(run(True))
        print(f"{name} {precision} batch 1: one core {max(one):,.0f} samples/s, split over {threads} threads "
              f"{max(split):,.0f} ({max(split) / max(one):.2f}x)", flush=True)
        nbytes = weight_bytes(weights)
        alone, together = (passes * nbytes / 1e9 for passes in weight_passes(nbytes, threads))
        print(f"    {nbytes / 1e6:.1f} MB of weights a step: the kernels read {max(one) * nbytes / 1e9:.1f} and "
              f"{max(split) * nbytes / 1e9:.1f} GB/s; the lone-stream product streams as many bytes at {alone:.1f} "
              f"GB/s on one thread, {together:.1f} on {threads} ({together / alone:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
