"""Spectrograms of generated audio beside the recordings it learned from, as one PNG, so a reader can see what
they would hear.

    python recipes/spectrograms.py demo MODEL.safetensors RECORDING [-o PNG] [--seconds 6] [--seeds 0,1]
        rows: the recording (an excerpt from --offset), then the model's unconditioned output per seed, at the
        model's default sampling (or --temperature / --top-p)
    python recipes/spectrograms.py vocoder VOCODER.safetensors RECORDING [-o PNG] [--seconds 4]
        rows: the held-out input, the vocoder's resynthesis of it, the vocoder fed another excerpt's mel

Log-magnitude STFT (512-point frames, hop 64), dB relative to each figure's loudest bin, one colour scale for all
rows, so loudness and noise floors compare across rows. Needs matplotlib (pip install "fastwavenet[plot]")."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastwavenet import Generator, audio

N_FFT, HOP = 512, 64


def log_spectrogram(x: np.ndarray) -> np.ndarray:
    import librosa

    return 20 * np.log10(np.abs(librosa.stft(x.astype(np.float32), n_fft=N_FFT, hop_length=HOP)) + 1e-6)


def plot(rows: list[tuple[str, np.ndarray]], rate: int, out: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [(name, log_spectrogram(x), x) for name, x in rows]
    top = max(s.max() for _, s, _ in specs)
    fig, axes = plt.subplots(len(specs), 1, figsize=(10, 2.2 * len(specs)), sharex=True, squeeze=False)
    for ax, (name, spec, x) in zip(axes[:, 0], specs):
        seconds = len(x) / rate
        image = ax.imshow(spec - top, origin="lower", aspect="auto", vmin=-90, vmax=0, cmap="magma",
                          extent=(0, seconds, 0, rate / 2000))
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        ax.set_title(f"{name}  (RMS {rms:.3f})", fontsize=9, loc="left")
        ax.set_ylabel("kHz")
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="dB", fraction=0.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("demo", "vocoder"))
    parser.add_argument("model")
    parser.add_argument("recording")
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--offset", type=float, default=4.0, help="where the recording's excerpt starts (s)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    args = parser.parse_args()

    gen = Generator(args.model)
    rate = gen.sample_rate
    sampling = gen.sampling.overridden(temperature=args.temperature, top_p=args.top_p)
    rule = f"temperature {sampling.temperature:g}, top-p {sampling.top_p:g}"
    full = audio.read(args.recording, rate)
    seconds = args.seconds or (6.0 if args.kind == "demo" else 4.0)
    n, start = int(seconds * rate), int(args.offset * rate)
    excerpt = full[start:start + n]
    name = Path(args.recording).name
    if args.kind == "demo":
        rows = [(f"recording: {name} from {args.offset:g} s", excerpt)]
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append((f"generated, seed {seed}, {rule}", gen.generate(samples=n, seed=seed, sampling=sampling)[0]))
        title = f"{Path(args.model).name}: unconditioned output beside a recording"
    else:
        from fastwavenet.features import log_mel

        other = full[start + 3 * n:start + 4 * n]
        resynth = gen.generate(mel=log_mel(excerpt, gen.config), samples=n, seed=0, sampling=sampling)[0]
        mismatched = gen.generate(mel=log_mel(other, gen.config), samples=n, seed=0, sampling=sampling)[0]
        rows = [(f"held-out input: {name} from {args.offset:g} s", excerpt),
                (f"resynthesis from the input's mel, {rule}", resynth),
                (f"the vocoder fed another excerpt's mel ({args.offset + 3 * seconds:g} s on)", mismatched)]
        title = f"{Path(args.model).name}: does the output follow the input?"
    plot(rows, rate, args.output or Path(f"runs/spectrogram-{args.kind}.png"), title)


if __name__ == "__main__":
    main()
