"""bf16 and int8 weights: every backend gives the training model's own logits when that model is evaluated with the
same rounded weights; the numba kernel, reading 16-bit weights, computes exactly what it computes in float32 on them,
and reading 8-bit weights (their scales factored out of its sums) within a few float32 roundings of it."""

import json

import numpy as np
import pytest
import torch

from fastwavenet.backends import available_backends
from fastwavenet.config import WaveNetConfig
from fastwavenet.folded import fold, unfold
from fastwavenet.errors import FastWaveNetError
from fastwavenet.folded import MATRICES, int8_parts, rounded
from fastwavenet.generator import Generator
from fastwavenet.modelfile import ModelFile, load_model

from helpers import one_triton_on_cpu, random_model, run_cli, save_models
from test_exactness import CONFIGS, conditioning_inputs, model_logits, teacher_steps

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The slow interpreter last.
BACKENDS = sorted(one_triton_on_cpu(available_backends(DEVICE)), key=lambda b: b.startswith("triton"))


def test_rounding_is_to_nearest_bf16_and_only_the_matrices():
    weights = fold(random_model(CONFIGS["mel+speaker"]))
    low = rounded(weights, "bf16")
    for name, tensor in weights.tensors().items():
        got = getattr(low, name)
        if name in MATRICES:
            bits = got.view(torch.int32) & 0xFFFF
            assert torch.all(bits == 0), name  # representable in bf16
            assert torch.all((got - tensor).abs() <= tensor.abs() * 2.0 ** -8), name  # half an ulp of 8 bits
            assert not torch.equal(got, tensor)
        else:
            assert torch.equal(got, tensor), name
    assert rounded(weights, "float32") is weights
    with pytest.raises(FastWaveNetError, match="unknown precision"):
        rounded(weights, "fp8")


def test_int8_is_per_output_column_and_exact_in_float32():
    """Each matrix's column (of each layer's (in, out) matrix, taps stacked) is q * scale with q in [-127, 127],
    its largest weight at |q| = 127, every weight within half a step of the original; q * scale is exact in float32,
    so quantizing the rounded weights again gives them back bit for bit (how the numba backend gets q and scale)."""
    weights = fold(random_model(CONFIGS["mel+speaker"]))
    low = rounded(weights, "int8")
    for name, tensor in weights.tensors().items():
        got = getattr(low, name)
        if name not in MATRICES:
            assert torch.equal(got, tensor), name
            continue
        q, scale = int8_parts(got)
        columns = (scale[None, :] if tensor.dim() == 2 else scale.reshape(scale.shape[0], *[1] * (tensor.dim() - 2),
                                                                          scale.shape[1]))
        assert q.dtype == torch.int8 and q.abs().max() <= 127
        assert torch.equal(q.to(torch.float64) * columns.to(torch.float64), got.to(torch.float64)), name
        assert torch.all((got - tensor).abs() <= columns * 0.5 * (1 + 2.0 ** -16)), name
        stacked = q.reshape(q.shape[0], -1, q.shape[-1]) if q.dim() > 2 else q[None]
        peak = stacked.abs().amax(dim=1)  # 127, or 0 in an all-zero column (the last layer's residual columns)
        assert torch.all(torch.where(scale.reshape(peak.shape) > 0, peak == 127, peak == 0)), name
        assert torch.equal(int8_parts(tensor)[0], q) and torch.equal(int8_parts(tensor)[1], scale), name
    assert torch.equal(rounded(low, "int8").out_w, low.out_w)
    q, scale = int8_parts(torch.zeros(4, 3))
    assert torch.equal(q, torch.zeros(4, 3, dtype=torch.int8)) and torch.equal(scale, torch.zeros(3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("name", ["tiny", "k3-nobias-gate", "mel+speaker"])
def test_low_precision_logits_match_the_training_model_with_rounded_weights(name, precision, backend):
    config = CONFIGS[name]
    model = random_model(config)
    low = unfold(rounded(fold(model), precision), config)  # the training model, evaluated with the rounded weights
    steps = teacher_steps(config, backend, short=backend == "naive")
    codes = torch.randint(0, config.classes, (3, steps), generator=torch.Generator().manual_seed(1))
    mel, speaker = conditioning_inputs(config, 3, steps)
    expected = model_logits(low, codes, mel, speaker)
    gen = Generator(ModelFile(config, fold(model)), backend=backend, device=DEVICE, precision=precision)
    state = gen.new_state(3)
    got = gen.forward(state, codes, gen.conditioning(3, mel, speaker)).cpu()
    assert (got - expected).abs().max().item() <= 1e-4
    if backend == "numba":  # the narrow weights are what it stores
        stored = {"bf16": np.uint16, "int8": np.int8}[precision]
        assert gen.backend.weights.dilated_w.dtype == stored and gen.backend.weights.embed.dtype == np.float32
    if backend.startswith("triton"):  # bf16 held in 16 bits and widened as read; int8 held in float32
        assert gen.backend.weights.dilated_w.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)


# int8's cost in the test configs' teacher-forced logits (random weights, 3 seeds): at most 1.5 % of the largest
# float32 logit (bf16: 0.8 %). The bound holds it to twice that; real models' cost in bits is in docs/BENCHMARKS.md.
INT8_LOGIT_BOUND = 0.03


@pytest.mark.parametrize("name", list(CONFIGS))
def test_int8_logits_stay_near_float32(name):
    config = CONFIGS[name]
    model = random_model(config, 2)
    steps = teacher_steps(config, "torch")
    codes = torch.randint(0, config.classes, (3, steps), generator=torch.Generator().manual_seed(1))
    mel, speaker = conditioning_inputs(config, 3, steps)
    expected = model_logits(model, codes, mel, speaker)
    gen = Generator(ModelFile(config, fold(model)), backend="torch", precision="int8")
    got = gen.forward(gen.new_state(3), codes, gen.conditioning(3, mel, speaker))
    difference = (got - expected).abs().max().item()
    assert 0 < difference <= INT8_LOGIT_BOUND * expected.abs().max().item()


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
def test_numba_bf16_equals_float32_on_the_rounded_weights_bit_for_bit():
    config = CONFIGS["k3-nobias-gate"]
    weights = fold(random_model(config, 2))
    narrow = Generator(ModelFile(config, weights), backend="numba", precision="bf16")
    thirty_two = Generator(ModelFile(config, rounded(weights, "bf16")), backend="numba")
    a = narrow.generate(samples=300, batch=3, seed=4)
    b = thirty_two.generate(samples=300, batch=3, seed=4)
    assert np.array_equal(a, b)
    # Tiles of many streams run on a float32 copy of the rounded weights: the same numbers.
    narrow.backend.WIDEN_FROM = 1
    assert narrow.backend._kernel_weights(1).out_w.dtype == np.float32
    assert np.array_equal(narrow.generate(samples=300, batch=3, seed=4), a)


# Wider than `_INT8_CHUNK` (64) rows: a tap's products (96 rows) and the output's (80) in two chunks each.
WIDE = WaveNetConfig(sample_rate=8000, classes=32, residual_channels=96, gate_channels=80, skip_channels=40,
                     head_channels=16, kernel_size=2, layers_per_stack=3, stacks=1)


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("name", ["k3-nobias-gate", "tiny", "wide"])
def test_numba_int8_is_near_float32_on_the_rounded_weights_and_the_same_in_panels(name):
    """int8 factors each column's scale out of its sums, once per chunk of rows (`cpu._INT8_CHUNK`): teacher-forced
    logits within 1e-5 of float32's on the rounded weights, not equal to them; many-stream tiles read q in float32
    panels, with the same chunks: the same numbers as the natural layout, bit for bit."""
    config = WIDE if name == "wide" else CONFIGS[name]
    weights = fold(random_model(config, 2))
    narrow = Generator(ModelFile(config, weights), backend="numba", precision="int8")
    thirty_two = Generator(ModelFile(config, rounded(weights, "int8")), backend="numba")
    steps = teacher_steps(config, "numba")
    codes = torch.randint(0, config.classes, (3, steps), generator=torch.Generator().manual_seed(1))
    mel, speaker = conditioning_inputs(config, 3, steps)

    def logits(gen):
        return gen.forward(gen.new_state(3), codes, gen.conditioning(3, mel, speaker))

    a, b = logits(narrow), logits(thirty_two)
    assert 0 < (a - b).abs().max().item() <= 1e-5 * (1 + b.abs().max().item())
    narrow.backend.WIDEN_FROM = 1
    panelled = narrow.backend._kernel_weights(3)
    assert panelled.dilated_p.shape[1] > 0 and panelled.dilated_p.dtype == np.float32  # panels of q
    assert torch.equal(logits(narrow), a)


def assert_alone_equals_batched(gen, config):
    """Five streams generated together: each one's codes bit for bit those it gets generated alone."""
    batch, steps = 5, 40
    mel, speaker = conditioning_inputs(config, batch, steps)
    one = lambda t, i: None if t is None else t[i:i + 1]  # noqa: E731
    together = gen.generate_codes(gen.new_state(batch), steps, rng=[np.random.default_rng(i) for i in range(batch)],
                                  conditioning=gen.conditioning(batch, mel, speaker))
    for i in range(batch):
        alone = gen.generate_codes(gen.new_state(1), steps, rng=[np.random.default_rng(i)],
                                   conditioning=gen.conditioning(1, one(mel, i), one(speaker, i)))
        assert torch.equal(together[i:i + 1], alone), i


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("tile", [5, 2])
@pytest.mark.parametrize("name", ["k4-odd", "mel+speaker", "wide"])
def test_numba_int8_stream_is_the_same_alone_and_in_a_batch(name, tile, monkeypatch):
    """A stream's codes at int8 are bit for bit those it gets alone, in a tile of one (8-bit weights in strips) or in
    a batch whose tiles (of 5 or 2 streams, whatever the thread count) read q in float32 panels (5) or int8 in the
    natural layout (2)."""
    from fastwavenet.backends.numba_cpu import NumbaBackend

    config = WIDE if name == "wide" else CONFIGS[name]
    monkeypatch.setattr(NumbaBackend, "_tile", staticmethod(lambda batch: min(batch, tile)))
    gen = Generator(ModelFile(config, fold(random_model(config, 1))), backend="numba", precision="int8")
    gen.backend.WIDEN_FROM = 3
    assert_alone_equals_batched(gen, config)


# w8a8's cost in the same logits (numba, 3 seeds each): at most 1.8 % of the largest float32 logit (int8 alone
# 1.4 % there). The bound holds it to about twice that.
W8A8_LOGIT_BOUND = 0.04


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_w8a8_logits_stay_near_float32(name):
    """8-bit activations on int8 weights (numba): teacher-forced logits within the bound of float32's, and not
    int8's (the activations are rounded too); the backend keeps no widened float32 copy."""
    config = CONFIGS[name]
    model = random_model(config, 2)
    steps = teacher_steps(config, "numba")
    codes = torch.randint(0, config.classes, (3, steps), generator=torch.Generator().manual_seed(1))
    mel, speaker = conditioning_inputs(config, 3, steps)
    expected = model_logits(model, codes, mel, speaker)
    got = {}
    for precision in ("int8", "w8a8"):
        gen = Generator(ModelFile(config, fold(model)), backend="numba", precision=precision)
        got[precision] = gen.forward(gen.new_state(3), codes, gen.conditioning(3, mel, speaker))
    difference = (got["w8a8"] - expected).abs().max().item()
    assert 0 < difference <= W8A8_LOGIT_BOUND * expected.abs().max().item()
    assert not torch.equal(got["w8a8"], got["int8"])
    assert gen.backend._kernel_weights(64) is gen.backend.weights


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("name", ["k4-odd", "mel+speaker"])
def test_numba_w8a8_stream_is_the_same_alone_and_in_a_batch(name):
    """A stream's w8a8 codes are bit for bit those it gets alone: its activations are quantized per stream, and
    its integer sums are exact, in a tile of one or in tiles of several streams on several threads."""
    config = CONFIGS[name]
    gen = Generator(ModelFile(config, fold(random_model(config, 1))), backend="numba", precision="w8a8")
    assert_alone_equals_batched(gen, config)


def test_w8a8_is_the_numba_backends_alone():
    """Other backends refuse w8a8 with one line naming those that compute it; `auto` on the CPU takes numba or
    numba-split."""
    config = CONFIGS["tiny"]
    model = ModelFile(config, fold(random_model(config)))
    refusal = "backend 'torch' does not compute precision 'w8a8'; numba and numba-split"
    with pytest.raises(FastWaveNetError, match=refusal):
        Generator(model, backend="torch", precision="w8a8")
    if "numba" in BACKENDS:
        assert Generator(model, backend="auto", precision="w8a8").backend.name in ("numba", "numba-split")


def test_w8a8_misuse_on_the_command_line_exits_2(tmp_path, sine_folder):
    models = save_models(tmp_path)
    result = run_cli("generate", "--model", models["tiny"], "-o", tmp_path / "b.wav", "--seconds", "0.05",
                     "--backend", "torch", "--precision", "w8a8")
    assert result.returncode == 2 and "does not compute precision 'w8a8'" in result.stderr
    assert not (tmp_path / "b.wav").exists()


def test_generate_and_score_take_the_precision_on_the_command_line(tmp_path, sine_folder):
    models = save_models(tmp_path)
    scores = {}
    for precision in ("float32", "bf16", "int8"):
        result = run_cli("score", models["tiny"], sine_folder / "tone0.wav", "--precision", precision, "--json")
        assert result.returncode == 0, result.stderr
        scores[precision] = json.loads(result.stdout)[0]["bits_per_sample"]
    for precision in ("bf16", "int8"):
        assert scores[precision] != scores["float32"] and abs(scores[precision] - scores["float32"]) < 0.05
    files = [sine_folder / "tone0.wav", sine_folder / "stereo.flac"]  # of two lengths
    result = run_cli("score", models["tiny"], *files)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3, result.stderr
    rows = json.loads(run_cli("score", models["tiny"], *files, "--json").stdout)
    rf = load_model(models["tiny"]).config.receptive_field
    assert [r["scored"] for r in rows] == [r["samples"] - rf for r in rows]
    assert rows[0]["samples"] != rows[1]["samples"]
    scored = sum(r["scored"] for r in rows)
    mean = sum(r["bits_per_sample"] * r["scored"] for r in rows) / scored
    assert lines[2].split()[0] == f"{mean:.4f}" and lines[2].endswith(f"all 2 files ({scored} scored)")
    result = run_cli("generate", "--model", models["tiny"], "-o", tmp_path / "a.wav", "--seconds", "0.05",
                     "--precision", "bf16", "--quiet")
    assert result.returncode == 0, result.stderr
    result = run_cli("generate", "--model", models["tiny"], "-o", tmp_path / "b.wav", "--seconds", "0.05",
                     "--precision", "fp8")
    assert result.returncode == 2 and "unknown precision 'fp8'" in result.stderr
    assert not (tmp_path / "b.wav").exists()


@pytest.mark.skipif("numba" not in BACKENDS, reason="w8a8 is the numba kernel's")
def test_score_at_w8a8_runs_the_numba_generator(tmp_path, sine_folder):
    """score --precision w8a8 scores with the numba kernel's 8-bit activations: a few bits per sample, near int8's
    (the torch forward with int8's weights), not equal to them; through the CLI too."""
    from fastwavenet.score import score_files

    config = CONFIGS["tiny"]
    model = ModelFile(config, fold(random_model(config)))
    tone = sine_folder / "tone0.wav"
    int8 = score_files(model, [tone], "int8")[0]["bits_per_sample"]
    w8a8 = score_files(model, [tone], "w8a8")[0]["bits_per_sample"]
    assert 0 < w8a8 < 16 and w8a8 != int8 and abs(w8a8 - int8) < 0.05 * int8
    result = run_cli("score", save_models(tmp_path)["tiny"], tone, "--precision", "w8a8")
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
def test_numba_w8a8_stream_is_the_same_alone_and_in_a_batch_of_tiles(monkeypatch):
    """Channels of 64 and 16 streams in one tile: every product takes AMX's tiles where the CPU has them
    (`cpu._products8`), and a stream alone takes `vpdpbusd` (or the integer fallback): the same codes."""
    from fastwavenet.backends.numba_cpu import NumbaBackend

    monkeypatch.setattr(NumbaBackend, "_tile", staticmethod(lambda batch: batch))
    config = WaveNetConfig(sample_rate=8000, classes=64, residual_channels=64, gate_channels=64, skip_channels=64,
                           head_channels=64, kernel_size=2, layers_per_stack=3, stacks=1)
    gen = Generator(ModelFile(config, fold(random_model(config, 1))), backend="numba", precision="w8a8")
    batch, steps = 16, 30
    together = gen.generate_codes(gen.new_state(batch), steps, rng=[np.random.default_rng(i) for i in range(batch)])
    for i in range(batch):
        alone = gen.generate_codes(gen.new_state(1), steps, rng=[np.random.default_rng(i)])
        assert torch.equal(together[i:i + 1], alone), i
