"""8-bit activations on int8 weights (issue 38 item 1). The kernel's w8a8 products (kernels/cpu.py, `_products8`):
the quantized arithmetic bit for bit, with VNNI and with the integer fallback of a CPU without it. The VNNI probe's
product (benchmarks/cpu_vnni.py): its int32 sums are exact, its quantized inputs are round(x / scale) + 128, and its
outputs are the quantized arithmetic's, on a CPU with AVX-512 VNNI (and its 256-bit form with AVX-VNNI)."""

import importlib.util
import os
import subprocess
import sys
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


cpu = pytest.importorskip("fastwavenet.kernels.cpu")
ROOT = Path(__file__).resolve().parents[1]


def quantized_reference(q, scale, bias, x, start):
    """The w8a8 product in numpy: x (B, K) quantized per row (scale max|x| / 127, xq = round(x * (127 / max|x|)) +
    128, ties to even), the sums in int64, then (start + bias) + (x_scale * scale) * float32(sums - 128 * colsum),
    float32 operations in that order."""
    peak = np.abs(x).max(axis=1, keepdims=True)
    safe = np.where(peak > 0, peak, np.float32(1))
    xq = np.where(peak > 0, np.rint(x * (np.float32(127) / safe)), 0).astype(np.int64) + 128
    sums = xq @ q.astype(np.int64) - 128 * q.astype(np.int64).sum(axis=0)
    return (start + bias) + ((peak / np.float32(127)) * scale) * sums.astype(np.float32)


def w8a8_product(q, scale, bias, x, start, first):
    """The kernel's w8a8 product of x (B, K) and int8 q (K, N), columns [first, N) accumulated onto start (B, N)."""
    layout, colsum = cpu.w8a8_layout(q)
    y = start.copy()
    cpu._matmul8(layout, bias, scale, colsum[0], x, x.shape[0], y, first, q.shape[1], y)
    return y


def product_case(k, n, seed, streams=7):
    """int8 q (k, n) with both extremes, scales, bias, x (streams, k) and start (streams, n): stream 3 a zero
    vector, 4 and 5 holding the extremes (taken modulo `streams`, at least 4 of them)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    q[:, 0], q[:, -1] = 127, -127
    x = rng.standard_normal((streams, k)).astype(np.float32)
    x[3 % streams] = 0  # a zero vector: scale 0, the product adds nothing
    x[4 % streams, 0] = -np.abs(x[4 % streams]).max() * 2  # the extremes: xq 1 and, below, 255
    x[5 % streams, -1] = np.abs(x[5 % streams]).max() * 2
    return (q, rng.uniform(1e-3, 1e-2, n).astype(np.float32), rng.standard_normal(n).astype(np.float32), x,
            rng.standard_normal((streams, n)).astype(np.float32))


# (K, N): 8-vector blocks, single vectors and single columns (AVX-512 and AVX2 widths), K not a multiple of 4
PRODUCT_SHAPES = [(1536, 512), (256, 300), (5, 7), (9, 30), (12, 141)]


@pytest.mark.parametrize("k, n", PRODUCT_SHAPES)
def test_w8a8_products_are_the_quantized_arithmetic_bit_for_bit(k, n):
    """Every column range from `first`, outputs before it untouched; each stream's row the same in any batch."""
    q, scale, bias, x, start = product_case(k, n, k + n)
    first = n // 3
    y = w8a8_product(q, scale, bias, x, start, first)
    np.testing.assert_array_equal(y[:, first:], quantized_reference(q, scale, bias, x, start)[:, first:])
    np.testing.assert_array_equal(y[:, :first], start[:, :first])
    np.testing.assert_array_equal(y[3, first:], (start[3] + bias)[first:])
    for b in (0, 4, 6):
        np.testing.assert_array_equal(w8a8_product(q, scale, bias, x[b:b + 1], start[b:b + 1], first), y[b:b + 1])


def _kinds_here():
    """The `_sums8` kinds numba's target can run: the integer fallback anywhere, byte pairs with AVX2's integer
    vectors, vpdpbusd with VNNI."""
    kinds = ["widen"]
    if cpu._vector_bits(cpu.ir.IntType(32)) >= 256:  # AVX2's integer vectors (AVX-512 has them too)
        kinds.append("pairs")
    if cpu.HAS_VNNI:
        kinds.append("vnni")
    return kinds


@pytest.mark.parametrize("kind", ["widen", "pairs", "vnni"])
def test_every_kind_of_int8_sums_is_exact_at_the_extremes(kind):
    """Each `_sums8` kind the target runs, in 8-vector blocks and single vectors of 8 lanes (AVX2's width; 16 for
    VNNI on AVX-512), gives numpy's int64 sums of xq (uint8) x q (int8): 0 and 255 against +-127 in every word (the
    pairs' int16 sums at their largest, 2 * 128 * 127), K not a multiple of 4."""
    if kind not in _kinds_here():
        pytest.skip(f"numba's target cannot run {kind!r} sums")
    from numba import njit

    lanes = cpu._L if kind == "vnni" else 8
    blocks = [(nv, cpu._sums8(nv, lanes, kind)) for nv in (8, 1)]
    big, one = blocks[0][1], blocks[1][1]

    @njit
    def sums(v, xq, colsum, acc):
        k4, width = v.shape[0], v.shape[1] // 4
        n = 0
        while n + 8 * lanes <= width:
            big(v.ctypes.data + 4 * n, width, xq.ctypes.data, acc.ctypes.data + 4 * n, k4, colsum.ctypes.data + 4 * n)
            n += 8 * lanes
        while n + lanes <= width:
            one(v.ctypes.data + 4 * n, width, xq.ctypes.data, acc.ctypes.data + 4 * n, k4, colsum.ctypes.data + 4 * n)
            n += lanes

    rng = np.random.default_rng(38)
    k, n = 1030, 9 * lanes
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    q[:, 0], q[:, 1], q[:8, 2], q[8:, 2] = 127, -127, 127, -127
    xq = rng.integers(0, 256, 4 * (-(-k // 4))).astype(np.uint8)
    xq[:8], xq[8:16] = 255, 0
    v, colsum = cpu.w8a8_layout(q)
    acc = np.zeros(n, np.int32)
    sums(v, xq, colsum[0], acc)
    np.testing.assert_array_equal(acc, xq[:k].astype(np.int64) @ q.astype(np.int64))


def test_w8a8_sums_by_byte_pairs_where_the_target_has_avx2_and_not_vnni():
    assert cpu.SUMS8_KIND == ("vnni" if cpu.HAS_VNNI else "pairs" if cpu.VECTOR_BITS == 256 and
                              cpu._vector_bits(cpu.ir.IntType(32)) == 256 else "widen")
    if cpu.SUMS8_KIND == "pairs":
        from numba import njit

        @njit
        def block(v, xq, acc, colsum):  # the kernel's own 8-vector block
            cpu._SUMS8(v.ctypes.data, 64, xq.ctypes.data, acc.ctypes.data, v.shape[0], colsum.ctypes.data)

        v, colsum = cpu.w8a8_layout(np.ones((8, 64), np.int8))
        acc = np.zeros(64, np.int32)
        block(v, np.full(8, 3, np.uint8), acc, colsum[0])
        assert (acc == 24).all()
        code = "".join(block.inspect_asm().values())
        assert "vpmaddubsw" in code and "vpsignb" in code and "vpmaddwd" in code


def test_w8a8_uses_vnni_where_the_target_has_it():
    if cpu.VECTOR_BITS != 512:
        pytest.skip("checked for 512-bit targets (AVX-512 VNNI)")
    assert cpu.HAS_VNNI == _vnni_target()


@pytest.mark.skipif(os.environ.get("FASTWAVENET_VNNI_CHILD") == "1", reason="already the child")
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the target without VNNI is reached through numba's x86 CPU names")
def test_w8a8_without_vnni_gives_the_same_numbers(tmp_path):
    """Compiled for a CPU without VNNI or AVX2 (sandybridge: 256-bit float vectors, 128-bit integer ones; in a
    subprocess: numba reads its target once), the widening integer fallback gives the same products and the same
    teacher-forced logits bit for bit as this process's sums (VNNI, or on an AVX2 machine byte pairs)."""
    script = f"""
import sys, numpy as np, torch
sys.path.insert(0, {str(ROOT / "tests")!r})
from fastwavenet.kernels import cpu
from test_cpu_vnni import PRODUCT_SHAPES, product_case, w8a8_product, w8a8_logits
assert not cpu.HAS_VNNI and cpu.VECTOR_BITS == 256 and cpu.SUMS8_KIND == "widen"
out = {{f"p{{k}}x{{n}}": w8a8_product(*product_case(k, n, k + n), 1) for k, n in PRODUCT_SHAPES}}
out["logits"] = w8a8_logits()
np.savez({str(tmp_path / "child.npz")!r}, **out)
"""
    env = {**os.environ, "NUMBA_CPU_NAME": "sandybridge", "NUMBA_CPU_FEATURES": "", "FASTWAVENET_VNNI_CHILD": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    child = np.load(tmp_path / "child.npz")
    for k, n in PRODUCT_SHAPES:
        np.testing.assert_array_equal(child[f"p{k}x{n}"], w8a8_product(*product_case(k, n, k + n), 1))
    np.testing.assert_array_equal(child["logits"], w8a8_logits())


def w8a8_logits():
    """Teacher-forced logits of the numba backend at w8a8 on the k4-odd test config (odd channel counts)."""
    import torch

    from fastwavenet.folded import fold
    from fastwavenet.generator import Generator
    from fastwavenet.modelfile import ModelFile
    from helpers import random_model
    from test_exactness import CONFIGS

    config = CONFIGS["k4-odd"]
    gen = Generator(ModelFile(config, fold(random_model(config, 1))), backend="numba", precision="w8a8")
    codes = torch.randint(0, config.classes, (3, 60), generator=torch.Generator().manual_seed(1))
    return gen.forward(gen.new_state(3), codes).numpy()


def _amx_target() -> bool:
    """numba's target has AMX's int8 tiles: the host's features, or NUMBA_CPU_FEATURES where set."""
    if numba_config.CPU_FEATURES is not None:
        return {"+amx-tile", "+amx-int8"} <= set(numba_config.CPU_FEATURES.split(","))
    features = llvm.get_host_cpu_features()
    return bool(features.get("amx-tile") and features.get("amx-int8"))


# (K, N, streams, first): products the tiles take where the CPU has them (`_products8`: inputs a multiple of 64,
# outputs of 16, enough streams), with each remainder: 37 streams, two tiles of 16 rows and one whose 5 streams
# leave 11 rows of stale inputs; 48 outputs, a block of 32 columns and one of 16; a first output past 0; then
# products below the tiles' threshold or off their grid, which `vpdpbusd` takes: the same numbers either way.
TILE_SHAPES = [(64, 48, 37, 16), (128, 64, 6, 0), (512, 96, 4, 32), (1536, 512, 19, 0), (64, 32, 11, 0),
               (192, 40, 8, 0)]


@pytest.mark.parametrize("k, n, streams, first", TILE_SHAPES)
def test_w8a8_products_of_many_streams_are_the_quantized_arithmetic_bit_for_bit(k, n, streams, first):
    """AMX's int32 sums are exact as `vpdpbusd`'s are: every stream's row the numpy reference's, and the one it gets
    alone (one stream: `_sums8`), bit for bit; outputs before `first` untouched."""
    q, scale, bias, x, start = product_case(k, n, k + n + streams, streams)
    y = w8a8_product(q, scale, bias, x, start, first)
    np.testing.assert_array_equal(y[:, first:], quantized_reference(q, scale, bias, x, start)[:, first:])
    np.testing.assert_array_equal(y[:, :first], start[:, :first])
    for b in range(streams):
        np.testing.assert_array_equal(w8a8_product(q, scale, bias, x[b:b + 1], start[b:b + 1], first), y[b:b + 1])


@pytest.mark.skipif(not _amx_target(), reason="the CPU (or NUMBA_CPU_FEATURES) lacks AMX's int8 tiles")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tiles are asked of Linux (arch_prctl)")
def test_w8a8_uses_the_tiles_where_the_target_has_them(tmp_path):
    """On a CPU with AMX (and a Linux that grants the tile state: 5.16 on) the tiles' sums are numpy's for 37
    streams and the code holds `tdpbusd`. Checked on a copy of the kernel loaded from tmp_path, so that numba
    compiles it here: code loaded from numba's cache cannot be inspected."""
    assert cpu.HAS_AMX
    copy = tmp_path / "cpu_copy.py"
    copy.write_text((ROOT / "kernels" / "cpu.py").read_text())
    spec = importlib.util.spec_from_file_location("cpu_copy", copy)
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    q = product_case(64, 48, 0, 37)[0]
    layout, _ = kernel.w8a8_layout(q)
    xq = np.random.default_rng(1).integers(0, 256, (48, 64)).astype(np.uint8)  # 3 tiles' rows, 37 streams'
    acc = np.zeros((48, 48), np.int32)
    kernel._sums8_amx(layout.ctypes.data, 48, 16, xq.ctypes.data, 64, acc.ctypes.data, 37, 48)
    np.testing.assert_array_equal(acc[:37], xq[:37].astype(np.int64) @ q.astype(np.int64))
    assert "tdpbusd" in kernel._sums8_amx.inspect_asm(kernel._sums8_amx.signatures[0])
