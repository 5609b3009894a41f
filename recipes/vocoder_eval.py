"""Does a vocoder follow its input? Log-mel distance (mean absolute difference of the model's own log-mel features,
frame by frame) between held-out input and: (1) the vocoder's resynthesis of it; (2) the vocoder driven by another
excerpt's mel (mismatched input); (3) unconditioned generation by the bundled demo model, same length.

Run: python recipes/vocoder_eval.py VOCODER.safetensors HELD_OUT_AUDIO [--seconds 4] [--excerpts N]
         [--temperatures 1,0.7] [--top-p 1] [--out-dir runs]
Excerpt i is SECONDS long and starts at (1 + 2 i) x SECONDS (the first seconds are often near silence), as many as
the audio holds unless --excerpts says fewer (piece6, 82 s: 10 of 4 s); its mismatched mel is excerpt i + 1's (the
last one's, excerpt 0's). Each figure is the mean over the excerpts and 3 seeds (one excerpt alone moved the ratio
by 0.1 between checkpoints 250 steps apart, and the first 4 excerpts read 0.51 where 8 read 0.48). The ratio is resynthesis over
mismatched: the issue's aim is 0.5 or less. Then teacher forcing: bits per sample of the excerpts given their own
mel and given the mismatched one. Seed 0's audio of the first excerpt is written to OUT_DIR."""

import argparse
from pathlib import Path

import numpy as np
import torch

from fastwavenet import Generator, Sampling, audio, mulaw
from fastwavenet.folded import unfold
from fastwavenet.features import log_mel
from fastwavenet.model import loss_bits
from fastwavenet.modelfile import load_model

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("source")
parser.add_argument("--seconds", type=float, default=4.0)
parser.add_argument("--excerpts", type=int, default=0, help="how many (default: as many as the audio holds)")
parser.add_argument("--temperatures", default="1,0.7")
parser.add_argument("--top-p", default="1")
parser.add_argument("--out-dir", type=Path, default=Path("runs"))
args = parser.parse_args()

vocoder = Generator(args.model)
config = vocoder.config
full = audio.read(args.source, config.sample_rate)
n = int(args.seconds * config.sample_rate)
count = args.excerpts or len(full) // n // 2
if count < 2:
    raise SystemExit("need 2 or more excerpts: each excerpt's mismatched mel is another excerpt's")
excerpts = [full[(1 + 2 * i) * n:(2 + 2 * i) * n] for i in range(count)]
if len(excerpts[-1]) < n:
    raise SystemExit(f"{args.source} is too short for {count} excerpts of {args.seconds:g} s")
mels = [log_mel(x, config) for x in excerpts]  # each excerpt's features, computed once
others = mels[1:] + mels[:1]


def distance(mel, x):
    """Log-mel L1 between an excerpt's features and audio x."""
    return float(np.abs(mel - log_mel(x, config)).mean())


demo = Generator()
print(f"held-out input: {args.source}, {count} excerpts of {args.seconds:g} s; log-mel L1 distance to the "
      f"input, mean over excerpts and 3 seeds")
print(f"{'temperature':>11} {'top-p':>5} {'resynthesis':>12} {'other mel':>10} {'ratio':>6} {'unconditioned':>14}")
for temperature in map(float, args.temperatures.split(",")):
    for top_p in map(float, args.top_p.split(",")):
        sampling = Sampling(temperature=temperature, top_p=top_p)
        rows = []
        for i, (excerpt, mel, other) in enumerate(zip(excerpts, mels, others)):
            for seed in (0, 1, 2):
                resynth = vocoder.generate(mel=mel, samples=n, seed=seed, sampling=sampling)[0]
                wrong = vocoder.generate(mel=other, samples=n, seed=seed, sampling=sampling)[0]
                unconditioned = demo.generate(samples=n, seed=seed, sampling=sampling)[0]
                rows.append((distance(mel, resynth), distance(mel, wrong), distance(mel, unconditioned)))
                if i == 0 and seed == 0:
                    for name, x in (("input", excerpt), ("resynthesis", resynth), ("mismatched", wrong)):
                        audio.write(args.out_dir / f"vocoder-{name}-t{temperature:g}-p{top_p:g}.wav", x,
                                    config.sample_rate)
        mean = np.mean(rows, axis=0)
        print(f"{temperature:>11g} {top_p:>5g} {mean[0]:>12.3f} {mean[1]:>10.3f} {mean[0] / mean[1]:>6.3f} "
              f"{mean[2]:>14.3f}", flush=True)
        each = np.asarray(rows).reshape(count, 3, 3).mean(axis=1)  # per excerpt, over seeds
        print(" " * 18 + "per excerpt (start: ratio): " + ", ".join(
            f"{(1 + 2 * i) * args.seconds:g} s: {r[0] / r[1]:.2f}" for i, r in enumerate(each)))

net = unfold(load_model(args.model).weights, config)
codes = [torch.from_numpy(mulaw.encode(x))[None] for x in excerpts]
with torch.no_grad():
    for name, features in (("its own mel", mels), ("another excerpt's mel", others)):
        bits = [loss_bits(net(c, mel=torch.from_numpy(f)[None]), c, config.receptive_field - 1).item()
                for c, f in zip(codes, features)]
        print(f"teacher-forced, given {name}: {np.mean(bits):.3f} bits/sample")
