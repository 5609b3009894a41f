"""Does a vocoder follow its input? Log-mel distance (mean absolute difference of the model's own log-mel features,
frame by frame) between held-out input and: (1) the vocoder's resynthesis of it; (2) the vocoder driven by another
excerpt's mel (mismatched input); (3) unconditioned generation by the bundled demo model, same length.

Run: python recipes/vocoder_eval.py VOCODER.safetensors HELD_OUT_AUDIO [SECONDS] [OUT_DIR]"""

import sys
from pathlib import Path

import numpy as np

from fastwavenet import Generator, audio
from fastwavenet.features import log_mel

model_path, source = sys.argv[1], sys.argv[2]
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 4.0
out_dir = Path(sys.argv[4]) if len(sys.argv) > 4 else Path("runs")
vocoder = Generator(model_path)
config = vocoder.config
full = audio.read(source, config.sample_rate)
n = int(seconds * config.sample_rate)
excerpt, other = full[n:2 * n], full[4 * n:5 * n]  # skip the first seconds (often near silence)


def distance(a, b):
    return float(np.abs(log_mel(a, config) - log_mel(b, config)).mean())


rows = []
for seed in (0, 1, 2):
    resynth = vocoder.generate(mel=log_mel(excerpt, config), samples=n, seed=seed)[0]
    mismatched = vocoder.generate(mel=log_mel(other, config), samples=n, seed=seed)[0]
    unconditioned = Generator().generate(samples=n, seed=seed)[0]
    rows.append((distance(excerpt, resynth), distance(excerpt, mismatched), distance(excerpt, unconditioned)))
    if seed == 0:
        for name, x in (("input", excerpt), ("resynthesis", resynth), ("mismatched", mismatched)):
            audio.write(out_dir / f"vocoder-{name}.wav", x, config.sample_rate)
mean = np.mean(rows, axis=0)
print(f"held-out input: {source}, {seconds:g} s from {seconds:g} s; log-mel L1 distance to the input, mean of 3 seeds")
print(f"  vocoder resynthesis of the input:        {mean[0]:.3f}")
print(f"  vocoder driven by another excerpt's mel: {mean[1]:.3f}")
print(f"  unconditioned demo model:                {mean[2]:.3f}")
