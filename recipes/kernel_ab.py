"""The CPU kernel against an older version of itself, side by side in one process: generate on the `standard`
shape (batches 1, 8, 64, 128), or on `vocoder`, r9y9's LJSpeech shape as a class model (R 512, G 256, S and H 256,
3 taps, 24 layers: the same products; 256 classes, no conditioning; batches 1, 8, 64), random weights, plain
sampling, alternating, best of three each, with the weights the backend's tiles of that size read.

Run: git show 66e561a:kernels/cpu.py > /tmp/cpu_old.py
     OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python recipes/kernel_ab.py /tmp/cpu_old.py float32|bf16|int8 [vocoder]
Kernels before the outer-product blocks (66e561a and older, no `BLOCKS`) read out-major matrices (out, in); they get
them transposed. Later ones read in-major, as the backend gives them."""
import sys
from pathlib import Path

import numpy as np
import torch

from fastwavenet import preset
from fastwavenet.backends.numba_cpu import NumbaBackend
from fastwavenet.bench import random_model_file
from fastwavenet.kernels import cpu as cpu_new
from kernel_timing import load_kernel, natural, time_generate, vocoder_config

cpu_old = load_kernel(Path(sys.argv[1]).read_text(), "cpu_old")

prec = sys.argv[2] if len(sys.argv) > 2 else "float32"
vocoder = len(sys.argv) > 3 and sys.argv[3] == "vocoder"
config = vocoder_config() if vocoder else preset("standard")
model = random_model_file(config)
backend = NumbaBackend(config, model.weights, torch.device("cpu"), prec)

for batch in (1, 8, 64) if vocoder else (1, 8, 64, 128):
    new_w = backend._kernel_weights(min(batch, 64))
    # (kernels before 8ba2eae read float32 panels only: bf16's own panels go to them in the natural layout)
    float_panels = new_w.dilated_p.dtype == np.float32
    old_w = new_w if hasattr(cpu_old, "panel_layout") and float_panels else natural(new_w)
    if not hasattr(cpu_old, "BLOCKS"):
        fields = {k: v for k, v in old_w._asdict().items() if k in cpu_old.CpuWeights._fields}
        old_w = cpu_old.CpuWeights(**{**fields, **{k: np.ascontiguousarray(fields[k].swapaxes(-1, -2))
                                                   for k in ("dilated_w", "out_w", "head1_w", "head2_w")}})
    n = max(8, 512 // batch) if vocoder else max(64, 8192 // batch)
    _, a = time_generate(cpu_old, old_w, config, batch, 64)
    _, b = time_generate(cpu_new, new_w, config, batch, 64)
    best = {"old": 0, "new": 0}
    for _ in range(3):
        best["old"] = max(best["old"], time_generate(cpu_old, old_w, config, batch, n)[0])
        best["new"] = max(best["new"], time_generate(cpu_new, new_w, config, batch, n)[0])
    same = np.mean(a == b)
    print(f"{prec} batch {batch:4d}: old {best['old']:9,.0f}  new {best['new']:9,.0f}  "
          f"new/old {best['new'] / best['old']:.2f}x  (first 64 codes equal: {same:.0%})", flush=True)
