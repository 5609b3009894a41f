"""The CPU kernel's matrix products for every register-block shape its selector can pick (kernels/cpu.py, BLOCKS).

In this process they run with the blocks of this machine's vector width; the last test runs this file and the numba
exactness tests again in subprocesses whose numba target has 256-bit and 128-bit vectors (NUMBA_CPU_NAME with empty
NUMBA_CPU_FEATURES), so every shape is held to the training model on any development machine."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cpu = pytest.importorskip("fastwavenet.kernels.cpu")

ROOT = Path(__file__).resolve().parent.parent


def products(w, bias, x, first, last, start=None, scale=None):
    """The kernel's product; with `start`, accumulated onto it in place (y is start); scale: an int8 w's."""
    if start is None:
        y = np.full((x.shape[0], w.shape[1]), np.nan, np.float32)
        cpu._matmul(w, bias, x, x.shape[0], y, first, last, np.zeros((1, w.shape[1]), np.float32), scale)
        return y
    y = start.copy()
    cpu._matmul(w, bias, x, x.shape[0], y, first, last, y, scale)
    return y


@pytest.mark.parametrize("k, n", [(1, 1), (3, 5), (17, 16), (64, 23), (128, 100), (40, 130), (256, 320)])
def test_products_match_float64_and_each_stream_is_the_same_alone(k, n):
    """Every (streams, outputs) remainder of the blocks; each stream's row is bit for bit the row it gets alone and
    in any other batch (each output is one fma chain, whatever block computes it), and bf16 bit patterns give
    exactly the float32 products of the widened weights; int8 weights with column scales (factored out per chunk of
    rows) come near the float64 product and are the same in every block and split at a chunk's end."""
    rng = np.random.default_rng(k * 1000 + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((37, k)).astype(np.float32)
    first = n // 3
    y = products(w, bias, x, first, n)
    reference = bias + x.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(y[:, first:] - reference[:, first:]).max() <= 1e-5 * (1 + np.abs(reference).max())
    assert np.isnan(y[:, :first]).all(), "outputs before `first` were written"
    for batch in (1, 2, 3, 4, 5, 9, 16, 17, 37):
        assert np.array_equal(products(w, bias, x[:batch], first, n)[:, first:], y[:batch, first:]), batch
    assert np.array_equal(products(w, bias, x[20:21], first, n)[:, first:], y[20:21, first:])

    bits = (w.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bf16: any bit pattern widens exactly
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(products(bits, bias, x, first, n)[:, first:], products(widened, bias, x, first, n)[:, first:])

    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    scale = rng.random(n).astype(np.float32)
    eight = products(q, bias, x, first, n, scale=scale)
    # bias + sum over chunks of 64 rows of scale * (the chunk's sum of x * q): near the float64 product with q * scale
    reference = bias + x.astype(np.float64) @ (q.astype(np.float64) * scale)
    assert np.abs(eight[:, first:] - reference[:, first:]).max() <= 1e-5 * (1 + np.abs(reference).max())
    assert np.isnan(eight[:, :first]).all()
    for batch in (1, 2, 5, 17):  # a lone stream's blocks take all the rows, a tile's a chunk at a time
        assert np.array_equal(products(q, bias, x[:batch], first, n, scale=scale), eight[:batch], equal_nan=True)
    if k > cpu._INT8_CHUNK:  # a product split where a chunk ends is the product over all rows, bit for bit
        c = cpu._INT8_CHUNK
        for batch in (1, 37):
            part = products(q[:c].copy(), bias, np.ascontiguousarray(x[:batch, :c]), 0, n, scale=scale)
            cpu._matmul(q[c:].copy(), np.full(n, -0.0, np.float32), np.ascontiguousarray(x[:batch, c:]), batch,
                        part, 0, n, part, scale)
            assert np.array_equal(part[:, first:], eight[:batch, first:]), batch


@pytest.mark.parametrize("k, n", [(3, 5), (64, 23), (64, 320)])
def test_products_accumulate_in_place(k, n):
    """A running sum (the skip and residual totals, a layer's taps one at a time) is the start of the chain: the
    result is start + bias + x @ w, each stream's row the same in any batch, outputs before `first` untouched, and
    a product split over two row ranges (continuing from the first part's sums, no bias) is bit for bit the product
    over all rows."""
    rng = np.random.default_rng(k + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((21, k)).astype(np.float32)
    start = rng.standard_normal((21, n)).astype(np.float32)
    first = n // 4
    y = products(w, bias, x, first, n, start)
    reference = start.astype(np.float64) + bias + x.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(y[:, first:] - reference[:, first:]).max() <= 1e-5 * (1 + np.abs(reference).max())
    assert np.array_equal(y[:, :first], start[:, :first])
    for batch in (1, 4, 5, 16, 17):
        assert np.array_equal(products(w, bias, x[:batch], first, n, start[:batch]), y[:batch])

    whole = products(w, bias, x, 0, n)
    half = k // 2
    part = products(w[:half], bias, np.ascontiguousarray(x[:, :half]), 0, n)
    cpu._matmul(w[half:].copy(), np.zeros(n, np.float32), np.ascontiguousarray(x[:, half:]), 21, part, 0, n, part)
    assert np.array_equal(part, whole)


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.uint16])
@pytest.mark.parametrize("k, n, first", [(3, 5, 0), (64, 23, 7), (300, 70, 0), (600, 100, 33), (256, 96, 32),
                                         (1000, 64, 0)])
def test_panel_products_equal_the_natural_layout_bit_for_bit(k, n, first, dtype):
    """Many-stream tiles read the layers' weights in panels (`panel_layout`, `_panel_products`): the same numbers
    as `_products` on the natural layout for every size and remainder of the panel blocks (streams, panels cut by
    first or last, rows past a chunk, chunks prefetched), from a bias and a start row shared by every stream or one
    each, and a product over a range of rows (a tap) reads only those rows of each panel; float32 weights, bf16
    bit patterns in panels of their own (uint16), and int8 with column scales (panels of q as float32, their blocks
    chunking the rows as a lone stream's do, `cpu._INT8_CHUNK`), against `_products` on the int8 matrix."""
    rng = np.random.default_rng(k * 7 + n)
    scale = None
    if dtype == np.int8:
        w = rng.integers(-127, 128, (k, n)).astype(np.int8)
        scale = rng.random(n).astype(np.float32)
    elif dtype == np.uint16:
        w = (rng.standard_normal((k, n)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    else:
        w = rng.standard_normal((k, n)).astype(np.float32)
    # float32 (int8: q, widened once; the kernel factors the scales out), bf16 bits as they are
    panels = cpu.panel_layout(w, dtype=np.uint16 if dtype == np.uint16 else np.float32)
    assert panels.shape == (-(-n // cpu.BLOCK.panel), k, cpu.BLOCK.panel)
    sp = 0 if scale is None else scale.ctypes.data
    bias = rng.standard_normal(n).astype(np.float32)
    zeros = np.full((1, n), -0.0, np.float32)
    x = rng.standard_normal((64, k)).astype(np.float32)
    own = rng.standard_normal((64, n)).astype(np.float32)
    for start, lda in ((np.zeros((1, n), np.float32), 0), (own, n)):
        for batch in (1, 2, 3, 4, 5, 7, 12, 13, 16, 17, 22, 32, 37, 64):  # blocks of every even size, the rest
            y = np.full((batch, n), np.nan, np.float32)
            cpu._panel_products(panels, 0, k, bias.ctypes.data, sp, x.ctypes.data, k, y.ctypes.data + 4 * first, n,
                                start.ctypes.data + 4 * first, lda, batch, first, n, zeros.ctypes.data)
            expected = products(w, bias, x[:batch], first, n, None if lda == 0 else start[:batch].copy(), scale)
            assert np.array_equal(y[:, first:], expected[:, first:]), (batch, lda)
            assert np.isnan(y[:, :first]).all(), "outputs before `first` were written"
    rows = k // 2  # the second half of the rows, as a layer's later tap reads them
    y = np.full((9, n), np.nan, np.float32)
    tail = np.ascontiguousarray(x[:9, rows:])
    cpu._panel_products(panels, rows, k - rows, bias.ctypes.data, sp, tail.ctypes.data, k - rows, y.ctypes.data,
                        n, zeros.ctypes.data, 0, 9, 0, n, zeros.ctypes.data)
    assert np.array_equal(y, products(np.ascontiguousarray(w[rows:]), bias, tail, 0, n, scale=scale))


def test_block_shape_follows_the_vector_width():
    assert cpu.BLOCK == cpu.BLOCKS[cpu.VECTOR_BITS]
    assert cpu.BLOCK.lanes * 32 == cpu.VECTOR_BITS


@pytest.mark.skipif(not cpu._X86, reason="the pin is an x86 asm statement; elsewhere LLVM's scheduler decides")
def test_panel_blocks_keep_their_sums_in_registers():
    """The widest panel block's loop, as numba compiles it for this machine, touches no stack: each stream's sums
    are pinned after its fmas (`cpu._pin`). Unpinned, LLVM hoisted every broadcast above the fmas and moved sums to
    the stack and back on every iteration (docs/BENCHMARKS.md, "Register blocks pinned"). The same for int8's
    panels (q widened; the int32 weight type), whose running totals wait on the stack for each chunk's end."""
    from numba import njit

    @njit(fastmath=cpu._FAST, error_model="numpy")
    def block(w0, wp, ldw, xp, ldx, yp, ldy, sp, k):
        cpu._PB0(w0, wp, ldw, xp, ldx, yp, ldy, yp, ldy, yp, sp, k)

    P, S = cpu.BLOCK.panel, cpu.BLOCK.ps
    w, x, y = np.zeros((64, P), np.float32), np.zeros((S, 64), np.float32), np.zeros((S, P), np.float32)
    scale = np.ones(P, np.float32)
    for w0 in (w[0, 0], np.int32(0)):
        block(w0, w.ctypes.data, P, x.ctypes.data, 64, y.ctypes.data, P, scale.ctypes.data, 64)
    for asm in block.inspect_asm().values():
        loop = max(re.split(r"\n\.LBB\S*:", asm), key=lambda part: part.count("vbroadcastss"))  # the rows' loop
        assert loop.count("vfmadd") >= S * cpu.BLOCK.pv
        assert "rsp" not in loop, loop


TARGETS = {256: "haswell", 128: "nehalem"}


@pytest.mark.skipif(os.environ.get("FASTWAVENET_BLOCKS_CHILD") == "1", reason="already a child run")
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the other x86 vector widths are reached through numba's x86 CPU names")
@pytest.mark.parametrize("bits", [b for b in cpu.BLOCKS if b < cpu.VECTOR_BITS])  # (a CPU runs narrower code only)
def test_other_vector_widths_in_a_subprocess(bits):
    env = dict(os.environ, NUMBA_CPU_NAME=TARGETS[bits], NUMBA_CPU_FEATURES="", FASTWAVENET_BLOCKS_CHILD="1",
               FASTWAVENET_EXPECT_VECTOR_BITS=str(bits))  # numba keys its cache by target: no clash
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                             "tests/test_cpu_blocks.py", "tests/test_exactness.py", "-k", "numba or products or width"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_child_runs_the_width_it_was_asked_for():
    expected = os.environ.get("FASTWAVENET_EXPECT_VECTOR_BITS")
    if expected is None:
        pytest.skip("only in the subprocesses of test_other_vector_widths_in_a_subprocess")
    assert cpu.VECTOR_BITS == int(expected)
