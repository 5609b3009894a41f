"""The CPU kernel against an older version of itself on r9y9's LJSpeech shape as a class model (recipes/kernel_ab.py's
`vocoder`), each at its own tile size: generate `batch` streams on numba's threads, old tiles of OLD_TILE streams,
new tiles as the numba backend sizes them now; random weights, plain sampling, alternating, best of three each.

Run: git show 9528f4e:kernels/cpu.py > /tmp/cpu_old.py
     NUMBA_NUM_THREADS=2 python recipes/kernel_ab_tiles.py /tmp/cpu_old.py BATCH [OLD_TILE] [STEPS] [PRECISION] [SHAPE]
(OLD_TILE 0: as the backend sizes them; PRECISION float32 (the default), bf16, int8 or w8a8; SHAPE a preset instead of
the vocoder. The same kernel without AMX's tiles, for w8a8: sed 's/^HAS_AMX = _has_amx()/HAS_AMX = False/'.)"""
import math
import sys
from pathlib import Path

import numpy as np
import torch

from fastwavenet import preset
from fastwavenet.backends.numba_cpu import NumbaBackend, numba_threads
from fastwavenet.bench import random_model_file
from fastwavenet.kernels import cpu as cpu_new
from kernel_timing import load_kernel, natural, time_generate, vocoder_config

cpu_old = load_kernel(Path(sys.argv[1]).read_text(), "cpu_old")
batch = int(sys.argv[2])
old_tile = int(sys.argv[3]) if len(sys.argv) > 3 else 0
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 16
precision = sys.argv[5] if len(sys.argv) > 5 else "float32"
config = preset(sys.argv[6]) if len(sys.argv) > 6 else vocoder_config()
backend = NumbaBackend(config, random_model_file(config).weights, torch.device("cpu"), precision)
old_tile = old_tile or min(64, math.ceil(batch / numba_threads()))
new_tile = backend._tile(batch)
new_w = backend._kernel_weights(new_tile)
old_w = backend._kernel_weights(old_tile)
if not hasattr(cpu_old, "panel_layout"):  # kernels older than the panels read the natural layout
    old_w = natural(old_w)
_, a = time_generate(cpu_old, old_w, config, batch, 8, old_tile)
_, b = time_generate(cpu_new, new_w, config, batch, 8, new_tile)
best = {"old": 0, "new": 0}
for _ in range(3):
    best["old"] = max(best["old"], time_generate(cpu_old, old_w, config, batch, steps, old_tile)[0])
    best["new"] = max(best["new"], time_generate(cpu_new, new_w, config, batch, steps, new_tile)[0])
print(f"{precision} batch {batch}, {numba_threads()} threads: old (tiles of {old_tile}) {best['old']:,.0f}  "
      f"new (tiles of {new_tile}) {best['new']:,.0f}  new/old {best['new'] / best['old']:.2f}x  (first 8 codes equal: "
      f"{np.mean(a == b):.0%})")
