"""The GPU kernel: one Triton launch generates (or teacher-forces) a whole chunk of steps for a batch of streams.

Each program runs the time loop inside the kernel for a tile of streams: 16 or more of them (the tiled kernel, the
`triton` backend), whose matrix products run on tensor cores (tl.dot in 3xTF32, `_tile_dot`) in blocks of BN output
columns, each block's epilogue (gate, residual sum, skip sum, head) applied as it leaves them, so each weight block is
read once per tile and step instead of once per stream; or one (the `triton-stream` backend), whose products are
matrix-vector sums, for the shortest step at batch 1. The two are one source told apart by the TILE constant. Per-layer
queues live in GPU memory (the `queues` tensor of the state), weights are read through L2 (3.5 MB for `standard`), and
each vector that feeds a product is staged in a per-stream scratch row so the product can walk the weight matrix in row
blocks without holding it in registers. Sampling happens inside, from uniforms the host supplies, so a seed fixes the
output; each stream draws by its own rule (`StreamRules`), so a batch of mixed rules is one launch. Values written to
memory and read back by other threads of the same program are separated by barriers: Triton's interpreter
(TRITON_INTERPRET=1, which the tests use on the CPU) runs a program as one thread and hides missing barriers, so a GPU
run is the final word on them.

Arrays (B streams, T steps): codes (B, T) int64 (teacher forcing) or (B, 1) (the first input when generating),
u (T, B) float32, queues (B, Q, R) float32, inputs (B, k_in - 1) int64, cond (B, T, L, 2G) float32 gate terms or
None, logits_out (B, T, O) float32 (teacher), codes_out (B, T) int64; weights: one `GpuWeights`; sampling
rules: one `StreamRules`.

Scalar-input models (SCALAR): codes and codes_out hold float32 sample values, the input stage is one multiply-add
(embed (1, 2, R): weight row, bias row), the head's O outputs are a continuous distribution's parameters (DIST:
LOGISTIC_MIXTURE or GAUSSIAN) and u is (T, B, 2): the rule of fastwavenet/distributions.py, in float64.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

# Absolute, as in kernels/cpu.py. A Triton kernel reads module attributes (rule.U_EDGE), never plain globals.
from fastwavenet.kernels import sampling_constants as rule
from fastwavenet.kernels.sampling_constants import GAUSSIAN, LOGISTIC_MIXTURE, SOFTMAX  # noqa: F401


class GpuWeights(NamedTuple):
    """The generator's weights as the GPU kernel reads them: the folded layout of fastwavenet/folded.py as it is
    (matrices input-major, (in, out)), float32 tensors on the device, with each layer's taps stacked."""

    embed: torch.Tensor      # (k_in, C, R); scalar input (1, 2, R)
    dilated_w: torch.Tensor  # (L, k*R, 2G)
    dilated_b: torch.Tensor  # (L, 2G)
    out_w: torch.Tensor      # (L, G, R+S)
    out_b: torch.Tensor      # (L, R+S)
    head1_w: torch.Tensor    # (S, H)
    head1_b: torch.Tensor    # (H,)
    head2_w: torch.Tensor    # (H, O)
    head2_b: torch.Tensor    # (O,)
    dilations: torch.Tensor  # (L,) int64
    offsets: torch.Tensor    # (L,) int64


class StreamRules(NamedTuple):
    """Each stream's sampling rule as the GPU kernel reads it (fastwavenet/sampling.py), (B,) tensors on the device,
    so that the streams of one launch may each sample by their own rule."""

    temperature: torch.Tensor  # float64
    top_k: torch.Tensor        # int32, 0: off (SOFTMAX only)
    top_p: torch.Tensor        # float32, 1: off (SOFTMAX only)
    argmax: torch.Tensor       # int8, 1: the likeliest class or component mean, no uniform used


def unsupported_reason(input_taps: int) -> str | None:
    """None if the kernel runs models whose input convolution has `input_taps` taps, else why not."""
    if input_taps > 2:
        return "the Triton kernel supports input convolutions of 1 or 2 taps"
    return None


@triton.jit
def _stage(buf, value, m, idx, live, n, row):
    """Put a tile's (TILE, N_P) block of values into scratch stream-major (element (m, i) at buf + m * row + i).
    Rows past B and columns past n are not written."""
    tl.store(buf + m[:, None] * row + idx[None, :], value, mask=live[:, None] & (idx[None, :] < n))


@triton.jit
def _product(acc, x_ptr, live, w_ptr, w_stride, n_in, col0, n_out, IN_BLOCK: tl.constexpr, OUT_P: tl.constexpr):
    """acc + x @ W[:, col0:col0 + n_out] for a lone stream: (1, OUT_P) float32, x contiguous at x_ptr (zeros unless
    `live`), W row-major with row stride w_stride, walked in blocks of IN_BLOCK rows whose products are summed
    across threads."""
    o = tl.arange(0, OUT_P)
    for i0 in range(0, n_in, IN_BLOCK):
        i = i0 + tl.arange(0, IN_BLOCK)
        x = tl.load(x_ptr + i[None, :], mask=live[:, None] & (i[None, :] < n_in), other=0.0)
        w = tl.load(w_ptr + i[:, None] * w_stride + col0 + o[None, :],
                    mask=(i[:, None] < n_in) & (o[None, :] < n_out), other=0.0).to(tl.float32)
        acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    return acc


@triton.jit
def _tile_dot(acc, a_ptr, a_row, live, w_ptr, w_stride, col0, N_IN: tl.constexpr, N_OUT: tl.constexpr,
              RELU: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, TILE: tl.constexpr):
    """acc + A @ W[:, col0:col0 + BN] for a tile of streams, on tensor cores: acc (TILE, BN) float32; A (TILE, N_IN)
    with A[m, i] at a_ptr + m * a_row + i (rows where `live` is false read zeros; RELU: max(A, 0)); W (N_IN, N_OUT)
    row-major with row stride w_stride (float32, or bf16 widened as read), its columns from N_OUT on read as zeros;
    col0 a multiple of BN. K is walked in blocks of BK. (Bounds known at compile time and blocks starting at
    multiples of BK and BN let Triton prove each mask whole over a vector of floats.)

    3xTF32: Triton splits each float32 operand into its TF32 rounding and the TF32 rounding of the rest, and adds the
    three products that matter in float32: as close to the training model as float32 products are
    (tests/test_tf32.py, emulated; plain TF32 is about a thousand times farther off). A bf16 weight is a TF32 value
    already (8 bits of mantissa), so its second part is zero and the sum is the float32 product of the two. An
    output row is a sum over its own row of A only, in an order fixed by the blocks, so a stream's numbers do not
    depend on which streams share its tile."""
    m = tl.arange(0, TILE)
    o = col0 + tl.arange(0, BN)
    for kb in range(0, tl.cdiv(N_IN, BK)):
        k = kb * BK + tl.arange(0, BK)
        a = tl.load(a_ptr + m[:, None] * a_row + k[None, :], mask=live[:, None] & (k[None, :] < N_IN), other=0.0)
        if RELU:
            a = tl.maximum(a, 0.0)
        w = tl.load(w_ptr + k[:, None] * w_stride + o[None, :], mask=(k[:, None] < N_IN) & (o[None, :] < N_OUT),
                    other=0.0).to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision="tf32x3")
    return acc


@triton.jit
def _tile_gate_dot(za, zb, a_ptr, a_row, live, w_ptr, w_stride, col0, N_IN: tl.constexpr, HALF: tl.constexpr,
                   BK: tl.constexpr, BN: tl.constexpr, TILE: tl.constexpr):
    """_tile_dot for both halves of a gate at once: za + A @ W[:, col0:col0 + BN] and
    zb + A @ W[:, HALF + col0:HALF + col0 + BN] (columns from HALF on, in each half, read as zeros), each block of A
    read once."""
    m = tl.arange(0, TILE)
    o = col0 + tl.arange(0, BN)
    for kb in range(0, tl.cdiv(N_IN, BK)):
        k = kb * BK + tl.arange(0, BK)
        a = tl.load(a_ptr + m[:, None] * a_row + k[None, :], mask=live[:, None] & (k[None, :] < N_IN), other=0.0)
        at = w_ptr + k[:, None] * w_stride + o[None, :]
        w_ok = (k[:, None] < N_IN) & (o[None, :] < HALF)
        za = tl.dot(a, tl.load(at, mask=w_ok, other=0.0).to(tl.float32), za, input_precision="tf32x3")
        zb = tl.dot(a, tl.load(at + HALF, mask=w_ok, other=0.0).to(tl.float32), zb, input_precision="tf32x3")
    return za, zb


@triton.jit
def _input(code, prev, cols, live, embed_ptr, C: tl.constexpr, R: tl.constexpr, K_IN: tl.constexpr,
           SCALAR: tl.constexpr):
    """Columns `cols` of the first layer's input for a tile's streams: (TILE, len(cols)). A scalar input is value x
    weight row + bias row; classes take one table row per tap, a tap before the start (prev -1) contributing
    nothing."""
    at = live[:, None] & (cols[None, :] < R)
    if SCALAR:
        x = code[:, None] * tl.load(embed_ptr + cols, mask=cols < R, other=0.0)[None, :] \
            + tl.load(embed_ptr + R + cols, mask=cols < R, other=0.0)[None, :]
    else:
        x = tl.load(embed_ptr + ((K_IN - 1) * C + code)[:, None] * R + cols[None, :], mask=at, other=0.0)
    if K_IN == 2:
        tap = tl.load(embed_ptr + tl.maximum(prev, 0)[:, None] * R + cols[None, :], mask=at, other=0.0)
        x += tl.where(prev[:, None] >= 0, tap, 0.0)
    return x


@triton.jit
def _gate_start(bias_ptr, cond_ptr, cond_row, cols, live, G: tl.constexpr, HAS_COND: tl.constexpr):
    """The gate's two halves before the products, columns `cols` of each: the layer's biases (bias_ptr: its 2G) and,
    with conditioning, each stream's terms (cond_row (TILE,): where a stream's 2G terms of this layer and step
    start). Returns (za, zb), (TILE, len(cols))."""
    ok = cols < G
    block = tl.zeros((cond_row.shape[0], cols.shape[0]), tl.float32)
    za = block + tl.load(bias_ptr + cols, mask=ok, other=0.0)[None, :]
    zb = block + tl.load(bias_ptr + G + cols, mask=ok, other=0.0)[None, :]
    if HAS_COND:
        at = cond_ptr + cond_row[:, None] + cols[None, :]
        c_live = live[:, None] & ok[None, :]
        za += tl.load(at, mask=c_live, other=0.0)
        zb += tl.load(at + G, mask=c_live, other=0.0)
    return za, zb


@triton.jit
def _tap_slot(t, off, d, n, j, K: tl.constexpr):
    """The queue row that tap j of K (oldest first) reads at time t: the input of (K - 1 - j) * d steps ago, in the
    layer's ring of n = (K - 1) * d rows starting at `off`."""
    return off + (t - (K - 1 - j) * d + n) % n


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _normal_quantile(v):
    """Acklam's approximation of the standard normal inverse CDF (float64 v in (0, 1)), as kernels/cpu.py. (The
    coefficients are named where used: Triton 3.6 takes neither a tuple into a local name nor a tuple argument.)"""
    edge = tl.full((), rule.NORMAL_LOW, tl.float64)  # a float64 tensor: see `_sample_continuous`'s edge
    low = v < edge
    high = v > 1.0 - edge
    q = tl.sqrt(-2.0 * tl.log(tl.where(low, v, 1.0 - v)))
    tail = (((((rule.NORMAL_C[0] * q + rule.NORMAL_C[1]) * q + rule.NORMAL_C[2]) * q + rule.NORMAL_C[3]) * q
             + rule.NORMAL_C[4]) * q + rule.NORMAL_C[5]) \
        / ((((rule.NORMAL_D[0] * q + rule.NORMAL_D[1]) * q + rule.NORMAL_D[2]) * q + rule.NORMAL_D[3]) * q + 1.0)
    m = v - 0.5
    rr = m * m
    centre = (((((rule.NORMAL_A[0] * rr + rule.NORMAL_A[1]) * rr + rule.NORMAL_A[2]) * rr + rule.NORMAL_A[3]) * rr
               + rule.NORMAL_A[4]) * rr + rule.NORMAL_A[5]) * m \
        / (((((rule.NORMAL_B[0] * rr + rule.NORMAL_B[1]) * rr + rule.NORMAL_B[2]) * rr + rule.NORMAL_B[3]) * rr
            + rule.NORMAL_B[4]) * rr + 1.0)
    return tl.where(low, tail, tl.where(high, -tail, centre))


@triton.jit
def _sample_continuous(y, c, u0, u1, temperature, argmax, log_scale_min, C: tl.constexpr, DIST: tl.constexpr):
    """One sample value in [-1, 1] from the head's outputs y (C_P,) (c: their indices), float64 throughout;
    temperature (float64) and argmax: this stream's rule."""
    y = y.to(tl.float64)
    if DIST == rule.GAUSSIAN:  # y[0] mean, y[1] log scale
        mean = tl.sum(tl.where(c == 0, y, 0.0), axis=0)
        raw_scale = tl.sum(tl.where(c == 1, y, 0.0), axis=0)
    else:  # LOGISTIC_MIXTURE: K logits, K means, K log scales
        NMIX: tl.constexpr = C // 3
        logits = tl.where(c < NMIX, y, float("-inf"))
        if argmax:
            k = tl.argmax(logits, axis=0)
        else:
            top = tl.max(logits, axis=0)
            p = tl.where(c < NMIX, tl.exp((logits - top) / temperature), 0.0)
            cdf = tl.cumsum(p, axis=0)
            below = tl.where(c < NMIX, cdf, float("inf")) <= u0 * tl.sum(p, axis=0)
            k = tl.minimum(tl.sum(below.to(tl.int32), axis=0), NMIX - 1)
        mean = tl.sum(tl.where(c == NMIX + k, y, 0.0), axis=0)
        raw_scale = tl.sum(tl.where(c == 2 * NMIX + k, y, 0.0), axis=0)
    if argmax:
        x = mean
    else:
        scale = tl.exp(tl.maximum(raw_scale, log_scale_min)) * temperature
        # A float64 tensor, not a Python float: Triton 3.6 rounds a float given to tl.maximum or compared with a
        # tensor to float32 first.
        edge = tl.full((), rule.U_EDGE, tl.float64)
        v = tl.minimum(tl.maximum(u1, edge), 1.0 - edge)
        if DIST == rule.GAUSSIAN:
            x = mean + scale * _normal_quantile(v)
        else:
            x = mean + scale * (tl.log(v) - tl.log(1.0 - v))
    return tl.minimum(tl.maximum(x, -1.0), 1.0)


@triton.jit
def _sample_class(logits, c, u, temperature, top_k, top_p, argmax, C: tl.constexpr, TRUNCATE: tl.constexpr):
    """One class from the logits (C_P,) (c: their indices) and a uniform u: int64, by this stream's rule
    (temperature float64, top_k, top_p, argmax). Where TRUNCATE (some stream of the launch truncates), top-k
    (top_k > 0) and top-p (top_p < 1) first zero the classes they drop, by the rule of fastwavenet/sampling.py."""
    logits = tl.where(c < C, logits, float("-inf"))
    if argmax:
        drawn = tl.argmax(logits, axis=0).to(tl.int64)
    else:
        top = tl.max(logits, axis=0)
        # 1 / temperature in float64, then float32: the inverse a float32 multiply uses, correctly rounded
        p = tl.exp((logits - top) * (1.0 / temperature).to(tl.float32))
        if TRUNCATE:
            if (top_k > 0) | (top_p < 1.0):
                # Classes in order of probability, the lower class first on ties: a probability's bits (p >= 0)
                # order as integers, so one int64 sort key holds p above the class index reversed. A class is kept
                # while fewer than top_k rank above it and the probability ranked above it is below top_p of the
                # total; the kept are the classes whose key is at least the smallest kept key.
                key = (p.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (c.shape[0] - 1 - c)
                ranked = tl.sort(key, descending=True)
                ranked_p = (ranked >> 32).to(tl.int32).to(tl.float32, bitcast=True)
                before = tl.cumsum(ranked_p, axis=0) - ranked_p
                rank = tl.arange(0, c.shape[0])
                keep = (before < top_p * tl.sum(p, axis=0)) & ((rank < top_k) | (top_k == 0))
                p = tl.where(key >= tl.min(tl.where(keep, ranked, 9223372036854775807), axis=0), p, 0.0)
        cdf = tl.cumsum(p, axis=0)
        target = u * tl.sum(p, axis=0)
        # Past the end only when rounding leaves the scan at or below u * total: take the last class with p > 0,
        # never one whose probability is zero.
        kept = tl.max(tl.where(p > 0, c, 0), axis=0).to(tl.int64)
        drawn = tl.minimum(tl.sum((cdf <= target).to(tl.int64), axis=0), kept)
    return drawn


@triton.jit
def _sample_classes(logits, c, u, temperature, argmax, C: tl.constexpr):
    """`_sample_class` without top-k / top-p for a tile's rows at once: logits (TILE, C_P), c (C_P,) the class
    indices, u, temperature (float64) and argmax (TILE,) each stream's. Each row is reduced alone, by the same steps
    as `_sample_class`, so a stream's draw does not depend on the other rows."""
    logits = tl.where(c[None, :] < C, logits, float("-inf"))
    top = tl.max(logits, axis=1)
    p = tl.exp((logits - top[:, None]) * (1.0 / temperature).to(tl.float32)[:, None])
    cdf = tl.cumsum(p, axis=1)
    target = u * tl.sum(p, axis=1)
    kept = tl.max(tl.where(p > 0, c[None, :], 0), axis=1).to(tl.int64)
    drawn = tl.minimum(tl.sum((cdf <= target[:, None]).to(tl.int64), axis=1), kept)
    return tl.where(argmax, tl.argmax(logits, axis=1).to(tl.int64), drawn)


@triton.jit
def _tile_scratch(scratch_ptr, SCR, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr, H: tl.constexpr,
                  TILE: tl.constexpr):
    """Program program_id(0)'s tile: its first stream (int64) and its blocks of scratch, x (R) | gated (G) | skip
    (S; relu(skip) for a lone stream) | head hidden (H) | head outputs (C, for the draws), each stream-major (element
    (m, i) at m * width + i), so a tile's product reads a (TILE, BK) block of it. SCR: a stream's width in all."""
    first = tl.program_id(0).to(tl.int64) * TILE
    x_buf = scratch_ptr + first * SCR
    g_buf = x_buf + R * TILE
    s_buf = g_buf + G * TILE
    h_buf = s_buf + S * TILE
    return first, x_buf, g_buf, s_buf, h_buf, h_buf + H * TILE


@triton.jit
def _tile_start(x_buf, s_buf, code, prev, m, live, embed_ptr, C: tl.constexpr, R: tl.constexpr, S: tl.constexpr,
                K_IN: tl.constexpr, SCALAR: tl.constexpr, BN: tl.constexpr):
    """A tile's step begins: its first-layer input from the codes it consumes (and the ones before, `prev`) into
    x_buf, a block of columns at a time, and its skip sums (which live in scratch) zeroed."""
    for nb in range(0, tl.cdiv(R, BN)):
        cols = nb * BN + tl.arange(0, BN)
        _stage(x_buf, _input(code, prev, cols, live, embed_ptr, C, R, K_IN, SCALAR), m, cols, live, R, R)
    for nb in range(0, tl.cdiv(S, BN)):
        cols = nb * BN + tl.arange(0, BN)
        _stage(s_buf, tl.zeros((m.shape[0], BN), tl.float32), m, cols, live, S, S)


@triton.jit
def _gate_block(g_buf, x_buf, q_tile, QR, cond_ptr, cond_row, b_layer, w_layer, t, off, d, n0, m, live,
                R: tl.constexpr, G: tl.constexpr, K: tl.constexpr, HAS_COND: tl.constexpr, BK: tl.constexpr,
                BN: tl.constexpr, TILE: tl.constexpr):
    """Columns n0 .. n0 + BN of a layer's gated vector for a tile, into g_buf: the gate's start (biases b_layer,
    conditioning terms from cond_row), both halves' products over the K taps (the queue's slots of dilation d from
    `off` at time t, oldest first, then the layer's input x_buf), then tanh x sigmoid."""
    cols = n0 + tl.arange(0, BN)
    za, zb = _gate_start(b_layer, cond_ptr, cond_row, cols, live, G, HAS_COND)
    for j in tl.static_range(K):
        if j < K - 1:
            taps, tap_row = q_tile + _tap_slot(t, off, d, (K - 1) * d, j, K) * R, QR
        else:
            taps, tap_row = x_buf, R
        za, zb = _tile_gate_dot(za, zb, taps, tap_row, live, w_layer + j * R * 2 * G, 2 * G, n0, R, G, BK, BN, TILE)
    _stage(g_buf, _tanh(za) * tl.sigmoid(zb), m, cols, live, G, G)


@triton.jit
def _residual_block(x_buf, g_buf, q_tile, QR, slot, b_layer, w_out, n0, m, live, keep, R: tl.constexpr,
                    G: tl.constexpr, S: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, TILE: tl.constexpr):
    """Columns n0 .. n0 + BN of a tile's layer input: into the queue's row `slot`, then (`keep`: a layer whose
    residual output feeds another) the residual sum x + b + gated @ W in place."""
    cols = n0 + tl.arange(0, BN)
    at = live[:, None] & (cols[None, :] < R)
    xb = tl.load(x_buf + m[:, None] * R + cols[None, :], mask=at, other=0.0)
    tl.store(q_tile + m[:, None] * QR + slot * R + cols[None, :], xb, mask=at)
    if keep:
        res = xb + tl.load(b_layer + cols, mask=cols < R, other=0.0)[None, :]
        res = _tile_dot(res, g_buf, G, live, w_out, R + S, n0, G, R, False, BK, BN, TILE)
        tl.debug_barrier()  # every thread has read this block of x before any writes it
        _stage(x_buf, res, m, cols, live, R, R)


@triton.jit
def _skip_block(s_buf, g_buf, b_layer, w_out, n0, m, live, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
                BK: tl.constexpr, BN: tl.constexpr, TILE: tl.constexpr):
    """Columns n0 .. n0 + BN of a tile's skip sum, in place: + b + gated @ W (the layer's last S columns)."""
    cols = n0 + tl.arange(0, BN)
    sk = tl.load(s_buf + m[:, None] * S + cols[None, :], mask=live[:, None] & (cols[None, :] < S), other=0.0) \
        + tl.load(b_layer + R + cols, mask=cols < S, other=0.0)[None, :]
    sk = _tile_dot(sk, g_buf, G, live, w_out + R, R + S, n0, G, S, False, BK, BN, TILE)
    tl.debug_barrier()  # as for x: the block is read and written in place
    _stage(s_buf, sk, m, cols, live, S, S)


@triton.jit
def _tile_head(s_buf, h_buf, l_buf, logits_ptr, logits_row, h1w_ptr, h1b_ptr, h2w_ptr, h2b_ptr, m, live,
               S: tl.constexpr, H: tl.constexpr, C: tl.constexpr, TEACHER: tl.constexpr, BK: tl.constexpr,
               BN: tl.constexpr, TILE: tl.constexpr):
    """A tile's head: relu(relu(skip) @ W1 + b1) into h_buf, then its outputs @ W2 + b2 into the logits (TEACHER:
    row logits_row (TILE,) of logits_ptr) or into l_buf for the draws."""
    o = tl.arange(0, BN)
    for nb in range(0, tl.cdiv(H, BN)):
        cols = nb * BN + o
        hidden = tl.zeros((TILE, BN), tl.float32) + tl.load(h1b_ptr + cols, mask=cols < H, other=0.0)[None, :]
        hidden = _tile_dot(hidden, s_buf, S, live, h1w_ptr, H, nb * BN, S, H, True, BK, BN, TILE)
        _stage(h_buf, tl.maximum(hidden, 0.0), m, cols, live, H, H)
    tl.debug_barrier()
    for nb in range(0, tl.cdiv(C, BN)):
        cols = nb * BN + o
        out = tl.zeros((TILE, BN), tl.float32) + tl.load(h2b_ptr + cols, mask=cols < C, other=0.0)[None, :]
        out = _tile_dot(out, h_buf, H, live, h2w_ptr, C, nb * BN, H, C, False, BK, BN, TILE)
        if TEACHER:
            tl.store(logits_ptr + logits_row[:, None] * C + cols[None, :], out,
                     mask=live[:, None] & (cols[None, :] < C))
        else:
            _stage(l_buf, out, m, cols, live, C, C)


@triton.jit
def _draw(l_buf, first, m, c, step, steps, B, u_ptr, out_ptr, temperature_ptr, top_k_ptr, top_p_ptr, argmax_ptr,
          log_scale_min, C: tl.constexpr, SCALAR: tl.constexpr, TRUNCATE: tl.constexpr, DIST: tl.constexpr,
          TILE: tl.constexpr, DRAW: tl.constexpr):
    """Each of a tile's streams draws its code (or value) of this step from its row of head outputs in l_buf, by
    its own rule, into out (B, steps)."""
    if (TILE > 1) and (not SCALAR) and (not TRUNCATE):
        # A tile's classes drawn for DRAW of its streams at once, each row reduced on its own
        for d0 in range(0, TILE, DRAW):
            md = d0 + tl.arange(0, DRAW)
            ld = first + md < B
            rows = tl.load(l_buf + md[:, None] * C + c[None, :], mask=ld[:, None] & (c[None, :] < C), other=0.0)
            drawn = _sample_classes(rows, c, tl.load(u_ptr + step * B + first + md, mask=ld, other=0.0),
                                    tl.load(temperature_ptr + first + md, mask=ld, other=1.0),
                                    tl.load(argmax_ptr + first + md, mask=ld, other=0) != 0, C)
            tl.store(out_ptr + (first + md) * steps + step, drawn, mask=ld)
    else:
        # Each stream draws alone from its row of logits in scratch, its reductions over (C_P,) as in a lone
        # stream's program whatever the tile; a short last tile draws fewer. (A lone stream keeps the constant
        # bound: the dynamic one cost its variants up to 16 registers.)
        for one in range(TILE if TILE == 1 else tl.minimum(B - first, TILE)):
            stream = first + one
            row = tl.load(l_buf + one * C + c, mask=c < C, other=0.0)
            row = tl.where(stream < B, row, 0.0)  # a row past B was never written
            # This stream's sampling rule: streams of one launch may each have their own.
            temperature = tl.load(temperature_ptr + stream, mask=stream < B, other=1.0)
            argmax = tl.load(argmax_ptr + stream, mask=stream < B, other=0) != 0
            if SCALAR:
                u0 = tl.load(u_ptr + (step * B + stream) * 2, mask=stream < B, other=0.5).to(tl.float64)
                u1 = tl.load(u_ptr + (step * B + stream) * 2 + 1, mask=stream < B, other=0.5).to(tl.float64)
                drawn = _sample_continuous(row, c, u0, u1, temperature, argmax, log_scale_min, C,
                                           DIST).to(tl.float32)
            else:
                u = tl.load(u_ptr + step * B + stream, mask=stream < B, other=0.0)
                top_k = tl.load(top_k_ptr + stream, mask=stream < B, other=0)
                top_p = tl.load(top_p_ptr + stream, mask=stream < B, other=1.0)
                drawn = _sample_class(row, c, u, temperature, top_k, top_p, argmax, C, TRUNCATE)
            tl.store(out_ptr + stream * steps + step, drawn, mask=stream < B)


# The integers that change while a program runs (the position, the chunk's length, the batch, a teacher chunk's
# stride) are not specialized: Triton would otherwise compile a variant apart for the value 1 and for multiples of 16,
# so a stream paused for a compile when its position or its batch first took such a value (issue 34). Those fixed
# by the model's shape (L, Q, SCR) stay specialized.
@triton.jit(do_not_specialize=["codes_stride", "t0", "steps", "B"])
def _wavenet_kernel(codes_ptr, codes_stride, u_ptr, queues_ptr, inputs_ptr, cond_ptr, logits_ptr, out_ptr, scratch_ptr,
                    embed_ptr, dw_ptr, db_ptr, ow_ptr, ob_ptr, h1w_ptr, h1b_ptr, h2w_ptr, h2b_ptr,
                    dil_ptr, off_ptr, t0, steps, B, L, Q, SCR, temperature_ptr, top_k_ptr, top_p_ptr, argmax_ptr,
                    log_scale_min,
                    C: tl.constexpr, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr, H: tl.constexpr,
                    K: tl.constexpr, K_IN: tl.constexpr, C_P: tl.constexpr, R_P: tl.constexpr,
                    G_P: tl.constexpr, S_P: tl.constexpr, H_P: tl.constexpr,
                    IN_R: tl.constexpr, IN_G: tl.constexpr, IN_S: tl.constexpr, IN_H: tl.constexpr,
                    TEACHER: tl.constexpr, TRUNCATE: tl.constexpr, HAS_COND: tl.constexpr,
                    SCALAR: tl.constexpr, DIST: tl.constexpr, TILE: tl.constexpr, BK: tl.constexpr,
                    BN: tl.constexpr, DRAW: tl.constexpr):
    # Program p runs streams p * TILE .. p * TILE + TILE - 1 (those below B: `live`). Offsets are int64 from the
    # program id on ((b * steps + step) * L * 2G for the conditioning terms passes 2**31 at batch 52 for a `standard`
    # vocoder with 16,384-step chunks); within a tile, m * (a stream's stride) stays int32 except for `cond`.
    # Per-stream values are (TILE,) vectors, which every thread may hold whole: pointers are kept as one scalar base
    # per tile and rebuilt from m where used, so they do not occupy registers across the loops.
    first, x_buf, g_buf, s_buf, h_buf, l_buf = _tile_scratch(scratch_ptr, SCR, R, G, S, H, TILE)
    m = tl.arange(0, TILE)
    live = first + m < B
    r = tl.arange(0, R_P)
    g = tl.arange(0, G_P)
    s_idx = tl.arange(0, S_P)
    h_idx = tl.arange(0, H_P)
    c = tl.arange(0, C_P)
    r_at = live[:, None] & (r[None, :] < R)
    KR: tl.constexpr = K * R
    G2: tl.constexpr = 2 * G
    RS: tl.constexpr = R + S
    q_tile = queues_ptr + first * Q * R
    QR = Q * R

    code = tl.load(codes_ptr + (first + m) * codes_stride, mask=live, other=0)
    prev = tl.full((TILE,), -1, tl.int64)
    if K_IN == 2:
        prev = tl.load(inputs_ptr + first + m, mask=live, other=-1)
    for step in range(steps):
        t = t0 + step
        skip = tl.zeros((TILE, S_P), tl.float32)
        tl.debug_barrier()
        if TILE == 1:
            _stage(x_buf, _input(code, prev, r, live, embed_ptr, C, R, K_IN, SCALAR), m, r, live, R, R)
        else:
            _tile_start(x_buf, s_buf, code, prev, m, live, embed_ptr, C, R, S, K_IN, SCALAR, BN)
        if K_IN == 2:
            prev = code
        tl.debug_barrier()
        for layer in range(L):
            d = tl.load(dil_ptr + layer)
            off = tl.load(off_ptr + layer)
            n = (K - 1) * d
            w_layer = dw_ptr + layer * KR * G2
            w_out = ow_ptr + layer * G * RS
            if TILE == 1:
                za, zb = _gate_start(db_ptr + layer * G2, cond_ptr, ((first + m) * steps + step) * L * G2 + layer * G2,
                                     g, live, G, HAS_COND)
                for j in tl.static_range(K):  # tap j of K, oldest first: the queue slots, then the new input
                    if j < K - 1:
                        taps = q_tile + _tap_slot(t, off, d, n, j, K) * R
                    else:
                        taps = x_buf
                    za = _product(za, taps, live, w_layer + j * R * G2, G2, R, 0, G, IN_R, G_P)
                    zb = _product(zb, taps, live, w_layer + j * R * G2, G2, R, G, G, IN_R, G_P)
                tl.debug_barrier()  # every thread has read the oldest tap before it is overwritten
                x = tl.load(x_buf + m[:, None] * R + r[None, :], mask=r_at, other=0.0)
                tl.store(q_tile + m[:, None] * QR + (off + t % n) * R + r[None, :], x, mask=r_at)
                gated = _tanh(za) * tl.sigmoid(zb)
                _stage(g_buf, gated, m, g, live, G, G)
                tl.debug_barrier()
                skip = _product(skip, g_buf, live, w_out, RS, G, R, S, IN_G, S_P)
                skip += tl.load(ob_ptr + layer * RS + R + s_idx, mask=s_idx < S, other=0.0)[None, :]
                if layer < L - 1:  # the last layer's residual output feeds nothing
                    res = tl.load(ob_ptr + layer * RS + r, mask=r < R, other=0.0)[None, :] + x
                    res = _product(res, g_buf, live, w_out, RS, G, 0, R, IN_G, R_P)
                    tl.debug_barrier()
                    _stage(x_buf, res, m, r, live, R, R)
                tl.debug_barrier()
            else:
                # A tile: each product in blocks of BN output columns, each block's epilogue (gate, residual sum,
                # skip sum) applied as it leaves the tensor cores and its result put in scratch.
                cond_row = ((first + m) * steps + step) * L * G2 + layer * G2
                for nb in range(0, tl.cdiv(G, BN)):
                    _gate_block(g_buf, x_buf, q_tile, QR, cond_ptr, cond_row, db_ptr + layer * G2, w_layer, t, off,
                                d, nb * BN, m, live, R, G, K, HAS_COND, BK, BN, TILE)
                tl.debug_barrier()  # the gate is whole, and every thread has read the oldest tap
                for nb in range(0, tl.cdiv(R, BN)):  # the layer's input into its queue slot; the residual in place
                    _residual_block(x_buf, g_buf, q_tile, QR, off + t % n, ob_ptr + layer * RS, w_out, nb * BN, m,
                                    live, layer < L - 1, R, G, S, BK, BN, TILE)
                for nb in range(0, tl.cdiv(S, BN)):
                    _skip_block(s_buf, g_buf, ob_ptr + layer * RS, w_out, nb * BN, m, live, R, G, S, BK, BN, TILE)
                tl.debug_barrier()
        if TILE == 1:
            _stage(s_buf, tl.maximum(skip, 0.0), m, s_idx, live, S, S)
            tl.debug_barrier()
            hidden = tl.zeros((TILE, H_P), tl.float32) + tl.load(h1b_ptr + h_idx, mask=h_idx < H, other=0.0)[None, :]
            hidden = _product(hidden, s_buf, live, h1w_ptr, H, S, 0, H, IN_S, H_P)
            _stage(h_buf, tl.maximum(hidden, 0.0), m, h_idx, live, H, H)
            tl.debug_barrier()
            logits = tl.zeros((TILE, C_P), tl.float32) + tl.load(h2b_ptr + c, mask=c < C, other=0.0)[None, :]
            logits = _product(logits, h_buf, live, h2w_ptr, C, H, 0, C, IN_H, C_P)
            if TEACHER:
                tl.store(logits_ptr + ((first + m) * steps + step)[:, None] * C + c[None, :], logits,
                         mask=live[:, None] & (c[None, :] < C))
            else:
                tl.store(l_buf + m[:, None] * C + c[None, :], logits, mask=live[:, None] & (c[None, :] < C))
        else:
            _tile_head(s_buf, h_buf, l_buf, logits_ptr, (first + m) * steps + step, h1w_ptr, h1b_ptr, h2w_ptr,
                       h2b_ptr, m, live, S, H, C, TEACHER, BK, BN, TILE)
        if TEACHER:
            code = tl.load(codes_ptr + (first + m) * codes_stride + tl.minimum(step + 1, steps - 1), mask=live,
                           other=0)
        else:
            tl.debug_barrier()
            _draw(l_buf, first, m, c, step, steps, B, u_ptr, out_ptr, temperature_ptr, top_k_ptr, top_p_ptr,
                  argmax_ptr, log_scale_min, C, SCALAR, TRUNCATE, DIST, TILE, DRAW)
            tl.debug_barrier()
            code = tl.load(out_ptr + (first + m) * steps + step, mask=live, other=0)
    if K_IN == 2:
        tl.store(inputs_ptr + first + m, prev, mask=live)


def _block(n_out_p: int, budget: int = 4096) -> int:
    """Rows per block of a lone stream's product, so a block holds about `budget` weights."""
    return max(1, min(64, budget // n_out_p))


def tile_for(w: GpuWeights) -> int:
    """Streams per program of the tiled kernel for these weights (any objects with `.shape`): the M of its
    tensor-core products, at least 16 (the M of one mma instruction). Every weight block read serves that many
    streams. A stream's numbers do not depend on the tile (`_tile_dot`), so this is a choice of speed alone, not yet
    made by a measurement on a GPU; FASTWAVENET_TILE sets it for measuring."""
    return int(os.environ.get("FASTWAVENET_TILE", 16))


def tile_blocks() -> tuple[int, int]:
    """(BK, BN) of the tiled kernel's products: each tl.dot multiplies a (tile, BK) block of inputs by a (BK, BN)
    block of weights. FASTWAVENET_TILE_BLOCKS ("32x64") sets them for measuring."""
    bk, bn = os.environ.get("FASTWAVENET_TILE_BLOCKS", "32x64").split("x")
    return int(bk), int(bn)


def launch_options(tile: int) -> dict:
    """Warps per program: 4 for a lone stream; 8 for a tile, whose (tile, BN) products share their BN columns among
    the warps (`fastwavenet doctor --compile-gpu sm_90`, Triton 3.6: tiles of 16 at 4 warps spilled nothing but held
    248-255 registers, tiles of 32 at 4 warps spilled; at 8 warps neither spilled). FASTWAVENET_TILE_WARPS sets a
    tile's for measuring. A tile also tells ptxas that every thread may take 255 registers: left to itself it held
    `standard`'s teacher variant to 128 and spilled 88 bytes (Triton 3.6, sm_90), as it had the old tiles."""
    if tile == 1:
        return {"num_warps": 4}
    return {"num_warps": int(os.environ.get("FASTWAVENET_TILE_WARPS", 8)), "maxnreg": 255}


def launch_constants(w: GpuWeights, teacher: bool, has_cond: bool, dist: int = SOFTMAX, tile: int = 1,
                     truncate: bool = False) -> dict:
    """The compile-time constants of one kernel variant, from the weights' shapes (any objects with `.shape`), the
    output distribution (SOFTMAX, or a continuous one for a scalar-input model), the streams per program (1, or
    `tile_for(w)` for the tiled kernel) and whether top-k / top-p apply to any stream (SOFTMAX only: the sort they
    need is compiled in only then)."""
    K_IN, R = w.embed.shape[0], w.embed.shape[2]
    C = w.head2_w.shape[1]
    G = w.dilated_b.shape[1] // 2
    S, H = w.out_w.shape[2] - R, w.head1_w.shape[1]
    p2 = triton.next_power_of_2
    R_P, G_P, S_P, H_P, C_P = p2(R), p2(G), p2(S), p2(H), p2(C)
    return dict(C=C, R=R, G=G, S=S, H=H, K=w.dilated_w.shape[1] // R, K_IN=K_IN,
                C_P=C_P, R_P=R_P, G_P=G_P, S_P=S_P, H_P=H_P,
                IN_R=_block(G_P), IN_G=_block(max(R_P, S_P)), IN_S=_block(H_P), IN_H=_block(C_P),
                TEACHER=bool(teacher), TRUNCATE=bool(truncate) and not teacher and dist == SOFTMAX,
                HAS_COND=bool(has_cond), SCALAR=dist != SOFTMAX, DIST=dist, TILE=tile,
                **dict(zip(("BK", "BN"), tile_blocks() if tile > 1 else (16, 16))),
                DRAW=min(tile, 16))  # a tile draws for at most 16 streams at once: a (16, C_P) block


# The type of every runtime argument, for compiling a variant ahead of time without a GPU (`fastwavenet doctor`).
ARGUMENT_TYPES = {"codes_ptr": "*i64", "codes_stride": "i32", "u_ptr": "*fp32", "queues_ptr": "*fp32",
                  "inputs_ptr": "*i64", "cond_ptr": "*fp32", "logits_ptr": "*fp32", "out_ptr": "*i64",
                  "scratch_ptr": "*fp32", "embed_ptr": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32",
                  "ow_ptr": "*fp32", "ob_ptr": "*fp32", "h1w_ptr": "*fp32", "h1b_ptr": "*fp32", "h2w_ptr": "*fp32",
                  "h2b_ptr": "*fp32", "dil_ptr": "*i64", "off_ptr": "*i64", "t0": "i32", "steps": "i32", "B": "i32",
                  "L": "i32", "Q": "i32", "SCR": "i32", "temperature_ptr": "*fp64", "top_k_ptr": "*i32",
                  "top_p_ptr": "*fp32", "argmax_ptr": "*i8", "log_scale_min": "fp32"}


def argument_types(dist: int = SOFTMAX) -> dict:
    """ARGUMENT_TYPES for a variant: a scalar-input model's codes and drawn values are float32."""
    if dist == SOFTMAX:
        return ARGUMENT_TYPES
    return {**ARGUMENT_TYPES, "codes_ptr": "*fp32", "out_ptr": "*fp32"}


def plain_rules(B: int, device) -> StreamRules:
    """Rules for B streams that draw nothing (teacher forcing): zeros, never read."""
    return StreamRules(*(torch.zeros(B, dtype=dtype, device=device)
                         for dtype in (torch.float64, torch.int32, torch.float32, torch.int8)))


def tile_scratch(constants: dict, B: int, device) -> torch.Tensor:
    """The scratch of B streams for a variant's constants: a row of R + G + S + H + C floats per stream, padded to
    whole tiles (`_tile_scratch` lays a tile's rows out)."""
    width = sum(constants[name] for name in ("R", "G", "S", "H", "C"))
    tile = constants["TILE"]
    return torch.empty(triton.cdiv(B, tile) * tile, width, device=device, dtype=torch.float32)


def launch(codes, t0, u, w: GpuWeights, queues, inputs, cond, logits_out, codes_out, teacher: bool,
           rules: StreamRules | None = None, truncate: bool = False, dist: int = SOFTMAX, log_scale_min: float = -7.0,
           tile: int = 1):
    """Launch one chunk: T = codes.shape[1] steps (teacher, outputs into logits_out) or u.shape[0] steps (generate,
    codes or values into codes_out from distribution `dist`, each stream by its rule in `rules`; `truncate`: whether
    any of them uses top-k or top-p), `tile` streams per program (1, or `tile_for(w)`). Every shape is read from the
    arrays."""
    B = queues.shape[0]
    steps = codes.shape[1] if teacher else u.shape[0]
    constants = launch_constants(w, teacher, cond is not None, dist, tile, truncate)
    rules = plain_rules(B, queues.device) if rules is None else rules  # teacher forcing draws nothing
    scratch = tile_scratch(constants, B, queues.device)
    inputs_arg = inputs if inputs.numel() else torch.empty(B, dtype=torch.int64, device=queues.device)
    _wavenet_kernel[(triton.cdiv(B, tile),)](
        codes, codes.stride(0), u, queues, inputs_arg, queues if cond is None else cond,
        logits_out if teacher else queues, codes_out, scratch,
        w.embed, w.dilated_w, w.dilated_b, w.out_w, w.out_b, w.head1_w, w.head1_b, w.head2_w, w.head2_b,
        w.dilations, w.offsets, t0, steps, B, w.dilated_b.shape[0], queues.shape[1], scratch.shape[1],
        rules.temperature, rules.top_k, rules.top_p, rules.argmax, log_scale_min, **constants,
        **launch_options(tile))
