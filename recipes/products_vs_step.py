"""Where the batched CPU kernel's time goes: on one thread, in rounds, torch's 2048-square sgemm, the kernel's own
block products on one layer-shaped matrix held in cache (`kernels.cpu._matmul`, K x N weights, 16 streams), and the
whole generation step on the `standard` shape (random weights, plain sampling), as GFLOP/s side by side. Rounds
alternate so that the machine's drift touches all three alike.

Run: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python recipes/products_vs_step.py [BATCH] [ROUNDS]
(AVX2 code on an AVX-512 machine: prefix NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="")"""
import sys
import time

import numpy as np
import torch
from numba import njit

from fastwavenet import preset
from fastwavenet.backends.numba_cpu import NumbaBackend
from fastwavenet.bench import flops_per_sample, random_model_file
from fastwavenet.kernels import cpu
from kernel_timing import time_generate

batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.set_num_threads(1)
config = preset("standard")
weights = NumbaBackend(config, random_model_file(config).weights, torch.device("cpu"), "float32").weights
step_flops = flops_per_sample(config)


@njit(fastmath=True)
def repeat_products(w, bias, x, nb, y, start, reps):
    for _ in range(reps):
        cpu._matmul(w, bias, x, nb, y, 0, w.shape[1], start)


def step_rate(n):
    return time_generate(cpu, weights, config, batch, n)[0] * step_flops / 1e9


K, N, nb = config.residual_channels, 2 * config.gate_channels, 16  # one tap of a layer, a group of streams
rng = np.random.default_rng(0)
w, x = rng.random((K, N), np.float32), rng.random((nb, K), np.float32)
y, bias, start = np.zeros((nb, N), np.float32), np.zeros(N, np.float32), np.zeros((1, N), np.float32)
a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
repeat_products(w, bias, x, nb, y, start, 1)
step_rate(4)
torch.mm(a, b)
reps = 20000
steps = max(50, 12800 // batch)
print(f"one thread, GFLOP/s; block products: K={K}, N={N}, {nb} streams; step: standard, batch {batch}")
print(f"{'sgemm 2048':>12} {'products':>10} {'step':>8} {'step/sgemm':>11} {'step/products':>14}")
for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(3):
        torch.mm(a, b)
    sgemm = 3 * 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9
    t0 = time.perf_counter()
    repeat_products(w, bias, x, nb, y, start, reps)
    products = 2 * K * N * nb * reps / (time.perf_counter() - t0) / 1e9
    step = step_rate(steps)
    print(f"{sgemm:12.1f} {products:10.1f} {step:8.1f} {step / sgemm:11.0%} {step / products:14.0%}", flush=True)
