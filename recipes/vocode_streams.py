"""Vocoding many streams on the numba backend, r9y9's LJSpeech shape (the `r9y9-ljspeech` preset, random weights):
`Generator.generate` of BATCH streams, every stream given one mel (shared: its terms made once, read for every
stream) and each given its own (the same frames, each stream's terms made for it), alternating in one process, best
of three each. What a batch of distinct utterances costs beside a batch of takes of one.

Run: python recipes/vocode_streams.py PRECISION BATCH FRAMES   (say w8a8 64 5: 64 streams of 5 frames, 1,280 steps)
Before a change to the conditioning, run it at the older commit too (`git stash` or a checkout): the figures of
separate processes move by a few per cent on the 2-core VMs."""
import sys
import time

import numpy as np

from fastwavenet import preset
from fastwavenet.bench import random_model_file
from fastwavenet.generator import Generator

precision, batch, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = preset("r9y9-ljspeech")
gen = Generator(random_model_file(config), backend="numba", precision=precision)
mel = np.random.default_rng(0).random((config.n_mels, frames), dtype=np.float32)
mels = {"shared": mel, "own": np.broadcast_to(mel, (batch,) + mel.shape).copy()}
for m in mels.values():
    gen.generate(samples=300, batch=batch, mel=m, seed=0)  # compile, warm up
best = dict.fromkeys(mels, 0.0)
for _ in range(3):
    for name, m in mels.items():
        t0 = time.perf_counter()
        gen.generate(batch=batch, mel=m, seed=0)
        best[name] = max(best[name], batch * frames * config.hop_length / (time.perf_counter() - t0))
print(f"{precision}, {batch} streams of {frames} frames: one mel for all {best['shared']:,.0f} samples/s, "
      f"each its own {best['own']:,.0f} ({best['own'] / best['shared']:.2f}x)")
