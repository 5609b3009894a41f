import math

import pytest
import torch

from fastwavenet import WaveNetConfig, preset
from fastwavenet.model import WaveNet, loss_bits

CONFIGS = [
    preset("tiny"),
    WaveNetConfig(classes=32, residual_channels=6, gate_channels=5, skip_channels=7, head_channels=9,
                  kernel_size=3, input_kernel_size=1, layers_per_stack=3, stacks=2, bias=False),
    WaveNetConfig(classes=16, residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
                  kernel_size=4, input_kernel_size=3, layers_per_stack=2, stacks=3),
]


def _model(config, seed=0):
    torch.manual_seed(seed)
    model = WaveNet(config).double().eval()
    for p in model.parameters():  # larger weights than the default init, so perturbations show clearly
        torch.nn.init.normal_(p, std=0.5)
    return model


@pytest.mark.parametrize("config", CONFIGS)
def test_causality_and_measured_receptive_field(config):
    model = _model(config)
    T = config.receptive_field * 2 + 10
    codes = torch.randint(0, config.classes, (1, T))
    t = config.receptive_field // 2 + 3
    changed = codes.clone()
    changed[0, t] = (codes[0, t] + 1) % config.classes
    with torch.no_grad():
        diff = (model(codes) - model(changed)).abs().amax(dim=1)[0]
    affected = torch.nonzero(diff > 1e-12).flatten()
    assert affected.min().item() == t, "an output before the change moved: not causal"
    assert affected.max().item() - t + 1 == config.receptive_field


def test_shapes_and_dtypes():
    config = preset("tiny")
    model = WaveNet(config)
    codes = torch.randint(0, 256, (3, 50))
    logits = model(codes)
    assert logits.shape == (3, 256, 50) and logits.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == config.parameter_count()
    for config in CONFIGS:
        assert sum(p.numel() for p in WaveNet(config).parameters()) == config.parameter_count()


def test_loss_on_known_cases():
    model = WaveNet(preset("tiny"))
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    codes = torch.randint(0, 256, (2, 40))
    # Zero weights: uniform over 256 classes, exactly 8 bits per sample.
    assert loss_bits(model(codes), codes, 0).item() == pytest.approx(8.0, abs=1e-6)
    # Head bias alone sets the distribution: p(c) = 1/2 for class 5, the rest shared equally.
    p = torch.full((256,), 0.5 / 255)
    p[5] = 0.5
    with torch.no_grad():
        model.head2.bias.copy_(p.log())
    codes = torch.tensor([[5, 5, 9, 5, 5]])
    expected = (3 * 1.0 + 1 * -math.log2(0.5 / 255)) / 4
    assert loss_bits(model(codes), codes, 0).item() == pytest.approx(expected, rel=1e-5)
