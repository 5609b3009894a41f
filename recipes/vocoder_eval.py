"""Does a vocoder follow its input? Log-mel distance (mean absolute difference of the model's own log-mel features,
frame by frame) between held-out input and: (1) the vocoder's resynthesis of it; (2) the vocoder driven by another
excerpt's mel (mismatched input); (3) unconditioned generation by the bundled demo model, same length.

Run: python recipes/vocoder_eval.py VOCODER.safetensors HELD_OUT_AUDIO [SECONDS] [OUT_DIR]
Each comparison is the mean over 3 seeds, at temperature 1 and at 0.7."""

import sys
from pathlib import Path

import numpy as np

from fastwavenet import Generator, Sampling, audio
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


demo = Generator()
print(f"held-out input: {source}, {seconds:g} s from {seconds:g} s; log-mel L1 distance to the input")
print(f"{'temperature':>11} {'resynthesis':>12} {'other mel':>10} {'unconditioned':>14}")
for temperature in (1.0, 0.7):
    sampling = Sampling(temperature=temperature)
    rows = []
    for seed in (0, 1, 2):
        resynth = vocoder.generate(mel=log_mel(excerpt, config), samples=n, seed=seed, sampling=sampling)[0]
        mismatched = vocoder.generate(mel=log_mel(other, config), samples=n, seed=seed, sampling=sampling)[0]
        unconditioned = demo.generate(samples=n, seed=seed, sampling=sampling)[0]
        rows.append((distance(excerpt, resynth), distance(excerpt, mismatched), distance(excerpt, unconditioned)))
        if seed == 0:
            for name, x in (("input", excerpt), ("resynthesis", resynth), ("mismatched", mismatched)):
                audio.write(out_dir / f"vocoder-{name}-t{temperature:g}.wav", x, config.sample_rate)
    mean = np.mean(rows, axis=0)
    print(f"{temperature:>11g} {mean[0]:>12.3f} {mean[1]:>10.3f} {mean[2]:>14.3f}")

# Teacher forcing: bits per sample of the held-out excerpt given its own mel, and given another excerpt's.
import torch  # noqa: E402

from fastwavenet import mulaw  # noqa: E402
from fastwavenet.convert import unfold  # noqa: E402
from fastwavenet.modelfile import load_model  # noqa: E402
from fastwavenet.model import loss_bits  # noqa: E402

net = unfold(load_model(model_path).weights, config)
codes = torch.from_numpy(mulaw.encode(excerpt))[None]
with torch.no_grad():
    for name, src in (("its own mel", excerpt), ("another excerpt's mel", other)):
        bits = loss_bits(net(codes, mel=torch.from_numpy(log_mel(src, config))[None]), codes,
                         config.receptive_field - 1).item()
        print(f"teacher-forced, given {name}: {bits:.3f} bits/sample")
