"""The spread kernel's batch-1 figures against its programs per stream, and the cost of one hand-over (issue 35).

    python benchmarks/gpu_spread_sweep.py [--json PATH]

On a CUDA device: for P programs handing each other tagged values `rounds` times, microseconds a hand-over; then for
`standard` and `r9y9-ljspeech` with random weights, samples/s of `triton-spread` at batch 1 for several P
(FASTWAVENET_SPREAD_PROGRAMS), in each layer mode (FASTWAVENET_SPREAD_LAYERS: split, merged, fused) and at 4 or 8
warps a program (FASTWAVENET_SPREAD_WARPS), best of three timed runs after a warm-up, beside `triton-stream`. One
line per figure on stdout and, with --json, all of them in one file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import triton
import triton.language as tl

from fastwavenet.kernels.gpu_spread import _give, _take


@triton.jit(do_not_specialize=["rounds"])
def handover_kernel(talk_ptr, fail_ptr, rounds, P: tl.constexpr, P_P: tl.constexpr):
    """`rounds` hand-overs of the kind the spread kernel's phases make (kernels/gpu_spread.py), and nothing else: in
    each, every one of the P programs gives one tagged value and takes all P. talk (3 x P_P) int64 zeros: two
    buffers used in turn, so no value is overwritten before all have read it, then each program's sum."""
    p = tl.program_id(0)
    idx = tl.arange(0, P_P)
    total = tl.zeros((P_P,), tl.float32)
    for r in range(1, rounds + 1):
        _give(talk_ptr + (r % 2) * P_P, p, p < P, (p + r).to(tl.float32), r)
        total += _take(talk_ptr + (r % 2) * P_P, idx, idx < P, r, fail_ptr)
    tl.store(talk_ptr + 2 * P_P + p, tl.sum(total, axis=0).to(tl.int64))


def handover_us(programs: int, rounds: int = 20000) -> float:
    p_p = triton.next_power_of_2(programs)
    talk = torch.zeros(3 * p_p, dtype=torch.int64, device="cuda")
    fail = torch.zeros(1, dtype=torch.int32, device="cuda")
    handover_kernel[(programs,)](talk, fail, 10, P=programs, P_P=p_p)  # compile, warm
    best = float("inf")
    for _ in range(3):
        talk.zero_()
        torch.cuda.synchronize()
        start = time.perf_counter()
        handover_kernel[(programs,)](talk, fail, rounds, P=programs, P_P=p_p)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    if int(fail.item()):
        raise RuntimeError("hand-over timed out")
    return best / rounds * 1e6


def samples_per_s(preset: str, backend: str, programs: int | None, n: int, batch: int = 1, device: str = "cuda",
                  precision: str = "float32", **env) -> float:
    from fastwavenet import Generator, Sampling, preset as get_preset
    from fastwavenet.bench import random_model_file
    from fastwavenet.distributions import uniform_shape

    for name in ("FASTWAVENET_SPREAD_PROGRAMS", "FASTWAVENET_SPREAD_LAYERS", "FASTWAVENET_SPREAD_WARPS"):
        os.environ.pop(name, None)
    if programs:
        os.environ["FASTWAVENET_SPREAD_PROGRAMS"] = str(programs)
    os.environ.update({f"FASTWAVENET_SPREAD_{k.upper()}": str(v) for k, v in env.items()})
    config = get_preset(preset)
    gen = Generator(random_model_file(config, 0), backend=backend, device=device, precision=precision)
    u = np.random.default_rng(0).random((n, batch) + uniform_shape(config), dtype=np.float32)
    state = gen.new_state(batch)
    gen.backend.generate(state, min(n, 64), u[:min(n, 64)], Sampling())  # compile, warm
    best = float("inf")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        sync()
        start = time.perf_counter()
        gen.backend.generate(state, n, u, Sampling())
        sync()
        best = min(best, time.perf_counter() - start)
    return n * batch / best, getattr(gen.backend, "programs", None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    rows = []

    def say(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for programs in (1, 2, 8, 32, 64, 128, sms):
        say({"what": "handover", "programs": programs, "us": round(handover_us(programs), 3)})
    # (preset, samples timed, programs per stream, extra settings: layer mode, warps per program, precision)
    sweeps = [("standard", 4000, (8, 16, 32), {"layers": "merged"}),
              ("standard", 4000, (8, 16, 32), {"layers": "fused"}), ("standard", 4000, (64,), {"layers": "split"}),
              ("r9y9-ljspeech", 1000, (64, 128), {"layers": "fused"}),
              ("r9y9-ljspeech", 1000, (128,), {"layers": "split"}),
              ("r9y9-ljspeech", 1000, (128,), {"layers": "fused", "warps": 8}),
              # bf16: 47 MB of matrices (within L2) and fused layers' 25 MB of float32 fused matrices beside them
              ("r9y9-ljspeech", 1000, (128,), {"layers": "fused", "precision": "bf16"}),
              ("r9y9-ljspeech", 1000, (128,), {"layers": "split", "precision": "bf16"})]
    for preset in ("standard", "r9y9-ljspeech"):
        say({"what": "samples_per_s", "preset": preset, "backend": "triton-stream",
             "value": round(samples_per_s(preset, "triton-stream", None, 1000)[0])})
    for preset, n, counts, env in sweeps:
        for programs in counts:
            value, ran = samples_per_s(preset, "triton-spread", programs, n, **env)
            # the programs that ran: the count asked for, or fewer (every program owns gate and head channels, all
            # of them fit the SMs)
            say({"what": "samples_per_s", "preset": preset, "backend": "triton-spread", "programs": ran,
                 "asked": programs, **env, "value": round(value)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
