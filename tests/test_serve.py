"""`fastwavenet serve`, the real server in a subprocess on a free localhost port, spoken to over real HTTP."""

import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile

from fastwavenet import Generator
from fastwavenet.serve import pcm16, wav_header

from helpers import save_models, wait_until

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")
pytest.importorskip("numba")

class Server:
    """`python -m fastwavenet serve ... --port 0`, its port read from what it prints."""

    def __init__(self, model, *options):
        import tempfile

        self.log_path = os.path.join(tempfile.mkdtemp(), "server.log")
        with open(self.log_path, "w") as log:  # a file, not a pipe: a pipe nobody reads fills and stops the server
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fastwavenet", "serve", "--model", str(model), "--port", "0", "--backend",
                 "numba", *map(str, options)], stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.process.poll() is None:
            for line in self.log().splitlines():
                if "serving on http://" in line:
                    self.url = line.split("serving on ")[1].split()[0]
                    self.port = int(self.url.rsplit(":", 1)[1])
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not start: " + self.log())

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        """SIGTERM, then SIGKILL if it has not ended (a child may have been started with signals ignored)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def request(self, path, body=None, content_type="application/json", timeout=120):
        """(status, headers, body bytes)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def raw(self, body: dict) -> socket.socket:
        """A /generate request on a socket the test reads (or does not) itself."""
        sock = socket.create_connection(("127.0.0.1", self.port))
        data = json.dumps(body).encode()
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        return sock

    def health(self):
        return json.loads(self.request("/health")[2])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(models):
    s = Server(models["tiny"], "--max-active", 3, "--max-waiting", 1, "--max-seconds", 600, "--max-body-mb", 0.01,
               "--round-ms", 10)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def vocoder_server(models):
    s = Server(models["vocoder"], "--max-active", 2, "--round-ms", 10)
    yield s
    s.stop()


def expected_wav(model, seed, samples, **kwargs):
    audio = Generator(model, backend="numba").generate(samples=samples, seed=seed, **kwargs)[0]
    return wav_header(samples, 4410) + pcm16(audio)


def test_concurrent_requests_each_get_the_bytes_they_get_alone(server, models):
    jobs = [{"seconds": 0.2 + 0.05 * i, "seed": i, "temperature": 0.8 + 0.1 * (i % 3), "top_k": 20 * (i % 2)}
            for i in range(4)]  # the server takes 3 at once and queues 1
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: server.request("/generate", job), jobs))
    for job, (status, headers, body) in zip(jobs, together):
        assert status == 200 and headers["Content-Type"] == "audio/wav"
        status, _, body_alone = server.request("/generate", job)
        assert status == 200 and body == body_alone
        info = soundfile.info(io.BytesIO(body))
        assert info.samplerate == 4410 and info.frames == round(job["seconds"] * 4410)
    from fastwavenet import Sampling

    job = jobs[3]
    assert together[3][2] == expected_wav(models["tiny"], 3, round(job["seconds"] * 4410),
                                          sampling=Sampling(temperature=job["temperature"], top_k=job["top_k"]))


def test_health_and_metrics(server):
    server.request("/generate", {"seconds": 0.1, "seed": 0})
    assert server.health()["status"] == "ok"
    status, headers, body = server.request("/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("fastwavenet_active_requests", "fastwavenet_waiting_requests", "fastwavenet_samples_per_second",
                 "fastwavenet_samples_total", "fastwavenet_time_to_first_audio_seconds_bucket"):
        assert name in text, name
    assert 'fastwavenet_requests_total{endpoint="generate",status="200"}' in text


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "malformed JSON"), (b"[1, 2]", 400, "JSON object"), ({"seed": 1}, 400, "seconds"),
    ({"seconds": -1}, 400, "seconds"), ({"seconds": 601}, 400, "at most 600"),
    ({"seconds": 1, "seed": "x"}, 400, "seed"),
    ({"seconds": 1, "top_p": 2}, 400, "top-p"), ({"seconds": 1, "argmax": 1}, 400, "argmax"),
    ({"seconds": 1, "volume": 11}, 400, "unknown"), ({"seconds": 1, "speaker": 0}, 400, "speaker"),
    ({"seconds": 1, "format": "mp3"}, 400, "format must be one of wav, pcm, flac, got 'mp3'"),
    (b"{" + b" " * 20000 + b"}", 413, "limit"),
])
def test_bad_requests_get_a_json_4xx(server, body, status, message):
    got, headers, payload = server.request("/generate", body)
    assert got == status and headers["Content-Type"].startswith("application/json")
    assert message in json.loads(payload)["error"]


@pytest.mark.parametrize("body,message", [
    ({"seconds": 1, "top_k": 10**23}, "top-k"),             # the numba backend overflowed in the round: all failed
    ({"seconds": 1, "top_k": 257}, "256 classes"),
    (b'{"seconds": 1' + b"0" * 400 + b"}", "401 digits"),   # json gives a huge int: math.isfinite overflowed
    (b'{"seconds": 1e400}', "out of range"),
    (b'{"seconds": 1, "seed": ' + b"9" * 5000 + b"}", "5000 digits"),  # past Python's int-digits limit
    (b'{"seconds": 1, "x": ' + b"[" * 4000 + b"]" * 4000 + b"}", "nested too deeply"),
    ({"seconds": 1, "argmax": "maybe"}, "argmax must be true or false"),  # was false
    ({"seconds": 1, "seed": 10**30}, "seed must be an integer in 0..2**63 - 1"),
    ({"seconds": 1, "temperature": 1e-39}, "temperature must be a number in [0.001, 1000]"),  # constant output
    ({"seconds": 1, "seed": None}, "seed is null"),
])
def test_values_that_got_through_or_made_a_500_get_a_400(server, body, message):
    got, headers, payload = server.request("/generate", body)
    assert got == 400 and headers["Content-Type"].startswith("application/json")
    assert message in json.loads(payload)["error"]


def exchange(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request by http.client, whatever its method, path and headers: (status, headers, body)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("method,path,body,headers,status,message", [
    # a body that does not decode was a 500 with two tracebacks in the log
    ("POST", "/generate", b'{"seconds": 0.1}', {"Content-Encoding": "gzip"}, 400, "content-encoding: gzip"),
    ("POST", "/generate", b'{"seconds": 0.1}', {"Content-Encoding": "deflate"}, 400, "content-encoding: deflate"),
    ("POST", "/generate?format=flac", b'{"seconds": 0.1}', {}, 400, "not in the query (got format)"),  # was ignored
    ("GET", "/nowhere", b"", {}, 404, "the paths are POST /generate"),      # aiohttp's plain text before
    ("POST", "/generate/", b"{}", {}, 404, "no such path"),
    ("GET", "/generate", b"", {}, 405, "/generate takes POST"),
    ("POST", "/health", b"", {}, 405, "/health takes GET"),
])
def test_what_aiohttp_refused_in_plain_text_or_let_through_gets_a_json_4xx(server, method, path, body, headers,
                                                                         status, message):
    got, answer_headers, payload = exchange(server.port, method, path, body, headers)
    assert got == status and answer_headers["Content-Type"].startswith("application/json")
    assert message in json.loads(payload)["error"]
    if status == 405:
        assert answer_headers["Allow"] in ("GET, HEAD", "POST")
    assert "Traceback" not in server.log()


def test_a_request_aiohttp_cannot_parse_is_logged_as_one_line(server):
    before = len(server.log().splitlines())
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert b" 400 Bad Request" in read_to_end(sock, 30)
    assert wait_until(lambda: len(server.log().splitlines()) > before)
    time.sleep(0.5)  # anything more the log would get
    added = server.log().splitlines()[before:]
    assert len(added) == 1 and "Error handling request" in added[0] and "Traceback" not in server.log(), added


def test_a_full_server_refuses_at_once_and_a_disconnect_frees_the_slot(server):
    """Three running (ten minutes of audio each), one waiting: the fifth is refused with 503; when the clients go
    away their requests are cancelled and the server is empty again."""
    sockets = [server.raw({"seconds": 600, "seed": i}) for i in range(4)]
    try:
        assert wait_until(lambda: server.health()["active"] == 3 and server.health()["waiting"] == 1)
        # Refused at once, not queued: a blocked request would raise the client's timeout instead.
        status, headers, body = server.request("/generate", {"seconds": 0.1}, timeout=30)
        assert status == 503 and headers["Retry-After"] == "1" and "full" in json.loads(body)["error"]
    finally:
        for sock in sockets:
            sock.close()
    assert wait_until(lambda: server.health()["active"] == 0 and server.health()["waiting"] == 0)
    assert server.request("/generate", {"seconds": 0.1})[0] == 200
    assert "Traceback" not in server.log()  # a disconnect is not an error


def test_vocode_mel_frames_and_audio(vocoder_server, models, tmp_path):
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((8, 20)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, mel)
    status, headers, body = vocoder_server.request("/vocode?seed=4&temperature=0.9", buffer.getvalue(),
                                                   "application/octet-stream")
    from fastwavenet import Sampling

    assert status == 200
    assert body == expected_wav(models["vocoder"], 4, 20 * 32, mel=mel, sampling=Sampling(temperature=0.9))
    tone = (0.4 * np.sin(np.arange(3000) / 5.0)).astype(np.float32)
    soundfile.write(tmp_path / "tone.wav", tone, 4410)
    status, _, body = vocoder_server.request("/vocode?seed=1", (tmp_path / "tone.wav").read_bytes(), "audio/wav")
    assert status == 200 and soundfile.info(io.BytesIO(body)).frames == 3000



def post(url: str, **kwargs) -> tuple[int, dict, bytes]:
    """A POST by aiohttp's client, the answer read chunk by chunk as it arrives: (status, headers, body)."""
    import asyncio

    import aiohttp

    async def exchange():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            async with session.post(url, **kwargs) as response:
                body = b"".join([chunk async for chunk in response.content.iter_chunked(4096)])
                return response.status, response.headers, body

    return asyncio.run(exchange())


def test_each_format_carries_the_samples_of_the_wav_answer(server):
    job = {"seconds": 0.3, "seed": 5, "temperature": 0.9}
    status, headers, wav = post(server.url + "/generate", json={**job, "format": "wav"})
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 4410 and len(samples) == round(0.3 * 4410)
    status, headers, pcm = post(server.url + "/generate", json={**job, "format": "pcm"})
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Sample-Rate"] == "4410" and int(headers["Content-Length"]) == 2 * len(samples)
    assert np.array_equal(np.frombuffer(pcm, "<i2"), samples)
    status, headers, flac = post(server.url + "/generate", json={**job, "format": "flac"})
    assert status == 200 and headers["Content-Type"] == "audio/flac" and int(headers["Content-Length"]) == len(flac)
    decoded, rate = soundfile.read(io.BytesIO(flac), dtype="int16")
    assert soundfile.info(io.BytesIO(flac)).format == "FLAC" and rate == 4410 and np.array_equal(decoded, samples)


def test_vocode_answers_flac_when_asked(vocoder_server, models):
    mel = np.random.default_rng(1).standard_normal((8, 12)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, mel)
    status, headers, flac = post(vocoder_server.url + "/vocode?seed=2&format=flac", data=buffer.getvalue())
    assert status == 200 and headers["Content-Type"] == "audio/flac"
    decoded, rate = soundfile.read(io.BytesIO(flac), dtype="int16")
    wav = expected_wav(models["vocoder"], 2, 12 * 32, mel=mel)
    assert rate == 4410 and np.array_equal(decoded, np.frombuffer(wav[44:], "<i2"))


def disconnected(server) -> float:
    """Requests to /generate whose client left, by the server's count."""
    metrics = server.request("/metrics")[2].decode().splitlines()
    key = 'fastwavenet_requests_total{endpoint="generate",status="disconnected"} '
    return next((float(line[len(key):]) for line in metrics if line.startswith(key)), 0.0)


def test_a_client_that_leaves_before_its_flac_is_made_cancels_it(server):
    before = disconnected(server)
    sock = server.raw({"seconds": 600, "seed": 0, "format": "flac"})
    try:
        assert wait_until(lambda: server.health()["active"] == 1)
    finally:
        sock.close()
    assert wait_until(lambda: server.health()["active"] == 0, seconds=10)
    assert disconnected(server) == before + 1 and "Traceback" not in server.log()

@pytest.mark.parametrize("body,message", [
    (b"\x93NUMPY\x01\x00garbage", "malformed .npy"), (b"", "empty body"), (b"not audio at all", "cannot read"),
    # messages that named a Python object by its address
    (b"RIFF" + bytes(40), "cannot read upload: Format not recognised"),
    (b"\x93NUMPY\x01\x00\x3f\x00{'descr': '<f4', 'fortran_order': False, 'shape': (f(),), }   \n",
     "malformed node or string on line 1: an expression"),
])
def test_vocode_refuses_malformed_bodies(vocoder_server, body, message):
    status, _, payload = vocoder_server.request("/vocode", body, "application/octet-stream")
    error = json.loads(payload)["error"]
    assert status == 400 and message in error and " at 0x" not in error


def npy_header(shape, dtype="<f4") -> bytes:
    """The header of a .npy file of `shape`, without its data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("query,body,message", [
    ("?seconds=1", None, "/vocode makes what the mel covers"),    # the check could never fire
    ("?argmax=maybe", None, "argmax must be true or false, got 'maybe'"),  # was false
    ("?top_k=1e23", None, "top_k must be an integer"),
    ("?format=ogg", None, "format must be one of wav, pcm, flac, got 'ogg'"),
    ("", npy_header((8, 10**15)), "the .npy header claims"),        # np.load tried to allocate 32 PB: a 500
    ("", npy_header((8, 10)) + b"\0" * 100, "the .npy header claims"),
    ("", npy_header((8, 10000)) + b"\0" * 320000, "the limit is at most 60 s"),  # refused before reading
    ("", npy_header((8, 10), "|O"), "mel frames must be numbers"),
])
def test_vocode_refuses_bad_options_and_npy_headers_with_a_400(vocoder_server, query, body, message):
    if body is None:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((8, 20), np.float32))
        body = buffer.getvalue()
    status, _, payload = vocoder_server.request("/vocode" + query, body, "application/octet-stream")
    error = json.loads(payload)["error"]
    assert status == 400 and message in error and " at 0x" not in error


def test_vocode_refuses_mel_of_the_wrong_shape_and_the_wrong_endpoint(vocoder_server, server):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((5, 10), np.float32))
    status, _, payload = vocoder_server.request("/vocode", buffer.getvalue(), "application/octet-stream")
    assert status == 400 and "(8 bands, frames)" in json.loads(payload)["error"]
    assert vocoder_server.request("/generate", {"seconds": 1})[0] == 400
    assert server.request("/vocode", b"x", "application/octet-stream")[0] == 400


def test_sigterm_cuts_requests_in_flight_after_the_drain_and_exits(models):
    s = Server(models["tiny"], "--drain-seconds", 0.5, "--max-seconds", 600)
    sock = s.raw({"seconds": 600, "seed": 0})
    try:
        assert wait_until(lambda: s.health()["active"] == 1)
        s.process.send_signal(signal.SIGTERM)
        s.process.wait(60)
        assert s.process.returncode == 0 and "stopping" in s.log() and "Traceback" not in s.log()
        received = b""
        sock.settimeout(30)
        while chunk := sock.recv(1 << 16):
            received += chunk
        assert b"200 OK" in received and len(received) < 2 * 600 * 4410  # the stream was cut
    finally:
        sock.close()
        s.stop()


def test_sigterm_closes_a_connection_that_has_sent_no_request_while_others_drain(models):
    """A connection that had sent nothing when SIGTERM came was held open through the whole drain (aiohttp asks it to
    close, but it waits for a request it will never answer): it is closed at once, while a stream in flight drains."""
    s = Server(models["tiny"], "--drain-seconds", 20, "--max-seconds", 600)
    streaming = s.raw({"seconds": 600, "seed": 0})
    idle = socket.create_connection(("127.0.0.1", s.port))
    try:
        assert wait_until(lambda: s.health()["active"] == 1)
        s.process.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "stopping" in s.log())
        assert read_to_end(idle, 10) == b""  # closed: a socket.timeout had it been held for the drain's 20 s
        assert s.process.poll() is None  # the stream still drains
    finally:
        idle.close()
        streaming.close()
        s.stop()
    assert "Traceback" not in s.log()


# ---- resources a client can hold (issue 37) ------------------------------------------------------------------------

def stalled_socket(port: int, body: dict) -> socket.socket:
    """A /generate request from a client that never reads: a small receive buffer, so the server's writes block
    soon (loopback buffers would otherwise take megabytes of audio first)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def read_to_end(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it ends the connection; socket.timeout if it does not within `seconds`."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(1 << 16):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.fixture(scope="module")
def strict_server(models):
    """Short timeouts: 2 s to send a request, 2 s for a write to a client to go through."""
    s = Server(models["tiny"], "--max-active", 2, "--max-seconds", 600, "--read-timeout", 2, "--write-timeout", 2,
               "--round-ms", 10)
    yield s
    s.stop()


def test_a_client_that_does_not_read_loses_its_stream(strict_server):
    sock = stalled_socket(strict_server.port, {"seconds": 600, "seed": 0})
    try:
        assert wait_until(lambda: strict_server.health()["active"] == 1)
        assert wait_until(lambda: strict_server.health()["active"] == 0, seconds=60)
        received = read_to_end(sock, 10)  # the server closed the connection: no wait for bytes that never come
        assert received.startswith(b"HTTP/1.1 200 OK") and len(received) < 2 * 600 * 4410
    finally:
        sock.close()
    assert "Traceback" not in strict_server.log()


@pytest.mark.skipif(tuple(int(p) for p in aiohttp.__version__.split(".")[:3] if p.isdigit()) < (3, 14, 4),
                    reason="aiohttp before 3.14.4 never times out a connection that has sent no request yet "
                           "(setup.py asks for 3.14.4)")
def test_slow_uploads_and_slow_headers_are_cut(strict_server):
    body = json.dumps({"seconds": 0.1}).encode()
    uploader = socket.create_connection(("127.0.0.1", strict_server.port))
    talker = socket.create_connection(("127.0.0.1", strict_server.port))
    try:
        uploader.sendall(b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:3])  # the rest never
        talker.sendall(b"POST /generate HTTP/1.1\r\nHost: loc")  # the headers never end
        answer = read_to_end(uploader, 20)  # the 408 after 2 s; the close after aiohttp's lingering 10 s more
        assert answer.startswith(b"HTTP/1.1 408") and b"not received within 2 s" in answer
        assert read_to_end(talker, 10) == b""  # closed without an answer
    finally:
        uploader.close()
        talker.close()
    assert strict_server.request("/generate", {"seconds": 0.1})[0] == 200


def test_a_waiting_request_whose_client_left_is_dropped_at_once(server):
    """Three running, one waiting; the waiting client goes away: its request leaves the queue without running."""
    running = [server.raw({"seconds": 600, "seed": i}) for i in range(3)]
    try:
        assert wait_until(lambda: server.health()["active"] == 3)
        waiting = server.raw({"seconds": 600, "seed": 3})
        assert wait_until(lambda: server.health()["waiting"] == 1)
        waiting.close()
        assert wait_until(lambda: server.health()["waiting"] == 0, seconds=10)
        assert server.health()["active"] == 3
    finally:
        for sock in running:
            sock.close()
    assert wait_until(lambda: server.health()["active"] == 0)


@pytest.mark.parametrize("format", ["wav", "flac"])
def test_a_stream_that_fails_midway_ends_the_connection(models, format):
    """WAV: the promised Content-Length cannot be met: the server closes the connection, so the client sees the cut
    instead of waiting for bytes that never come. FLAC: nothing was sent yet: the client is told, in a JSON 500."""
    import asyncio

    from aiohttp.test_utils import TestServer

    from fastwavenet.engine import Engine
    from fastwavenet.serve import make_app

    engine = Engine(models["tiny"], backend="numba", max_active=1, round_seconds=0.01)
    generate, rounds = engine.generator.backend.generate, []

    def third_round_fails(*args):
        rounds.append(1)
        if len(rounds) == 3:
            raise RuntimeError("a failing round")
        return generate(*args)

    engine.generator.backend.generate = third_round_fails

    async def exchange():
        server = TestServer(make_app(engine))
        await server.start_server()
        try:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            body = json.dumps({"seconds": 60, "seed": 0, "format": format}).encode()
            # WAV: the server must end the connection itself; FLAC: the client ends it after the answer.
            ending = b"" if format == "wav" else b"\r\nConnection: close"
            writer.write(b"POST /generate HTTP/1.1\r\nHost: localhost" + ending + b"\r\nContent-Length: " +
                         str(len(body)).encode() + b"\r\n\r\n" + body)
            received = await asyncio.wait_for(reader.read(), 20)
            writer.close()
            return received
        finally:
            await server.close()

    try:
        received = asyncio.run(exchange())
    finally:
        engine.close(cancel=True)
    if format == "wav":
        assert received.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 529244" in received
        assert len(received) < 529244
    else:
        head, _, payload = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 500") and b"application/json" in head
        assert json.loads(payload) == {"error": "generation failed: a failing round"}


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_vocode_refuses_long_audio_from_its_header_before_decoding(vocoder_server, tmp_path):
    """Half an hour of silence is a few KB of FLAC: refused from the header, not decoded (115 MB of float32)."""
    path = tmp_path / "silence.flac"
    with soundfile.SoundFile(path, "w", samplerate=16000, channels=1, format="FLAC") as f:
        block = np.zeros(1 << 20, np.float32)
        for _ in range(16000 * 1800 // len(block)):
            f.write(block)
    before = peak_memory(vocoder_server.process.pid)
    status, _, payload = vocoder_server.request("/vocode", path.read_bytes(), "audio/flac")
    assert status == 400 and "at most 60 s" in json.loads(payload)["error"]
    assert peak_memory(vocoder_server.process.pid) - before < 50 << 20


@pytest.mark.parametrize("drain", [0, 1.5])
def test_sigterm_ends_within_the_drain_while_a_client_streams(models, drain):
    """A client reading slowly (a 600 s request it would take minutes to read): SIGTERM ends the server within the
    drain plus 3 s (for the engine's last round and the interpreter's exit), with one line and no traceback."""
    import threading

    s = Server(models["tiny"], "--drain-seconds", drain, "--max-seconds", 600)
    sock = s.raw({"seconds": 600, "seed": 0})

    def read_slowly():
        try:
            while sock.recv(4096):
                time.sleep(0.05)
        except OSError:
            pass

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: s.health()["active"] == 1)
        before = s.log().splitlines()
        signalled = time.monotonic()
        s.process.send_signal(signal.SIGTERM)
        try:
            s.process.wait(drain + 30)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - signalled
        assert took < drain + 3, f"{took:.1f} s"
        assert s.process.returncode == 0
        after = s.log().splitlines()[len(before):]
        assert len(after) == 1 and "stopping" in after[0], after
    finally:
        sock.close()
        s.stop()


def test_uploads_are_mixed_block_by_block_and_refused_above_the_rate_limit(tmp_path):
    from fastwavenet import FastWaveNetError
    from fastwavenet.audio import read_bytes

    rng = np.random.default_rng(0)
    stereo = (0.3 * rng.standard_normal((200_000, 2))).astype(np.float32)  # three blocks and a part
    soundfile.write(tmp_path / "stereo.wav", stereo, 4410, subtype="FLOAT")
    data = (tmp_path / "stereo.wav").read_bytes()
    whole = np.clip(stereo.mean(axis=1), -1, 1)
    assert np.array_equal(read_bytes(data, 4410, max_seconds=60), whole)
    assert np.array_equal(read_bytes(data, 4410), whole)
    with pytest.raises(FastWaveNetError, match=r"upload holds 45.35\d* s of audio; this server makes at most 45 s"):
        read_bytes(data, 4410, "upload", max_seconds=45)
    soundfile.write(tmp_path / "fast.wav", np.zeros(10, np.float32), 400_000)
    with pytest.raises(FastWaveNetError, match="at 400000 Hz; at most 384000 Hz"):
        read_bytes((tmp_path / "fast.wav").read_bytes(), 4410, "upload", max_seconds=60)
