"""One stream on every core (issue 38, item 2): batch-1 samples/s of the numba kernel with each product split
between numba's threads (`cpu.generate_split`) against the one-thread tile (`cpu.generate`, tile 1: one core
works, the others wait), paired rounds in one process, for each precision.

    python benchmarks/cpu_split.py [PRESET] [STEPS] [ROUNDS] [PRECISIONS]
        (default r9y9-ljspeech 300 5 float32,bf16,int8,w8a8)

Prints one line per precision: the best round of each and their ratio. Through the backends that `auto` chooses
between: `fastwavenet bench --backend numba,numba-split --batch 1`."""

from __future__ import annotations

import sys
import time

import numpy as np

from fastwavenet import distributions, preset
from fastwavenet.backends.numba_cpu import NumbaBackend, _no_cond, numba_threads
from fastwavenet.bench import random_model_file
from fastwavenet.generator import silence_code
from fastwavenet.kernels import cpu


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "r9y9-ljspeech"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    config = preset(name)
    model = random_model_file(config, 0)
    precisions = sys.argv[4].split(",") if len(sys.argv) > 4 else ["float32", "bf16", "int8", "w8a8"]
    threads = numba_threads()
    for precision in precisions:
        import torch

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
