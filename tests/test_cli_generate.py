import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from safetensors.torch import save_file

from fastwavenet import preset
from fastwavenet.folded import fold
from fastwavenet.modelfile import save_model

from helpers import interruptible_cli, run_cli
from helpers import random_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    save_model(path, preset("tiny"), fold(random_model(preset("tiny"), 9)))
    return path


def test_generate_info_and_export(model_file, tmp_path, sine_folder):
    out = tmp_path / "a.wav"
    result = run_cli("generate", "--model", model_file, "--seconds", "0.5", "-o", out, "--seed", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    x, rate = soundfile.read(out)
    assert rate == 4410 and len(x) == 2205
    again = tmp_path / "b.wav"
    run_cli("generate", "--model", model_file, "--seconds", "0.5", "-o", again, "--seed", "2", "--quiet")
    assert np.array_equal(x, soundfile.read(again)[0]), "a seed must reproduce the file"
    result = run_cli("generate", "--model", model_file, "--seconds", "0.5", "-o", tmp_path / "batch.wav",
                     "--batch", "3", "--seed", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(x, soundfile.read(tmp_path / "batch-1.wav")[0]), "file i of --seed S is --seed S+i alone"
    result = run_cli("generate", "--model", model_file, "--seconds", "0.2", "-o", tmp_path / "many.wav",
                     "--batch", "3", "--backend", "torch", "--quiet", "--prime", sine_folder / "stereo.flac")
    assert result.returncode == 0, result.stderr
    assert "resampled the prime from 8000 Hz" in result.stderr
    assert sorted(p.name for p in tmp_path.glob("many-*.wav")) == ["many-0.wav", "many-1.wav", "many-2.wav"]
    info = run_cli("info", model_file)
    assert info.returncode == 0 and "receptive field: 32 samples" in info.stdout and "12,560" in info.stdout
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*"))


def test_export_from_run_dir(sine_folder, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", sine_folder, "--preset", "tiny", "--out", run, "--steps", "1", "--batch-size", "1",
                   "--target-length", "16", "--quiet").returncode == 0
    result = run_cli("export", run, "-o", tmp_path / "m.safetensors")
    assert result.returncode == 0, result.stderr
    assert run_cli("info", tmp_path / "m.safetensors").returncode == 0


def _bad_files(tmp_path, model_file):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(model_file.read_bytes()[:300])
    notsafetensors = tmp_path / "junk.safetensors"
    notsafetensors.write_text("hello")
    from safetensors import safe_open

    with safe_open(str(model_file), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    wrong_version = tmp_path / "v9.safetensors"
    save_file(tensors, str(wrong_version), metadata={**meta, "format_version": "9"})
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, str(foreign), metadata={"something": "else"})
    mismatched = tmp_path / "mismatch.safetensors"
    other_config = meta["config"].replace('"stacks": 2', '"stacks": 3')
    save_file(tensors, str(mismatched), metadata={**meta, "config": other_config})
    empty_wav = tmp_path / "empty.wav"
    soundfile.write(empty_wav, np.zeros(0, np.float32), 4410)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    return locals()


BAD = [
    (["--model", "{tmp_path}/missing.safetensors"], "no model file"),
    (["--model", "{truncated}"], "not a readable safetensors"),
    (["--model", "{notsafetensors}"], "not a readable safetensors"),
    (["--model", "{wrong_version}"], "format version 9"),
    (["--model", "{foreign}"], "not a fastwavenet model file"),
    (["--model", "{mismatched}"], "its config wants"),
    (["--model", "{model_file}", "--seconds", "0"], "positive number"),
    (["--model", "{model_file}", "--seconds", "-2"], "positive number"),
    (["--model", "{model_file}", "--seconds", "1e9"], "does not fit in a WAV file"),
    (["--model", "{model_file}", "--temperature", "0"], "temperature must be a number in"),  # GenerationRequest judges
    (["--model", "{model_file}", "--batch", "0"], "positive integer"),
    (["--model", "{model_file}", "--batch", "10000000000"], "GiB"),
    (["--model", "{model_file}", "--top-p", "1.5"], "(0, 1]"),
    (["--model", "{model_file}", "--top-p", "0"], "(0, 1]"),
    (["--model", "{model_file}", "--prime", "{tmp_path}/nope.wav"], "no such audio file"),
    (["--model", "{model_file}", "--prime", "{empty_wav}"], "empty"),
    (["--model", "{model_file}", "-o", "{tmp_path}/no/such/folder/x.wav"], "does not exist"),
    (["--model", "{model_file}", "-o", "{tmp_path}/newdir/"], "name a .wav file"),  # wrote a file named newdir
    (["--model", "{model_file}", "-o", "{tmp_path}/out.flac"], "name a .wav file"),  # wrote WAV data as .flac
    (["--model", "{model_file}", "--out-dir", "{tmp_path}/d"], "--out-dir goes with --manifest"),  # was ignored
    (["--model", "{model_file}", "--device", "cuda"], "CUDA is not available"),
    (["--model", "{model_file}", "--backend", "triton"], "not available"),
    (["--model", "{model_file}", "--backend", "magic"], "unknown backend"),
]


@pytest.mark.parametrize("args, words", BAD)
def test_generate_bad_input(args, words, model_file, tmp_path):
    if ("cuda" in args or "triton" in args) and __import__("torch").cuda.is_available():
        pytest.skip("CUDA is available here")
    names = _bad_files(tmp_path, model_file)
    out = tmp_path / "out.wav"
    filled = [a.format(**names) for a in args]
    if "-o" not in filled:
        filled += ["-o", str(out)]
    env = {"TRITON_INTERPRET": "0"}
    # numba unless the case names another: `auto`'s first trial at batch 1 would say its choice on stderr too
    filled = ["--backend", "numba", *filled]
    result = run_cli("generate", "--seconds", "0.1", *filled, "--quiet", env=env) if "--seconds" not in filled \
        else run_cli("generate", *filled, "--quiet", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.wav*"))


def test_readonly_folder_is_refused(model_file, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    names = _bad_files(tmp_path, model_file)
    result = run_cli("generate", "--model", model_file, "-o", names["readonly"] / "x.wav", "--quiet")
    assert result.returncode == 2 and "no permission" in result.stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_interrupt_keeps_a_valid_wav(model_file, tmp_path, sig, code):
    out = tmp_path / "long.wav"
    # (never left running on a way out of the test: a 3000 s generation)
    with interruptible_cli("generate", "--model", model_file, "--seconds", "3000", "-o", out, "--backend", "torch",
                           "--quiet") as proc:
        deadline = time.time() + 60
        while time.time() < deadline:
            partial = list(tmp_path.glob(".long.wav.*.partial"))
            if partial and partial[0].stat().st_size > 44 + 2 * 2000:
                break
            time.sleep(0.2)
        assert not _ignores(proc.pid, sig), f"the child ignores signal {sig.name}: it would never stop"
        proc.send_signal(sig)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"generate did not stop within 60 s of {sig.name}")
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    x, rate = soundfile.read(out)
    assert rate == 4410 and len(x) >= 2000
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".long*"))


def _ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` ignores `sig` (Linux: the SigIgn mask in /proc; elsewhere assume not)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(mask & (1 << (sig - 1)))


@pytest.mark.parametrize("seconds,quiet,said", [(1.5, False, True), (0.0, False, False), (1.5, True, False)],
                         ids=["slow first call", "cached", "quiet"])
def test_a_slow_first_call_is_announced(model_file, tmp_path, monkeypatch, capsys, seconds, quiet, said):
    """A first run compiles the CPU kernels before the first chunk: the command says so (after a second, so a cached
    run says nothing) instead of showing a progress bar frozen at a few samples/s."""
    from fastwavenet import cli
    from fastwavenet.generator import Generator

    monkeypatch.setattr(Generator, "warm_up", lambda self, sampling, prime=False: time.sleep(seconds))
    args = ["generate", "--model", str(model_file), "-o", str(tmp_path / "a.wav"), "--seconds", "0.01",
            "--backend", "numba"] + (["--quiet"] if quiet else [])
    assert cli.main(args) == 0
    assert ("compiling the CPU kernels" in capsys.readouterr().err) == said



def test_a_closed_pipe_is_not_a_traceback(model_file):
    """`fastwavenet info MODEL | head -1`: the reader leaves early; the command stops quietly (exit 141, as cat).
    Here the reader is gone before the command starts, so every write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "fastwavenet", "info", str(model_file)], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert result.stderr == "" and result.returncode == 128 + signal.SIGPIPE
