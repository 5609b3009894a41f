"""`fastwavenet serve`: the Engine behind HTTP, on aiohttp (the optional extra `fastwavenet[serve]`).

Why aiohttp: one maintained package is both the asyncio server and the client the tests and the load benchmark use;
the engine already runs in its own thread, so the server only needs to hand requests over and stream chunks back,
which aiohttp's StreamResponse does without an ASGI layer and a separate server process model (uvicorn) between.

    POST /generate   JSON {"seconds": 2.0, "seed": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                     "argmax": false, "speaker": 0}                              -> audio/wav, streamed
    POST /vocode     body: mel frames as .npy (n_mels, frames) float, or an audio file (WAV, FLAC, OGG) to
                     resynthesize; options as query parameters (?seed=1&temperature=0.9)  -> audio/wav, streamed
    GET  /health     JSON: status, model, active and waiting requests
    GET  /metrics    Prometheus text format

Audio is 16-bit PCM WAV, mono, at the model's rate; the header carries the exact length, since every request's
length is known when it starts. Errors are JSON {"error": "..."} with a 4xx status (503 when the engine is full).
Options are read as fastwavenet.request reads them: strict types (no bool for a number, no string for a bool), finite
numbers, unknown keys refused, and the same bounds as every other way in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import math
import struct
from dataclasses import dataclass

import numpy as np

from . import audio as audio_io
from .engine import Engine, EngineClosed, EngineFull
from .errors import FastWaveNetError
from .features import bands_first, log_mel
from .request import GenerationRequest, Limits as RequestLimits, parse_json
from .sampling import Sampling


@dataclass(frozen=True)
class Limits(RequestLimits):
    """The request limits, with the server's defaults, and the largest body it reads."""

    max_seconds: float | None = 60.0
    max_body_bytes: int = 16 << 20


def wav_header(samples: int, sample_rate: int) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV file of `samples` samples."""
    data = 2 * samples
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16) + b"data" + struct.pack("<I", data))


def pcm16(chunk: np.ndarray) -> bytes:
    return np.clip(np.round(chunk * 32767.0), -32768, 32767).astype("<i2").tobytes()


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _submit_kwargs(wanted: GenerationRequest, default: Sampling) -> dict:
    """The keywords of Engine.submit for a request (its sampling fields over the model's default rule)."""
    return dict(seconds=wanted.seconds, samples=wanted.samples, seed=wanted.seed, sampling=wanted.sampling(default),
                speaker=wanted.speaker, prime=wanted.prime, mel=wanted.mel, stream_mel=wanted.stream_mel)


def _npy(raw: bytes) -> np.ndarray:
    """The array in the bytes of a .npy file. Its header is read first: an array of numbers whose size is what the
    body holds, so that a header claiming a huge shape is refused before anything is allocated."""
    fmt = np.lib.format
    f = io.BytesIO(raw)
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"version {version[0]}.{version[1]} is not read here")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read_header(f)
    except (ValueError, EOFError) as exc:
        raise _BadRequest(400, f"malformed .npy: {exc}") from None
    if not np.issubdtype(dtype, np.floating) and not np.issubdtype(dtype, np.integer):
        raise _BadRequest(400, f"mel frames must be numbers, got dtype {dtype}")
    claimed, held = math.prod(shape) * dtype.itemsize, len(raw) - f.tell()
    if claimed != held:
        raise _BadRequest(400, f"the .npy header claims shape {shape} of {dtype} ({claimed} bytes); the body holds "
                               f"{held}")
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise _BadRequest(400, f"malformed .npy: {exc}") from None


def make_app(engine: Engine, limits: Limits = Limits()):
    from aiohttp import web
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    config = engine.config
    registry = CollectorRegistry()
    Gauge("fastwavenet_active_requests", "Requests being generated", registry=registry).set_function(
        lambda: engine.stats()["active"])
    Gauge("fastwavenet_waiting_requests", "Requests waiting for a slot", registry=registry).set_function(
        lambda: engine.stats()["waiting"])
    Gauge("fastwavenet_samples_per_second", "Samples made per second over all requests, smoothed",
          registry=registry).set_function(lambda: engine.stats()["samples_per_second"])
    samples = Counter("fastwavenet_samples", "Samples sent", registry=registry)
    requests = Counter("fastwavenet_requests", "Requests answered, by endpoint and HTTP status",
                       ["endpoint", "status"], registry=registry)
    first_audio = Histogram("fastwavenet_time_to_first_audio_seconds", "From a request's arrival to its first audio",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10), registry=registry)

    def error(endpoint: str, status: int, message: str):
        requests.labels(endpoint, str(status)).inc()
        headers = {"Retry-After": "1"} if status == 503 else None
        return web.json_response({"error": message}, status=status, headers=headers)

    async def body(request) -> bytes:
        if request.content_length is not None and request.content_length > limits.max_body_bytes:
            raise _BadRequest(413, f"body of {request.content_length} bytes; the limit is {limits.max_body_bytes}")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _BadRequest(413, f"body over the limit of {limits.max_body_bytes} bytes") from None

    async def stream(request, endpoint: str, submit):
        arrived = asyncio.get_running_loop().time()
        try:
            job = submit()
        except (EngineFull, EngineClosed) as exc:
            return error(endpoint, 503, str(exc))
        except FastWaveNetError as exc:
            return error(endpoint, 400, str(exc))
        response = web.StreamResponse(headers={"Content-Type": "audio/wav", "X-Request-Id": str(job.id)})
        response.content_length = 44 + 2 * job.total
        complete = False
        try:
            await response.prepare(request)
            await response.write(wav_header(job.total, config.sample_rate))
            first = True
            async for chunk in job:
                if first:
                    first_audio.observe(asyncio.get_running_loop().time() - arrived)
                    first = False
                await response.write(pcm16(chunk))
                samples.inc(len(chunk))
            await response.write_eof()
            complete = True
            requests.labels(endpoint, "200").inc()
        except ConnectionError:  # the client went away: nothing to answer, nothing to log
            requests.labels(endpoint, "disconnected").inc()
        except asyncio.CancelledError:  # a shutdown past its drain time
            requests.labels(endpoint, "cut").inc()
            raise
        except FastWaveNetError:  # cancelled by a shutdown, or failed: the stream ends short
            requests.labels(endpoint, "cut").inc()
        finally:
            if not complete:
                job.cancel()  # frees the slot before the engine's next round
        return response

    async def generate(request):
        try:
            raw = await body(request)
            if config.n_mels:
                raise _BadRequest(400, "this model is a vocoder: POST mel frames or audio to /vocode")
            wanted = GenerationRequest.from_json(parse_json(raw or b"{}"))
            wanted.check(config, limits)
        except _BadRequest as exc:
            return error("generate", exc.status, str(exc))
        except FastWaveNetError as exc:
            return error("generate", 400, str(exc))
        return await stream(request, "generate",
                            lambda: engine.submit(**_submit_kwargs(wanted, engine.generator.sampling)))

    async def vocode(request):
        try:
            if not config.n_mels:
                raise _BadRequest(400, "this model is not a vocoder: use /generate")
            options = GenerationRequest.from_query(request.query)
            if options.seconds is not None:
                raise _BadRequest(400, "/vocode makes what the mel covers; seconds is not an option")
            raw = await body(request)
            if not raw:
                raise _BadRequest(400, "empty body: send mel frames as .npy, or an audio file")
            if raw[:6] == b"\x93NUMPY":
                mel, length = bands_first(_npy(raw), config), None
            else:
                loop = asyncio.get_running_loop()
                samples_in = await loop.run_in_executor(None, audio_io.read_bytes, raw, config.sample_rate, "upload")
                mel = await loop.run_in_executor(None, log_mel, samples_in, config)
                length = len(samples_in)
            wanted = dataclasses.replace(options, samples=length, mel=mel)
            wanted.check(config, limits)
        except _BadRequest as exc:
            return error("vocode", exc.status, str(exc))
        except FastWaveNetError as exc:
            return error("vocode", 400, str(exc))
        return await stream(request, "vocode",
                            lambda: engine.submit(**_submit_kwargs(wanted, engine.generator.sampling)))

    async def health(request):
        stats = engine.stats()
        return web.json_response({"status": "ok", "model": {"sample_rate": config.sample_rate,
                                                            "vocoder": bool(config.n_mels),
                                                            "speakers": config.speakers},
                                  "active": stats["active"], "waiting": stats["waiting"]})

    async def metrics(request):
        return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})

    app = web.Application(client_max_size=limits.max_body_bytes)
    app.add_routes([web.post("/generate", generate), web.post("/vocode", vocode), web.get("/health", health),
                    web.get("/metrics", metrics)])
    return app


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          drain_seconds: float = 10.0, quiet: bool = False):
    """Run the server until SIGINT or SIGTERM: then stop taking requests, let those in flight finish for up to
    `drain_seconds`, cancel the rest (their streams end short), and stop the engine. Port 0 takes a free port; the
    address is printed once the server listens."""
    asyncio.run(_serve(engine, host, port, limits, drain_seconds, quiet))


async def _serve(engine, host, port, limits, drain_seconds, quiet):
    import signal

    from aiohttp import web

    app = make_app(engine, limits)

    async def stop_engine(app):
        await asyncio.get_running_loop().run_in_executor(None, lambda: engine.close(cancel=True))

    app.on_cleanup.append(stop_engine)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=drain_seconds)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise FastWaveNetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = runner.addresses[0]
        if not quiet:
            print(f"fastwavenet: serving on http://{bound[0]}:{bound[1]} (Ctrl-C or SIGTERM to stop)", flush=True)
        await stop.wait()
        if not quiet:
            print(f"fastwavenet: stopping; requests in flight get up to {drain_seconds:g} s", flush=True)
    finally:
        await runner.cleanup()
