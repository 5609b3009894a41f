import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from helpers import KERAS, run_cli

h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install 'fastwavenet[import]')")
CHECKPOINT = KERAS / "checkpoint.00358-1.633.hdf5"
pytestmark = pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"{CHECKPOINT} is not present")

from fastwavenet import Generator, mulaw  # noqa: E402
from fastwavenet.folded import fold, unfold  # noqa: E402
from fastwavenet.modelfile import ModelFile  # noqa: E402
from fastwavenet.importers.keras import import_keras  # noqa: E402
from fastwavenet.score import score_audio, score_files  # noqa: E402

from helpers import one_triton_on_cpu  # noqa: E402
from test_exactness import BACKENDS, DEVICE  # noqa: E402

BACKENDS = one_triton_on_cpu(BACKENDS)


@pytest.fixture(scope="module")
def imported():
    return import_keras(CHECKPOINT, KERAS / "config.json")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Please call Stella. Ask her to bring these things with her from "
                    "the store: six spoons of fresh snow peas, five thick slabs of blue cheese."], check=True)
    return path


def test_config_expresses_the_model(imported):
    c = imported.config
    assert (c.sample_rate, c.residual_channels, c.skip_channels, c.head_channels, c.layers, c.bias) == \
        (4000, 32, 32, 256, 32, False)
    assert c.receptive_field == 1022  # 4 * (1 + 2 + ... + 128) + 2, as MODEL.md says
    assert torch.count_nonzero(imported.weights.out_w[-1, :, :32]) == 0  # the absent last residual conv


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_reproduce_the_imported_model(imported, backend):
    """This model's logits reach about +-550, where float32 values lie 6e-5 apart, and come from sums of larger terms
    that cancel: the float32 training model is itself 3.4e-4 from its float64 form. So the tolerance is 1e-4 plus
    1e-5 of the largest logit of the same step (the float32 reference's own error is under 1e-6 of it); models with
    logits of ordinary size meet the plain 1e-4 in test_exactness.py."""
    # Past the receptive field (1022) where it is cheap; the interpreter (6 steps: seconds each for the tiled kernel;
    # test_exactness.py wraps every ring) and naive are slow.
    steps = 6 if backend.startswith("triton") and DEVICE == "cpu" else 200 if backend == "naive" else 1100
    own, _ = soundfile.read(KERAS / "sample-temp1-seed100.wav")
    codes = torch.from_numpy(np.stack([mulaw.encode(own[:steps]),
                                       np.random.default_rng(0).integers(100, 156, steps)]))
    with torch.no_grad():
        expected = unfold(imported.weights, imported.config)(codes).transpose(1, 2)
    gen = Generator(imported, backend=backend, device=DEVICE)
    got = gen.forward(gen.new_state(2), codes).cpu()
    scale = expected.abs().amax(dim=2, keepdim=True)
    excess = (got - expected).abs() - (1e-4 + 1e-5 * scale)
    assert excess.max().item() <= 0, f"worst excess {excess.max().item():.2e}"


def test_tap_order_evidence(imported):
    # The model's own temperature-1 output is likely under the import, and unlikely with the taps as stored.
    own, _ = soundfile.read(KERAS / "sample-temp1-seed100.wav")
    assert score_audio(imported, own) < 5.0
    net = unfold(imported.weights, imported.config)
    with torch.no_grad():
        net.input.weight.copy_(net.input.weight.flip(-1))
        for block in net.blocks:
            block.dilated.weight.copy_(block.dilated.weight.flip(-1))
    assert score_audio(ModelFile(imported.config, fold(net)), own) > 8.0


def test_speech_is_far_likelier_than_noise(imported, speech):
    speech_bits = score_files(imported, [speech])[0]["bits_per_sample"]
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, 20000)
    assert speech_bits < 8.0 and score_audio(imported, noise) > speech_bits + 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_imported_model_generates_speechlike_audio(imported, backend):
    if backend.startswith("triton") and DEVICE == "cpu":
        pytest.skip("generation of seconds is too slow under Triton's interpreter; exactness is tested above")
    samples = 1100 if backend == "naive" else 4000  # naive makes about a hundred samples a second
    audio = Generator(imported, backend=backend, device=DEVICE).generate(samples=samples, seed=0)[0]
    assert np.isfinite(audio).all() and np.sqrt(np.mean(audio ** 2)) > 0.01
    # Its own output is far likelier than noise: the model generates what it models.
    assert score_audio(imported, audio) < 5.0


def test_cli_import_and_score(tmp_path, speech):
    out = tmp_path / "vctk4k.safetensors"
    result = run_cli("import", "keras", CHECKPOINT, "--config", KERAS / "config.json", "-o", out)
    assert result.returncode == 0, result.stderr
    result = run_cli("score", out, speech, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["bits_per_sample"] < 8.0


def _other_hdf5(path):
    with h5py.File(path, "w") as f:
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [b"dense_1"]
        layer = group.create_group("dense_1")
        layer.attrs["weight_names"] = [b"dense_1_W"]
        layer["dense_1_W"] = np.zeros((3, 3), np.float32)


@pytest.mark.parametrize("case, words", [
    ("not_hdf5", "not an HDF5 file"),
    ("other_architecture", "does not match its config"),
    ("config_mismatch", "does not match its config"),
    ("missing_file", "no such file"),
])
def test_bad_imports(case, words, tmp_path):
    checkpoint, config = CHECKPOINT, KERAS / "config.json"
    if case == "not_hdf5":
        checkpoint = tmp_path / "x.hdf5"
        checkpoint.write_text("not hdf5")
    elif case == "other_architecture":
        checkpoint = tmp_path / "other.hdf5"
        _other_hdf5(checkpoint)
    elif case == "config_mismatch":
        raw = json.loads(config.read_text())
        raw["nb_stacks"] = 3
        config = tmp_path / "config.json"
        config.write_text(json.dumps(raw))
    elif case == "missing_file":
        checkpoint = tmp_path / "missing.hdf5"
    out = tmp_path / "out.safetensors"
    result = run_cli("import", "keras", checkpoint, "--config", config, "-o", out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not out.exists()
