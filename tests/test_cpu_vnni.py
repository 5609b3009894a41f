"""The VNNI probe's product (benchmarks/cpu_vnni.py, issue 38 item 1): its int32 sums are exact, its quantized
inputs are round(x / scale) + 128, and its outputs are the quantized arithmetic's, on a CPU with AVX-512 VNNI
(and its 256-bit form with AVX-VNNI)."""

import importlib.util
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest
from numba.core import config as numba_config


def _vnni_target() -> bool:
    """numba's target has AVX-512 VNNI: the host's features, or NUMBA_CPU_FEATURES where set."""
    if numba_config.CPU_FEATURES is not None:
        return "+avx512vnni" in numba_config.CPU_FEATURES.split(",")
    return bool(llvm.get_host_cpu_features().get("avx512vnni"))


needs_avx512_vnni = pytest.mark.skipif(not _vnni_target(), reason="the CPU (or NUMBA_CPU_FEATURES) lacks AVX-512 VNNI")


@pytest.fixture(scope="module")
def probe():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_vnni.py"
    spec = importlib.util.spec_from_file_location("cpu_vnni", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_avx512_vnni
@pytest.mark.parametrize("k, n, panel", [(1536, 512, 128), (1536, 512, 512), (256, 48, 16), (12, 272, 272),
                                          (64, 320, 128)])
def test_vnni_sums_are_exact(probe, k, n, panel):
    """Every u8 x int8 sum, the extremes included, equals numpy's in int64, in panels and in the plain layout
    (272 columns: two 8-vector blocks and a lone vector; 320, which panels of 128 do not divide: the plain layout,
    two blocks and a half block); the code holds vpdpbusd."""
    rng = np.random.default_rng(k + n + panel)
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    q[:, 0], q[:, 1] = 127, -127
    xq = rng.integers(0, 256, k).astype(np.uint8)
    xq[:4] = 255
    acc = np.zeros(n, np.int32)
    probe.vnni_sums(probe.vnni_layout(q, panel), xq, acc)
    np.testing.assert_array_equal(acc, xq.astype(np.int64) @ q.astype(np.int64))
    assert "vpdpbusd" in probe.vnni_sums.inspect_asm(probe.vnni_sums.signatures[0])


@needs_avx512_vnni
def test_vnni_product_is_the_quantized_arithmetic(probe):
    """x quantized per vector (scale max|x| / 127, xq = round(x / scale) + 128, as numpy computes it in float32),
    then y = start + bias + (x_scale * w_scale) * (xq - 128) . q: equal to numpy's within float32 rounding of the
    last three operations (the sum itself exact); a zero input gives start + bias."""
    rng = np.random.default_rng(5)
    k, n = 512, 256
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    wscale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    bias, start = rng.standard_normal((2, n)).astype(np.float32)
    colsum = 128 * q.astype(np.int32).sum(0, dtype=np.int32)
    xq, acc, y = np.zeros(k, np.uint8), np.zeros(n, np.int32), np.zeros(n, np.float32)
    for x in (rng.standard_normal(k).astype(np.float32), np.zeros(k, np.float32)):
        probe.vnni_product(probe.vnni_layout(q, 128), colsum, wscale, bias, x, xq, acc, start, y,
                           np.zeros(2, np.float32))
        peak = np.abs(x).max()
        expected_xq = np.rint(x * (np.float32(127) / peak)) + 128 if peak > 0 else np.full(k, 128)
        np.testing.assert_array_equal(xq, expected_xq.astype(np.uint8))
        sums = (xq.astype(np.int64) - 128) @ q.astype(np.int64)
        expected = start.astype(np.float64) + bias + (peak / np.float32(127)) * wscale.astype(np.float64) * sums
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


@pytest.mark.skipif(not llvm.get_host_cpu_features().get("avxvnni"), reason="the CPU lacks AVX-VNNI")
def test_vnni_sums_are_exact_with_avx_vnni_alone():
    """Compiled for a CPU with AVX-VNNI and no AVX-512 (alderlake, in a subprocess: numba reads its target once),
    the probe takes 256-bit vectors and the VEX-encoded vpdpbusd, with the same exact sums."""
    import os
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_vnni.py"
    script = f"""
import importlib.util, numpy as np
spec = importlib.util.spec_from_file_location("cpu_vnni", {str(path)!r})
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
rng = np.random.default_rng(0)
q = rng.integers(-127, 128, (1536, 520)).astype(np.int8)
xq = rng.integers(0, 256, 1536).astype(np.uint8)
acc = np.zeros(520, np.int32)
probe.vnni_sums(probe.vnni_layout(q, 520), xq, acc)
assert probe._LANES == 8
assert np.array_equal(acc, xq.astype(np.int64) @ q.astype(np.int64))
asm = probe.vnni_sums.inspect_asm(probe.vnni_sums.signatures[0])
assert "{{vex}}\\tvpdpbusd" in asm and "zmm" not in asm
"""
    env = {**os.environ, "NUMBA_CPU_NAME": "alderlake", "NUMBA_CPU_FEATURES": ""}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
