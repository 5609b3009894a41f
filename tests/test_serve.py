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

from conftest import save_models, wait_until

pytest.importorskip("aiohttp")
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


@pytest.mark.parametrize("body,message", [
    (b"\x93NUMPY\x01\x00garbage", "malformed .npy"), (b"", "empty body"), (b"not audio at all", "cannot read"),
])
def test_vocode_refuses_malformed_bodies(vocoder_server, body, message):
    status, _, payload = vocoder_server.request("/vocode", body, "application/octet-stream")
    assert status == 400 and message in json.loads(payload)["error"]


def npy_header(shape, dtype="<f4") -> bytes:
    """The header of a .npy file of `shape`, without its data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("query,body,message", [
    ("?seconds=1", None, "/vocode makes what the mel covers"),    # the check could never fire
    ("?argmax=maybe", None, "argmax must be true or false, got 'maybe'"),  # was false
    ("?top_k=1e23", None, "top_k must be an integer"),
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
    assert status == 400 and message in json.loads(payload)["error"]


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
