import numpy as np
import pytest
import torch

from fastwavenet import FastWaveNetError, mulaw


def test_numpy_and_torch_agree():
    x = np.linspace(-1.2, 1.2, 10001)
    codes_np = mulaw.encode(x)
    codes_t = mulaw.encode(torch.from_numpy(x))
    assert np.array_equal(codes_np, codes_t.numpy())
    assert np.allclose(mulaw.decode(codes_np), mulaw.decode(torch.from_numpy(codes_np)).numpy(), atol=1e-12)


def test_known_codes():
    # basveeling/wavenet's convention: code = floor((mulaw(x) + 1) / 2 * 255).
    assert mulaw.encode(np.array([0.0]))[0] == 127
    assert mulaw.encode(np.array([-1.0]))[0] == 0
    assert mulaw.encode(np.array([1.0]))[0] == 255
    assert mulaw.encode(np.array([5.0, -5.0])).tolist() == [255, 0]  # clipped beyond [-1, 1]


def test_round_trip_error_is_within_half_a_bin():
    x = np.linspace(-1, 1, 20001)
    y = mulaw.compress(x)
    back = mulaw.compress(mulaw.decode(mulaw.encode(x)))
    assert np.abs(back - y).max() <= 1.0 / 255 + 1e-9
    assert np.abs(mulaw.expand(mulaw.compress(x)) - x).max() < 1e-12


def test_silence_decodes_near_zero_and_codes_cover_range():
    assert abs(mulaw.decode(np.array([127]))[0]) < 1e-3
    codes = mulaw.encode(np.random.default_rng(0).uniform(-1, 1, 100000))
    assert codes.min() == 0 and codes.max() == 254  # 255 is only reached at exactly 1.0
    assert codes.dtype == np.int64


def test_nan_is_refused():
    with pytest.raises(FastWaveNetError, match="NaN"):
        mulaw.encode(np.array([0.0, np.nan]))
    with pytest.raises(FastWaveNetError, match="NaN"):
        mulaw.encode(torch.tensor([float("nan")]))
