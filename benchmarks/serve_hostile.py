"""A hostile mix on a running `fastwavenet serve`: honest streaming clients beside clients that never read, upload
slowly, send headers slowly, cut their streams and send absurd values; on loopback only, for a bounded time with a
bounded count of clients, and the server is stopped at the end.

    python benchmarks/serve_hostile.py --seconds 90 --json hostile.json

One server (the bundled demo model unless --model, numba, the given --timeout for reads and writes). First a calm
phase: the honest clients alone for --calm-seconds, each asking for --request-seconds of audio back to back, client
i's k-th request with seed 1000 i + k. Then the hostile phase, for --seconds: the same honest clients asking for the
same seeds again, beside
- stalled readers: a request for --max-seconds of audio on a socket with a 4 KB receive buffer, never read, held
  until the server resets it (or for 6 times the timeout), then made again;
- slow uploaders: a /generate body promised at 1 KB, sent a byte a second, until the server answers;
- slow talkers: request headers a byte a second, until the server closes;
- cutters: a good request, read until some audio comes, then closed (every other one with a reset);
- absurd values: out-of-range, malformed and oversized requests, 20 a second each; each must get a 4xx (a
  flood of them is a contest for the CPU, which no limit on what a client holds settles).
Reported: the honest audio of each seed made in both phases, byte for byte the same (the engine's one request, one
answer); honest time to first audio (sending the request to the first sample) p50 and p99 in both phases; the
server's peak resident memory (VmHWM) after each phase; what the hostile clients got; and how long SIGTERM took.
Needs fastwavenet[serve] and Linux (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import io
import json
import signal
import socket
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from serve_load import start_server


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def requests_by_status(url: str) -> dict[str, int]:
    """The server's count of answered requests by endpoint and status, from /metrics."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    prefix = "fastwavenet_requests_total{"
    return {line[len(prefix):line.index("}")]: int(float(line.split()[-1]))
            for line in text.splitlines() if line.startswith(prefix)}


def request_bytes(path: str, body: bytes, content_type: str = "application/json", length: int | None = None) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


async def connect(port: int, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def answer_within(sock: socket.socket, seconds: float) -> bytes | None:
    """Bytes the server sent within `seconds` (b"" once it has closed, b"reset" if it reset), or None if it sent
    nothing."""
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1 << 16), seconds)
    except asyncio.TimeoutError:
        return None
    except ConnectionError:
        return b"reset"


class Honest:
    """Honest clients' results: audio digests by seed, times to first audio, failures."""

    def __init__(self):
        self.digests: dict[int, str] = {}
        self.first_audio: list[float] = []
        self.failures: collections.Counter = collections.Counter()


async def honest_client(session, url: str, i: int, stop: float, seconds: float, out: Honest):
    import aiohttp

    k = 0
    while time.perf_counter() < stop:
        seed, k = 1000 * i + k, k + 1
        sent = time.perf_counter()
        first = None
        data = bytearray()
        try:
            async with session.post(url + "/generate", json={"seconds": seconds, "seed": seed}) as r:
                if r.status != 200:
                    out.failures[f"status {r.status}"] += 1
                    await asyncio.sleep(0.5)
                    continue
                async for block in r.content.iter_any():
                    data += block
                    if first is None and len(data) > 44:
                        first = time.perf_counter() - sent
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            out.failures[type(exc).__name__] += 1
            continue
        out.first_audio.append(first)
        out.digests[seed] = hashlib.sha256(data).hexdigest()


async def stalled_reader(port: int, stop: float, hold: float, max_seconds: float, tally: collections.Counter):
    body = json.dumps({"seconds": max_seconds, "seed": 7}).encode()
    while time.perf_counter() < stop:
        sock = await connect(port, receive_buffer=4096)
        await asyncio.get_running_loop().sock_sendall(sock, request_bytes("/generate", body))
        started = time.perf_counter()
        while time.perf_counter() < min(stop, started + hold):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # the server reset the connection
                tally[f"stalled readers cut after {5 * round((time.perf_counter() - started) / 5)} s"] += 1
                break
            await asyncio.sleep(1.0)
        else:
            tally["stalled readers dropped by themselves"] += 1
        sock.close()


async def slow_uploader(port: int, stop: float, tally: collections.Counter):
    loop = asyncio.get_running_loop()
    while time.perf_counter() < stop:
        sock = await connect(port)
        await loop.sock_sendall(sock, request_bytes("/generate", b'{"seconds": 1, "seed": ', length=1 << 10))
        started = time.perf_counter()
        while (answer := await answer_within(sock, 1.0)) is None and time.perf_counter() < stop:
            await loop.sock_sendall(sock, b"\0")
        sock.close()
        if answer is not None:
            what = f"answered {answer.split(b' ')[1].decode()}" if answer.startswith(b"HTTP/") else "closed"
            tally[f"slow uploads {what} after {round(time.perf_counter() - started)} s"] += 1


async def slow_talker(port: int, stop: float, tally: collections.Counter):
    loop = asyncio.get_running_loop()
    header = b"POST /generate HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: " + b"a" * 4000
    while time.perf_counter() < stop:
        sock = await connect(port)
        started = time.perf_counter()
        sent = 0
        while (answer := await answer_within(sock, 1.0)) is None and time.perf_counter() < stop:
            try:
                await loop.sock_sendall(sock, header[sent % len(header):][:1])
            except ConnectionError:
                answer = b"reset"
                break
            sent += 1
        sock.close()
        if answer is not None:
            what = (f"answered {answer.split(b' ')[1].decode()}" if answer.startswith(b"HTTP/") else
                    "reset" if answer == b"reset" else "closed")
            tally[f"slow talkers {what} after {round(time.perf_counter() - started)} s"] += 1


async def cutter(port: int, stop: float, tally: collections.Counter):
    loop = asyncio.get_running_loop()
    n = 0
    while time.perf_counter() < stop:
        n += 1
        sock = await connect(port)
        await loop.sock_sendall(sock, request_bytes("/generate", json.dumps({"seconds": 10, "seed": n}).encode()))
        received = 0
        while received < 44 + 2000 and (block := await answer_within(sock, 30.0)) not in (None, b"", b"reset"):
            received += len(block)
        if n % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a FIN
        sock.close()
        tally["cut streams"] += 1


def absurd_requests() -> list[tuple[str, bytes, str, int | None]]:
    """(path, body, content type, Content-Length to claim or None)."""
    import soundfile

    silence = io.BytesIO()
    with soundfile.SoundFile(silence, "w", samplerate=16000, channels=1, format="FLAC") as f:
        block = np.zeros(1 << 20, np.float32)
        for _ in range(16000 * 7200 // len(block)):  # two hours: 114 KB of FLAC
            f.write(block)
    as_json = [{"seconds": 1e308}, {"seconds": -1}, {"seconds": float("nan")}, {"seconds": 1, "temperature": 1e308},
               {"seconds": 1, "top_k": -5}, {"seconds": 1, "top_p": 5}, {"seconds": 1, "speaker": 10**9},
               {"seconds": 1, "seed": -1}, {"seconds": [1] * 1000}, {"seconds": 1, "x" * 1000: 1}]
    return ([("/generate", json.dumps(v).encode(), "application/json", None) for v in as_json] +
            [("/generate", b"\xff\xfe" * 100, "application/json", None),
             ("/generate", b"[" * 100_000, "application/json", None),
             ("/generate", b"{}", "application/json", 10 << 30),
             ("/vocode", silence.getvalue(), "audio/flac", None),
             ("/vocode", b"\x93NUMPY\x01\x00" + b"\xff" * 100, "application/octet-stream", None),
             ("/nowhere", b"{}", "application/json", None)])


async def absurd_sender(port: int, stop: float, requests: list, tally: collections.Counter):
    loop = asyncio.get_running_loop()
    n = 0
    while time.perf_counter() < stop:
        path, body, kind, length = requests[n % len(requests)]
        n += 1
        sock = await connect(port)
        try:
            await loop.sock_sendall(sock, request_bytes(path, body, kind, length))
            answer = await answer_within(sock, 30.0)
        except ConnectionError:
            answer = b""
        sock.close()
        status = answer.split(b" ")[1].decode() if answer and answer.startswith(b"HTTP/") else "no answer"
        tally[f"absurd requests answered {status}"] += 1
        await asyncio.sleep(0.05)


async def phase(url: str, port: int, args, seconds: float, hostile: bool) -> tuple[Honest, collections.Counter]:
    import aiohttp

    honest, tally = Honest(), collections.Counter()
    absurd = absurd_requests() if hostile else []  # made before the clock starts: encoding it would stall this loop
    stop = time.perf_counter() + seconds
    tasks = []
    if hostile:
        hold = 6 * args.timeout
        tasks += [stalled_reader(port, stop, hold, args.max_seconds, tally) for _ in range(args.stalled)]
        tasks += [slow_uploader(port, stop, tally) for _ in range(args.slow)]
        tasks += [slow_talker(port, stop, tally) for _ in range(args.slow)]
        tasks += [cutter(port, stop, tally) for _ in range(args.cutters)]
        tasks += [absurd_sender(port, stop, absurd, tally) for _ in range(args.absurd)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks += [honest_client(session, url, i, stop, args.request_seconds, honest) for i in range(args.clients)]
        await asyncio.gather(*tasks)
    return honest, tally


def percentiles(values: list[float]) -> dict:
    a = np.array(values) if values else np.array([np.nan])
    return dict(p50=float(np.percentile(a, 50)), p99=float(np.percentile(a, 99)), requests=len(values))


def main(argv=None):
    from fastwavenet import bench

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file (default: the bundled piano demo)")
    parser.add_argument("--seconds", type=float, default=90.0, help="the hostile phase (default 90)")
    parser.add_argument("--calm-seconds", type=float, default=30.0, help="the calm phase before it (default 30)")
    parser.add_argument("--clients", type=int, default=4, help="honest streaming clients (default 4)")
    parser.add_argument("--request-seconds", type=float, default=1.0, help="audio per honest request (default 1)")
    parser.add_argument("--stalled", type=int, default=16, help="clients that never read (default 16)")
    parser.add_argument("--slow", type=int, default=8, help="slow uploaders, and as many slow talkers (default 8)")
    parser.add_argument("--cutters", type=int, default=4, help="clients that cut their streams (default 4)")
    parser.add_argument("--absurd", type=int, default=2, help="clients sending absurd values (default 2)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="the server's --read-timeout and --write-timeout (default 10)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="the server's --max-seconds (default 60)")
    parser.add_argument("--json", help="write the results as JSON")
    args = parser.parse_args(argv)
    info = bench.machine()
    with tempfile.TemporaryDirectory() as folder:
        process, url = start_server(args.model, Path(folder) / "server.log", "--read-timeout", args.timeout,
                                    "--write-timeout", args.timeout, "--max-seconds", args.max_seconds,
                                    "--drain-seconds", 1)
        port = int(url.rsplit(":", 1)[1])
        try:
            asyncio.run(phase(url, port, args, 3.0, hostile=False))  # untimed: the server measures its own rate
            calm, _ = asyncio.run(phase(url, port, args, args.calm_seconds, hostile=False))
            calm_peak = peak_rss(process.pid)
            hostile, tally = asyncio.run(phase(url, port, args, args.seconds, hostile=True))
            hostile_peak = peak_rss(process.pid)
            answered = requests_by_status(url)
        finally:
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            stop_took = time.monotonic() - signalled
        log = (Path(folder) / "server.log").read_text()
    both = sorted(set(calm.digests) & set(hostile.digests))
    differ = [seed for seed in both if calm.digests[seed] != hostile.digests[seed]]
    result = dict(machine=info, options=vars(args), calm=dict(first_audio=percentiles(calm.first_audio),
                                                                 failures=dict(calm.failures), peak_rss=calm_peak),
                  hostile=dict(first_audio=percentiles(hostile.first_audio), failures=dict(hostile.failures),
                               peak_rss=hostile_peak, hostile_clients=dict(sorted(tally.items()))),
                  server_requests_by_status=answered,
                  seeds_compared=len(both), seeds_differing=differ, stop_seconds=stop_took,
                  exit_code=process.returncode, traceback_in_log="Traceback" in log)
    c, h = result["calm"]["first_audio"], result["hostile"]["first_audio"]
    print(f"honest time to first audio: calm p50 {c['p50'] * 1000:.0f} ms, p99 {c['p99'] * 1000:.0f} ms "
          f"({c['requests']} requests); hostile p50 {h['p50'] * 1000:.0f} ms, p99 {h['p99'] * 1000:.0f} ms "
          f"({h['requests']} requests): p99 {h['p99'] / c['p99']:.2f}x calm")
    print(f"honest audio: {len(both)} seeds made in both phases, {len(differ)} differ; failures: calm "
          f"{dict(calm.failures) or 'none'}, hostile {dict(hostile.failures) or 'none'}")
    print(f"server peak RSS: {calm_peak / 2**20:.0f} MiB after the calm phase, {hostile_peak / 2**20:.0f} MiB after "
          f"the hostile one")
    print("hostile clients:")
    for what, count in sorted(tally.items()):
        print(f"  {count:>5} {what}")
    print("the server's count of streams and answers, both phases: " +
          ", ".join(f"{key.replace('endpoint=', '').replace('status=', '')}: {n}" for key, n in answered.items()))
    print(f"SIGTERM to exit: {stop_took:.2f} s (drain 1 s), exit code {process.returncode}, "
          f"{'a traceback' if result['traceback_in_log'] else 'no traceback'} in the server's log")
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['isa']}")
    if args.json:
        from fastwavenet.files import write_json

        write_json(args.json, result)


if __name__ == "__main__":
    main()
