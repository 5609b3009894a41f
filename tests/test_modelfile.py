"""Model files: what is refused, what is checked, what older files still load with."""

import json
import struct
import time

import pytest
import torch
from safetensors.torch import save_file

from fastwavenet import FastWaveNetError, preset
from fastwavenet.folded import fold
from fastwavenet.folded import FoldedWeights
from fastwavenet.modelfile import MODEL_FORMAT, MODEL_VERSION, ModelFile, checksum, load_model, save_model

from helpers import random_model


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
    with pytest.raises(FastWaveNetError, match="head2_b hold NaN or infinite values"):
        save_model(path, preset("tiny"), FoldedWeights(**tensors))  # (an export of a diverged run wrote one)
    assert not path.exists()
    data = {k: v.contiguous() for k, v in tensors.items()}  # such a file written by other means
    save_file(data, str(path), metadata={"format": MODEL_FORMAT, "format_version": str(MODEL_VERSION),
                                         "config": preset("tiny").to_json(), "sha256": checksum(data)})
    with pytest.raises(FastWaveNetError, match="head2_b holds NaN or infinite values"):
        load_model(path)


def test_a_model_made_in_code_must_match_its_config(weights):
    """A ModelFile built from a config and another shape's weights generated without a word (the kernels take their
    shapes from the config)."""
    import dataclasses

    wider = dataclasses.replace(preset("tiny"), residual_channels=16)
    with pytest.raises(FastWaveNetError, match=r"weights embed have shape \(2, 256, 8\), config wants \(2, 256, 16\)"):
        ModelFile(wider, weights)
    with pytest.raises(FastWaveNetError, match="a model is a WaveNetConfig and its FoldedWeights"):
        ModelFile(preset("tiny"), weights.tensors())


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


def test_default_sampling_is_stored_used_and_overridden_field_by_field(weights, tmp_path):
    """A model file's default sampling: saved in the metadata, read back, used by the Generator and the Engine
    where a call names no rule, overridden field by field on the command line, set by `export` on a model file."""
    import numpy as np
    import soundfile

    from fastwavenet import Generator, Sampling
    from fastwavenet.engine import Engine

    from helpers import run_cli

    config = preset("tiny")
    plain, stamped = tmp_path / "plain.safetensors", tmp_path / "stamped.safetensors"
    save_model(plain, config, weights)
    assert load_model(plain).sampling is None
    rule = Sampling(temperature=0.7, top_p=0.9)
    save_model(stamped, config, weights, rule)
    assert load_model(stamped).sampling == rule

    gen = Generator(stamped, backend="numba")
    assert gen.sampling == rule
    n = gen.sample_rate // 10
    made = gen.generate(samples=n, seed=3)
    assert np.array_equal(made, gen.generate(samples=n, seed=3, sampling=rule))
    assert not np.array_equal(made, gen.generate(samples=n, seed=3, sampling=Sampling()))
    with Engine(gen, max_active=2) as engine:
        assert np.array_equal(engine.submit(samples=n, seed=3).result()[None], made)

    # The command line: --top-p 1 keeps the model's temperature 0.7 and turns truncation off.
    result = run_cli("generate", "--model", stamped, "-o", tmp_path / "cli.wav", "--seconds", "0.1", "--seed", "3",
                     "--top-p", "1", "--backend", "numba", "--quiet")
    assert result.returncode == 0, result.stderr
    cli, _ = soundfile.read(tmp_path / "cli.wav", dtype="float32")
    want = gen.generate(samples=n, seed=3, sampling=Sampling(temperature=0.7))[0]
    assert np.abs(cli - want).max() <= 1 / 32767 + 1e-6  # the WAV file holds 16-bit samples

    # export on a model file sets its default (fields not given keep the file's own); info shows it.
    result = run_cli("export", stamped, "-o", tmp_path / "restamped.safetensors", "--temperature", "0.9")
    assert result.returncode == 0, result.stderr
    assert load_model(tmp_path / "restamped.safetensors").sampling == Sampling(temperature=0.9, top_p=0.9)
    result = run_cli("info", tmp_path / "restamped.safetensors")
    assert "default sampling: temperature 0.9, top_k 0, top_p 0.9" in result.stdout


def test_malformed_default_sampling_is_refused_in_one_line(weights, tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "m.safetensors"
    save_model(path, preset("tiny"), weights)
    tensors = load_file(str(path))
    metadata = {"format": MODEL_FORMAT, "format_version": MODEL_VERSION, "config": preset("tiny").to_json(),
                "sha256": checksum(tensors)}
    # top-k 1e23 overflowed inside the numba backend's round, failing every request in it; a bool was a number.
    for bad in ('{"temperature": -1}', '{"colour": 1}', "not json", "[0.9]", '{"top_k": 100000000000000000000000}',
                '{"top_k": true}', '{"argmax": "yes"}', '{"top_k": 257}', '{"temperature": 1e-39}',
                '{"top_k": ' + "9" * 5000 + "}"):
        save_file(tensors, str(path), metadata={**metadata, "sampling": bad})
        with pytest.raises(FastWaveNetError, match="default sampling is malformed"):
            load_model(path)
