"""Choose a model's default sampling by measurement: for each temperature and top-p, generate seeded audio and
compare it with recordings on four statistics, then name the setting closest to the recordings.

Run: python recipes/sampling_table.py MODEL.safetensors RECORDINGS_DIR [--seconds 20] [--streams 4] [--json OUT]

Statistics (each on every stream's whole output, then averaged over streams; the recordings' over every file):
    flatness  librosa's spectral flatness (2048-point frames), mean over frames: 0 for pure tones, ~0.56 white noise
    rms       root mean square amplitude
    silence   share of 50 ms frames whose RMS is under -50 dBFS (0.00316)
    clipping  share of samples with |x| >= 0.99
Distance to the recordings: |ln(flatness / ref)| + |ln(rms / ref)| + |silence - ref| + |clipping - ref| (ratios for
the two that span orders of magnitude, shares for the two that are shares). `bounds` says whether a row is within
issue 16's bounds (flatness within 3x of the recordings', RMS within 2x). The setting to store, with `fastwavenet
export --temperature T --top-p P` (or `set_default_sampling` below), is the closest of the rows within the bounds
(the closest of all rows where none is): a closest row whose RMS is a third of the recordings' is not one to ship."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from fastwavenet import Generator, Sampling, audio

SILENCE_RMS = 10 ** (-50 / 20)
CLIP = 0.99


def statistics(x: np.ndarray, rate: int) -> dict:
    import librosa

    frame = max(1, int(0.05 * rate))
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    frame_rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    return {"flatness": float(librosa.feature.spectral_flatness(y=x.astype(np.float32)).mean()),
            "rms": float(np.sqrt(np.mean(x.astype(np.float64) ** 2))),
            "silence": float((frame_rms < SILENCE_RMS).mean()),
            "clipping": float((np.abs(x) >= CLIP).mean())}


def mean_statistics(signals, rate: int) -> dict:
    rows = [statistics(x, rate) for x in signals]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def distance(stats: dict, ref: dict) -> float:
    tiny = 1e-9
    return (abs(math.log((stats["flatness"] + tiny) / (ref["flatness"] + tiny)))
            + abs(math.log((stats["rms"] + tiny) / (ref["rms"] + tiny)))
            + abs(stats["silence"] - ref["silence"]) + abs(stats["clipping"] - ref["clipping"]))


def within_bounds(stats: dict, ref: dict) -> bool:
    """Flatness within 3x of the recordings' and RMS within 2x, either way (issue 16's bounds for the default)."""
    return (1 / 3 <= stats["flatness"] / ref["flatness"] <= 3) and (1 / 2 <= stats["rms"] / ref["rms"] <= 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("recordings")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=4, help="seeds 0..streams-1, generated as one batch")
    parser.add_argument("--temperatures", default="0.8,0.9,0.95,1.0,1.05")
    parser.add_argument("--top-p", default="1.0,0.98,0.95,0.9")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()

    gen = Generator(args.model)
    rate = gen.sample_rate
    files = sorted(p for p in Path(args.recordings).iterdir() if p.suffix.lower() in (".flac", ".wav", ".ogg"))
    ref = mean_statistics([audio.read(p, rate) for p in files], rate)
    print(f"recordings ({len(files)} files): " + ", ".join(f"{k} {v:.4g}" for k, v in ref.items()))
    rows = []
    print(f"{'temperature':>11} {'top-p':>6} {'flatness':>9} {'rms':>7} {'silence':>8} {'clipping':>9} {'distance':>9} bounds")
    for temperature in (float(t) for t in args.temperatures.split(",")):
        for top_p in (float(p) for p in args.top_p.split(",")):
            sampling = Sampling(temperature=temperature, top_p=top_p)
            out = gen.generate(seconds=args.seconds, batch=args.streams, seed=0, sampling=sampling)
            stats = mean_statistics(list(out), rate)
            row = {"temperature": temperature, "top_p": top_p, **stats, "distance": distance(stats, ref),
                   "within_bounds": within_bounds(stats, ref)}
            rows.append(row)
            print(f"{temperature:>11g} {top_p:>6g} {stats['flatness']:>9.4f} {stats['rms']:>7.4f} "
                  f"{stats['silence']:>8.3f} {stats['clipping']:>9.5f} {row['distance']:>9.3f} "
                  f"{'yes' if row['within_bounds'] else 'no'}", flush=True)
    closest = min(rows, key=lambda r: r["distance"])
    best = min((r for r in rows if r["within_bounds"]), key=lambda r: r["distance"], default=closest)
    print(f"closest to the recordings: temperature {closest['temperature']:g}, top-p {closest['top_p']:g} "
          f"(distance {closest['distance']:.3f}, {'within' if closest['within_bounds'] else 'outside'} the bounds)")
    if best is not closest:
        print(f"closest within the bounds, the one to store: temperature {best['temperature']:g}, top-p "
              f"{best['top_p']:g} (distance {best['distance']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "seconds": args.seconds,
                                               "streams": args.streams, "recordings": ref, "rows": rows,
                                               "best": best}, indent=1) + "\n")


if __name__ == "__main__":
    main()
