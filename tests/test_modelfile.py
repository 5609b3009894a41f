"""Model files: what is refused, what is checked, what older files still load with."""

import json
import struct
import time

import pytest
import torch
from safetensors.torch import save_file

from fastwavenet import FastWaveNetError, preset
from fastwavenet.convert import fold
from fastwavenet.folded import FoldedWeights
from fastwavenet.modelfile import MODEL_FORMAT, MODEL_VERSION, checksum, load_model, save_model

from conftest import random_model


@pytest.fixture(scope="module")
def weights():
    return fold(random_model(preset("tiny"), 5))


def tensor_regions(path):
    """{name: (start, end)} byte ranges of each tensor's data in a safetensors file."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    return {name: (8 + size + info["data_offsets"][0], 8 + size + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}


def test_a_flipped_bit_in_any_tensor_is_refused(weights, tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, preset("tiny"), weights)
    assert torch.equal(load_model(path).weights.embed, weights.embed)
    original = path.read_bytes()
    regions = tensor_regions(path)
    assert set(regions) == set(weights.tensors())
    for name, (start, end) in regions.items():
        for position in (start, (start + end) // 2, end - 1):
            flipped = bytearray(original)
            flipped[position] ^= 0x10  # a low bit of a mantissa or exponent: a finite, plausible weight
            path.write_bytes(bytes(flipped))
            with pytest.raises(FastWaveNetError, match=r"corrupt: its weights do not match the checksum"):
                load_model(path)


def test_non_finite_weights_are_refused(weights, tmp_path):
    tensors = weights.tensors()
    tensors["head2_b"] = tensors["head2_b"].clone()
    tensors["head2_b"][3] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_model(path, preset("tiny"), FoldedWeights(**tensors))
    with pytest.raises(FastWaveNetError, match="head2_b holds NaN or infinite values"):
        load_model(path)


def test_a_file_without_a_checksum_loads_with_a_warning(weights, tmp_path):
    path = tmp_path / "old.safetensors"
    save_file(weights.tensors(), str(path), metadata={"format": MODEL_FORMAT, "format_version": MODEL_VERSION,
                                                      "config": preset("tiny").to_json()})
    with pytest.warns(UserWarning, match="carries no checksum"):
        loaded = load_model(path)
    assert torch.equal(loaded.weights.out_w, weights.out_w)


def test_checksum_cost_is_small_for_a_standard_model():
    """Not a speed assertion: the figure the docs quote, printed (pytest -s) for the record."""
    from fastwavenet.bench import random_model_file

    tensors = random_model_file(preset("standard")).weights.tensors()
    start = time.perf_counter()
    digest = checksum(tensors)
    print(f"checksum of {sum(t.numel() * 4 for t in tensors.values()) / 1e6:.1f} MB: "
          f"{1000 * (time.perf_counter() - start):.1f} ms")
    assert len(digest) == 64 and digest == checksum(tensors)
