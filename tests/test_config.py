import json
import os

import pytest

from fastwavenet import FastWaveNetError, WaveNetConfig, preset
from fastwavenet.config import PRESETS


def test_presets_and_standard_shape():
    std = preset("standard")
    assert (std.residual_channels, std.skip_channels, std.classes, std.layers, std.kernel_size) == (64, 256, 256, 20, 2)
    assert std.dilations == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] * 2
    assert std.receptive_field == 1 + 2 * 1023 + 1
    assert preset("large").layers == 30 and preset("large").residual_channels == 128
    assert set(PRESETS) == {"tiny", "small", "standard", "large", "r9y9-ljspeech", "r9y9-standard"}
    lj = preset("r9y9-ljspeech")
    shape = (lj.layers, lj.stacks, lj.residual_channels, 2 * lj.gate_channels, lj.skip_channels)
    assert shape == (24, 4, 512, 512, 256)
    assert lj.output_channels == 30 and lj.receptive_field == 2 * 4 * 63 + 1
    assert WaveNetConfig.from_json(lj.to_json()) == lj  # upsample_scales survive JSON as a tuple


def test_json_round_trip():
    config = WaveNetConfig(kernel_size=3, bias=False, gate_channels=24, stacks=1, layers_per_stack=3)
    assert WaveNetConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["kernel_size"] == 3


def test_receptive_field_formula_for_kernel_3():
    config = WaveNetConfig(kernel_size=3, input_kernel_size=1, layers_per_stack=3, stacks=2)
    assert config.receptive_field == 2 * (1 + 2 + 4) * 2 + 1


@pytest.mark.parametrize("changes, words", [
    ({"residual_channels": 0}, "residual_channels"),
    ({"kernel_size": 1}, "kernel_size"),
    ({"stacks": -1}, "stacks"),
    ({"residual_channels": 100_000, "gate_channels": 100_000}, "exhaust memory"),
    ({"layers_per_stack": 40}, "dilations"),
    ({"bias": "yes"}, "bias"),
    ({"output": "laplace"}, "output must be one of"),
    ({"scalar_input": True}, "softmax output needs class input"),
    ({"output": "gaussian"}, "need scalar input"),
    ({"scalar_input": True, "output": "gaussian"}, "input_kernel_size 1"),
    ({"n_mels": 8, "hop_length": 16, "upsampler": "r9y9-transpose", "upsample_scales": (4, 2)},
     "product is hop_length"),
    ({"n_mels": 8, "hop_length": 8, "upsampler": "r9y9-convin", "upsample_scales": (8,), "freq_axis_kernel_size": 2},
     "must be odd"),
    ({"cin_pad": -1}, "cin_pad"),
])
def test_impossible_values_are_refused(changes, words):
    with pytest.raises(FastWaveNetError, match=words):
        WaveNetConfig(**changes)


def test_unknown_fields_and_bad_json():
    with pytest.raises(FastWaveNetError, match="unknown field"):
        WaveNetConfig.from_dict({"channels": 3})
    with pytest.raises(FastWaveNetError, match="not valid JSON"):
        WaveNetConfig.from_json("{")
    with pytest.raises(FastWaveNetError, match="unknown preset"):
        preset("huge")


def test_check_memory_counts_available_memory_not_total(tmp_path, monkeypatch):
    """A machine with 64 GiB of RAM of which 1 GiB is free refuses 2 GiB of buffers (it swapped, or was killed)."""
    from fastwavenet import config

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       67108864 kB\nMemFree:          524288 kB\nMemAvailable:    1048576 kB\n")
    monkeypatch.setattr(config, "MEMINFO", str(meminfo))
    assert config.available_memory() == 1 << 30
    config.check_memory(0.9 * 2**30, "a batch")
    with pytest.raises(FastWaveNetError, match=r"a batch would need about 2.0 GiB, more than the 1.0 GiB this machine"):
        config.check_memory(2 * 2**30, "a batch")
    monkeypatch.setattr(config, "MEMINFO", str(tmp_path / "absent"))  # not Linux: the machine's RAM
    assert config.available_memory() == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
