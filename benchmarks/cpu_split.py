"""One stream on every core (issue 38, item 2): batch-1 samples/s of the numba kernel with each layer split
between numba's threads (`cpu.generate_split`) against the one-thread tile (`cpu.generate`, tile 1: one core
works, the others wait), paired rounds in one process, for each precision; first, what one of the split kernel's
barriers costs (`cpu._claim`, `_done`, `_wait` with nothing to do between them).

    python benchmarks/cpu_split.py [PRESET] [STEPS] [ROUNDS] [PRECISIONS]
        (default r9y9-ljspeech 300 5 float32,bf16,int8,w8a8)

Prints the barrier's cost, then one line per precision: the best round of each and their ratio. Through the
backends that `auto` chooses between: `fastwavenet bench --backend numba,numba-split --batch 1`."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from numba import njit, prange

from fastwavenet import distributions, preset
from fastwavenet.backends.numba_cpu import NumbaBackend, _no_cond, numba_threads
from fastwavenet.bench import random_model_file
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
        u = np.random.default_rng(0).random((steps, 1) + distributions.uniform_shape(config),
                                            dtype=np.float32).reshape(steps, 1, -1)
        rule = (np.ones(1, np.float32), np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, np.bool_))
        code = distributions.KERNEL_CODES[config.output]
        silence = silence_code(config)

        def run(split: bool) -> float:
            state = backend.new_state(1, silence)
            out = np.empty((1, steps), np.float32 if config.scalar_input else np.int64)
            args = (state.last.numpy(), config.scalar_input, code, float(config.log_scale_min), 0, u, *rule)
            arrays = (state.queues.numpy(), state.inputs.numpy(), _no_cond(), out)
            start = time.perf_counter()
            if split:
                cpu.generate_split(*args, weights, *arrays, threads, *backend._blocks(threads))
            else:
                cpu.generate(*args, 1, weights, *arrays)
            return steps / (time.perf_counter() - start)

        run(False), run(True)  # compile or load, warm
        one, split = [], []
        for _ in range(rounds):
            one.append(run(False))
            split.append(run(True))
        print(f"{name} {precision} batch 1: one core {max(one):,.0f} samples/s, split over {threads} threads "
              f"{max(split):,.0f} ({max(split) / max(one):.2f}x)", flush=True)


if __name__ == "__main__":
    main()
