import numpy as np
import pytest
import soundfile

from fastwavenet import load
from fastwavenet.demo import DEMO_MODEL

from helpers import run_cli

pytestmark = pytest.mark.skipif(not DEMO_MODEL.is_file(), reason="the demo model is not bundled in this checkout")


def spectral_flatness(x: np.ndarray) -> float:
    import librosa

    return float(librosa.feature.spectral_flatness(y=x.astype(np.float32)).mean())


def test_demo_model_makes_piano_like_sound():
    gen = load()
    assert gen.sample_rate == 4410
    audio = gen.generate(seconds=1.0, seed=0)[0]
    assert np.isfinite(audio).all()
    assert np.sqrt(np.mean(audio ** 2)) > 0.005, "silence"
    noise = np.random.default_rng(0).uniform(-1, 1, len(audio))
    assert spectral_flatness(audio) < 0.5 * spectral_flatness(noise), "as flat as white noise"


def test_generate_with_no_model_argument(tmp_path):
    result = run_cli("generate", "-o", tmp_path / "piano.wav", "--seconds", "0.5", "--quiet")
    assert result.returncode == 0, result.stderr
    x, rate = soundfile.read(tmp_path / "piano.wav")
    assert rate == 4410 and len(x) == 2205


def test_demo_model_carries_its_measured_default_sampling():
    """docs/DEMO_MODEL.md, "Default sampling": chosen by recipes/sampling_table.py and stored in the file."""
    from fastwavenet import Sampling

    assert load().sampling == Sampling(temperature=1.18, top_p=1.0)


def test_vocode_with_no_model_argument_follows_its_input(tmp_path):
    """The bundled vocoder (recipes/piano-vocoder.sh): `fastwavenet vocode INPUT -o OUT` with no model. Its output
    for a note is closer, in log-mel distance, to that note than to the note an octave up (what the mel says is
    used), and as long as the input. The notes are piano-like, as what the vocoder learned from: five decaying
    partials over a low noise floor (a bare sine leaves most mel bands at the features' floor, far below any
    recording's, and both distances are then that floor's)."""
    from fastwavenet.demo import DEMO_VOCODER
    from fastwavenet.features import log_mel

    if not DEMO_VOCODER.is_file():
        pytest.skip("the vocoder is not bundled in this checkout")
    t = np.arange(2 * 4410) / 4410
    floor = 0.002 * np.random.default_rng(0).standard_normal(len(t))

    def note(f0):
        partials = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) * np.exp(-(1.5 + k) * t) for k in range(1, 6))
        return (partials + floor).astype(np.float32)

    low, high = note(196.0), note(392.0)
    soundfile.write(tmp_path / "low.wav", low, 4410)
    result = run_cli("vocode", tmp_path / "low.wav", "-o", tmp_path / "out.wav", "--seed", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    out, rate = soundfile.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 4410 and len(out) == len(low)
    config = load(DEMO_VOCODER).config
    distance = lambda a, b: float(np.abs(log_mel(a, config) - log_mel(b, config)).mean())  # noqa: E731
    assert distance(out, low) < distance(out, high)
