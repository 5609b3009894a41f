"""Load on a running `fastwavenet serve`: N concurrent clients, each asking for audio back to back, against the
offline batched rate at the same N, measured in the same run on the same machine.

    python benchmarks/serve_load.py --preset standard --clients 1,16,64 --duration 20 --json serve.json

For each N: the offline rate (Generator, numba, batch N, `fastwavenet bench`'s measure), then a fresh server
(`fastwavenet serve --port 0`, a subprocess, so clients and server do not share an interpreter) loaded by N
clients on one asyncio loop for `duration` seconds. Aggregate samples/s counts the audio bytes received in that
window; time to first audio is from sending a request to receiving its first sample (after the WAV header), over
every request that started in the window. Needs fastwavenet[serve].
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def start_server(model: Path | None, log: Path, *options) -> tuple[subprocess.Popen, str]:
    """`fastwavenet serve` (numba, any free port; model None: the bundled demo) with `options`, its output to a file
    (a pipe nobody reads would fill and stop it): the process and its URL."""
    command = [sys.executable, "-m", "fastwavenet", "serve", "--port", "0", "--backend", "numba", *map(str, options)]
    with open(log, "w") as out:
        process = subprocess.Popen(command + ([] if model is None else ["--model", str(model)]), stdout=out,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        for line in log.read_text().splitlines():
            if "serving on http://" in line:
                return process, line.split("serving on ")[1].split()[0]
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start: " + log.read_text())


async def load(url: str, clients: int, seconds_per_request: float, duration: float, sample_rate: int) -> dict:
    import aiohttp

    first_audio: list[float] = []
    received = 0
    start = time.perf_counter()
    stop = start + duration

    async def client(session, i):
        nonlocal received
        seed = i * 1_000_000
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            seed += 1
            async with session.post(url + "/generate", json={"seconds": seconds_per_request, "seed": seed}) as r:
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {await r.text()}")
                header = 44
                first = True
                async for block in r.content.iter_any():
                    now = time.perf_counter()
                    if header:
                        used = min(header, len(block))
                        header -= used
                        block = block[used:]
                    if block and first:
                        first_audio.append(now - sent)
                        first = False
                    if now < stop:
                        received += len(block) // 2
                    else:
                        return  # the window is over: leave the rest (the disconnect cancels it)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await asyncio.gather(*(client(session, i) for i in range(clients)))
    elapsed = min(time.perf_counter(), stop) - start
    ttfa = np.array(first_audio)
    return dict(samples_per_s=received / elapsed, requests=len(ttfa),
                first_audio_p50=float(np.percentile(ttfa, 50)), first_audio_p99=float(np.percentile(ttfa, 99)))


def main(argv=None):
    from fastwavenet import bench
    from fastwavenet.config import preset
    from fastwavenet.modelfile import save_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per client count")
    parser.add_argument("--request-seconds", type=float, default=1.0, help="audio per request (default 1 s)")
    parser.add_argument("--round-ms", type=float, default=50.0)
    parser.add_argument("--json", help="write the results as JSON")
    args = parser.parse_args(argv)
    config = preset(args.preset)
    model = bench.random_model_file(config)
    info = bench.machine()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_model(path, config, model.weights)
        for clients in [int(c) for c in args.clients.split(",")]:
            offline = bench.measure(model, "numba", clients, min_seconds=3.0).samples_per_s
            process, url = start_server(path, Path(folder) / f"server-{clients}.log", "--max-active", clients,
                                        "--max-waiting", clients, "--round-ms", args.round_ms, "--max-seconds", 3600,
                                        "--drain-seconds", 0)
            try:
                # A short first round of requests, untimed: the server's first rounds measure its own rate.
                asyncio.run(load(url, clients, 0.05, 2.0, config.sample_rate))
                result = asyncio.run(load(url, clients, args.request_seconds, args.duration, config.sample_rate))
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
            row = dict(clients=clients, offline_samples_per_s=offline, **result,
                       of_offline=result["samples_per_s"] / offline)
            rows.append(row)
            print(f"{clients:>4} clients: {result['samples_per_s']:>9,.0f} samples/s served, offline batch "
                  f"{clients}: {offline:>9,.0f} ({row['of_offline']:.0%}); time to first audio p50 "
                  f"{result['first_audio_p50'] * 1000:.0f} ms, p99 {result['first_audio_p99'] * 1000:.0f} ms "
                  f"({result['requests']} requests)", flush=True)
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['isa']}; model: {args.preset}; "
          f"{args.request_seconds:g} s per request; round {args.round_ms:g} ms")
    if args.json:
        from fastwavenet.files import write_json

        write_json(args.json, dict(machine=info, preset=args.preset, request_seconds=args.request_seconds,
                                   round_ms=args.round_ms, duration=args.duration, rows=rows))


if __name__ == "__main__":
    main()
