"""w8a8 products of many streams: AMX's int8 tiles against `vpdpbusd` a stream at a time (issue 38, item 3). A
probe: one w8a8 product (`kernels.cpu._matmul8_with`: the inputs quantized, the int32 sums, the float32 epilogue)
of K inputs x N outputs for 2 to 64 streams, random weights and inputs, on the calling thread, by the kernel as it
is and by a copy of it loaded with `HAS_AMX = False` (recipes/kernel_timing.py's `load_kernel`), best of 3 rounds
each. Prints, for each shape and stream count, the time without the tiles over the time with them (the same
numbers either way: the sums are exact integers; tests/test_cpu_vnni.py checks them bit for bit). On a CPU without
AMX both are the same code and the ratios are 1.

    python benchmarks/cpu_amx.py
"""
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from fastwavenet.kernels import cpu  # noqa: E402
from kernel_timing import load_kernel  # noqa: E402

# standard's dilated tap and outputs (64 x 128, 64 x 320), its head (256 x 256); r9y9's output product (256 x 768),
# a square one and its dilated taps together (1536 x 512)
SHAPES = [(64, 128), (64, 320), (256, 256), (256, 768), (512, 512), (1536, 512)]
STREAMS = (2, 4, 8, 12, 16, 32, 64)


def best_seconds(module, v, bias, scale, colsum, x, nb, y, start):
    work = module.part8(module.work8(1, nb, x.shape[1], y.shape[1]), 0)
    run = lambda: module._matmul8_with(v, bias, scale, colsum, x, nb, y, 0, y.shape[1], start, work)  # noqa: E731
    run()
    reps = max(50, int(2e8 / (x.shape[1] * y.shape[1] * nb)))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def main():
    source = (ROOT / "kernels" / "cpu.py").read_text().replace("HAS_AMX = _has_amx()", "HAS_AMX = False")
    plain = load_kernel(source, "cpu_without_amx")
    print(f"AMX: {cpu.HAS_AMX}, VNNI: {cpu.HAS_VNNI}; without the tiles / with them, one thread")
    rng = np.random.default_rng(0)
    for k, n in SHAPES:
        q = rng.integers(-127, 128, (k, n)).astype(np.int8)
        v, colsum = cpu.w8a8_layout(q)
        bias, scale = rng.standard_normal(n).astype(np.float32), rng.uniform(1e-3, 1e-2, n).astype(np.float32)
        start = np.zeros((1, n), np.float32)
        line = f"K {k:5d} x N {n:4d}:"
        for nb in STREAMS:
            x, y = rng.standard_normal((nb, k)).astype(np.float32), np.zeros((nb, n), np.float32)
            args = (v, bias, scale, colsum[0], x, nb, y, start)
            line += f"  {nb}: {best_seconds(plain, *args) / best_seconds(cpu, *args):.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
