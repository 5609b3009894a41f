"""A lone stream's products in strips (`cpu.strip_layout`, what a tile of one stream reads) against the natural
layout (the matrices as folded), side by side in one process: batch 1 on a preset's shape (random weights, plain
sampling from fixed uniforms, no conditioning), the kernel's `generate` at tile 1, the two alternating, best of
ROUNDS each, for each precision; the codes of the two compared (they must be equal: the same blocks, the same fma
chains). NUMBA_NUM_THREADS=1 as the bench's numba rows at batch 1.

Run: python recipes/strips_ab.py [PRESET] [PRECISIONS] [STEPS] [ROUNDS]   (default r9y9-ljspeech float32,bf16,int8
     300 5)"""
import os
import sys
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fastwavenet import preset  # noqa: E402
from fastwavenet.backends.numba_cpu import NumbaBackend  # noqa: E402
from fastwavenet.bench import random_model_file  # noqa: E402
from fastwavenet.kernels import cpu  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cpu_split import generate_rate, uniforms  # noqa: E402  (benchmarks/ is no package)


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "r9y9-ljspeech"
    precisions = sys.argv[2].split(",") if len(sys.argv) > 2 else ["float32", "bf16", "int8"]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    config = preset(name)
    model = random_model_file(config, 0)
    u = uniforms(config, steps)
    for precision in precisions:
        backend = NumbaBackend(config, model.weights, torch.device("cpu"), precision)
        layouts = {"natural": backend.weights, "strips": backend._kernel_weights(1)}
        assert layouts["strips"].dilated_l.shape[1] > 0 and layouts["natural"].dilated_l.shape[1] == 0
        best, codes = {k: 0.0 for k in layouts}, {}
        for r in range(rounds + 1):  # the first round compiles and warms
            for label, weights in layouts.items():
                rate, codes[label] = generate_rate(cpu, backend, weights, u)
                if r:
                    best[label] = max(best[label], rate)
        same = np.array_equal(codes["natural"], codes["strips"])
        print(f"{name} {precision}: natural {best['natural']:,.0f} samples/s, strips {best['strips']:,.0f} "
              f"({best['strips'] / best['natural']:.2f}x), codes {'equal' if same else 'DIFFER'}", flush=True)


if __name__ == "__main__":
    main()
