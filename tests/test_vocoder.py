import json

import numpy as np
import pytest
import soundfile

from fastwavenet import FastWaveNetError, Generator, WaveNetConfig
from fastwavenet.folded import fold
from fastwavenet.features import log_mel
from fastwavenet.modelfile import save_model

from helpers import random_model, run_cli, vocoder_config

VOCODER = vocoder_config()
SPEAKERS = WaveNetConfig(sample_rate=4410, residual_channels=8, gate_channels=8, skip_channels=16, head_channels=16,
                         layers_per_stack=3, stacks=1, speakers=2, speaker_channels=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, config in (("vocoder", VOCODER), ("speakers", SPEAKERS)):
        paths[name] = folder / f"{name}.safetensors"
        save_model(paths[name], config, fold(random_model(config, 3)))
    return paths


def test_train_export_and_vocode_from_audio_and_features(sine_folder, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", sine_folder, "--preset", "tiny", "--n-mels", "8", "--hop-length", "32", "--n-fft",
                     "128", "--out", run, "--steps", "2", "--batch-size", "2", "--target-length", "40", "--quiet")
    assert result.returncode == 0, result.stderr
    assert run_cli("export", run, "-o", tmp_path / "voc.safetensors").returncode == 0
    source = sine_folder / "tone1.wav"
    result = run_cli("vocode", tmp_path / "voc.safetensors", source, "-o", tmp_path / "out.wav", "--seed", "1",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    out, rate = soundfile.read(tmp_path / "out.wav")
    assert rate == 4410 and len(out) == len(soundfile.read(source)[0])
    config = json.loads((run / "config.json").read_text())
    mel = log_mel(soundfile.read(source)[0], WaveNetConfig(**config))
    np.save(tmp_path / "mel.npy", mel)
    np.savez(tmp_path / "mel.npz", mel=mel, hop_length=32)
    for features in ("mel.npy", "mel.npz"):
        result = run_cli("vocode", tmp_path / "voc.safetensors", tmp_path / features, "-o", tmp_path / "f.wav",
                         "--quiet")
        assert result.returncode == 0, result.stderr
        assert len(soundfile.read(tmp_path / "f.wav")[0]) == mel.shape[1] * 32


def test_speaker_model_generates_per_speaker(models):
    gen = Generator(models["speakers"], backend="numba")
    a = gen.generate(samples=300, seed=0, speaker=0)
    b = gen.generate(samples=300, seed=0, speaker=1)
    assert a.shape == b.shape == (1, 300) and not np.array_equal(a, b)
    with pytest.raises(FastWaveNetError, match="speaker id out of range"):
        gen.generate(samples=10, speaker=2)
    with pytest.raises(FastWaveNetError, match="needs a speaker"):
        gen.generate(samples=10)


def test_vocoding_with_a_prime_covers_the_whole_mel(models, tmp_path):
    """With a prime, vocoding continues to the end of what the mel covers: the stream once measured its length before
    priming, yielded too few samples, then failed with "step N is past it"."""
    from fastwavenet.generator import generate_to_wav

    gen = Generator(models["vocoder"], backend="numba")
    frames = 10
    mel = np.random.default_rng(0).standard_normal((VOCODER.n_mels, frames)).astype(np.float32)
    covered = frames * VOCODER.hop_length
    prime = 0.2 * np.sin(np.arange(100) / 7.0)
    audio = np.concatenate(list(gen.stream(mel=mel, prime=prime, chunk=64, seed=0)), axis=1)
    assert audio.shape == (1, covered - (len(prime) - 1))
    path, = generate_to_wav(gen, tmp_path / "v.wav", None, mel=mel, prime=prime, seed=0)
    written, _ = soundfile.read(path, dtype="float32")
    assert len(written) == covered - (len(prime) - 1)
    with pytest.raises(FastWaveNetError, match="nothing is left to vocode"):
        list(gen.stream(mel=mel, prime=np.zeros(covered + 1)))


def test_conditioned_chunks_stay_within_the_memory_budget(models, monkeypatch):
    """The gate terms of a chunk (B x steps x L x 2G floats) are held to a budget, whatever chunk was asked for."""
    from fastwavenet import generator

    gen = Generator(models["speakers"], backend="numba")
    per_step = 4 * 3 * SPEAKERS.layers * 2 * SPEAKERS.gate_channels
    monkeypatch.setattr(generator, "COND_TERMS_BUDGET", 50 * per_step)
    sizes = [c.shape[1] for c in gen.stream(samples=420, batch=3, chunk=4096, speaker=[0, 1, 1], seed=0)]
    assert sum(sizes) == 420 and max(sizes) == 50


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_capped_chunks_of_whole_frames_give_the_audio_of_one_call(models, monkeypatch, backend):
    """Where the memory budget caps a vocoder's chunk, chunks are whole mel frames ending on frame boundaries (after
    a prime, the first one shorter), each frame's terms made straight into the chunk's; the audio is that of one
    call, bit for bit (frames whole or cut, shared by every stream or each stream's own)."""
    from fastwavenet import generator

    gen = Generator(models["vocoder"], backend=backend)
    hop, batch = VOCODER.hop_length, 3
    rng = np.random.default_rng(1)
    mels = {"own": rng.standard_normal((batch, VOCODER.n_mels, 9)).astype(np.float32),
            "shared": rng.standard_normal((VOCODER.n_mels, 9)).astype(np.float32)}
    prime = np.zeros(10, np.float32)
    for name, mel in mels.items():
        whole = np.concatenate(list(gen.stream(mel=mel, batch=batch, prime=prime, chunk=1 << 14, seed=4)), axis=1)
        streams = 1 if name == "shared" else batch
        per_step = 4 * streams * VOCODER.layers * 2 * VOCODER.gate_channels
        monkeypatch.setattr(generator, "COND_TERMS_BUDGET", (hop + 5) * per_step)
        calls = []
        generate_codes = gen.generate_codes
        monkeypatch.setattr(gen, "generate_codes", lambda state, n, *a: calls.append((state.t, n)) or
                            generate_codes(state, n, *a))
        capped = np.concatenate(list(gen.stream(mel=mel, batch=batch, prime=prime, chunk=1 << 14, seed=4)), axis=1)
        monkeypatch.undo()
        assert np.array_equal(capped, whole), name
        assert calls[0] == (len(prime) - 1, hop - (len(prime) - 1))
        assert all(t % hop == 0 and n == hop for t, n in calls[1:-1]) and len(calls) == 9, calls


def test_vocoder_api_streams_bounded_chunks(models):
    gen = Generator(models["vocoder"], backend="torch")
    mel = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    chunks = list(gen.stream(mel=mel, chunk=100, seed=0))
    assert sum(c.shape[1] for c in chunks) == 12 * 32 and max(c.shape[1] for c in chunks) == 100
    with pytest.raises(FastWaveNetError, match="covers 384 samples"):
        gen.generate(samples=400, mel=mel)


def _bad(tmp_path, models):
    np.save(tmp_path / "bands.npy", np.zeros((5, 10), np.float32))
    np.savez(tmp_path / "hop.npz", mel=np.zeros((8, 10), np.float32), hop_length=64)
    np.save(tmp_path / "empty.npy", np.zeros((8, 0), np.float32))
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 4410)
    soundfile.write(tmp_path / "short.wav", np.zeros(10, np.float32), 4410)
    np.save(tmp_path / "strings.npy", np.full((8, 10), "a"))
    np.savez(tmp_path / "hop-array.npz", mel=np.zeros((8, 10), np.float32), hop_length=np.array([32, 32]))
    np.savez(tmp_path / "hop-half.npz", mel=np.zeros((8, 10), np.float32), hop_length=32.5)
    np.savez(tmp_path / "hop-inf.npz", mel=np.zeros((8, 10), np.float32), hop_length=np.inf)
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "hop.npz").read_bytes()[:100])
    (tmp_path / "wav.npy").write_bytes((tmp_path / "short.wav").read_bytes())
    return {"tmp": tmp_path, **models}


@pytest.mark.parametrize("args, words", [
    (["vocode", "{vocoder}", "{tmp}/bands.npy"], "the model wants (8 bands"),
    (["vocode", "{vocoder}", "{tmp}/hop.npz"], "hop_length 64"),
    (["vocode", "{vocoder}", "{tmp}/empty.npy"], "no frames"),
    (["vocode", "{vocoder}", "{tmp}/empty.wav"], "empty"),
    (["vocode", "{vocoder}", "{tmp}/short.wav"], "too short"),
    # tracebacks before: numpy's TypeError, zipfile's BadZipFile, int() of an array; 32.5 was taken as 32
    (["vocode", "{vocoder}", "{tmp}/strings.npy"], "must be real numbers"),
    (["vocode", "{vocoder}", "{tmp}/truncated.npz"], "cannot read features"),
    (["vocode", "{vocoder}", "{tmp}/wav.npy"], "neither .npy nor .npz data"),  # numpy named allow_pickle
    (["vocode", "{vocoder}", "{tmp}/hop-array.npz"], "hop_length must be one whole number"),
    (["vocode", "{vocoder}", "{tmp}/hop-half.npz"], "hop_length must be one whole number"),
    (["vocode", "{vocoder}", "{tmp}/hop-inf.npz"], "hop_length must be one whole number"),
    (["vocode", "{vocoder}"], "is a model file: give the input to vocode"),  # was read as audio
    (["vocode", "{speakers}", "{tmp}/short.wav"], "not a vocoder"),
    (["generate", "--model", "{vocoder}"], "use fastwavenet vocode"),
    (["generate", "--model", "{speakers}", "--speaker", "5"], "speaker id out of range"),
    (["generate", "--model", "{speakers}"], "needs a speaker id"),
])
def test_bad_conditioning_input(args, words, tmp_path, models):
    names = _bad(tmp_path, models)
    out = tmp_path / "out.wav"
    # numba named: `auto`'s first trial at batch 1 would say its choice on stderr too
    result = run_cli(*[a.format(**names) for a in args], "-o", out, "--quiet", "--backend", "numba")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.wav*"))


def test_vocode_with_only_input_names_the_missing_bundled_vocoder(sine_folder):
    """One positional argument is the input, for the bundled vocoder; where none is bundled, one line says so."""
    from fastwavenet.demo import DEMO_VOCODER

    if DEMO_VOCODER.is_file():
        pytest.skip("a vocoder is bundled: tests/test_demo_model.py covers it")
    result = run_cli("vocode", sine_folder / "tone0.wav", "-o", sine_folder / "out.wav")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no vocoder is bundled" in lines[0], result.stderr
    assert not (sine_folder / "out.wav").exists()
