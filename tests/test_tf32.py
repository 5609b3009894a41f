"""What the tiled Triton kernel's tensor-core products (tl.dot in 3xTF32, kernels/gpu.py `_tile_dot`) cost in
accuracy, measured without a GPU: Triton's interpreter multiplies in plain float32 whatever the precision asked, so
these tests emulate the split on the CPU. The torch backend's step is run with every matrix product replaced by
the emulated one, teacher-forced, against the training model.

3xTF32 rounds each float32 operand to TF32 (10 mantissa bits, to nearest, ties away from zero, as the GPU's
cvt.rna.tf32.f32), rounds what is left to TF32 again, and adds the three products that matter in float32: small
times big, big times small, then big times big. The emulation sums each product in the CPU's float32 order where
the tensor cores have their own, so it bounds the operands' rounding, not the GPU's bits: the CUDA run of
test_exactness is the final word on those."""

import pytest
import torch

from fastwavenet import WaveNetConfig, preset
from fastwavenet.backends import torch_queues
from fastwavenet.folded import fold
from fastwavenet.generator import Generator
from fastwavenet.modelfile import ModelFile

from helpers import random_model
from test_exactness import CONFIGS, conditioning_inputs, model_logits


def tf32(x: torch.Tensor) -> torch.Tensor:
    """x (float32) rounded to TF32's 10 mantissa bits, to nearest, ties away from zero."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def tf32x3_addmm(bias, a, w):
    """bias + a @ w as 3xTF32 computes it."""
    a_big, w_big = tf32(a), tf32(w)
    a_small, w_small = tf32(a - a_big), tf32(w - w_big)
    return bias + a_small @ w_big + a_big @ w_small + a_big @ w_big


def tf32_addmm(bias, a, w):
    """bias + a @ w in plain TF32 (one product of the rounded operands): what `allow_tf32` would give."""
    return bias + tf32(a) @ tf32(w)


MODELS = {
    **CONFIGS,
    "standard": preset("standard").replace(layers_per_stack=5),  # R = G = 64, S = H = 256: sums of 128 and 256
    "wide-k3": WaveNetConfig(sample_rate=8000, classes=256, residual_channels=128, gate_channels=128,
                             skip_channels=128, head_channels=128, kernel_size=3, layers_per_stack=4, stacks=1),
}


def worst_difference(name, addmm, monkeypatch):
    config = MODELS[name]
    steps = config.receptive_field + 17
    model = random_model(config)
    batch = 2
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, config.classes, (batch, steps), generator=g)
    mel, speaker = conditioning_inputs(config, batch, steps)
    expected = model_logits(model, codes, mel, speaker)
    gen = Generator(ModelFile(config, fold(model)), backend="torch", device="cpu")
    conditioning = gen.conditioning(batch, mel, speaker)
    with monkeypatch.context() as patch:
        patch.setattr(torch_queues.torch, "addmm", addmm)  # the step's and gate_and_project's products
        got = gen.forward(gen.new_state(batch), codes, conditioning)
    return (got - expected).abs().max().item(), expected.abs().max().item()


@pytest.mark.parametrize("name", list(MODELS))
def test_3xtf32_products_are_as_close_to_the_training_model_as_float32(name, monkeypatch):
    """Teacher-forced, every step, every product in emulated 3xTF32, against the training model: as close as the
    same step in float32 (within twice its difference, which is rounding in both), and within 1e-4 on the test
    configurations. Plain TF32 is a thousand times farther off on the larger shapes. Measured here: `standard` (5
    layers a stack) with random_model's strong weights has logits up to 241, float32 6.7e-3 from the training model
    (the 1e-4 of test_exactness holds at the test configurations' logit scale, 2-5), 3xTF32 6.1e-3, plain TF32 9.5;
    `wide-k3` (R = G = 128, logits up to 122): 1.1e-3, 1.3e-3 and 1.1."""
    float32, scale = worst_difference(name, torch.addmm, monkeypatch)
    split, _ = worst_difference(name, tf32x3_addmm, monkeypatch)
    assert split <= 2 * float32 + 1e-6, (split, float32, scale)
    if name in CONFIGS:
        assert split <= 1e-4, (split, scale)
    else:
        plain, _ = worst_difference(name, tf32_addmm, monkeypatch)
        assert plain > 100 * max(split, float32), (plain, split, float32, scale)


def test_tf32_rounds_to_ten_mantissa_bits_ties_away():
    ulp = 2.0 ** -10
    x = torch.tensor([1.0, 1.0 + ulp / 2, 1.0 + ulp / 2 - 2.0 ** -23, -(1.0 + ulp / 2), 1.0 + 3 * ulp / 2, 3.0e-3])
    got = tf32(x)
    assert got[:5].tolist() == [1.0, 1.0 + ulp, 1.0, -(1.0 + ulp), 1.0 + 2 * ulp]
    assert (got.view(torch.int32) & 0x1FFF).eq(0).all()
    assert abs(got[5].item() - 3.0e-3) <= 3.0e-3 * 2.0 ** -11
