"""`fastwavenet serve`: the Engine behind HTTP, on aiohttp (the optional extra `fastwavenet[serve]`).

Why aiohttp: one maintained package is both the asyncio server and the client the tests and the load benchmark use;
the engine already runs in its own thread, so the server only needs to hand requests over and stream chunks back,
which aiohttp's StreamResponse does without an ASGI layer and a separate server process model (uvicorn) between.

    POST /generate   JSON {"seconds": 2.0, "seed": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                     "argmax": false, "speaker": 0, "format": "wav"}                      -> the audio
    POST /vocode     body: mel frames as .npy (n_mels, frames) float, or an audio file (WAV, FLAC, OGG) to
                     resynthesize; options as query parameters (?seed=1&temperature=0.9&format=flac)  -> the audio
    GET  /health     JSON: status, model, active and waiting requests
    GET  /metrics    Prometheus text format

The audio is mono, 16-bit, at the model's rate, in the format the request names (`format`, wav by default):
- wav: streamed as it is made, Content-Type audio/wav; the header carries the exact length, since every request's
  length is known when it starts;
- pcm: the same samples without a header, 16-bit signed little-endian, streamed as they are made (what a player or
  a telephony pipeline reads chunk by chunk): Content-Type application/octet-stream (not audio/L16, which RFC 2586
  defines as big-endian), the rate in the X-Sample-Rate header, Content-Length twice the samples;
- flac: one FLAC file (lossless: the same samples), sent when the audio is complete (nothing comes before: a
  client's read timeout must allow for the generation), Content-Type audio/flac. The audio waits in memory as 16-bit
  samples (at most `--max-seconds` x rate of them per request), is encoded on one of DECODERS threads, and is sent in
  pieces of WRITE_BYTES, each within the write timeout; a request that fails before its file is sent gets a JSON 500.
The format is chosen by the body's or the query's `format` only (the Accept header is not read).
Errors are JSON {"error": "..."} with a 4xx status (503 when the engine is full), aiohttp's own refusals too (404 for
an unknown path, 405 for a method a path does not take); only a request aiohttp's parser cannot read as HTTP (it
never reaches the application) gets aiohttp's plain-text 400, logged as one line.
Options are read as fastwavenet.request reads them: strict types (no bool for a number, no string for a bool), finite
numbers, unknown keys refused, and the same bounds as every other way in.

What a client can hold, and for how long (`Limits`; the `fastwavenet serve --...` flags are `ServerOptions`):
- a slot in the engine (`--max-active`) or in its queue (`--max-waiting`; beyond, 503 at once), for one request of
  at most `--max-seconds` of audio; released when the request ends, fails, or its client leaves (a waiting request
  leaves the queue at once; a running one before the next round);
- audio made but not yet sent: the engine pauses a request after 10 s of it, the socket holds 64 KiB (SEND_BUFFER_BYTES)
  and aiohttp's buffer 64 KiB more; the server's writes to a client must go through within `--write-timeout` (30 s):
  a client that stops reading loses its stream, and its connection is reset;
- a connection: its request's headers must arrive within `--read-timeout` (30 s) of connecting or of its last
  answer, and its body within `--read-timeout` more (else 408); idle connections close at the same time; a refused
  body is read and dropped for at most 10 s more (aiohttp's lingering close), then the connection closes;
- a body of at most `--max-body-mb` (16) in memory; an uploaded audio file is checked against `--max-seconds` from its
  header before it is decoded, at most 384 kHz, decoded on DECODERS threads at once (each holds at most
  max-seconds x 384 kHz float32 samples, 92 MB at the defaults, and its resampling); a FLAC answer holds its
  audio as above, and its file, until it is sent;
- the count of connections is bounded by the process's open-file limit only: each idle or slow one closes within
  the read timeout, but put a proxy with a connection limit in front of a server open to the internet.
A client that leaves cancels its request, whatever the format (a FLAC one while its audio is made, too). A
stream that ends short of its promised length (a failure, a cancel, a shutdown) closes its connection, so the
client sees the cut instead of waiting for bytes that never come. SIGTERM or Ctrl-C: the listening socket and idle
connections close, requests in flight get `--drain-seconds` to finish, the rest are cut, and the process ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import concurrent.futures
import importlib.util
import io
import logging
import math
import re
import socket
import struct
from dataclasses import dataclass

import numpy as np
import soundfile

from . import audio as audio_io
from .backends import backend_choices
from .engine import Engine, EngineClosed, EngineFull
from .errors import FastWaveNetError
from .features import bands_first, log_mel
from .request import (GenerationRequest, Limits as RequestLimits, arg_nonnegative_number, arg_nonnegative_integer,
                      arg_positive_integer, arg_positive_number, arg_type, parse_json)


# The kernel's send buffer of a stream's socket. Autotuned, loopback's grows to 4 MB: a client that never reads
# would absorb minutes of audio (all generated for nobody) before a write blocks and the write timeout can start.
# 64 KiB (the kernel doubles it) is seconds of audio at any rate: ample for a client that reads in real time.
SEND_BUFFER_BYTES = 64 << 10

# A FLAC file is sent in pieces of this size, each of which the client must take within the write timeout.
WRITE_BYTES = 64 << 10

# The media type of each answer format (request.FORMATS). Raw PCM is not audio/L16: RFC 2586's L16 is big-endian.
CONTENT_TYPES = {"wav": "audio/wav", "pcm": "application/octet-stream", "flac": "audio/flac"}

# Uploaded audio files decoded, and FLAC answers encoded, at once: with the length and rate limits, this bounds the
# memory decoding and encoding take.
DECODERS = 4



@dataclass(frozen=True)
class Limits(RequestLimits):
    """The request limits, with the server's defaults, and what one request may hold. max_seconds: audio per
    request; max_body_bytes: a request's body; read_timeout: seconds for a request's headers to arrive (from
    connecting, or from the last answer on the connection), and again for its body; write_timeout: seconds one write
    of audio may wait for the client to read."""

    max_seconds: float | None = 60.0
    max_body_bytes: int = 16 << 20
    read_timeout: float = 30.0
    write_timeout: float = 30.0


def _flag(default, kind, text: str):
    """A ServerOptions field: its default, and its flag's argparse type and help."""
    return dataclasses.field(default=default, metadata=dict(type=kind, help=text))


@dataclass(frozen=True)
class ServerOptions:
    """What `fastwavenet serve` takes (`serve_model`): each field is the flag of its name (`--max-active`), with the
    argparse type and help of its metadata, in the order --help lists them. The engine takes model, backend, device,
    max_active, max_waiting and round_ms (milliseconds); max_seconds, max_body_mb (MiB), read_timeout and
    write_timeout are the Limits (`limits`); host, port and drain_seconds are `serve`'s."""

    model: str | None = _flag(None, None, "model file (default: the bundled piano demo)")
    host: str = _flag("127.0.0.1", None, "address to bind (default 127.0.0.1, this machine only)")
    port: int = _flag(8000, arg_type(int, lambda v: 0 <= v <= 65535, "a port in 0..65535"),
                      "port (default 8000; 0: any free port)")
    backend: str = _flag("auto", None, backend_choices())
    device: str = _flag("cpu", None, "cpu or cuda")
    max_active: int = _flag(64, arg_positive_integer, "requests generated at once (default 64)")
    max_waiting: int = _flag(256, arg_nonnegative_integer,
                             "requests queued beyond those; more are refused with 503 (default 256)")
    max_seconds: float = _flag(Limits.max_seconds, arg_positive_number, "longest audio per request (default 60)")
    max_body_mb: float = _flag(Limits.max_body_bytes / (1 << 20), arg_positive_number,
                               "largest request body (default 16)")
    read_timeout: float = _flag(Limits.read_timeout, arg_positive_number,
                                "seconds a client has to send a request's headers, and again its body (default 30)")
    write_timeout: float = _flag(Limits.write_timeout, arg_positive_number,
                                 "seconds a write of audio may wait for the client to read; then its stream is cut "
                                 "(default 30)")
    round_ms: float = _flag(50.0, arg_positive_number,
                            "about how long one round of steps takes; time to first audio is one to two rounds "
                            "(default 50)")
    drain_seconds: float = _flag(10.0, arg_nonnegative_number,
                                 "on SIGTERM or Ctrl-C, how long requests in flight may finish before they are cut "
                                 "(default 10)")

    def limits(self) -> Limits:
        return Limits(self.max_seconds, int(self.max_body_mb * (1 << 20)), self.read_timeout, self.write_timeout)


def wav_header(samples: int, sample_rate: int) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV file of `samples` samples."""
    data = 2 * samples
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16) + b"data" + struct.pack("<I", data))


def pcm16(chunk: np.ndarray) -> bytes:
    """Float samples in [-1, 1] -> 16-bit little-endian PCM."""
    return np.clip(np.round(chunk * 32767.0), -32768, 32767).astype("<i2").tobytes()


def flac_file(pcm: bytes, sample_rate: int) -> bytes:
    """A mono FLAC file of 16-bit little-endian PCM samples."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.frombuffer(pcm, "<i2"), sample_rate, subtype="PCM_16", format="FLAC")
    return buffer.getvalue()


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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
    except (ValueError, EOFError) as exc:  # (numpy names a header's bad expression by its object's address)
        raise _BadRequest(400, "malformed .npy: " + re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "an expression",
                                                           str(exc))) from None
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


def make_app(engine: Engine, limits: Limits = Limits(), drain_seconds: float = 10.0, connections=None):
    """The aiohttp application. On shutdown (aiohttp closes the listening socket first) requests in flight get
    `drain_seconds` to finish; the rest are cut. The caller closes the engine. connections: a function listing the
    server's connections (aiohttp's RequestHandlers; `serve` passes its runner's), so that the drain closes at once
    those with no request in flight: aiohttp 3.14 asks them to close, but one still waiting for its first request
    keeps its socket open until the drain ends, and a request sent on it meanwhile is never answered."""
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

    def error(endpoint: str, status: int, message: str, headers: dict | None = None):
        requests.labels(endpoint, str(status)).inc()
        if status == 503:
            headers = {"Retry-After": "1"}
        return web.json_response({"error": message}, status=status, headers=headers)

    decoders = concurrent.futures.ThreadPoolExecutor(DECODERS, thread_name_prefix="fastwavenet-decode")
    handlers: dict[asyncio.Task, object] = {}  # requests being answered, for the drain: their connections
    closing: set = set()  # transports of cut streams still sending what they hold
    stopping = False

    async def body(request) -> bytes:
        if request.content_length is not None and request.content_length > limits.max_body_bytes:
            raise _BadRequest(413, f"body of {request.content_length} bytes; the limit is {limits.max_body_bytes}")
        try:
            async with asyncio.timeout(limits.read_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _BadRequest(413, f"body over the limit of {limits.max_body_bytes} bytes") from None
        except TimeoutError:
            raise _BadRequest(408, f"the body was not received within {limits.read_timeout:g} s") from None
        except web.RequestPayloadError as exc:  # a Content-Encoding that does not decode, a broken chunked body
            raise _BadRequest(400, f"the body cannot be read: {_parser_message(exc)}") from None

    async def sent(write):
        """A write the client must take within the write timeout (TimeoutError otherwise)."""
        async with asyncio.timeout(limits.write_timeout):
            await write

    def end_connection(request, at_once: bool):
        """Close the connection of a stream that ended short of its Content-Length, so the client sees the cut instead
        of waiting for bytes that never come. at_once: drop what is unsent (the client left, or does not read);
        else send it first, and drop it if the client has not taken it within the write timeout."""
        transport = request.transport
        if transport is None:
            return
        if at_once:
            # A reset: a plain close would leave the kernel retrying to send its buffers to a client that never reads.
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
            closing.add(transport)

            def drop():
                closing.discard(transport)
                transport.abort()

            asyncio.get_running_loop().call_later(limits.write_timeout, drop)

    async def stream(request, endpoint: str, wanted: GenerationRequest):
        """Answer with the audio `wanted` asks for: WAV or PCM streamed as it is made, or a FLAC file once the audio
        is complete (held until then as 16-bit samples, then encoded on a decoder thread)."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        try:
            job = engine.submit(wanted)
        except (EngineFull, EngineClosed) as exc:
            return error(endpoint, 503, str(exc))
        except FastWaveNetError as exc:
            return error(endpoint, 400, str(exc))
        rate, streamed = config.sample_rate, wanted.format != "flac"
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES[wanted.format],
                                               "X-Request-Id": str(job.id)})
        if wanted.format == "pcm":
            response.headers["X-Sample-Rate"] = str(rate)
        outcome, failure, held = "cut", None, bytearray()
        try:
            if request.transport is not None:
                request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                                      SEND_BUFFER_BYTES)
            if streamed:
                response.content_length = (44 if wanted.format == "wav" else 0) + 2 * job.total
                await sent(response.prepare(request))
                if wanted.format == "wav":
                    await sent(response.write(wav_header(job.total, rate)))
            first = True
            async for chunk in job:
                if first:
                    first_audio.observe(loop.time() - arrived)
                    first = False
                if streamed:
                    await sent(response.write(pcm16(chunk)))
                    samples.inc(len(chunk))
                else:
                    held += pcm16(chunk)
            if not streamed:
                file = memoryview(await loop.run_in_executor(decoders, flac_file, held, rate))
                held = None
                response.content_length = len(file)
                await sent(response.prepare(request))
                for start in range(0, len(file), WRITE_BYTES):  # each piece within the write timeout, as a stream's
                    await sent(response.write(file[start:start + WRITE_BYTES]))
                samples.inc(job.total)
            await sent(response.write_eof())
            outcome = "200"
        except ConnectionError:  # the client went away: nothing to answer, nothing to log
            outcome = "disconnected"
        except TimeoutError:  # the client stopped reading
            outcome = "stalled"
        except asyncio.CancelledError:  # the client went away (aiohttp cancels its handler), or a drain ran out
            outcome = "cut" if stopping else "disconnected"
            raise
        except FastWaveNetError as exc:  # cancelled by the engine, or failed
            if response.prepared:
                outcome = "cut"  # the stream ends short
            else:
                outcome, failure = "500", str(exc)  # a file not begun: the client can be told
        finally:
            requests.labels(endpoint, outcome).inc()
            if outcome != "200":
                job.cancel()  # frees the slot before the engine's next round
            if outcome in ("cut", "disconnected", "stalled"):
                end_connection(request, at_once=outcome != "cut")
        if failure is not None:
            return web.json_response({"error": failure}, status=500)
        return response

    async def generate(request):
        try:
            if request.query:
                raise _BadRequest(400, f"/generate takes its options as a JSON body, not in the query (got "
                                       f"{', '.join(sorted(request.query))[:80]})")
            raw = await body(request)
            if config.n_mels:
                raise _BadRequest(400, "this model is a vocoder: POST mel frames or audio to /vocode")
            wanted = GenerationRequest.from_json(parse_json(raw or b"{}"))
            wanted.check(config, limits)
        except _BadRequest as exc:
            return error("generate", exc.status, str(exc))
        except FastWaveNetError as exc:
            return error("generate", 400, str(exc))
        return await stream(request, "generate", wanted)

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
                samples_in = await loop.run_in_executor(decoders, audio_io.read_bytes, raw, config.sample_rate,
                                                        "upload", limits.max_seconds)
                mel = await loop.run_in_executor(decoders, log_mel, samples_in, config)
                length = len(samples_in)
            wanted = dataclasses.replace(options, samples=length, mel=mel)
            wanted.check(config, limits)
        except _BadRequest as exc:
            return error("vocode", exc.status, str(exc))
        except FastWaveNetError as exc:
            return error("vocode", 400, str(exc))
        return await stream(request, "vocode", wanted)

    async def health(request):
        stats = engine.stats()
        return web.json_response({"status": "ok", "model": {"sample_rate": config.sample_rate,
                                                            "vocoder": bool(config.n_mels),
                                                            "speakers": config.speakers},
                                  "active": stats["active"], "waiting": stats["waiting"]})

    async def metrics(request):
        return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})

    @web.middleware
    async def json_errors(request, handler):
        """aiohttp's own refusals as JSON errors, counted like the others (under endpoint "other" for a path that is
        none of ours, so that a scan of paths adds no series to the metrics)."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            known = request.path.strip("/")
            endpoint = known if known in ("generate", "vocode", "health", "metrics") else "other"
            if isinstance(exc, web.HTTPNotFound):
                return error(endpoint, 404, "no such path; the paths are POST /generate, POST /vocode, GET /health "
                                            "and GET /metrics")
            if isinstance(exc, web.HTTPMethodNotAllowed):
                allowed = ", ".join(sorted(exc.allowed_methods))
                return error(endpoint, 405, f"{request.path} takes {allowed}", headers={"Allow": allowed})
            return error(endpoint, exc.status, exc.reason)

    @web.middleware
    async def tracked(request, handler):
        task = asyncio.current_task()
        handlers[task] = request.protocol
        try:
            return await handler(request)
        finally:
            handlers.pop(task, None)

    async def drain(app):
        nonlocal stopping
        stopping = True
        if connections is not None:
            in_use = set(handlers.values())
            for connection in connections():
                if connection not in in_use:
                    connection.force_close()
        if handlers and drain_seconds > 0:
            await asyncio.wait(set(handlers), timeout=drain_seconds)
        cut = [task for task in handlers if not task.done()]
        for task in cut:
            task.cancel()
        if cut:  # a cancelled stream ends at once: its next await raises
            await asyncio.wait(cut, timeout=1.0)
        for transport in closing:  # the process ends now: what they hold is not sent
            transport.abort()

    async def stop_decoding(app):
        decoders.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[json_errors, tracked])
    app.add_routes([web.post("/generate", generate), web.post("/vocode", vocode), web.get("/health", health),
                    web.get("/metrics", metrics)])
    app.on_shutdown.append(drain)
    app.on_cleanup.append(stop_decoding)
    return app


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          drain_seconds: float = 10.0, quiet: bool = False):
    """Run the server until SIGINT or SIGTERM: then stop taking requests, let those in flight finish for up to
    `drain_seconds`, cut the rest (their streams end short, their connections close), and stop the engine: the
    process ends within about `drain_seconds` plus one round (and any upload being decoded, bounded by the limits).
    Port 0 takes a free port; the address is printed once the server listens."""
    asyncio.run(_serve(engine, host, port, limits, drain_seconds, quiet))


def serve_model(options: ServerOptions = ServerOptions(), quiet: bool = False):
    """What `fastwavenet serve` does: load `options.model` (a model file; None: the bundled demo) into an Engine,
    and `serve` it until SIGINT or SIGTERM."""
    missing = [m for m in ("aiohttp", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise FastWaveNetError(f"fastwavenet serve needs {', '.join(missing)}: pip install 'fastwavenet[serve]'")
    if not quiet:
        print("fastwavenet: loading the model and compiling the kernels (cached after the first run)", flush=True)
    engine = Engine(options.model, backend=options.backend, device=options.device, max_active=options.max_active,
                    max_waiting=options.max_waiting, round_seconds=options.round_ms / 1000)
    serve(engine, options.host, options.port, options.limits(), drain_seconds=options.drain_seconds, quiet=quiet)


async def _serve(engine, host, port, limits, drain_seconds, quiet):
    import signal

    from aiohttp import web

    app = make_app(engine, limits, drain_seconds, connections=lambda: runner.server.connections)

    async def stop_engine(app):
        await asyncio.get_running_loop().run_in_executor(None, lambda: engine.close(cancel=True))

    app.on_cleanup.append(stop_engine)
    # The drain is the app's (make_app); aiohttp's own waits twice its shutdown_timeout and never ends at 0. The
    # keep-alive timeout also bounds how long a new connection may take to send its first request's headers (from
    # aiohttp 3.14.4, which starts that timer when a connection is made: setup.py asks for it).
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, keepalive_timeout=limits.read_timeout,
                           shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    one_line = _OneLine()
    logging.getLogger("aiohttp.server").addFilter(one_line)
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
        logging.getLogger("aiohttp.server").removeFilter(one_line)


def _parser_message(exc: BaseException) -> str:
    """What aiohttp's HTTP parser said of a request, on one line, without its status code: "Can not decode
    content-encoding: gzip"."""
    from aiohttp.http_exceptions import HttpProcessingError

    while not isinstance(exc, HttpProcessingError) and exc.__cause__ is not None:
        exc = exc.__cause__  # a body's error arrives as a RequestPayloadError caused by the parser's
    return " ".join(str(getattr(exc, "message", exc)).split())


class _OneLine(logging.Filter):
    """A request aiohttp's parser could not read (it answers 400 itself), or whose body did not decode (aiohttp logs
    that again when it reads the rest of the body before closing), is the client's mistake, not the server's: one
    line in the log, not a traceback, so that a client sending garbage cannot fill the log with them."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError
        from aiohttp.web import RequestPayloadError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            record.msg, record.args = f"{record.getMessage()}: {_parser_message(exc)}", ()
            record.exc_info, record.exc_text = None, None
        return True
