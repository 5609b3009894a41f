"""Does the split kernel give the one-thread kernel's numbers, bit for bit, call after call? r9y9's shape (random
weights, mel conditioning), teacher-forced, T steps of one stream: `cpu.teacher_forced_split` on numba's threads
against `cpu.teacher_forced` (one tile, one thread), ROUNDS split calls a precision, one reference before and one
after. Prints, per precision, how many split calls differed from the reference, whether the two references agree
and whether the split calls agree among themselves, and where the first difference lies.

In stop 43 such runs found split calls that differed from the reference in some processes and not in others.
The cause (found the next session, docs/BENCHMARKS.md, "One stream on every core, inside one region"): the gate
nonlinearity's loop, compiled both vectorized and scalar, took one or the other by where the call's scratch arrays
lay, and fast-math's `arcp` made the vector division approximate; the kernels no longer use `arcp`. Run it beside
other work too (`yes > /dev/null &` on a two-core machine) and with a fresh FASTWAVENET_CACHE_DIR: every split call
should agree with the reference.

    python recipes/split_stress.py [ROUNDS] [PRECISIONS] [T]    (default 6 float32,bf16,int8,w8a8 64)
    KERNEL=old_cpu.py python recipes/split_stress.py ...         (a copy of kernels/cpu.py instead)
"""
import os
import sys
from pathlib import Path

import numpy as np
import torch

from fastwavenet import preset
from fastwavenet.backends.numba_cpu import NumbaBackend, numba_threads
from fastwavenet.bench import random_model_file
from fastwavenet.kernels import cpu
from kernel_timing import load_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cpu_split import _blocks  # noqa: E402  (benchmarks/ is no package)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    precisions = sys.argv[2].split(",") if len(sys.argv) > 2 else ["float32", "bf16", "int8", "w8a8"]
    T = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    kernel = load_kernel(Path(os.environ["KERNEL"]).read_text(), "cpu_stress") if os.environ.get("KERNEL") else cpu
    config = preset("r9y9-ljspeech")
    model = random_model_file(config, 0)
    parts = max(2, numba_threads())
    rng = np.random.default_rng(1)
    codes = rng.random((1, T), dtype=np.float32) * 2 - 1  # r9y9's shape takes sample values
    cond = rng.standard_normal((1, T, config.layers, 2 * config.gate_channels)).astype(np.float32)
    for precision in precisions:
        backend = NumbaBackend(config, model.weights, torch.device("cpu"), precision)
        weights = backend._kernel_weights(1)
        blocks = _blocks(kernel, backend.weights, parts)  # the kernel's own layout

        def run(split: bool) -> np.ndarray:
            state = backend.new_state(1, 0.0)
            out = np.zeros((1, T, config.output_channels), np.float32)
            arrays = (weights, state.queues.numpy(), state.inputs.numpy(), cond, out)
            if split:
                kernel.teacher_forced_split(codes, True, 0, *arrays, parts, *blocks)
            else:
                kernel.teacher_forced(codes, True, 0, 1, *arrays)
            return out[0]

        reference = run(False)
        outs = [run(True) for _ in range(rounds)]
        again = run(False)
        unlike = [o for o in outs if not np.array_equal(o, reference)]
        line = (f"{precision}: {len(unlike)} of {rounds} split calls unlike the one-thread kernel; references "
                f"{'agree' if np.array_equal(reference, again) else 'DIFFER'}; split calls "
                f"{'agree' if all(np.array_equal(o, outs[0]) for o in outs) else 'DIFFER'}")
        if unlike:
            d = np.abs(unlike[0] - reference)
            steps = np.flatnonzero(d.max(axis=1) > 0)
            line += (f"; first at step {steps[0]} of {T} ({steps.size} steps differ), largest difference "
                     f"{d.max():.3g}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
