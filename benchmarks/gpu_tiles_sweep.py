"""The tiled kernel on tensor cores (`triton`, issue 36) against its tile shape, beside torch and triton-stream.

    python benchmarks/gpu_tiles_sweep.py [--json PATH] [--quick]

On a CUDA device, `standard` and `r9y9-ljspeech` with random weights at the batches of issue 36's aims (4,096 and
512) and one smaller: samples/s of `triton` for several streams a program (FASTWAVENET_TILE), warps a program
(FASTWAVENET_TILE_WARPS) and product blocks (FASTWAVENET_TILE_BLOCKS, "BKxBN"), beside `torch` (a CUDA graph a
step) and `triton-stream`; best of three timed runs after a warm-up that compiles. One JSON line per figure on
stdout as it is measured (a run cut short keeps what it printed) and, with --json, all of them in one file.
--quick: the defaults alone and the two baselines (about a minute). --dry-run: the `tiny` preset at batch 20 for
two steps on the CPU under Triton's interpreter (TRITON_INTERPRET=1), so the script is known to run before a GPU's
minutes are spent on it (tests/test_bench.py runs it)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

KNOBS = ("FASTWAVENET_TILE", "FASTWAVENET_TILE_WARPS", "FASTWAVENET_TILE_BLOCKS")


def samples_per_s(preset: str, backend: str, batch: int, n: int, tile: int | None = None, warps: int | None = None,
                  blocks: str | None = None, device: str = "cuda") -> float:
    """Samples/s of `backend` generating n steps for `batch` streams of `preset` (random weights), best of three
    after a warm-up; the tiled kernel's knobs set for the call and put back after it."""
    saved = {name: os.environ.pop(name, None) for name in KNOBS}
    for name, value in zip(KNOBS, (tile, warps, blocks)):
        if value is not None:
            os.environ[name] = str(value)
    try:
        return _timed(preset, backend, batch, n, device)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def _timed(preset: str, backend: str, batch: int, n: int, device: str) -> float:
    from fastwavenet import Generator, Sampling, preset as get_preset
    from fastwavenet.bench import random_model_file
    from fastwavenet.distributions import uniform_shape

    config = get_preset(preset)
    gen = Generator(random_model_file(config, 0), backend=backend, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    u = np.random.default_rng(0).random((n, batch) + uniform_shape(config), dtype=np.float32)
    state = gen.new_state(batch)
    gen.backend.generate(state, min(n, 8), u[:min(n, 8)], Sampling())  # compile, capture, warm
    best = float("inf")
    for _ in range(3):
        sync()
        start = time.perf_counter()
        gen.backend.generate(state, n, u, Sampling())
        sync()
        best = min(best, time.perf_counter() - start)
    return n * batch / best


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

    # (preset, batches, steps timed, tiled variants: (streams a program, warps, blocks))
    plans = [("standard", (4096, 1024), 200,
              [(16, 8, "32x64"), (32, 8, "32x64"), (16, 8, "32x128"), (64, 8, "32x64"), (16, 4, "32x64")]),
             ("r9y9-ljspeech", (512, 64), 60, [(16, 8, "32x64"), (32, 8, "32x64"), (16, 8, "16x128")])]
    if args.dry_run:
        plans = [("tiny", (20,), 2, [(16, 8, "32x64"), (32, 4, "16x32")])]
    for preset, batches, n, variants in plans:
        for batch in batches:
            for backend in ("torch", "triton-stream"):
                say(preset=preset, batch=batch, backend=backend,
                    value=round(samples_per_s(preset, backend, batch, n, device=device)))
            for tile, warps, blocks in variants[:1] if args.quick else variants:
                value = samples_per_s(preset, "triton", batch, n, tile, warps, blocks, device)
                say(preset=preset, batch=batch, backend="triton", tile=tile, warps=warps, blocks=blocks,
                    value=round(value))
    if args.json:
        with open(args.json, "w") as f:
            name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (Triton's interpreter)"
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
