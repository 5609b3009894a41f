"""bf16 weights: every backend gives the training model's own logits when that model is evaluated with the same
rounded weights, and the numba kernel, reading 16-bit weights, computes exactly what it computes in float32 on them."""

import json

import numpy as np
import pytest
import torch

from fastwavenet.backends import available_backends
from fastwavenet.folded import fold, unfold
from fastwavenet.errors import FastWaveNetError
from fastwavenet.folded import MATRICES, rounded
from fastwavenet.generator import Generator
from fastwavenet.modelfile import ModelFile

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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["tiny", "k3-nobias-gate", "mel+speaker"])
def test_bf16_logits_match_the_training_model_with_rounded_weights(name, backend):
    config = CONFIGS[name]
    model = random_model(config)
    low = unfold(rounded(fold(model), "bf16"), config)  # the training model, evaluated with the rounded weights
    steps = teacher_steps(config, backend, short=backend == "naive")
    codes = torch.randint(0, config.classes, (3, steps), generator=torch.Generator().manual_seed(1))
    mel, speaker = conditioning_inputs(config, 3, steps)
    expected = model_logits(low, codes, mel, speaker)
    gen = Generator(ModelFile(config, fold(model)), backend=backend, device=DEVICE, precision="bf16")
    state = gen.new_state(3)
    got = gen.forward(state, codes, gen.conditioning(3, mel, speaker)).cpu()
    assert (got - expected).abs().max().item() <= 1e-4
    if backend == "numba":  # the 16-bit weights are what it stores
        assert gen.backend.weights.dilated_w.dtype == np.uint16 and gen.backend.weights.embed.dtype == np.float32


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
def test_numba_bf16_equals_float32_on_the_rounded_weights_bit_for_bit():
    config = CONFIGS["k3-nobias-gate"]
    weights = fold(random_model(config, 2))
    sixteen = Generator(ModelFile(config, weights), backend="numba", precision="bf16")
    thirty_two = Generator(ModelFile(config, rounded(weights, "bf16")), backend="numba")
    a = sixteen.generate(samples=300, batch=3, seed=4)
    b = thirty_two.generate(samples=300, batch=3, seed=4)
    assert np.array_equal(a, b)
    # Tiles of many streams run on a float32 copy of the rounded weights, widened once: the same numbers.
    sixteen.backend.WIDEN_FROM = 1
    assert sixteen.backend._kernel_weights(1).out_w.dtype == np.float32
    assert np.array_equal(sixteen.generate(samples=300, batch=3, seed=4), a)


def test_generate_and_score_take_the_precision_on_the_command_line(tmp_path, sine_folder):
    models = save_models(tmp_path)
    scores = {}
    for precision in ("float32", "bf16"):
        result = run_cli("score", models["tiny"], sine_folder / "tone0.wav", "--precision", precision, "--json")
        assert result.returncode == 0, result.stderr
        scores[precision] = json.loads(result.stdout)[0]["bits_per_sample"]
    assert scores["bf16"] != scores["float32"] and abs(scores["bf16"] - scores["float32"]) < 0.05
    result = run_cli("generate", "--model", models["tiny"], "-o", tmp_path / "a.wav", "--seconds", "0.05",
                     "--precision", "bf16", "--quiet")
    assert result.returncode == 0, result.stderr
    result = run_cli("generate", "--model", models["tiny"], "-o", tmp_path / "b.wav", "--seconds", "0.05",
                     "--precision", "fp8")
    assert result.returncode == 2 and "unknown precision 'fp8'" in result.stderr
    assert not (tmp_path / "b.wav").exists()
