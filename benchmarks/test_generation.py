"""pytest-benchmark suites: every backend beside `naive`, same model, same run.

    pytest benchmarks/ --benchmark-save=NAME          # results as JSON under .benchmarks/, comparable across runs
    pytest benchmarks/ --benchmark-compare            # against the last saved run
    FASTWAVENET_BENCH_BATCHES=1,8,64,256,1024 FASTWAVENET_BENCH_PRESETS=small,standard,large pytest benchmarks/

One benchmark round generates STEPS samples (32) for each of `batch` streams, the same for every backend, so times
within a group compare directly; samples/s (all streams) is in each result's extra_info. Compilation and warm-up
happen in setup, outside the timing.
"""

import os

import numpy as np
import pytest
import torch

from fastwavenet import Generator, Sampling, preset
from fastwavenet.backends import available_backends
from fastwavenet.bench import NAIVE_MAX_BATCH, random_model_file, steady_state

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRESETS = os.environ.get("FASTWAVENET_BENCH_PRESETS", "small,standard,large").split(",")
BATCHES = [int(b) for b in os.environ.get("FASTWAVENET_BENCH_BATCHES", "1,8,64").split(",")]
BACKENDS = [b for b in available_backends(DEVICE) if not (b.startswith("triton") and DEVICE == "cpu")]
MODELS = {}


# Every backend makes the same number of steps, so the times of one group compare directly. Few, because naive
# takes a tenth of a second or more per step; `fastwavenet bench` times longer runs of the fast backends.
STEPS = int(os.environ.get("FASTWAVENET_BENCH_STEPS", "32"))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset_name", PRESETS)
def test_generate(benchmark, preset_name, backend, batch):
    if backend == "naive" and batch > NAIVE_MAX_BATCH:
        pytest.skip(f"naive past batch {NAIVE_MAX_BATCH} takes minutes per step")
    model = MODELS.setdefault(preset_name, random_model_file(preset(preset_name)))
    gen = Generator(model, backend=backend, device=DEVICE)
    steps = STEPS
    state = steady_state(gen, batch)
    gen.generate_codes(state, 2)  # compile / load the cache / capture graphs outside the timing
    rng = np.random.default_rng(0)

    def run():
        gen.generate_codes(state, steps, Sampling(), rng)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{preset_name} batch {batch}"
    benchmark.extra_info.update(backend=gen.backend.name, batch=batch, steps=steps, preset=preset_name)
    benchmark.pedantic(run, rounds=1 if backend == "naive" else 5, iterations=1, warmup_rounds=0)
    benchmark.extra_info["samples_per_s"] = steps * batch / benchmark.stats.stats.min
