"""The CPU kernel against an older version of itself, side by side in one process: generate on the `standard`
shape, random weights, plain sampling, batches 1, 8, 64, 128, alternating, best of three each.

Run: git show 66e561a:kernels/cpu.py > /tmp/cpu_old.py
     OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python recipes/kernel_ab.py /tmp/cpu_old.py float32|bf16
Kernels before the outer-product blocks (66e561a and older, no `BLOCKS`) read out-major matrices (out, in); they get
them transposed. Later ones read in-major, as the backend gives them."""
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastwavenet import preset
from fastwavenet.backends.numba_cpu import NumbaBackend
from fastwavenet.bench import random_model_file
from fastwavenet.kernels import cpu as cpu_new

# A fresh copy each run: numba cannot reload its cached code for a module loaded from a file path like this one.
fresh = Path(tempfile.mkdtemp()) / "cpu_old.py"
shutil.copy(sys.argv[1], fresh)
spec = importlib.util.spec_from_file_location("cpu_old", fresh)
cpu_old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_old)

prec = sys.argv[2] if len(sys.argv) > 2 else "float32"
config = preset("standard")
model = random_model_file(config)
backend = NumbaBackend(config, model.weights, torch.device("cpu"), prec)
new_w = backend.weights
transposed = {k: np.ascontiguousarray(getattr(new_w, k).swapaxes(-1, -2))
              for k in ("dilated_w", "out_w", "head1_w", "head2_w")}
old_w = new_w if hasattr(cpu_old, "BLOCKS") else cpu_old.CpuWeights(**{**new_w._asdict(), **transposed})

def run(kernel, w, batch, n):
    q = np.zeros((batch, config.queue_length, config.residual_channels), np.float32)
    inputs = np.full((batch, max(1, config.input_kernel_size - 1)), -1, np.int64)
    last = np.full(batch, 128, np.int64)
    u = np.random.default_rng(0).random((n, batch, 1)).astype(np.float32)
    out = np.empty((batch, n), np.int64)
    t0 = time.perf_counter()
    kernel.generate(last, False, 0, -7.0, 0, u, np.ones(batch, np.float32), np.zeros(batch, np.int64),
                    np.ones(batch, np.float32), np.zeros(batch, np.bool_), max(1, min(64, batch)), w, q, inputs,
                    np.zeros((0, 0, 0, 0), np.float32), out)
    return batch * n / (time.perf_counter() - t0), out

for batch in (1, 8, 64, 128):
    n = max(64, 8192 // batch)
    _, a = run(cpu_old, old_w, batch, 64)
    _, b = run(cpu_new, new_w, batch, 64)
    best = {"old": 0, "new": 0}
    for _ in range(3):
        best["old"] = max(best["old"], run(cpu_old, old_w, batch, n)[0])
        best["new"] = max(best["new"], run(cpu_new, new_w, batch, n)[0])
    same = np.mean(a == b)
    print(f"{prec} batch {batch:4d}: old {best['old']:9,.0f}  new {best['new']:9,.0f}  "
          f"new/old {best['new'] / best['old']:.2f}x  (first 64 codes equal: {same:.0%})", flush=True)
