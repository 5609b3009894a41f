"""The kernels on tensor cores (`triton`, `triton-layers`, issue 36) against their tile shapes, beside torch and
triton-stream.

    python benchmarks/gpu_tiles_sweep.py [--json PATH] [--quick]

On a CUDA device, `standard` and `r9y9-ljspeech` with random weights at the batches of issue 36's aims (4,096 and 512)
and one smaller: samples/s of `triton` for several streams a program (FASTWAVENET_TILE), warps a program
(FASTWAVENET_TILE_WARPS) and product blocks (FASTWAVENET_TILE_BLOCKS, "BKxBN"), and of `triton-layers` for its tile,
warps and blocks (FASTWAVENET_LAYERS_TILE, _WARPS, _BLOCKS), beside `torch` (a CUDA graph a step) and
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
from unittest import mock

import torch

# Each tiled backend's knobs: streams a program, warps a program, product blocks
KNOBS = {"triton": ("FASTWAVENET_TILE", "FASTWAVENET_TILE_WARPS", "FASTWAVENET_TILE_BLOCKS"),
         "triton-layers": ("FASTWAVENET_LAYERS_TILE", "FASTWAVENET_LAYERS_WARPS", "FASTWAVENET_LAYERS_BLOCKS")}


def samples_per_s(preset: str, backend: str, batch: int, min_seconds: float, tile: int | None = None,
                  warps: int | None = None, blocks: str | None = None, device: str = "cuda") -> float:
    """Samples/s of `backend` at `batch` streams of `preset` (random weights, conditioned as the bench conditions
    them): `fastwavenet.bench.measure`, its first call (compiles, capture) apart. A tiled backend's knobs are set
    for the call and put back after it."""
    from fastwavenet import preset as get_preset
    from fastwavenet.bench import measure, random_model_file

    with mock.patch.dict(os.environ):
        for name, value in zip(KNOBS.get(backend, ()), (tile, warps, blocks)):
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = str(value)
        model = random_model_file(get_preset(preset), 0)
        return max(measure(model, backend, batch, device, min_seconds).samples_per_s for _ in range(2))


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

    # (preset, batches, {tiled backend: its variants: (streams a program, warps, blocks)}), each backend's default
    # first
    plans = [("standard", (4096, 1024),
              {"triton": [(16, 8, "32x64"), (32, 8, "32x64"), (16, 8, "32x128"), (64, 8, "32x64"), (16, 4, "32x64")],
               "triton-layers": [(32, 4, "32x32"), (64, 4, "32x32"), (32, 4, "32x64"), (64, 8, "32x64"),
                                 (16, 4, "32x64")]}),
             ("r9y9-ljspeech", (512, 64),
              {"triton": [(16, 8, "32x64"), (32, 8, "32x64"), (16, 8, "16x128")],
               "triton-layers": [(32, 4, "32x32"), (16, 4, "32x64"), (64, 4, "32x32"), (32, 8, "32x64")]})]
    seconds = 0.2
    if args.dry_run:
        plans, seconds = [("tiny", (20,), {"triton": [(16, 8, "32x64"), (32, 4, "16x32")],
                                            "triton-layers": [(16, 4, "16x32")]})], 0.0
    for preset, batches, tiled in plans:
        for batch in batches:
            for backend in ("torch", "triton-stream"):
                say(preset=preset, batch=batch, backend=backend,
                    value=round(samples_per_s(preset, backend, batch, seconds, device=device)))
            for backend, variants in tiled.items():
                for tile, warps, blocks in variants[:1] if args.quick else variants:
                    value = samples_per_s(preset, backend, batch, seconds, tile, warps, blocks, device)
                    say(preset=preset, batch=batch, backend=backend, tile=tile, warps=warps, blocks=blocks,
                        value=round(value))
    if args.json:
        with open(args.json, "w") as f:
            name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (Triton's interpreter)"
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
