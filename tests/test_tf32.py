"""What the tiled Triton kernel's tensor-core products (tl.dot in 3xTF32, kernels/gpu.py `_tile_dot`) cost in
accuracy, measured without a GPU: Triton's interpreter multiplies in plain float32 whatever the precision asked, so
these tests emulate the split on the CPU. The torch backend's step is run with every matrix product replaced by
the emulated one, teacher-forced, against the training model.

3xTF32 rounds each float32 operand to TF32 (10 mantissa bits, to nearest, ties away from zero, as the GPU's
cvt.rna.tf32.f32), rounds what is left to TF32 again, and adds the three products that matter in float32: small
times big, big times small, then big times big. The emulation sums each product in the CPU's float32 order where
the tensor cores have their own, so it bounds the operands' rounding, not the GPU's bits: the CUDA run of
test_exactness is the final word on those."""

import importlib.util
from pathlib import Path

import pytest
import torch

from fastwavenet import WaveNetConfig, preset
from fastwavenet.folded import fold
from fastwavenet.generator import Generator
from fastwavenet.modelfile import ModelFile

from helpers import random_model
from test_exactness import CONFIGS, conditioning_inputs, model_logits

# The emulation lives with the recipe that scores real audio with it (recipes/tf32_cost.py)
_spec = importlib.util.spec_from_file_location("tf32_cost",
                                               Path(__file__).resolve().parents[1] / "recipes" / "tf32_cost.py")
tf32_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tf32_cost)
tf32 = tf32_cost.tf32


MODELS = {
    **CONFIGS,
    "standard": preset("standard").replace(layers_per_stack=5),  # R = G = 64, S = H = 256: sums of 128 and 256
    "wide-k3": WaveNetConfig(sample_rate=8000, classes=256, residual_channels=128, gate_channels=128,
                             skip_channels=128, head_channels=128, kernel_size=3, layers_per_stack=4, stacks=1),
}


def worst_difference(name, mode):
    """The worst teacher-forced logit difference from the training model of the torch step with its products in
    `mode`, and the largest logit."""
    config = MODELS[name]
    steps = config.receptive_field + 17
    model = random_model(config)
    batch = 2
    codes = torch.randint(0, config.classes, (batch, steps), generator=torch.Generator().manual_seed(1))
    mel, speaker = conditioning_inputs(config, batch, steps)
    expected = model_logits(model, codes, mel, speaker)
    gen = Generator(ModelFile(config, fold(model)), backend="torch", device="cpu")
    conditioning = gen.conditioning(batch, mel, speaker)
    with tf32_cost.emulated(mode):  # the step's and gate_and_project's products
        got = gen.forward(gen.new_state(batch), codes, conditioning)
    return (got - expected).abs().max().item(), expected.abs().max().item()


@pytest.mark.parametrize("name", list(MODELS))
def test_3xtf32_products_are_as_close_to_the_training_model_as_float32(name):
    """Teacher-forced, every step, every product in emulated 3xTF32, against the training model: as close as the
    same step in float32 (within twice its difference, which is rounding in both), and within 1e-4 on the test
    configurations. Plain TF32 is a thousand times farther off on the larger shapes. Measured here: `standard` (5
    layers a stack) with random_model's strong weights has logits up to 241, float32 6.7e-3 from the training model
    (the 1e-4 of test_exactness holds at the test configurations' logit scale, 2-5), 3xTF32 6.1e-3, plain TF32 9.5;
    `wide-k3` (R = G = 128, logits up to 122): 1.1e-3, 1.3e-3 and 1.1."""
    float32, scale = worst_difference(name, "float32")
    split, _ = worst_difference(name, "3xtf32")
    assert split <= 2 * float32 + 1e-6, (split, float32, scale)
    if name in CONFIGS:
        assert split <= 1e-4, (split, scale)
    else:
        plain, _ = worst_difference(name, "tf32")
        assert plain > 100 * max(split, float32), (plain, split, float32, scale)


def test_tf32_rounds_to_ten_mantissa_bits_ties_away():
    ulp = 2.0 ** -10
    x = torch.tensor([1.0, 1.0 + ulp / 2, 1.0 + ulp / 2 - 2.0 ** -23, -(1.0 + ulp / 2), 1.0 + 3 * ulp / 2, 3.0e-3])
    got = tf32(x)
    assert got[:5].tolist() == [1.0, 1.0 + ulp, 1.0, -(1.0 + ulp), 1.0 + 2 * ulp]
    assert (got.view(torch.int32) & 0x1FFF).eq(0).all()
    assert abs(got[5].item() - 3.0e-3) <= 3.0e-3 * 2.0 ** -11


def test_the_recipe_scores_real_audio_in_each_mode_and_puts_torch_back(tmp_path):
    """recipes/tf32_cost.py on the bundled model and two seconds of the piano recordings (or a sine where they are
    absent): three scores, 3xTF32 within 1e-5 bits of float32 and closer to it than TF32, and torch's functions as
    they were afterwards."""
    import json

    import numpy as np
    import soundfile

    originals = (torch.addmm, torch.einsum, torch.nn.functional.conv1d)
    model = Path(__file__).resolve().parents[1] / "fastwavenet" / "models" / "piano.safetensors"
    piece = Path(__file__).resolve().parents[2] / "shared" / "data" / "chopin-piano-4410" / "piece6.flac"
    if not piece.exists():
        piece = tmp_path / "sine.wav"
        t = np.arange(2 * 4410) / 4410
        soundfile.write(piece, 0.3 * np.sin(2 * np.pi * 440 * t), 4410)
    out = tmp_path / "cost.json"
    tf32_cost.main([str(model), str(piece), "--seconds", "2", "--json", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert row["samples"] == 2 * 4410
    # piece6's first two seconds: float32 3.135160, 3xTF32 -2.1e-7 from it, TF32 -4.0e-5
    assert abs(row["3xtf32"] - row["float32"]) < min(1e-5, abs(row["tf32"] - row["float32"])), row
    assert (torch.addmm, torch.einsum, torch.nn.functional.conv1d) == originals
