"""r9y9/wavenet_vocoder checkpoints: imported models give r9y9's own outputs under teacher forcing on every backend,
the continuous sampling rules follow a NumPy reference given the same uniforms, and bad checkpoints are refused with
one line. r9y9's code is the test extra `wavenet_vocoder==0.1.1`; without it these tests skip."""

import json
import warnings

import numpy as np
import pytest
import soundfile
import torch
from scipy.special import ndtri

from fastwavenet.backends import available_backends
from fastwavenet.errors import FastWaveNetError
from fastwavenet.generator import Generator
from fastwavenet.importers.r9y9 import import_r9y9

from helpers import one_triton_on_cpu, run_cli
from test_exactness import teacher_steps

wavenet_vocoder = pytest.importorskip("wavenet_vocoder", reason="r9y9's wavenet_vocoder==0.1.1 is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = one_triton_on_cpu(available_backends(DEVICE))

BASE = dict(layers=6, stacks=2, residual_channels=8, gate_channels=16, skip_out_channels=12, kernel_size=3,
            sample_rate=8000)
MEL = dict(cin_channels=5, upsample_conditional_features=True, upsample_scales=[2, 3], hop_size=6,
           freq_axis_kernel_size=3)
SPEAKER = dict(gin_channels=4, n_speakers=3)
HPARAMS = {
    "mol-mel-speaker": dict(BASE, input_type="raw", out_channels=30, **MEL, **SPEAKER),
    "mol-k2-plain": dict(BASE, input_type="raw", out_channels=12, kernel_size=2, legacy=False,
                         weight_normalization=False),
    "softmax-mel": dict(BASE, input_type="mulaw-quantize", quantize_channels=64, out_channels=64, **MEL),
    "gaussian-speaker": dict(BASE, input_type="raw", out_channels=2, output_distribution="Normal", stacks=3,
                             layers=6, **SPEAKER),
    "mol-global-features": dict(BASE, input_type="raw", out_channels=12, gin_channels=3, use_speaker_embedding=False),
}


def r9y9_model(hp, seed=0):
    """r9y9's own WaveNet for these hparams (as its train.py builds it), weights drawn so every fold matters: weight
    norm gains away from the norms, non-zero biases."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = wavenet_vocoder.WaveNet(
            out_channels=hp["out_channels"], layers=hp["layers"], stacks=hp["stacks"],
            residual_channels=hp["residual_channels"], gate_channels=hp["gate_channels"],
            skip_out_channels=hp["skip_out_channels"], kernel_size=hp["kernel_size"],
            cin_channels=hp.get("cin_channels", -1), gin_channels=hp.get("gin_channels", -1),
            n_speakers=hp.get("n_speakers"), weight_normalization=hp.get("weight_normalization", True),
            upsample_conditional_features=hp.get("upsample_conditional_features", False),
            upsample_scales=hp.get("upsample_scales"), freq_axis_kernel_size=hp.get("freq_axis_kernel_size", 3),
            scalar_input=hp["input_type"] == "raw", legacy=hp.get("legacy", True),
            use_speaker_embedding=hp.get("use_speaker_embedding", True)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
            elif name.endswith("bias"):
                p.normal_(0, 0.3)
            elif not name.endswith("weight_v"):
                p.normal_(0, 0.4)
    return model


def save_r9y9(folder, name, seed=0):
    """Checkpoint and hparams files as r9y9's train.py and a user would write them."""
    hp = HPARAMS[name]
    model = r9y9_model(hp, seed)
    ckpt, hparams = folder / f"{name}.pth", folder / f"{name}.json"
    torch.save({"state_dict": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "global_step": 100, "global_epoch": 1}, ckpt)
    hparams.write_text(json.dumps(hp))
    return model, ckpt, hparams


def r9y9_inputs(hp, batch, steps, seed=1):
    """Inputs for both: r9y9's x (B, C, T), our codes or values (B, T), mel frames (B, M, frames), speakers (B,)."""
    g = torch.Generator().manual_seed(seed)
    if hp["input_type"] == "raw":
        values = torch.rand(batch, steps, generator=g) * 2 - 1
        x = values[:, None, :]
    else:
        values = torch.randint(0, hp["quantize_channels"], (batch, steps), generator=g)
        x = torch.nn.functional.one_hot(values, hp["quantize_channels"]).transpose(1, 2).float()
    mel = torch.rand(batch, hp["cin_channels"], steps // hp["hop_size"], generator=g) if "cin_channels" in hp \
        else None
    speakers = torch.arange(batch) % hp["n_speakers"] if "n_speakers" in hp else None
    if not hp.get("use_speaker_embedding", True):  # external global features: a vector per stream
        speakers = torch.rand(batch, hp["gin_channels"], generator=g) * 2 - 1
    return x, values, mel, speakers


def r9y9_outputs(model, x, mel, speakers):
    """r9y9's forward: speakers are ids (B,), or external global features (B, E)."""
    with torch.no_grad():
        g = None if speakers is None else speakers[:, :, None] if speakers.is_floating_point() else speakers[:, None]
        return model(x, mel, g).transpose(1, 2)  # (B, T, O)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(HPARAMS))
def test_imported_model_gives_r9y9s_own_outputs(name, backend, tmp_path):
    hp = HPARAMS[name]
    model, ckpt, hparams = save_r9y9(tmp_path, name)
    imported = import_r9y9(ckpt, hparams)
    if backend == "naive" and name == "mol-mel-speaker":
        steps = 36
    else:
        steps = teacher_steps(imported.config, backend)
    steps += -steps % hp.get("hop_size", 1)  # r9y9's forward wants whole frames
    x, values, mel, speakers = r9y9_inputs(hp, 3, steps)
    expected = r9y9_outputs(model, x, mel, speakers)
    gen = Generator(imported, backend=backend, device=DEVICE)
    state = gen.new_state(3)
    cond = gen.conditioning(3, mel, speakers) if imported.config.conditioned else None
    split = steps // 3  # two calls: a chunk boundary mid-sequence
    got = torch.cat([gen.forward(state, values[:, :split], cond), gen.forward(state, values[:, split:], cond)],
                    dim=1).cpu()
    assert got.shape == expected.shape
    err = (got - expected).abs().amax(dim=(0, 2))
    assert err.max().item() <= 1e-4, f"worst step {err.argmax().item()}: {err.max().item():.2e}"


# ---- the master branch's layout ---------------------------------------------------------------------------------

MASTER = dict(BASE, input_type="raw", out_channels=30, output_distribution="Logistic", cin_channels=5,
              upsample_conditional_features=True, upsample_net="ConvInUpsampleNetwork",
              upsample_params={"upsample_scales": [2, 3], "freq_axis_kernel_size": 3}, cin_pad=2, hop_size=6,
              gin_channels=4, n_speakers=3)


def master_upsample(state, mel, hp):
    """r9y9 master's ConvInUpsampleNetwork, written from its source (wavenet_vocoder/upsample.py, with the mel
    edge-padded by cin_pad as its synthesis does): mel (B, M, frames) -> (B, M, frames * hop)."""
    p = hp["cin_pad"]
    c = torch.nn.functional.conv1d(torch.nn.functional.pad(mel, (p, p), mode="replicate"),
                                   state["upsample_net.conv_in.weight"]).unsqueeze(1)
    for i, scale in enumerate(hp["upsample_params"]["upsample_scales"]):
        g, v = (state[f"upsample_net.upsample.up_layers.{2 * i + 1}.weight_{x}"] for x in "gv")
        c = torch.nn.functional.interpolate(c, scale_factor=(1, scale), mode="nearest")
        c = torch.nn.functional.conv2d(c, g * v / v.norm(), padding=((v.shape[2] - 1) // 2, scale))
    return c.squeeze(1)


def master_checkpoint(folder, seed=0):
    """A state dict with the master branch's names and shapes, and its forward: r9y9 0.1's blocks (the same
    modules) with the master's differences applied: no biases on the conditioning projections, the skip sum times
    sqrt(1 / L) (folded here into the head's first gain, which the reference keeps as 0.1 computes it), and the
    ConvInUpsampleNetwork."""
    hp = MASTER
    blocks = r9y9_model(dict(hp, legacy=False, upsample_conditional_features=False), seed)
    state = {}
    with torch.no_grad():
        for name, t in blocks.state_dict().items():
            if (".conv1x1c." in name or ".conv1x1g." in name) and name.endswith("bias"):
                t.zero_()  # the reference computes without them; the checkpoint has none
                continue
            state[name] = t.clone()
        state["last_conv_layers.1.weight_g"] *= np.sqrt(hp["layers"])
        g = torch.Generator().manual_seed(seed)
        state["upsample_net.conv_in.weight"] = torch.randn(5, 5, 2 * hp["cin_pad"] + 1, generator=g) * 0.3
        for i, scale in enumerate(hp["upsample_params"]["upsample_scales"]):
            state[f"upsample_net.upsample.up_layers.{2 * i + 1}.weight_v"] = torch.randn(1, 1, 3, 2 * scale + 1,
                                                                                         generator=g)
            state[f"upsample_net.upsample.up_layers.{2 * i + 1}.weight_g"] = torch.full((1, 1, 1, 1), 1.3)
    ckpt, hparams = folder / "master.pth", folder / "master.json"
    torch.save({"state_dict": state, "global_step": 1}, ckpt)
    hparams.write_text(json.dumps(hp))

    def forward(x, mel, speakers):
        return r9y9_outputs(blocks, x, master_upsample(state, mel, hp), speakers)

    return forward, ckpt, hparams


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "naive"])
def test_master_branch_layout_gives_its_outputs(backend, tmp_path):
    forward, ckpt, hparams = master_checkpoint(tmp_path)
    imported = import_r9y9(ckpt, hparams)
    assert imported.config.upsampler == "r9y9-convin" and imported.config.cin_pad == 2
    steps = teacher_steps(imported.config, backend)
    steps += -steps % 6
    x, values, mel, speakers = r9y9_inputs(MASTER, 3, steps)
    expected = forward(x, mel, speakers)
    gen = Generator(imported, backend=backend, device=DEVICE)
    got = gen.forward(gen.new_state(3), values, gen.conditioning(3, mel, speakers)).cpu()
    err = (got - expected).abs().amax(dim=(0, 2))
    assert err.max().item() <= 1e-4, f"worst step {err.argmax().item()}: {err.max().item():.2e}"


def test_master_upsampler_streamed_equals_whole(tmp_path):
    """Frames fed a few at a time give the whole mel's terms bit for bit, and no sample is promised before the
    frames it depends on (cin_pad + one per level of lookahead) have arrived."""
    from fastwavenet.conditioning import StreamConditioning

    _, ckpt, hparams = master_checkpoint(tmp_path)
    imported = import_r9y9(ckpt, hparams)
    c = imported.config
    mel = torch.rand(5, 17)
    whole = StreamConditioning(c, imported.weights, torch.device("cpu"), mel, speaker=1)
    expected = torch.empty(17 * 6, c.layers, 2 * c.gate_channels)
    whole.terms(0, expected)
    streamed = StreamConditioning(c, imported.weights, torch.device("cpu"), speaker=1, streaming=True)
    got = torch.empty_like(expected)
    done, fed = 0, 0
    for size in (1, 3, 2, 5, 6):
        streamed.feed(mel[:, fed:fed + size])
        fed += size
        assert streamed.covered == max(fed - 4, 0) * 6  # lookahead: cin_pad 2 + 2 levels
        streamed.terms(done, got[done:streamed.covered])
        done = streamed.covered
        streamed.forget_before(done)
    streamed.close()
    assert streamed.covered == 17 * 6
    streamed.terms(done, got[done:])
    assert torch.equal(got, expected)


# ---- the sampling rules, against NumPy --------------------------------------------------------------------------

def numpy_rule(kind, y, u0, u1, temperature, argmax, log_scale_min):
    """fastwavenet/distributions.py's rule, written again in NumPy float64: one sample value."""
    y = y.astype(np.float64)
    if kind == "gaussian":
        mean, log_scale = y[0], y[1]
    else:
        K = len(y) // 3
        logits = y[:K]
        if argmax:
            k = int(np.argmax(logits))
        else:
            p = np.exp((logits - logits.max()) / temperature)
            cdf = np.cumsum(p)
            k = min(int(np.searchsorted(cdf, u0 * cdf[-1], side="right")), K - 1)
        mean, log_scale = y[K + k], y[2 * K + k]
    if argmax:
        return float(np.clip(mean, -1, 1))
    v = np.clip(u1, 1e-5, 1 - 1e-5)
    q = ndtri(v) if kind == "gaussian" else np.log(v) - np.log1p(-v)
    return float(np.clip(mean + temperature * np.exp(max(log_scale, log_scale_min)) * q, -1, 1))


@pytest.mark.parametrize("kind,outputs", [("logistic_mixture", 30), ("gaussian", 2)])
@pytest.mark.parametrize("temperature,argmax", [(1.0, False), (0.6, False), (1.0, True)])
def test_continuous_samplers_follow_numpy_reference(kind, outputs, temperature, argmax):
    from fastwavenet import distributions
    from fastwavenet.config import WaveNetConfig
    from fastwavenet.kernels.cpu import sample_continuous
    from fastwavenet.kernels.sampling_constants import GAUSSIAN, LOGISTIC_MIXTURE
    from fastwavenet.sampling import Sampling

    config = WaveNetConfig(scalar_input=True, output=kind, mixtures=10, input_kernel_size=1, log_scale_min=-5.0)
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.standard_normal((n, outputs)).astype(np.float32)  # logits, and means around 0
    scales = slice(1, 2) if kind == "gaussian" else slice(20, 30)
    y[:, scales] = rng.uniform(-6, -1, (n, scales.stop - scales.start))  # log scales, some below the clamp
    u = rng.random((n, 2), dtype=np.float32)
    u[:5, 1] = [0.0, 1e-7, 0.5, np.nextafter(np.float32(1), np.float32(0)), 1 - 1e-7]  # the clamped ends
    expected = np.array([numpy_rule(kind, y[i], u[i, 0], u[i, 1], temperature, argmax, -5.0) for i in range(n)])
    code = GAUSSIAN if kind == "gaussian" else LOGISTIC_MIXTURE
    scratch = np.empty(outputs, np.float64)
    kernel = np.array([sample_continuous(y[i], float(u[i, 0]), float(u[i, 1]), code, temperature, argmax, -5.0,
                                         scratch) for i in range(n)])
    reference = distributions.sample(config, torch.from_numpy(y), torch.from_numpy(u),
                                     [Sampling(temperature=temperature, argmax=argmax)] * n).numpy()
    for got in (kernel, reference):
        close = np.abs(got - expected) <= 1e-5
        # A different component is allowed only where u0 lies within rounding of a component boundary.
        assert (~close).sum() <= 2, f"{(~close).sum()} of {n} draws differ"
    assert np.all(np.abs(expected) <= 1) and len(np.unique(expected)) > n // 2


def test_generation_draws_what_the_rule_draws_from_r9y9s_outputs(tmp_path):
    """numba's own generate path: every sample is the rule applied to r9y9's outputs for the samples before it."""
    hp = HPARAMS["mol-mel-speaker"]
    model, ckpt, hparams = save_r9y9(tmp_path, "mol-mel-speaker")
    imported = import_r9y9(ckpt, hparams)
    steps = 48
    _, _, mel, speakers = r9y9_inputs(hp, 2, steps)
    for backend in BACKENDS:
        if backend == "naive":
            continue
        gen = Generator(imported, backend=backend, device=DEVICE)
        rngs = [np.random.default_rng(10 + i) for i in range(2)]
        u = np.stack([np.random.default_rng(10 + i).random((steps, 2), dtype=np.float32) for i in range(2)], 1)
        values = gen.generate_codes(gen.new_state(2), steps, rng=rngs,
                                    conditioning=gen.conditioning(2, mel, speakers))
        inputs = torch.cat([torch.zeros(2, 1), values[:, :-1]], dim=1)  # silence first, then what was drawn
        outputs = r9y9_outputs(model, inputs[:, None, :], mel, speakers).numpy()
        expected = np.array([[numpy_rule("logistic_mixture", outputs[b, t], u[t, b, 0], u[t, b, 1], 1.0, False,
                                         imported.config.log_scale_min) for t in range(steps)] for b in range(2)])
        assert (np.abs(values.numpy() - expected) > 1e-4).sum() <= 1, backend


# ---- the command line, and what is refused -------------------------------------------------------------------

def test_import_vocode_and_score_from_the_command_line(tmp_path):
    _, ckpt, hparams = save_r9y9(tmp_path, "mol-mel-speaker")
    out = tmp_path / "model.safetensors"
    result = run_cli("import", "r9y9", ckpt, "--hparams", hparams, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "logistic mixture of 10" in result.stdout
    feats = tmp_path / "feats.npy"
    np.save(feats, np.random.default_rng(0).random((20, 5), dtype=np.float32))  # (frames, bands), r9y9's layout
    wav = tmp_path / "out.wav"
    result = run_cli("vocode", out, feats, "-o", wav, "--speaker", "1", "--seed", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    audio, rate = soundfile.read(wav)
    assert rate == 8000 and len(audio) == 20 * 6 and np.abs(audio).max() <= 1
    result = run_cli("vocode", out, wav, "-o", tmp_path / "again.wav", "--speaker", "1")
    assert result.returncode == 2 and "r9y9" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_generate_with_global_features_from_the_command_line(tmp_path):
    _, ckpt, hparams = save_r9y9(tmp_path, "mol-global-features")
    out = tmp_path / "model.safetensors"
    assert run_cli("import", "r9y9", ckpt, "--hparams", hparams, "-o", out).returncode == 0
    features = tmp_path / "g.npy"
    np.save(features, np.array([0.5, -0.2, 0.1], np.float32))
    wav = tmp_path / "out.wav"
    result = run_cli("generate", "--model", out, "-o", wav, "--seconds", "0.01", "--global-features", features,
                     "--seed", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    expected = Generator(import_r9y9(ckpt, hparams), backend="numba" if "numba" in BACKENDS else "torch").generate(
        samples=80, seed=1, speaker=np.array([0.5, -0.2, 0.1], np.float32))[0]
    audio, _ = soundfile.read(wav, dtype="float32")
    assert np.abs(audio - expected).max() <= 1 / 32767  # 16-bit WAV
    np.save(features, np.zeros(4, np.float32))
    result = run_cli("generate", "--model", out, "-o", wav, "--seconds", "0.01", "--global-features", features)
    assert result.returncode == 2 and "3 finite values per stream" in result.stderr


def test_score_reports_the_discretized_likelihood(tmp_path):
    from fastwavenet.distributions import log_likelihood
    from fastwavenet.score import score_audio

    model, ckpt, hparams = save_r9y9(tmp_path, "mol-k2-plain")
    imported = import_r9y9(ckpt, hparams)
    x = np.clip(np.random.default_rng(2).standard_normal(200) * 0.3, -1, 1).astype(np.float32)
    bits = score_audio(imported, x)
    # r9y9's own loss (its discretized_mix_logistic_loss, 65536 levels) on its own outputs, after the first
    # receptive field, agrees; run in float64, since in float32 the difference of two sigmoids that makes a level's
    # probability (about 1e-5) keeps only two or three digits.
    from wavenet_vocoder.mixture import discretized_mix_logistic_loss

    rf = imported.config.receptive_field
    with torch.no_grad():
        y = model(torch.from_numpy(x)[None, None, :])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nats = discretized_mix_logistic_loss(y[:, :, rf - 1:-1].double(), torch.from_numpy(x)[None, rf:, None].double(),
                                             num_classes=65536, reduce=False)
    assert bits == pytest.approx(nats.mean().item() / np.log(2), rel=1e-6)
    ours = log_likelihood(imported.config, y[0, :, rf - 1:-1], torch.from_numpy(x[rf:]))
    assert torch.allclose(-ours, nats[0, :, 0], atol=1e-6)


BAD = {
    "not a checkpoint": lambda sd: b"not a torch file",
    "no state dict": lambda sd: {"model": sd},
    "unknown parameter": lambda sd: {"state_dict": {**sd, "extra.weight": torch.zeros(1)}},
    "missing parameter": lambda sd: {"state_dict": {k: v for k, v in sd.items() if "conv_layers.2.conv." not in k}},
    "wrong shape": lambda sd: {"state_dict": {**sd, "conv_layers.0.conv.weight_v": torch.zeros(16, 8, 2)}},
}
EXPECT = {"not a checkpoint": "not a readable PyTorch checkpoint", "no state dict": "no 'state_dict'",
          "unknown parameter": "'extra.weight'", "missing parameter": "conv_layers.2.conv.weight,",
          "wrong shape": "conv_layers.0.conv.weight_v has shape (16, 8, 2)"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_refused_naming_the_first_mismatch(case, tmp_path):
    hp = HPARAMS["mol-mel-speaker"]
    sd = r9y9_model(hp).state_dict()
    path, hparams = tmp_path / "bad.pth", tmp_path / "hp.json"
    hparams.write_text(json.dumps(hp))
    content = BAD[case](sd)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(FastWaveNetError, match=EXPECT[case].replace("(", r"\(").replace(")", r"\)")):
        import_r9y9(path, hparams)
    result = run_cli("import", "r9y9", path, "--hparams", hparams, "-o", tmp_path / "m.safetensors")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.safetensors").exists()


def test_pickled_objects_are_not_loaded(tmp_path):
    """weights_only: a checkpoint that would run code when unpickled is refused, and the code does not run."""
    import collections

    path, hparams = tmp_path / "evil.pth", tmp_path / "hp.json"
    hparams.write_text(json.dumps(HPARAMS["mol-k2-plain"]))
    torch.save({"state_dict": collections.Counter(a=1), "f": np.random.default_rng}, path)
    with pytest.raises(FastWaveNetError, match="not a readable PyTorch checkpoint"):
        import_r9y9(path, hparams)


@pytest.mark.parametrize("change,message", [
    (dict(input_type="mulaw"), "input_type 'mulaw'"),
    (dict(upsample_net="UpsampleNetwork"), "upsample_net 'UpsampleNetwork'"),
    (dict(output_distribution="Laplace"), "output_distribution 'Laplace'"),
    (dict(out_channels=31), "not 3 x mixtures"),
    (dict(gate_channels=15), "gate_channels 15 is odd"),
    (dict(upsample_scales=[2, 2]), "product is hop_length 6"),
    (dict(n_speakers=None), "n_speakers is not"),
])
def test_hparams_fastwavenet_does_not_run_are_refused(change, message, tmp_path):
    _, ckpt, hparams = save_r9y9(tmp_path, "mol-mel-speaker")
    hparams.write_text(json.dumps({**HPARAMS["mol-mel-speaker"], **change}))
    with pytest.raises(FastWaveNetError, match=message.replace("(", r"\(")):
        import_r9y9(ckpt, hparams)


MISSING = object()  # a field left out of the hparams


@pytest.mark.parametrize("change, words", [
    (dict(layers="6"), "layers must be an integer, got '6'"),
    (dict(stacks=[2]), "stacks must be an integer, got [2]"),
    (dict(gate_channels=None), "gate_channels must be an integer, got None"),
    (dict(kernel_size=True), "kernel_size must be an integer, got True"),
    (dict(log_scale_min="low"), "log_scale_min must be a number, got 'low'"),
    (dict(legacy="false"), "legacy must be true or false, got 'false'"),
    (dict(cin_channels=5.0), "cin_channels must be an integer, got 5.0"),
    (dict(upsample_scales=[2, "3"]), "upsample_scales must be a list of integers, got [2, '3']"),
    (dict(upsample_params=[4, 4]), "upsample_params must be an object, got [4, 4]"),
    (dict(upsample_params={"upsample_scales": 6}), "upsample_params: upsample_scales must be a list of integers"),
    (dict(stacks=0), "stacks must be at least 1, got 0"),
    (dict(layers=MISSING), "hparams: missing layers"),
])
def test_hparams_of_the_wrong_type_are_one_line_errors(change, words, tmp_path, capsys):
    """A value of the wrong type (a string, a list, null, a bool where a number is wanted) or a missing field: exit
    2 with one line naming the field, no file written."""
    from fastwavenet.cli import main

    _, ckpt, hparams = save_r9y9(tmp_path, "mol-mel-speaker")
    hp = {name: value for name, value in {**HPARAMS["mol-mel-speaker"], **change}.items() if value is not MISSING}
    hparams.write_text(json.dumps(hp))
    out = tmp_path / "m.safetensors"
    assert main(["import", "r9y9", str(ckpt), "--hparams", str(hparams), "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not out.exists()


def test_top_k_is_refused_for_a_continuous_output(tmp_path):
    from fastwavenet.sampling import Sampling

    _, ckpt, hparams = save_r9y9(tmp_path, "mol-k2-plain")
    gen = Generator(import_r9y9(ckpt, hparams), backend="numba" if "numba" in BACKENDS else "torch")
    with pytest.raises(FastWaveNetError, match="top-k and top-p"):
        gen.generate(samples=4, sampling=Sampling(top_k=5))


def test_engine_requests_of_an_imported_vocoder_equal_the_generator_alone(tmp_path):
    """Serving an r9y9 vocoder: requests with their own seeds, speakers, rules and mel, batched together, each
    equal the Generator run alone (numba: one request, one answer), primes included."""
    pytest.importorskip("numba")
    from fastwavenet.engine import Engine
    from fastwavenet.sampling import Sampling

    _, ckpt, hparams = save_r9y9(tmp_path, "mol-mel-speaker")
    gen = Generator(import_r9y9(ckpt, hparams), backend="numba")
    rng = np.random.default_rng(3)
    jobs = [dict(seed=s, speaker=s % 3, mel=rng.random((5, 20 + 7 * s), dtype=np.float32),
                 sampling=[Sampling(), Sampling(temperature=0.5), Sampling(argmax=True)][s % 3]) for s in range(5)]
    jobs[2]["prime"] = np.sin(np.arange(40) / 5.0).astype(np.float32) * 0.5
    expected = [gen.generate(**job)[0] for job in jobs]
    with Engine(gen, max_active=3, round_seconds=0.001) as engine:
        got = [r.result() for r in [engine.submit(**job) for job in jobs]]
    for job, a, b in zip(jobs, got, expected):
        assert np.array_equal(a, b), job["seed"]
