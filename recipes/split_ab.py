"""The split kernel (one stream on every core, `cpu.generate_split`) against an older version of itself, side by
side in one process: batch 1 on a preset's shape (random weights, plain sampling from fixed uniforms), old and new
alternating, best of ROUNDS each, for each precision, each kernel reading the weight blocks of its own
`split_blocks`; the codes of the two compared.

Run: git show 5fa0775:kernels/cpu.py > /tmp/cpu_old.py
     python recipes/split_ab.py /tmp/cpu_old.py [PRESET] [PRECISIONS] [STEPS] [ROUNDS]
         (default r9y9-ljspeech float32,bf16,int8,w8a8 300 5)
Kernels as old as the split's barriers (649890d) or newer: their `generate_split` takes the arguments this one
passes. (The one-thread kernel against an older one: recipes/kernel_ab.py.)"""
import sys
from pathlib import Path

import numpy as np
import torch

from fastwavenet import preset
from fastwavenet.backends.numba_cpu import NumbaBackend, numba_threads
from fastwavenet.bench import random_model_file
from fastwavenet.kernels import cpu as cpu_new
from kernel_timing import load_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cpu_split import generate_rate, uniforms  # noqa: E402  (benchmarks/ is no package)


def main():
    cpu_old = load_kernel(Path(sys.argv[1]).read_text(), "cpu_split_old")
    name = sys.argv[2] if len(sys.argv) > 2 else "r9y9-ljspeech"
    precisions = sys.argv[3].split(",") if len(sys.argv) > 3 else ["float32", "bf16", "int8", "w8a8"]
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 300
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    config = preset(name)
    model = random_model_file(config, 0)
    threads = max(2, numba_threads())
    u = uniforms(config, steps)
    for precision in precisions:
        backend = NumbaBackend(config, model.weights, torch.device("cpu"), precision)
        weights = backend._kernel_weights(1)

        def run(kernel):
            return generate_rate(kernel, backend, weights, u, threads)

        _, a = run(cpu_old)  # compile or load, warm
        _, b = run(cpu_new)
        best = {"old": 0.0, "new": 0.0}
        for _ in range(rounds):
            best["old"] = max(best["old"], run(cpu_old)[0])
            best["new"] = max(best["new"], run(cpu_new)[0])
        print(f"{name} {precision} batch 1 on {threads} threads: old {best['old']:,.0f}  new {best['new']:,.0f}  "
              f"new/old {best['new'] / best['old']:.2f}x  (codes equal: {np.mean(a == b):.0%})", flush=True)


if __name__ == "__main__":
    main()
