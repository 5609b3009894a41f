"""The tiled kernel on tensor cores (`triton`, issue 36) against its tile shape, beside torch and triton-stream.

    python benchmarks/gpu_tiles_sweep.py [--json PATH] [--quick]

On a CUDA device, `standard` and `r9y9-ljspeech` with random weights at the batches of issue 36's aims (4,096 and 512)
and one smaller: samples/s of `triton` for several streams a program (FASTWAVENET_TILE), warps a program
(FASTWAVENET_TILE_WARPS) and product blocks (FASTWAVENET_TILE_BLOCKS, "BKxBN"), beside `torch` (a CUDA graph a step) and
`triton-stream`; the better of two `fastwavenet.bench.measure` runs of at least 0.2 s (conditioned as the bench
conditions them), each after its first call. One JSON line per figure on stdout as it is measured (a run cut short keeps
what it printed) and, with --json, all of them in one file. --quick: the defaults alone and the two baselines (about a
minute). --dry-run: the `tiny` preset at batch 20 on the CPU under Triton's interpreter (TRITON_INTERPRET=1), so the
script is known to run before a GPU's minutes are spent on it (tests/test_bench.py runs it)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

KNOBS = ("FASTWAVENET_TILE", "FASTWAVENET_TILE_WARPS", "FASTWAVENET_TILE_BLOCKS")


def samples_per_s(preset: str, backend: str, batch: int, min_seconds: float, tile: int | None = None,
                  warps: int | None = None, blocks: str | None = None, device: str = "cuda") -> float:
    """Samples/s of `backend` at `batch` streams of `preset` (random weights, conditioned as the bench conditions
    them): `fastwavenet.bench.measure`, its first call (compiles, capture) apart. The tiled kernel's knobs are set
    for the call and put back after it."""
    from fastwavenet import preset as get_preset
    from fastwavenet.bench import measure, random_model_file

    saved = {name: os.environ.pop(name, None) for name in KNOBS}
    for name, value in zip(KNOBS, (tile, warps, blocks)):
        if value is not None:
            os.environ[name] = str(value)
    try:
        model = random_model_file(get_preset(preset), 0)
        return max(measure(model, backend, batch, device, min_seconds).samples_per_s for _ in range(2))
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--dry-run runs under Triton's interpreter: set TRITON_INTERPRET=1")
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device")
    rows = []

    def say(**row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    # (preset, batches, tiled variants: (streams a program, warps, blocks))
    plans = [("standard", (4096, 1024),
              [(16, 8, "32x64"), (32, 8, "32x64"), (16, 8, "32x128"), (64, 8, "32x64"), (16, 4, "32x64")]),
             ("r9y9-ljspeech", (512, 64), [(16, 8, "32x64"), (32, 8, "32x64"), (16, 8, "16x128")])]
    seconds = 0.2
    if args.dry_run:
        plans, seconds = [("tiny", (20,), [(16, 8, "32x64"), (32, 4, "16x32")])], 0.0
    for preset, batches, variants in plans:
        for batch in batches:
            for backend in ("torch", "triton-stream"):
                say(preset=preset, batch=batch, backend=backend,
                    value=round(samples_per_s(preset, backend, batch, seconds, device=device)))
            for tile, warps, blocks in variants[:1] if args.quick else variants:
                value = samples_per_s(preset, "triton", batch, seconds, tile, warps, blocks, device)
                say(preset=preset, batch=batch, backend="triton", tile=tile, warps=warps, blocks=blocks,
                    value=round(value))
    if args.json:
        with open(args.json, "w") as f:
            name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (Triton's interpreter)"
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
