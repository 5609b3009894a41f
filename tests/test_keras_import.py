import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from helpers import KERAS, run_cli

h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install 'fastwavenet[import]')")
CHECKPOINT = KERAS / "checkpoint.00358-1.633.hdf5"
SPEECH = Path(__file__).parent / "data" / "ljspeech-LJ001-0032-4k.flac"

from fastwavenet import Generator, mulaw  # noqa: E402
from fastwavenet.cli import main  # noqa: E402
from fastwavenet.errors import FastWaveNetError  # noqa: E402
from fastwavenet.folded import fold, unfold  # noqa: E402
from fastwavenet.modelfile import ModelFile  # noqa: E402
from fastwavenet.importers.keras import config_from_keras, import_keras, weight_table  # noqa: E402
from fastwavenet.model import WaveNet  # noqa: E402
from fastwavenet.score import score_audio, score_files  # noqa: E402

from helpers import one_triton_on_cpu  # noqa: E402
from test_exactness import BACKENDS, DEVICE  # noqa: E402

BACKENDS = one_triton_on_cpu(BACKENDS)


@pytest.fixture(scope="module")
def checkpoint():
    """The real basveeling/wavenet checkpoint in ../shared (MODEL.md there); tests that need it skip without it."""
    if not CHECKPOINT.is_file():
        pytest.skip(f"{CHECKPOINT} is not present")
    return CHECKPOINT


@pytest.fixture(scope="module")
def imported(checkpoint):
    return import_keras(checkpoint, KERAS / "config.json")


@pytest.fixture(scope="module")
def speech():
    """Speech this model was not trained on: LJSpeech's LJ001-0032 (public domain), resampled to 4 kHz
    (tests/data/README.md)."""
    return SPEECH


def test_config_expresses_the_model(imported):
    c = imported.config
    assert (c.sample_rate, c.residual_channels, c.skip_channels, c.head_channels, c.layers, c.bias) == \
        (4000, 32, 32, 256, 32, False)
    assert c.receptive_field == 1022  # 4 * (1 + 2 + ... + 128) + 2, as MODEL.md says
    assert torch.count_nonzero(imported.weights.out_w[-1, :, :32]) == 0  # the absent last residual conv


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_reproduce_the_imported_model(imported, backend):
    """This model's logits reach about +-550, where float32 values lie 6e-5 apart, and come from sums of larger terms
    that cancel: the float32 training model is itself 3.3e-4 (2.9e-6 of the step's largest logit) from its float64
    form, and a backend summing in another order lands as far from it again. So every backend, and the float32
    training model, is held to the float64 model, within 1e-4 plus 1e-5 of the largest logit of the same step (numba
    on an AVX2 core: 8.2e-6 of it from float64, 1.1e-5 from float32's); models with logits of ordinary size meet the
    plain 1e-4 against the float32 model in test_exactness.py."""
    # Past the receptive field (1022) where it is cheap; the interpreter (6 steps: seconds each for the tiled kernel;
    # test_exactness.py wraps every ring) and naive are slow.
    steps = 6 if backend.startswith("triton") and DEVICE == "cpu" else 200 if backend == "naive" else 1100
    own, _ = soundfile.read(KERAS / "sample-temp1-seed100.wav")
    codes = torch.from_numpy(np.stack([mulaw.encode(own[:steps]),
                                       np.random.default_rng(0).integers(100, 156, steps)]))
    model = unfold(imported.weights, imported.config)
    with torch.no_grad():
        float32 = model(codes).transpose(1, 2)
        expected = model.double()(codes).transpose(1, 2)
    gen = Generator(imported, backend=backend, device=DEVICE)
    got = gen.forward(gen.new_state(2), codes).cpu()
    tolerance = 1e-4 + 1e-5 * expected.abs().amax(dim=2, keepdim=True)
    assert ((float32.double() - expected).abs() <= tolerance).all()  # the training model itself
    excess = (got.double() - expected).abs() - tolerance
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


def test_narrow_weights_cost_little_on_unseen_speech(imported, speech):
    """What bf16 and int8 weights cost on speech the model was not trained on, in bits per sample (this clip:
    float32 6.527, bf16 +0.0005, int8 +0.046; over 310 s of other speakers' speech about +0.002 and +0.05:
    docs/BENCHMARKS.md, int8 weights). The bounds: about twice int8's cost here, four times bf16's."""
    bits = {precision: score_files(imported, [speech], precision)[0]["bits_per_sample"]
            for precision in ("float32", "bf16", "int8")}
    assert bits["float32"] < 7.0
    assert 0 < bits["int8"] - bits["float32"] < 0.1
    assert abs(bits["bf16"] - bits["float32"]) < 0.002


@pytest.mark.parametrize("backend", BACKENDS)
def test_imported_model_generates_speechlike_audio(imported, backend):
    if backend.startswith("triton") and DEVICE == "cpu":
        pytest.skip("generation of seconds is too slow under Triton's interpreter; exactness is tested above")
    samples = 1100 if backend == "naive" else 4000  # naive makes about a hundred samples a second
    audio = Generator(imported, backend=backend, device=DEVICE).generate(samples=samples, seed=0)[0]
    assert np.isfinite(audio).all() and np.sqrt(np.mean(audio ** 2)) > 0.01
    # Its own output is far likelier than noise: the model generates what it models.
    assert score_audio(imported, audio) < 5.0


def test_cli_import_and_score(checkpoint, tmp_path, speech):
    out = tmp_path / "vctk4k.safetensors"
    result = run_cli("import", "keras", checkpoint, "--config", KERAS / "config.json", "-o", out)
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
def test_bad_imports(case, words, checkpoint, tmp_path):
    config = KERAS / "config.json"
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


MISSING = object()  # a field left out of the config


def small_config(folder, **changes):
    """A small basveeling/wavenet config.json (4 filters, dilations 1 and 2, one stack, 16 bins) with `changes`
    (MISSING: left out)."""
    raw = dict(nb_filters=4, dilation_depth=1, nb_stacks=1, nb_output_bins=16, desired_sample_rate=4000,
               use_bias=False, use_skip_connections=True, use_ulaw=True)
    path = folder / "config.json"
    path.write_text(json.dumps({name: value for name, value in {**raw, **changes}.items() if value is not MISSING}))
    return path


def small_checkpoint(path, config_path, wrong=None):
    """A Keras 1 weights file holding every weight the config's table names, convolutions as (out, in, taps, 1),
    random values; the dataset named `wrong` gets one output channel too many."""
    config = config_from_keras(config_path)
    params = dict(WaveNet(config).named_parameters())
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [name.encode() for name in weight_table(config)]
        for name, (target, how) in weight_table(config).items():
            shape = list(params[target].shape)
            if how.endswith("half"):
                shape[0] //= 2
            if name == wrong:
                shape[0] += 1
            layer = group.create_group(name)
            layer.attrs["weight_names"] = [name.encode()]
            layer[name] = rng.standard_normal(shape + [1] * (len(shape) == 3)).astype(np.float32)
    return path


def test_a_small_checkpoint_imports_and_a_wrong_shape_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    config = small_config(tmp_path)
    model = import_keras(small_checkpoint(tmp_path / "good.hdf5", config), config)
    assert model.config.layers == 2 and model.config.receptive_field == 5
    reads = []
    original = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: reads.append(self.name) or original(self, key))
    bad = small_checkpoint(tmp_path / "bad.hdf5", config, wrong="convolution1d_66_W")
    with pytest.raises(FastWaveNetError, match=r"convolution1d_66_W has shape \(17, 16, 1\), the config wants "
                                               r"\(16, 16, 1\)"):
        import_keras(bad, config)
    assert reads == []


@pytest.mark.parametrize("changes, words", [
    (dict(nb_filters="32"), "nb_filters must be an integer, got '32'"),
    (dict(dilation_depth=[7]), "dilation_depth must be an integer, got [7]"),
    (dict(nb_stacks=None), "nb_stacks must be an integer, got None"),
    (dict(desired_sample_rate=True), "desired_sample_rate must be an integer, got True"),
    (dict(nb_output_bins=256.0), "nb_output_bins must be an integer, got 256.0"),
    (dict(use_bias="false"), "use_bias must be true or false, got 'false'"),
    (dict(use_ulaw=None), "use_ulaw must be true or false, got None"),
    (dict(nb_filters=MISSING), "not a basveeling/wavenet config (missing nb_filters)"),
])
def test_config_fields_of_the_wrong_type_are_one_line_errors(changes, words, tmp_path, capsys):
    checkpoint = small_checkpoint(tmp_path / "small.hdf5", small_config(tmp_path))
    config = small_config(tmp_path, **changes)
    out = tmp_path / "out.safetensors"
    assert main(["import", "keras", str(checkpoint), "--config", str(config), "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not out.exists()


def test_a_config_that_is_not_a_json_object_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text("[32, 7, 4]")
    assert main(["import", "keras", str(tmp_path / "x.hdf5"), "--config", str(config), "-o",
                 str(tmp_path / "out.safetensors")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "must be a JSON object" in lines[0], lines
