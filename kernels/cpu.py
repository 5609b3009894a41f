"""The CPU kernel: the whole generation loop in numba, sampling included. Arrays in, arrays out.

The weights arrive as one `CpuWeights` (a NamedTuple of arrays, which numba passes as one value). Its matrices are
in-major, the folded layout of fastwavenet/folded.py.
Streams are processed in tiles of `tile` streams; the matrix products are register-blocked outer products (vector
of outputs x block of streams, see `_matmul`) whose block shape follows the target's vector registers, and every
output is one fma chain in a fixed order, so a stream's arithmetic never depends on which streams share its tile,
how many there are or where it sits (a request's audio is the same alone or beside 100 others). Tiles run in
parallel on numba's thread count of threads (`run_shares`), each through all its steps, so one call starts its
threads once however many steps it makes. With fewer streams than threads, `generate_split` and
`teacher_forced_split` run every stream as one tile and split each layer's outputs between the threads instead, each
thread streaming its own block of the weights, the threads running through the whole call and meeting at a barrier
between phases (the note above `_claim`). Measured effects of these choices are in docs/BENCHMARKS.md.

Shapes (B streams, T or n steps, L layers, R/G/S/H/O channels, k taps, k_in input taps, Q queue slots): see
`CpuWeights`; queues (B, Q, R) float32, inputs (B, k_in-1) int64 (-1: before the start).

Two kinds of model share every function, told apart by two scalars:
- `scalar` input: a stream's input is a sample value (float32 arrays where class models have int64 codes), and
  the input stage is one multiply-add (embed (1, 2, R): weight row, bias row) instead of table lookups;
- `distribution`: what the head's O outputs are and how a sample is drawn from them: SOFTMAX (`sample_one`,
  logits over classes), LOGISTIC_MIXTURE or GAUSSIAN (`sample_continuous`, two uniforms per sample). The rules are
  those of fastwavenet/sampling.py and fastwavenet/distributions.py.
The weight matrices are float32, bf16 bit patterns (uint16) or int8 with column scales (see `CpuWeights`): numba
compiles one specialization for each from the same source, the product blocks (`_micro`) widening each weight to
float32 exactly in registers. At w8a8 the int8 weights meet 8-bit activations: integer products, VNNI where the CPU
has it (`_products8`, the w8a8 note above it), AMX's tiles for many streams where it has those (the note above
`_has_amx`).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import platform
import sys
import threading
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# Absolute, not relative: recipes load copies of this file as modules of their own (recipes/kernel_timing.py).
from fastwavenet.kernels.sampling_constants import (GAUSSIAN, NORMAL_A, NORMAL_B, NORMAL_C, NORMAL_D, NORMAL_LOW,
                                                    SOFTMAX, U_EDGE)


class CpuWeights(NamedTuple):
    """The generator's weights as the CPU kernel reads them (float32 unless said; matrices in-major, (in, out), the
    folded layout of fastwavenet/folded.py). The four matrices may instead be bf16, stored as uint16 bit patterns
    (the upper half of a float32), or int8 with float32 scales per output column (folded.int8_parts, weight
    q * scale): the kernel widens each weight to float32 in registers and accumulates in float32, reading a half or
    a quarter of the bytes. At bf16 it computes exactly what the float32 kernel computes on the same rounded weights;
    at int8 it sums x * q and multiplies by the scales once per chunk of rows (`_INT8_CHUNK`), a few float32
    roundings from that. The scales are empty ((L, 0) or (0,)) unless the matrices are int8."""

    embed: np.ndarray      # (k_in, C, R) input taps as tables, j = 0 oldest; the newest holds the bias;
                           # scalar input: (1, 2, R), x = value * embed[0, 0] + embed[0, 1]
    dilated_w: np.ndarray  # (L, k*R, 2G) each layer's taps stacked, oldest first; columns [:G] tanh, [G:] gate
    dilated_b: np.ndarray  # (L, 2G)
    out_w: np.ndarray      # (L, G, R+S) residual columns [:R], skip columns [R:]
    out_b: np.ndarray      # (L, R+S)
    head1_w: np.ndarray    # (S, H)
    head1_b: np.ndarray    # (H,)
    head2_w: np.ndarray    # (H, O)
    head2_b: np.ndarray    # (O,)
    dilated_s: np.ndarray  # (L, 2G) int8 scales, as the others below: (L, R+S), (H,), (O,)
    out_s: np.ndarray
    head1_s: np.ndarray
    head2_s: np.ndarray
    dilations: np.ndarray  # (L,) int64
    offsets: np.ndarray    # (L,) int64: where each layer's ring starts in a stream's queue block
    # w8a8 only (`w8a8_layout`; empty, (L, 0, 0), (0, 0), (L, 0) or (0,), otherwise): the int8 matrices again in
    # the 8-bit products' layout, and 128 x their column sums (int32) per tap
    dilated_v: np.ndarray  # (L, k * ceil(R/4), 4 * 2G), each tap its own rows
    out_v: np.ndarray      # (L, ceil(G/4), 4 * (R+S))
    head1_v: np.ndarray    # (ceil(S/4), 4 * H)
    head2_v: np.ndarray    # (ceil(H/4), 4 * O)
    dilated_c: np.ndarray  # (L, k, 2G)
    out_c: np.ndarray      # (L, R+S)
    head1_c: np.ndarray    # (H,)
    head2_c: np.ndarray    # (O,)
    # Many-stream tiles only, and small ones of large layers (`panel_layout`; (L, 0, 0, 0) otherwise): dilated_w and
    # out_w again, float32 (bf16's weights widened, int8's q) or bf16 bits, in panels of BLOCK.panel columns, each
    # panel's rows contiguous, which `_panel_products` reads. Where they are given, dilated_w and out_w may be empty
    # ((L, 0, 0)): the kernel then reads only these.
    dilated_p: np.ndarray  # (L, ceil(2G/P), k*R, P)
    out_p: np.ndarray      # (L, ceil((R+S)/P), G, P)
    # Lone-stream tiles, and int8's small tiles of large layers (`strip_layout`; (L, 0, 0, 0) otherwise): dilated_w
    # and out_w again, in their own format, in strips of a lone stream's block width STRIP (BLOCK.nv1 vectors), each
    # strip's rows contiguous, which `_strips` reads.
    dilated_l: np.ndarray  # (L, ceil(2G/STRIP), k*R, STRIP)
    out_l: np.ndarray      # (L, ceil((R+S)/STRIP), G, STRIP)

# fastmath lets reductions reassociate (so dot products vectorize): every flag but `arcp`, with which LLVM divides
# vectors by an approximate reciprocal and a Newton step (vrcpps) but scalars exactly (vdivss). A loop that LLVM
# keeps in two versions, vector and scalar, and picks at run time by whether its arrays' addresses might overlap
# then gives different numbers by where its arrays lie: the gate nonlinearity's loop did (z into gated), and split
# calls differed from the one-thread kernel in their last bits (2026-12-05; now `_gate_block`, and
# tests/test_cpu_split.py). error_model="numpy" drops Python's ZeroDivisionError check from every division: with
# it, the loop of the gate nonlinearity (a division per value) ran scalar and cost a quarter of a batched step.
# cache=True keeps the compiled code between runs.
_FAST = {"nnan", "ninf", "nsz", "contract", "afn", "reassoc"}
_OPTIONS = dict(fastmath=_FAST, error_model="numpy", cache=True)
# The functions between a step and its products (`_generate_tile`, `_tile_step`, a layer's gate and outputs; the split
# path's `_split_layers` and `_phase_part`) are inlined into their callers by numba (its IR, before typing) rather
# than compiled on their own: numba turns every @njit function it compiles into machine code of its own, with
# everything it calls linked in and optimized again, so each of these had the whole kernel optimized and emitted once
# more. A first `generate` for `tiny` compiled in 94 s, 62 s inlined (the same codes; `standard` and the vocoder shape
# ran 1.00-1.05x), a first `generate_split` in 68 s against 78 with the split path's two (docs/BENCHMARKS.md).
_INLINED = dict(_OPTIONS, inline="always")
# Integer constants passed to the compiled (not inlined) functions, as int64 values rather than literals: numba
# compiles a function called with a literal 0 (or 1, 2) apart from the same function called with a variable, each
# version with all it calls, so one float32 `generate` built `_products` and `_panels` in 8 versions each, `_strips`
# and `_panel_products` in 4 (`recipes/compile_time.py`; docs/BENCHMARKS.md, the first section).
_0, _1, _2 = np.int64(0), np.int64(1), np.int64(2)
# A thread's share of a call (`run_shares`): the GIL released. Each share first drops the owners of the arrays it
# was given (`_borrowed`).
_SHARE = dict(_OPTIONS, nogil=True)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


# Addresses as int64 (`_at`), not numba's uint64 `ctypes.data`: numba makes uint64 + int64 a float64, and a literal 0
# unified with a uint64 one too, so the product functions, taking addresses from sums and from `0 if ... else`, were
# compiled in a version for each mix of the three types (`_products` in 7 in one float32 `generate`).
@njit(**_INLINED)
def _at(a):
    """The address of a's first element, an int64."""
    return np.int64(a.ctypes.data)


# Eigen's rational approximation of tanh for float32 (max abs error 3.4e-7 against float64 tanh). libm's tanh is
# not vectorized and cost more than the matrix work at these sizes.
_CLAMP = np.float32(7.90531110763549805)
_A1, _A3, _A5, _A7 = (np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04),
                      np.float32(1.48572235717979e-05), np.float32(5.12229709037114e-08))
_A9, _A11, _A13 = np.float32(-8.60467152213735e-11), np.float32(2.00018790482477e-13), np.float32(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = (np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03),
                      np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06))


def _gate_block(lanes: int):
    """An intrinsic computing `lanes` gated values: g[i] = tanh(z[i]) * (0.5 + 0.5 tanh(0.5 z[G + i])) for i <
    lanes, arguments (z, g, G): z and g addresses of float32, G the offset of the sigmoid half in floats. tanh is
    Eigen's rational function (the constants above), every operation written out (clamp, fmas, an exact division)
    with no fast-math flags, so a value is the same whichever block computes it, and no run-time check of where
    the arrays lie picks between versions of a loop (the note above `_OPTIONS`)."""
    def codegen(context, builder, signature, args):
        zp, gp, half = args
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, lanes)
        name = f"llvm.fma.v{lanes}f32"
        fma_fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                                  name)

        def const(v):
            return ir.Constant(vec, [float(v)] * lanes)

        def fma(a, b, c):
            return builder.call(fma_fn, [a, b, c])

        def tanh(x):
            lo, hi = const(-_CLAMP), const(_CLAMP)
            x = builder.select(builder.fcmp_ordered("<", x, lo), lo, x)
            x = builder.select(builder.fcmp_ordered(">", x, hi), hi, x)
            x2 = builder.fmul(x, x)
            p = const(_A13)
            for a in (_A11, _A9, _A7, _A5, _A3, _A1):
                p = fma(x2, p, const(a))
            q = const(_B6)
            for b in (_B4, _B2, _B0):
                q = fma(x2, q, const(b))
            return builder.fdiv(builder.fmul(x, p), q)

        zptr = builder.inttoptr(zp, f32.as_pointer())
        gptr = builder.inttoptr(gp, f32.as_pointer())
        a = builder.load(builder.bitcast(zptr, vec.as_pointer()), align=4)
        b = builder.load(builder.bitcast(builder.gep(zptr, [half]), vec.as_pointer()), align=4)
        gate = fma(const(0.5), tanh(builder.fmul(const(0.5), b)), const(0.5))
        builder.store(builder.fmul(tanh(a), gate), builder.bitcast(gptr, vec.as_pointer()), align=4)
        return context.get_dummy_value()

    @intrinsic
    def block(typingctx, z, g, half):
        return types.void(types.intp, types.intp, types.intp), codegen
    return block


@intrinsic
def _pow2(typingctx, n):
    """2.0 ** n as float32 for an int32 n in [-126, 127]: the exponent bits set directly (vectorizable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return sig, codegen


# Cephes' expf: exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in two parts, exp(r) by a degree-7
# polynomial (within 3e-7 relative of float64 exp: a few float32 rounding steps). libm's expf is a call per value,
# the loop around it scalar; this one vectorizes, and the softmax over the classes was a tenth of a batched step.
_LOG2E, _LN2_HI, _LN2_LO = np.float32(1.44269504088896341), np.float32(0.693359375), np.float32(-2.12194440e-4)
_E0, _E1, _E2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_E3, _E4, _E5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
_EXP_LOW = np.float32(-87.33654)  # below it exp underflows float32's normal range: 0


@njit(**_OPTIONS, inline="always")
def fast_exp_neg(x):
    """exp(x) in float32 for x <= 0 (as the softmax needs, logits minus their maximum); 0 below _EXP_LOW."""
    low = x < _EXP_LOW
    x = max(x, _EXP_LOW)
    n = np.floor(x * _LOG2E + np.float32(0.5))  # float32 (math.floor would give an int64, then float64 math)
    r = x - n * _LN2_HI - n * _LN2_LO
    y = (((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5) * r * r + r + np.float32(1.0)
    value = y * _pow2(np.int32(n))
    return np.float32(0.0) if low else value


# ---- the matrix products ---------------------------------------------------------------------------------------
#
# Every product is y[b, n] = (a[b, n] + bias[n]) + sum_i x[b, i] * w[i, n] with w in-major (the folded layout), a
# the running sum it adds to (or zeros), in outer-product form: the vector dimension is the outputs n, and each
# output's sum is one chain of fused multiply-adds over i in order, starting from a + bias (int8: a chain per chunk
# of 64 rows, each chunk added by one more fma with its column's scale, `_INT8_CHUNK`). A block of SB streams x
# NV vectors of outputs keeps SB * NV accumulators in registers, loads NV weight vectors per i and broadcasts one
# input per stream. No horizontal sums, and since every output is the same chain of fmas whatever block computes it,
# a stream's numbers never depend on the block shape, on which streams share its tile or on how many there are: one
# request, one answer holds by construction, and the block shapes are free to follow the register file.


def _target_assembly(element: ir.Type, count: int) -> str:
    """The assembly numba's target makes of adding two vectors of `count` `element`s (NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES apply, as for every kernel)."""
    import llvmlite.binding as llvm
    from numba.core.registry import cpu_target

    probe = ir.Module(name="fastwavenet_vector_probe")
    probe.triple = llvm.get_process_triple()
    vec = ir.VectorType(element, count)
    fn = ir.Function(probe, ir.FunctionType(ir.VoidType(), [vec.as_pointer()] * 2), "add")
    b = ir.IRBuilder(fn.append_basic_block())
    add = b.fadd if isinstance(element, ir.FloatType) else b.add
    b.store(add(b.load(fn.args[0]), b.load(fn.args[1])), fn.args[1])
    b.ret_void()
    return cpu_target.target_context.codegen()._tm.emit_assembly(llvm.parse_assembly(str(probe)))


def _vector_bits(element: ir.Type = ir.FloatType()) -> int:
    """The widest vector registers numba's target uses for `element`s (512, 256 or 128 bits): LLVM asked to add two
    16-element vectors on that target, and its assembly read (AVX has 256-bit float vectors only; AVX2 integer ones
    too)."""
    asm = _target_assembly(element, 16)
    return 512 if "zmm" in asm else 256 if "ymm" in asm else 128


class Blocks(NamedTuple):
    """Register-block shape of the matrix products: `lanes` floats per vector, SB streams x NV vectors per block
    (SB * NV accumulators), NV1 vectors for a lone stream; PS streams x PV vectors per block of the panel products
    (`_panel_products`), whose panels are PV vectors wide."""

    lanes: int
    sb: int
    nv: int
    nv1: int
    ps: int
    pv: int

    @property
    def panel(self) -> int:
        """Columns per panel of `CpuWeights.dilated_p` and `out_p`."""
        return self.pv * self.lanes


# Chosen by measurement (docs/BENCHMARKS.md): 32 zmm registers hold 16 accumulators + 4 weight vectors + a
# broadcast; 16 ymm hold 8 + 2 + 1. A lone stream wants many independent chains (fma latency) and few loads (int8's
# too, since its scales wait for a chunk's end: 8 vectors ran 1.17x 4 with AVX2, where a scale vector per
# accumulator had spilled 8; the same with SSE).
# Panel blocks hold more streams on fewer vectors (32 zmm: 24 accumulators + 2 weights + a broadcast; 16 ymm: 12 +
# 2 + 1): a third of the weight bytes per fma that 4 x 4 reads, where many streams share each weight.
BLOCKS = {512: Blocks(lanes=16, sb=4, nv=4, nv1=8, ps=12, pv=2),
          256: Blocks(lanes=8, sb=4, nv=2, nv1=8, ps=6, pv=2),
          128: Blocks(lanes=4, sb=4, nv=2, nv1=8, ps=6, pv=2)}
VECTOR_BITS = _vector_bits()
BLOCK = BLOCKS[VECTOR_BITS]


def _emit_prefetch(builder, address):
    """LLVM's prefetch of the cache line at `address` (an i64): read, keep in all levels."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    name = "llvm.prefetch.p0"
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name)
    builder.call(fn, [builder.inttoptr(address, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _pin(builder, slots, vec):
    """An empty asm statement that reads and writes the vectors in `slots` (allocas of type `vec`, passed rather than
    read from the allocas' pointer type, which llvmlite's opaque pointers will not carry) in registers, on x86
    (elsewhere nothing): what a block computes before it stays before it, what comes after stays after.
    `_micro(pin=True)` (the panel blocks) pins each stream's sums after its fmas. Unpinned, LLVM's scheduler put every
    stream's broadcast above the first fma, and 12 broadcasts, 24 sums and 2 weight vectors are more than 32 registers:
    sums went to the stack and back on every iteration (the 12 x 2 block's loop: 14 stack references for an Intel
    target; 48 in two iterations for znver4, whose model spilled from 8 x 2 up; r9y9's step at 128 streams on Zen 4 ran
    1.53x slower, docs/BENCHMARKS.md). The core reorders the loop anyway. The 4 x 4 block (24 registers) is left to the
    scheduler: pinned, r9y9's batch 8 ran 0.88x on Zen 4."""
    if not _X86:
        return
    values = [builder.load(a) for a in slots]
    ties = ",".join(["=v"] * len(slots) + [str(i) for i in range(len(slots))])
    pinned = builder.asm(ir.FunctionType(ir.LiteralStructType([vec] * len(slots)), [vec] * len(slots)), "", ties,
                         values, True)
    for i, a in enumerate(slots):
        builder.store(builder.extract_value(pinned, i), a)


# Rows of an int8 product per chunk: y = (a + bias), then for each chunk of rows c (rows 0-63, 64-127, .. of the
# product) y = fma(sum_{i in c} x[i] * q[i, n], scale[n], y), each chunk's sum one fma chain in row order from -0.0.
# Every block follows the chunks, whether it is handed all the rows (a lone stream's) or a chunk at a time (a tile's,
# `_CHUNK`; panels', `_PANEL_CHUNK`), so a stream's numbers are the same in any of them. Against widening each weight
# to q * scale (one multiply per weight, then the fma: exactly float32 on the rounded weights): r9y9's shape at
# batch 1 ran 1.2x on Zen 4, where the two floating-point operations per weight bound it; the factored sums differ
# from float32 on the rounded weights by a few float32 roundings (tests/test_precision.py).
_INT8_CHUNK = 64


def _micro(sb: int, nv: int, lanes: int, prefetch: bool = False, pin: bool = False):
    """An intrinsic computing one block: y[s, n] (s < sb, n < nv * lanes) = (a[s, n] + bias[n]) + sum_i x[s, i] *
    w[i, n], each output one fma chain over i = 0 .. k-1 starting from a + bias (int8: one per chunk, `_INT8_CHUNK`;
    a is where the sum so far lives, or zeros; y may be a). Arguments: a weight (its type says float32, bf16 bits
    (uint16) or int8, widened in registers; int32 says float32 values of int8 q, widened already; its value is not
    used), then addresses and row strides in elements (intp): (weight, w, ldw, x, ldx, y, ldy, a, lda, bias, scale,
    k). int8 weights q are widened to float32 exactly and their scale factored out, chunk by chunk (`_INT8_CHUNK`),
    scale the output columns' float32 scales (read only for int8). With `prefetch`, two more: an address ahead and a
    stride in bytes: the block asks for the cache line at ahead + i * stride in iteration i, so weights to come
    arrive while these are used (a burst of prefetches before the block, measured against this, stalled it:
    docs/BENCHMARKS.md). With `pin`, each stream's sums are pinned after its fmas (`_pin`)."""

    def typed(weight):
        bf16 = weight == types.uint16
        # int8 q as bytes, widened here (`bytes8`), or q already widened, as float32 (the type int32 says so:
        # `_panel_products`' panels); either way int8's sums (`int8`)
        bytes8 = weight == types.int8
        int8 = bytes8 or weight == types.int32
        # bf16 in pairs of vectors: one load of 2 x lanes weights as 32-bit words, widened by a shift (the even
        # columns) and a mask (the odd ones), two plain ALU operations, where a vector at a time takes a widening
        # load (a shuffle) and a shift each. The pair's accumulators then hold its even and its odd columns, put
        # back in order once, after the loop; each output's fma chain is the same.
        paired = bf16 and nv % 2 == 0
        sig = types.void(weight, *([types.intp] * (13 if prefetch else 11)))

        def codegen(context, builder, signature, args):
            _, wp, ldw, xp, ldx, yp, ldy, ap, lda, bp, sp, k = args[:12]
            i64 = ir.IntType(64)
            f32 = ir.FloatType()
            vec = ir.VectorType(f32, lanes)
            element = ir.IntType(16) if bf16 else ir.IntType(8) if bytes8 else f32
            name = f"llvm.fma.v{lanes}f32"
            fma = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                                 name)
            wptr, xptr, yptr, aptr, bptr, sptr = (builder.inttoptr(p, t.as_pointer()) for p, t in (
                (wp, element), (xp, f32), (yp, f32), (ap, f32), (bp, f32), (sp, f32)))

            def vector_at(base, index, of=vec):
                return builder.bitcast(builder.gep(base, [index]), of.as_pointer())

            i32 = ir.IntType(32)

            def order(indices):
                return ir.Constant(ir.VectorType(i32, lanes), indices)

            accs = [[cgutils.alloca_once(builder, vec) for _ in range(nv)] for _ in range(sb)]
            starts = [[None] * nv for _ in range(sb)]
            for v in range(nv):
                column = ir.Constant(i64, v * lanes)
                bias = builder.load(vector_at(bptr, column), align=4)
                for s in range(sb):
                    at = vector_at(aptr, builder.add(builder.mul(ir.Constant(i64, s), lda), column))
                    starts[s][v] = builder.fadd(builder.load(at, align=4), bias)
            # int8, scale factored out (`_INT8_CHUNK`): the outputs start in `totals`; the sums of x * q start from
            # -0.0 and, every chunk of rows, go onto the outputs as one fma by the column scales (loaded once), where
            # a multiply per weight (the scale into the widened weight) was a second floating-point operation beside
            # each fma
            totals = [[cgutils.alloca_once(builder, vec) for _ in range(nv)] for _ in range(sb)] if int8 else None
            negative_zero = ir.Constant(vec, [-0.0] * lanes)
            for s in range(sb):
                for v in range(0, nv, 2 if paired else 1):
                    if paired:  # the pair's 2 x lanes outputs held as even columns, odd columns (see `paired`)
                        pair = starts[s][v], starts[s][v + 1]
                        builder.store(builder.shuffle_vector(*pair, order(list(range(0, 2 * lanes, 2)))), accs[s][v])
                        builder.store(builder.shuffle_vector(*pair, order(list(range(1, 2 * lanes, 2)))),
                                      accs[s][v + 1])
                    elif int8:
                        builder.store(starts[s][v], totals[s][v])
                        builder.store(negative_zero, accs[s][v])
                    else:
                        builder.store(starts[s][v], accs[s][v])
            wide = ir.VectorType(i32, lanes)
            scales = [builder.load(vector_at(sptr, ir.Constant(i64, v * lanes)), align=4) for v in range(nv)] \
                if int8 else None

            def rows(i):  # the fmas of row i
                row = builder.mul(i, ldw)
                if prefetch:
                    _emit_prefetch(builder, builder.add(args[12], builder.mul(i, args[13])))
                weights = []
                for v in range(0, nv, 2 if paired else 1):
                    if paired:  # 2 x lanes bf16 weights in one load, as lanes 32-bit words of two weights each
                        words = builder.load(vector_at(wptr, builder.add(row, ir.Constant(i64, v * lanes)), wide),
                                             align=2)
                        weights.append(builder.bitcast(builder.shl(words, ir.Constant(wide, [16] * lanes)), vec))
                        weights.append(builder.bitcast(builder.and_(words, ir.Constant(wide, [-65536] * lanes)), vec))
                        continue
                    at = vector_at(wptr, builder.add(row, ir.Constant(i64, v * lanes)), ir.VectorType(element, lanes))
                    wv = builder.load(at, align=2 if bf16 else 1 if element != f32 else 4)
                    if bf16:
                        wv = builder.bitcast(builder.shl(builder.zext(wv, wide), ir.Constant(wide, [16] * lanes)), vec)
                    elif bytes8:  # q exactly, as float32
                        wv = builder.sitofp(builder.sext(wv, wide), vec)
                    weights.append(wv)
                for s in range(sb):
                    xs = builder.load(builder.gep(xptr, [builder.add(builder.mul(ir.Constant(i64, s), ldx), i)]))
                    one = builder.insert_element(ir.Constant(vec, ir.Undefined), xs, ir.Constant(ir.IntType(32), 0))
                    splat = builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                                   ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
                    for v in range(nv):
                        builder.store(builder.call(fma, [splat, weights[v], builder.load(accs[s][v])]), accs[s][v])
                    if pin and s < sb - 1:
                        _pin(builder, accs[s], vec)

            if int8:
                chunk = ir.Constant(i64, _INT8_CHUNK)
                with cgutils.for_range(builder, builder.sdiv(builder.add(k, ir.Constant(i64, _INT8_CHUNK - 1)),
                                                             chunk)) as chunks:
                    r0 = builder.mul(chunks.index, chunk)
                    left = builder.sub(k, r0)
                    count = builder.select(builder.icmp_signed("<", left, chunk), left, chunk)
                    with cgutils.for_range(builder, count) as loop:
                        rows(builder.add(r0, loop.index))
                    for s in range(sb):  # the chunk's sums onto the outputs, then a fresh chunk
                        for v in range(nv):
                            builder.store(builder.call(fma, [builder.load(accs[s][v]), scales[v],
                                                             builder.load(totals[s][v])]), totals[s][v])
                            builder.store(negative_zero, accs[s][v])
            else:
                with cgutils.for_range(builder, k) as loop:
                    rows(loop.index)
            # back to column order: output j of a pair is its even vector's lane j / 2 or its odd vector's
            back = [[j // 2 + (lanes if j % 2 else 0) for j in range(half * lanes, (half + 1) * lanes)]
                    for half in (0, 1)]
            sums = totals if int8 else accs
            for s in range(sb):
                for v in range(nv):
                    offset = builder.add(builder.mul(ir.Constant(i64, s), ldy), ir.Constant(i64, v * lanes))
                    at = vector_at(yptr, offset)
                    if paired:
                        first = v - v % 2
                        out = builder.shuffle_vector(builder.load(sums[s][first]), builder.load(sums[s][first + 1]),
                                                     order(back[v % 2]))
                    else:
                        out = builder.load(sums[s][v])
                    builder.store(out, at, align=4)
            return context.get_dummy_value()

        return sig, codegen

    if prefetch:
        @intrinsic
        def block(typingctx, weight, w, ldw, x, ldx, y, ldy, a, lda, bias, scale, k, ahead, stride):
            return typed(weight)
    else:
        @intrinsic
        def block(typingctx, weight, w, ldw, x, ldx, y, ldy, a, lda, bias, scale, k):
            return typed(weight)
    return block


@intrinsic
def _prefetch(typingctx, address):
    """Ask for the cache line at `address` (intp) ahead of its use (LLVM's prefetch: read, keep in all levels)."""
    sig = types.void(types.intp)

    def codegen(context, builder, signature, args):
        _emit_prefetch(builder, args[0])
        return context.get_dummy_value()

    return sig, codegen


_L = BLOCK.lanes
# The main block, a lone stream's block, one vector for one stream, one output for one stream.
_MAIN, _ONE, _LONE = _micro(BLOCK.sb, BLOCK.nv, _L), _micro(1, BLOCK.nv, _L), _micro(1, BLOCK.nv1, _L)
_MAIN_AHEAD = _micro(BLOCK.sb, BLOCK.nv, _L, prefetch=True)
_PAIR = _micro(2, BLOCK.nv, _L)  # two streams (tiles of 2 or 3, what blocks of SB leave)
_GATE, _GATE_ONE = _gate_block(_L), _gate_block(1)
# The panel products' blocks, each a panel wide: PS - d streams for d = 0 .. 4 (`_PB*`, and the same asking for
# lines ahead, `_PA*`: a tile's streams in blocks of even size, `_panel_products`), a few streams, one stream.
_PB0, _PB1, _PB2, _PB3, _PB4 = (_micro(BLOCK.ps - d, BLOCK.pv, _L, pin=True) for d in range(5))
_PA0, _PA1, _PA2, _PA3, _PA4 = (_micro(BLOCK.ps - d, BLOCK.pv, _L, prefetch=True, pin=True) for d in range(5))
_PANEL4, _PANEL2, _PANEL1 = _micro(4, BLOCK.pv, _L), _micro(2, BLOCK.pv, _L), _micro(1, BLOCK.pv, _L)
_VEC, _SCALAR, _TWO = _micro(1, 1, _L), _micro(1, 1, 1), _micro(1, 2, _L)
# What the tile path passes for the split path's weight blocks (`split_blocks`): nothing. (A global array of size
# zero: numba freezes it into the code, which keeps the kernels cacheable.)
_NO_BLOCKS, _NO_GATE_BLOCKS = np.zeros((0, 0, 0, 0, 0), np.float32), np.zeros((0, 0, 0, 0, 0, 0), np.float32)
# Streams per group (a tile's streams: tiles hold at most 64) and rows per chunk of a group's products: each block of
# streams takes a chunk of a weight panel (64 rows x NV vectors, 16 KB of float32) after the one before it, from L1,
# while the next chunk is prefetched, where whole panels (a vocoder layer's 512 rows, rows 2 KB apart, which the
# hardware prefetchers do not follow across pages) came from L2 or L3 for every block. On r9y9's shape, one thread,
# 64 streams: the whole step 1.3x (docs/BENCHMARKS.md); `standard` the same as before. A chunk goes on from the
# sums so far plus -0.0 (`_scratch`'s `zeros`), an identity for every float, so each output is still the one fma
# chain in input order it was unchunked.
_GROUP = 64
_CHUNK = 64
assert _CHUNK % _INT8_CHUNK == 0  # (a tile's int8 blocks then meet the chunks a lone stream's meet)
# Bytes of weights a product reads from which its chunks are prefetched: vocoder-size products (r9y9's, at every
# precision); `standard`'s (32-256 KB, from L2) ran 10 % slower at 8 streams with the prefetches.
_PREFETCH_FROM = 192 << 10


@njit(**_OPTIONS)
def _products(w, row0, K, bp, sp, xp, ldx, yp, ldy, ap, lda, nb, first, last, zp):
    """y[b, n - first] = (a[b, n - first] + bias[n]) + sum_{i < K} x[b, i] * w[row0 + i, n] for n in [first, last),
    streams b < nb. w (rows, N) in-major, float32, bf16 bits (uint16) or int8 (weight w * scale[n]); the rest are
    addresses (bias, scale (read for int8 only), x, y, a, and zp: at least `last` floats of -0.0) and row strides
    in floats (a stride 0 gives every stream a's first row). The running sums of the kernel (skip and
    residual totals, a layer's taps one after another) accumulate in place this way, with no separate pass over
    them. See the note above `_vector_bits` for why every block gives every stream the same numbers."""
    ldw = w.shape[1]
    esize = w.itemsize
    wp = _at(w) + esize * row0 * ldw
    yp, ap = yp - 4 * first, ap - 4 * first  # so that output n of stream b is at yp + 4 * (b * ldy + n)
    w0 = w[0, 0]  # its type picks the blocks' weight format
    for g0 in range(0, nb, _GROUP):
        g1 = min(nb, g0 + _GROUP)
        n = first
        if g1 - g0 > 1:  # the blocks' columns chunk by chunk (`_CHUNK`), the rest below
            span = (last - first) // (BLOCK.nv * _L) * (BLOCK.nv * _L)
            ahead = esize * K * ldw >= _PREFETCH_FROM
            for k0 in range(0, K, _CHUNK):
                kc = min(_CHUNK, K - k0)
                wk, xk = wp + esize * k0 * ldw, xp + 4 * k0
                c = first
                while c < first + span:
                    # the next panel's chunk (or the next chunk's first panel) on its way while this one is used
                    # (rows of one or two cache lines, bf16 and int8: each block asks for one line of every row, a row
                    # an iteration, 1.1-1.35x at 4-16 streams; float32's four: all at once first, which ran 0.9-1.1x
                    # the other way; lines no block will ask for, at fewer blocks than lines, first too)
                    nc, nk = (c + BLOCK.nv * _L, k0) if c + BLOCK.nv * _L < first + span else (first, k0 + _CHUNK)
                    lines = esize * BLOCK.nv * _L // 64 if ahead and nk < K else 0
                    nxt = wp + esize * (nk * ldw + nc)
                    line = 0
                    asked = min(lines, (g1 - g0) // BLOCK.sb) if lines <= 2 else 0
                    for early in range(asked, lines):
                        for i in range(min(_CHUNK, K - nk)):
                            _prefetch(nxt + esize * i * ldw + 64 * early)
                    lines = asked
                    b = g0
                    while b < g1:
                        sb = BLOCK.sb if b + BLOCK.sb <= g1 else 2 if b + 2 <= g1 else 1
                        at = yp + 4 * (b * ldy + c)
                        a, la, bias = (ap + 4 * (b * lda + c), lda, bp + 4 * c) if k0 == 0 else (at, ldy, zp + 4 * c)
                        if sb == BLOCK.sb and line < lines:
                            _MAIN_AHEAD(w0, wk + esize * c, ldw, xk + 4 * b * ldx, ldx, at, ldy, a, la, bias,
                                        sp + 4 * c, kc, nxt + 64 * line, esize * ldw)
                            line += 1
                        elif sb == 1:
                            _ONE(w0, wk + esize * c, ldw, xk + 4 * b * ldx, ldx, at, ldy, a, la, bias, sp + 4 * c,
                                 kc)
                        elif sb == 2:
                            _PAIR(w0, wk + esize * c, ldw, xk + 4 * b * ldx, ldx, at, ldy, a, la, bias, sp + 4 * c,
                                  kc)
                        else:
                            _MAIN(w0, wk + esize * c, ldw, xk + 4 * b * ldx, ldx, at, ldy, a, la, bias, sp + 4 * c,
                                  kc)
                        b += sb
                    c += BLOCK.nv * _L
            n = first + span
        else:
            _lone_columns(w0, wp, ldw, esize, xp + 4 * g0 * ldx, yp + 4 * g0 * ldy, ap + 4 * g0 * lda, bp, sp, K,
                          first, last)
            continue
        for b in range(g0, g1):  # the columns past the blocks' span, stream by stream
            m = n
            while m + _L <= last:
                _VEC(w0, wp + esize * m, ldw, xp + 4 * b * ldx, ldx, yp + 4 * (b * ldy + m), ldy,
                     ap + 4 * (b * lda + m), lda, bp + 4 * m, sp + 4 * m, K)
                m += _L
            while m < last:
                _SCALAR(w0, wp + esize * m, ldw, xp + 4 * b * ldx, ldx, yp + 4 * (b * ldy + m), ldy,
                        ap + 4 * (b * lda + m), lda, bp + 4 * m, sp + 4 * m, K)
                m += 1


@njit(**_OPTIONS, inline="always")
def _lone_columns(w0, wp, ldw, esize, xp, yp, ap, bp, sp, K, n, last):
    """One stream's outputs n .. last - 1 of a product whose column c of row i is at wp + esize * (i * ldw + c), its
    sums and starts at yp + 4 * c and ap + 4 * c, bias and int8 scales at bp + 4 * c and sp + 4 * c: the widest lone
    blocks first (`_LONE`), then a block of NV vectors, two vectors in one loop (two chains at once: a split's short
    part), one vector, single values. `_products` takes a lone stream's columns here (also for each strip of
    `_strips`)."""
    while n + BLOCK.nv1 * _L <= last:
        _LONE(w0, wp + esize * n, ldw, xp, 0, yp + 4 * n, 0, ap + 4 * n, 0, bp + 4 * n, sp + 4 * n, K)
        n += BLOCK.nv1 * _L
    while n + BLOCK.nv * _L <= last:
        _ONE(w0, wp + esize * n, ldw, xp, 0, yp + 4 * n, 0, ap + 4 * n, 0, bp + 4 * n, sp + 4 * n, K)
        n += BLOCK.nv * _L
    if n + 2 * _L <= last:
        _TWO(w0, wp + esize * n, ldw, xp, 0, yp + 4 * n, 0, ap + 4 * n, 0, bp + 4 * n, sp + 4 * n, K)
        n += 2 * _L
    while n + _L <= last:
        _VEC(w0, wp + esize * n, ldw, xp, 0, yp + 4 * n, 0, ap + 4 * n, 0, bp + 4 * n, sp + 4 * n, K)
        n += _L
    while n < last:
        _SCALAR(w0, wp + esize * n, ldw, xp, 0, yp + 4 * n, 0, ap + 4 * n, 0, bp + 4 * n, sp + 4 * n, K)
        n += 1


@njit(**_OPTIONS)
def _strips(sw, row0, K, bp, sp, xp, ldx, yp, ldy, ap, lda, nb, first, last, zp):
    """`_products` on weights in strips (`strip_layout`): sw (strips, rows, width), the product's rows row0 ..
    row0+K-1 of each strip, its outputs [first, last); the rest as there. A block walks one strip's rows, which lie
    one after another here: one run of memory the hardware prefetchers follow. In the natural layout they lie a row
    of the matrix apart (2 KB for r9y9's gate), and one Zen 4 core read r9y9's products at 10-12 GB/s that way
    against 25-26 GB/s in strips (docs/BENCHMARKS.md). Each strip is a product of its own, through the same blocks
    (a lone stream's: `_lone_columns`), each output the same fma chain: the same numbers. (Tiles of several streams
    ask for their next chunk ahead by a strip's bytes, not the whole block's (`_PREFETCH_FROM`): a split of a few
    streams over more cores than the 2 measured may ask less than before; not measured.)"""
    S = sw.shape[2]
    for strip in range(first // S, (last + S - 1) // S):
        c0, c1 = max(first, strip * S), min(last, strip * S + S)
        shift = 4 * (c0 - first)  # output n of the product is column n - strip * S of the strip
        _products(sw[strip], row0, K, bp + 4 * strip * S, sp + 4 * strip * S, xp, ldx, yp + shift, ldy, ap + shift,
                  lda, nb, c0 - strip * S, c1 - strip * S, zp)


# Rows of a panel each block takes in turn (32 KB of float32 at 32 columns, read from L1 by every block of streams
# while the next chunk is prefetched).
_PANEL_CHUNK = 256
assert _PANEL_CHUNK % _INT8_CHUNK == 0  # (so int8 panels' blocks, chunking their rows, meet `_INT8_CHUNK`'s chunks)


def panel_layout(m: np.ndarray, panel: int = BLOCK.panel, dtype=np.float32) -> np.ndarray:
    """Matrices (..., rows, N), in-major, as panels of `panel` columns in `dtype`, each panel's rows contiguous:
    (..., ceil(N / panel), rows, panel), zero past column N (`CpuWeights.dilated_p`, `out_p`)."""
    *lead, rows, n = m.shape
    panels = -(-n // panel)
    padded = np.zeros((*lead, rows, panels * panel), dtype)
    padded[..., :n] = m
    return np.ascontiguousarray(np.moveaxis(padded.reshape(*lead, rows, panels, panel), -2, -3))


# Columns per strip of `strip_layout`: a lone stream's block (`_LONE`)
STRIP = BLOCK.nv1 * BLOCK.lanes


def strip_layout(m: np.ndarray, width: int = STRIP) -> np.ndarray:
    """Matrices (..., rows, N), in-major, in strips of `width` columns, in their own format (float32, bf16 bits or
    int8), each strip's rows contiguous: (..., ceil(N / width), rows, width), zero past column N
    (`CpuWeights.dilated_l`, `out_l`, `split_blocks`)."""
    return panel_layout(m, width, m.dtype)


@njit(**_OPTIONS, inline="always")
def _panel_block(d, ask, w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc, ahead, stride):
    """One panel block of BLOCK.ps - d streams (d <= 4), asking for lines ahead where `ask` (`_micro`); scale: an
    int8 panel's column scales' address."""
    if ask:
        if d == 0:
            _PA0(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc, ahead, stride)
        elif d == 1:
            _PA1(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc, ahead, stride)
        elif d == 2:
            _PA2(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc, ahead, stride)
        elif d == 3:
            _PA3(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc, ahead, stride)
        else:
            _PA4(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc, ahead, stride)
    elif d == 0:
        _PB0(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)
    elif d == 1:
        _PB1(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)
    elif d == 2:
        _PB2(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)
    elif d == 3:
        _PB3(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)
    else:
        _PB4(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)


@njit(**_OPTIONS)
def _panel_products(pw, row0, K, bp, sp, xp, ldx, yp, ldy, ap, lda, nb, first, last, zp):
    """`_products` for many streams, on weights in panels (`panel_layout`), float32 or bf16 bits (uint16): pw
    (panels, rows, P), the product's rows row0 .. row0+K-1 of each panel, its outputs [first, last). Where sp
    (column scales) is given, pw holds an int8 matrix's q as float32 (widened once, not in the loop, which at 64
    streams of r9y9's shape ran 0.89x) and the scales are factored out as int8's are (`_INT8_CHUNK`): int8's
    numbers. Each panel's chunk of `_PANEL_CHUNK` rows is taken by every block of streams in turn, from L1: the
    fewest blocks of at most PS streams (x PV vectors), their sizes within one of each other and at least PS - 4
    (32 streams as 11 + 11 + 10, not 12 + 12 + 4 + 4, whose blocks of 4 ran at half the rate: 1.04-1.09x on r9y9's
    step at tiles of 32); tiles too small for that take blocks of PS, then 4, 2 and 1 (blocks of 2 against two of
    1: r9y9's shape in tiles of 2 1.10-1.23x, of 3, 6 and 7 1.03-1.14x). For products of `_PREFETCH_FROM` bytes or
    more the whole blocks ask for the next chunk as they go, each its share, a few bytes on every iteration
    (`spread`). Each output is the same fma chain as in `_products` (a chunk goes on from the sums so far plus
    -0.0), so the layouts give the same numbers."""
    if sp != 0:  # the blocks' weight type says: widened int8 (`_micro`)
        _panels(np.int32(0), pw, row0, K, bp, sp, xp, ldx, yp, ldy, ap, lda, nb, first, last, zp)
    else:
        _panels(pw[0, 0, 0], pw, row0, K, bp, sp, xp, ldx, yp, ldy, ap, lda, nb, first, last, zp)


@njit(**_OPTIONS)
def _panels(w0, pw, row0, K, bp, sp, xp, ldx, yp, ldy, ap, lda, nb, first, last, zp):
    """`_panel_products` through the blocks for weights of w0's type (`_micro`)."""
    P, rows, esize = pw.shape[2], pw.shape[1], pw.itemsize
    yp, ap = yp - 4 * first, ap - 4 * first  # so that output n of stream b is at yp + 4 * (b * ldy + n)
    ahead = esize * K * (last - first) >= _PREFETCH_FROM
    p1 = (last + P - 1) // P
    for p in range(first // P, p1):
        c0, c1 = max(first, p * P), min(last, p * P + P)
        base = _at(pw) + esize * ((p * rows + row0) * P + c0 - p * P)
        scale = sp + 4 * c0  # (int8's column scales; other blocks do not read it)
        for k0 in range(0, K, _PANEL_CHUNK):
            kc = min(_PANEL_CHUNK, K - k0)
            wk = base + esize * k0 * P
            # this panel's next chunk, or the next panel's first: asked for by the first blocks, a line an fma row
            nxt, nk = (wk + esize * kc * P, min(_PANEL_CHUNK, K - k0 - kc)) if k0 + kc < K else \
                (_at(pw) + esize * ((p + 1) * rows + row0) * P, min(_PANEL_CHUNK, K) if p + 1 < p1 else 0)
            nbytes = esize * nk * P if ahead else 0
            # spread over every whole block of the chunk: the whole next chunk asked for by the first two blocks (a
            # line an iteration) kept the core's line-fill buffers full of requests to memory, where the blocks'
            # inputs from L2 then waited; spread, a few are in flight at a time (one r9y9 tap's product alone, from
            # memory, 128 streams: 1.09-1.11x; the step 1.05x, docs/BENCHMARKS.md). Iterations ask for the same
            # line again; a request for a line already on its way costs a load slot, not a fill buffer.
            blocks = (nb + BLOCK.ps - 1) // BLOCK.ps
            even = nb // blocks >= BLOCK.ps - 4 and c1 - c0 == P
            whole = blocks if even else nb // BLOCK.ps
            spread = 64 if whole == 0 else ((nbytes + whole * kc - 1) // (whole * kc) + 3) // 4 * 4
            line = 0
            b = 0
            if even:  # blocks of nb // blocks + 1 streams, then of nb // blocks
                for i in range(blocks):
                    size = nb // blocks + (1 if i < nb % blocks else 0)
                    at, x = yp + 4 * (b * ldy + c0), xp + 4 * (b * ldx + k0)
                    a, la, bias = (ap + 4 * (b * lda + c0), lda, bp + 4 * c0) if k0 == 0 else (at, ldy, zp + 4 * c0)
                    _panel_block(BLOCK.ps - size, line < nbytes, w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc,
                                 nxt + line, spread)
                    line += spread * kc
                    b += size
            while b < nb:  # (none left after even blocks)
                at, x = yp + 4 * (b * ldy + c0), xp + 4 * (b * ldx + k0)
                a, la, bias = (ap + 4 * (b * lda + c0), lda, bp + 4 * c0) if k0 == 0 else (at, ldy, zp + 4 * c0)
                if c1 - c0 == P:
                    if b + BLOCK.ps <= nb and line < nbytes:  # (lines past the chunk: harmless)
                        _PA0(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc, nxt + line, spread)
                        line += spread * kc
                        b += BLOCK.ps
                    elif b + BLOCK.ps <= nb:
                        _PB0(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)
                        b += BLOCK.ps
                    elif b + 4 <= nb:
                        _PANEL4(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)
                        b += 4
                    elif b + 2 <= nb:
                        _PANEL2(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)
                        b += 2
                    else:
                        _PANEL1(w0, wk, P, x, ldx, at, ldy, a, la, bias, scale, kc)
                        b += 1
                    continue
                m = 0  # a panel cut by first or last: its columns vector by vector, then one by one
                while m + _L <= c1 - c0:
                    _VEC(w0, wk + esize * m, P, x, ldx, at + 4 * m, ldy, a + 4 * m, la, bias + 4 * m, scale + 4 * m,
                         kc)
                    m += _L
                while m < c1 - c0:
                    _SCALAR(w0, wk + esize * m, P, x, ldx, at + 4 * m, ldy, a + 4 * m, la, bias + 4 * m,
                            scale + 4 * m, kc)
                    m += 1
                b += 1
            while line < nbytes:  # what the blocks did not ask for (few streams, a short next chunk)
                _prefetch(nxt + line)
                line += 64


@njit(**_OPTIONS)
def _matmul_with(w, bias, x, nb, y, first, last, start, scale, zeros):
    """y[b, n] = (start[b, n] + bias[n]) + sum_i x[b, i] * w[i, n] for n in [first, last), streams b < nb, all
    arrays: `_products` for whole matrices. start (>= nb, N), or (1, N) for one row every stream starts from (zeros
    for a plain product); y may be start. scale (N,): an int8 w's column scales (an empty array otherwise). zeros
    (1, >= N): -0.0 (`_products`)."""
    lda = start.shape[1] if start.shape[0] > 1 else 0
    sp = 0 if scale.shape[0] == 0 else _at(scale)
    _products(w, _0, w.shape[0], _at(bias), sp, _at(x), x.shape[1], _at(y) + 4 * first,
              y.shape[1], _at(start) + 4 * first, lda, nb, first, last, _at(zeros))


@njit(**_OPTIONS)
def _matmul(w, bias, x, nb, y, first, last, start, scale=None):
    """`_matmul_with`; scale None for float32 or bf16 weights."""
    zeros = np.full((1, w.shape[1]), -0.0, np.float32)
    if scale is None:
        _matmul_with(w, bias, x, nb, y, first, last, start, np.zeros(0, np.float32), zeros)
    else:
        _matmul_with(w, bias, x, nb, y, first, last, start, scale, zeros)


# ---- w8a8: 8-bit activations on int8 weights ---------------------------------------------------------------------
#
# At precision w8a8 every product's input vector is quantized, per stream and per product, to u8: scale = max|x| /
# 127, xq = round(x * (127 / max|x|)) + 128 (ties to even) in [1, 255]; the weights are the int8 q of `CpuWeights`
# (weight q * w_scale[n]). The sums of xq[i] * q[i, n] are int32 and exact, so any block, tile or thread computes
# the same ones; then y[n] = (a[n] + bias[n]) + (x_scale * w_scale[n]) * float32(acc[n] - 128 * colsum[n]), float32
# operations in that order with no fast-math (`_quantize8`, `_epilogue8`), so a stream's numbers are the same alone,
# in any batch, on any CPU. Where numba's target has VNNI (AVX-512 VNNI, or AVX-VNNI for 256-bit vectors) each
# 32-bit lane gathers four u8 x int8 products per `vpdpbusd`; with AVX2 alone, byte pairs (`_sums8`'s "pairs", the
# note above SUMS8_KINDS); elsewhere LLVM IR widens the bytes to int32 lanes, multiplies and adds the same sums
# (slowest). Measured in benchmarks/cpu_vnni.py and docs/BENCHMARKS.md.


def _target_features() -> set:
    """numba's target's features, "+name" each: NUMBA_CPU_FEATURES, else the host's (a CPU named by NUMBA_CPU_NAME
    with an empty feature list has none)."""
    from numba.core.registry import cpu_target

    return set(cpu_target.target_context.codegen()._get_host_cpu_features().split(","))


def _has_vnni() -> bool:
    """numba's target lists VNNI for its vector width (`_target_features`)."""
    features = _target_features()
    if VECTOR_BITS == 512:
        return "+avx512vnni" in features
    return VECTOR_BITS == 256 and ("+avxvnni" in features or {"+avx512vnni", "+avx512vl"} <= features)


HAS_VNNI = _has_vnni()


# Without VNNI, AVX2 still multiplies u8 x int8 bytes in pairs (`vpmaddubsw`: two products summed to int16, saturating)
# and sums int16 pairs to int32 (`vpmaddwd` by ones): the four products of a 32-bit lane in two instructions, where
# widening each byte to int32 takes a dozen. To keep the int16 sums from saturating, each pair is |s| * (q * sign s)
# with s = xq - 128 in [-128, 127] (`vpabsb` once per input word, `vpsignb` per weight vector): |s| <= 128 and
# |q| <= 127, so a pair's sum is at most 2 * 128 * 127 = 32512 < 2**15. Those are sum (xq - 128) q; the accumulators
# start from the column's 128 x sum of q (`CpuWeights`' colsum), so the block ends on sum xq q, every other variant's
# exact int32 sums.
SUMS8_KINDS = ("vnni", "pairs", "widen")


def _declare(module, name: str, result: ir.Type, operands: list) -> ir.Function:
    """The function `name` of `module` (an LLVM intrinsic), declared on first use."""
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(result, operands), name)


def _pair_sums(builder, acc, size, signs, w):
    """acc + AVX2's byte-pair sums (`_sums8`'s "pairs"): for each 32-bit lane of the int32 vector acc, the four
    products size[i] (u8) x (w[i] (int8) signed by signs[i]), summed in int16 pairs (`vpmaddubsw`) and then to int32
    (`vpmaddwd` by ones). size, signs: byte vectors of acc's width; w: an int32 vector, read as bytes."""
    vec = acc.type
    nbytes, halves = ir.VectorType(ir.IntType(8), 4 * vec.count), ir.VectorType(ir.IntType(16), 2 * vec.count)
    module = builder.module
    signed = builder.call(_declare(module, "llvm.x86.avx2.psign.b", nbytes, [nbytes, nbytes]),
                          [builder.bitcast(w, nbytes), signs])
    pairs = builder.call(_declare(module, "llvm.x86.avx2.pmadd.ub.sw", halves, [nbytes, nbytes]), [size, signed])
    sums = builder.call(_declare(module, "llvm.x86.avx2.pmadd.wd", vec, [halves, halves]),
                        [pairs, ir.Constant(halves, [1] * (2 * vec.count))])
    return builder.add(acc, sums)


def _sums8(nv: int, lanes: int, kind: str):
    """An intrinsic: acc[n] (int32, n < nv * lanes) = sum_{i < 4 * k4} xq[i] * q[i, n], xq uint8, q int8 in the
    layout of `w8a8_layout` (four consecutive inputs of a column in one 32-bit word, rows of ldw words), nv chains of
    `lanes` int32 lanes: `vpdpbusd` where `kind` is "vnni", byte pairs where "pairs" (AVX2's 8 lanes: the note
    above), else ("widen") each byte widened to int32, multiplied, the four of a word added (the same sums).
    Arguments, addresses and the row stride in words (intp): (q, ldw, xq, acc, k4, c), q at column n0's word of row
    0, acc at acc[n0], c at the 128 x column sums' c[n0] (read by "pairs" only)."""
    assert kind in SUMS8_KINDS and (kind != "pairs" or lanes == 8)

    @intrinsic
    def block(typingctx, q, ldw, xq, acc, k4, c):
        sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            qp, ldw, xp, accp, k4, cp = args
            i1, i8, i32, i64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(i32, lanes)
            nbytes = ir.VectorType(i8, 4 * lanes)
            if kind == "vnni":
                fn = _declare(builder.module, f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", vec, [vec] * 3)  # (acc, u8, i8)

                def dot(a, x, w):
                    return builder.call(fn, [a, x, w])
            elif kind == "pairs":
                absolute = _declare(builder.module, f"llvm.abs.v{4 * lanes}i8", nbytes, [nbytes, i1])

                def centred(x):  # (|s|, s) for the word's four inputs, s = xq - 128 (xor of the top bit)
                    s = builder.xor(builder.bitcast(x, nbytes), ir.Constant(nbytes, [-128] * (4 * lanes)))
                    return builder.call(absolute, [s, ir.Constant(i1, 0)]), s

                def dot(a, x, w):
                    return _pair_sums(builder, a, *x, w)
            else:
                wide = ir.VectorType(i32, 4 * lanes)
                picks = [ir.Constant(vec, [4 * m + r for m in range(lanes)]) for r in range(4)]

                def dot(a, x, w):
                    p = builder.mul(builder.zext(builder.bitcast(x, nbytes), wide),
                                    builder.sext(builder.bitcast(w, nbytes), wide))
                    r0, r1, r2, r3 = (builder.shuffle_vector(p, ir.Constant(wide, ir.Undefined), pick)
                                      for pick in picks)
                    return builder.add(a, builder.add(builder.add(r0, r1), builder.add(r2, r3)))
            wptr, xptr = builder.inttoptr(qp, i32.as_pointer()), builder.inttoptr(xp, i32.as_pointer())
            aptr, cptr = builder.inttoptr(accp, i32.as_pointer()), builder.inttoptr(cp, i32.as_pointer())
            if kind == "pairs":
                accs = [cgutils.alloca_once_value(builder, builder.load(builder.bitcast(
                    builder.gep(cptr, [ir.Constant(i64, lanes * v)]), vec.as_pointer()), align=4)) for v in range(nv)]
            else:
                accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * lanes)) for _ in range(nv)]
            with cgutils.for_range(builder, k4) as loop:
                i = loop.index
                word = builder.load(builder.gep(xptr, [i]), align=4)  # 4 u8 inputs, the same for every column
                one = builder.insert_element(ir.Constant(vec, ir.Undefined), word, ir.Constant(i32, 0))
                splat = builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), ir.Constant(vec, [0] * lanes))
                x = centred(splat) if kind == "pairs" else splat
                row = builder.mul(i, ldw)
                for v in range(nv):
                    at = builder.bitcast(builder.gep(wptr, [builder.add(row, ir.Constant(i64, lanes * v))]),
                                         vec.as_pointer())
                    builder.store(dot(builder.load(accs[v]), x, builder.load(at, align=4)), accs[v])
            for v in range(nv):
                at = builder.bitcast(builder.gep(aptr, [ir.Constant(i64, lanes * v)]), vec.as_pointer())
                builder.store(builder.load(accs[v]), at, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


# 8 chains cover vpdpbusd's latency (5 cycles, one issued a cycle); then single vectors, then single columns.
_NV8 = 8
SUMS8_KIND = "vnni" if HAS_VNNI else "pairs" if VECTOR_BITS == _vector_bits(ir.IntType(32)) == 256 else "widen"
_SUMS8, _SUMS8_VEC, _SUMS8_ONE = _sums8(_NV8, _L, SUMS8_KIND), _sums8(1, _L, SUMS8_KIND), _sums8(1, 1, "widen")


# ---- w8a8 on AMX: a tile of streams at a time ------------------------------------------------------------------
#
# Where numba's target has AMX's int8 tiles (Intel Xeon from Sapphire Rapids on) and Linux lets the process use
# them, a w8a8 product for several streams computes its int32 sums with `tdpbusd`: 16 streams x 16 columns x 64
# inputs (u8 x int8, four to a 32-bit lane, the layout of `w8a8_layout` and of the quantized rows) per instruction,
# into tiles of int32 sums that go to memory, from where `_epilogue8_rows` reads them (`_epilogue8`'s operations,
# over every stream of the product in one loop). The sums are integers, exact in any order, so a stream's numbers
# are the very ones `vpdpbusd` gives, in any batch. The tiles have 16 rows and read 16 rows of quantized inputs:
# `work8` keeps a multiple of 16 rows (past a tile's streams: stale values, whose sums nobody reads). Products whose
# inputs are not a multiple of 64 or outputs not of 16 stay on `_sums8` (r9y9's last head product, 30 outputs, for
# one). Measured in docs/BENCHMARKS.md.

_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA, _SYS_ARCH_PRCTL = 0x1023, 18, 158


def _has_amx() -> bool:
    """numba's target has AMX tiles with int8 products, on 64-bit Linux x86, and the kernel grants this process the
    tile state (arch_prctl ARCH_REQ_XCOMP_PERM, asked here once: without it the first tile instruction is fatal).
    No switch of its own: numba's cache keys its code on the target's features, not on this module's globals, so
    code compiled with the tiles would run where they had been switched off (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
    without them do switch them off, with their own cache entries)."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not {"+amx-tile", "+amx-int8"} <= _target_features():
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


HAS_AMX = _has_amx()
# A w8a8 product takes the tiles from 4 streams and 768 stream-inputs (12 streams of 64 inputs, 6 of 128, 4 of
# 256 or more): below, a tile's 16 rows of sums cost more than `vpdpbusd` on the streams there are (one product
# against `_sums8`, docs/BENCHMARKS.md).
_AMX_STREAMS, _AMX_INPUTS = 4, 768


def _amx_call(builder, name, args):
    """A call of LLVM's x86 AMX intrinsic `name` (void, immediates as i8 constants, addresses as i8*)."""
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(ir.VoidType(), [a.type for a in args]), name)
    builder.call(fn, args)


@intrinsic
def _amx_begin(typingctx):
    """Load the tile configuration every AMX product here uses: palette 1, eight tiles of 16 rows x 64 bytes
    (0-3 int32 sums, 4-5 quantized inputs, 6-7 weight words). Nothing where there is no AMX."""
    def codegen(context, builder, signature, args):
        if HAS_AMX:
            cfg = cgutils.alloca_once(builder, ir.ArrayType(ir.IntType(8), 64))
            cfg.align = 64
            bytes_ = [0] * 64
            bytes_[0] = 1
            for t in range(8):
                bytes_[16 + 2 * t] = 64  # colsb, little-endian u16
                bytes_[48 + t] = 16  # rows
            builder.store(ir.Constant(ir.ArrayType(ir.IntType(8), 64), bytes_), cfg)
            _amx_call(builder, "llvm.x86.ldtilecfg", [builder.bitcast(cfg, ir.IntType(8).as_pointer())])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _amx_end(typingctx):
    """Release the tiles (their state is no longer saved with the thread's)."""
    def codegen(context, builder, signature, args):
        if HAS_AMX:
            _amx_call(builder, "llvm.x86.tilerelease", [])
        return context.get_dummy_value()

    return types.void(), codegen


def _amx_block(srows: int, scols: int):
    """An intrinsic: int32 sums of 16 * srows streams x 16 * scols columns (srows, scols in 1, 2), over `chunks`
    chunks of 64 inputs: acc[s, n] = sum_i xq[s, i] * q[i, n]. Arguments (intp): (xq, ldxq bytes, q at the block's
    first column in row 0 of words, ldq bytes between rows of words, acc, ldacc bytes, chunks)."""

    @intrinsic
    def block(typingctx, xq, ldxq, q, ldq, acc, ldacc, chunks):
        sig = types.void(*[types.intp] * 7)

        def codegen(context, builder, signature, args):
            if not HAS_AMX:
                return context.get_dummy_value()
            xq, ldxq, q, ldq, acc, ldacc, chunks = args
            i8, i64 = ir.IntType(8), ir.IntType(64)
            p8 = i8.as_pointer()

            def at(base, offset):
                return builder.inttoptr(builder.add(base, offset), p8)

            sums = [(r, c) for r in range(srows) for c in range(scols)]
            for r, c in sums:
                _amx_call(builder, "llvm.x86.tilezero", [ir.Constant(i8, 2 * r + c)])
            with cgutils.for_range(builder, chunks) as loop:
                k = loop.index
                for r in range(srows):  # tiles 4 + r: 16 streams' 64 inputs
                    off = builder.add(builder.mul(k, ir.Constant(i64, 64)), builder.mul(ldxq, ir.Constant(i64, 16 * r)))
                    _amx_call(builder, "llvm.x86.tileloadd64", [ir.Constant(i8, 4 + r), at(xq, off), ldxq])
                for c in range(scols):  # tiles 6 + c: 16 rows of words (64 inputs) of 16 columns
                    off = builder.add(builder.mul(k, builder.mul(ldq, ir.Constant(i64, 16))), ir.Constant(i64, 64 * c))
                    _amx_call(builder, "llvm.x86.tileloadd64", [ir.Constant(i8, 6 + c), at(q, off), ldq])
                for r, c in sums:
                    _amx_call(builder, "llvm.x86.tdpbusd", [ir.Constant(i8, 2 * r + c), ir.Constant(i8, 4 + r),
                                                           ir.Constant(i8, 6 + c)])
            for r, c in sums:
                off = builder.add(builder.mul(ldacc, ir.Constant(i64, 16 * r)), ir.Constant(i64, 64 * c))
                _amx_call(builder, "llvm.x86.tilestored64", [ir.Constant(i8, 2 * r + c), at(acc, off), ldacc])
            return context.get_dummy_value()

        return sig, codegen

    return block


_AMX22, _AMX21, _AMX12, _AMX11 = _amx_block(2, 2), _amx_block(2, 1), _amx_block(1, 2), _amx_block(1, 1)


@njit(**_OPTIONS)
def _sums8_amx(qp, ldw, k4, xqp, ldxq, accp, nb, m):
    """acc[b, n] (rows of m int32) = sum_i xq[b, i] * q[i, n] for streams b < nb (rows ldxq bytes apart, at least
    16 ceil(nb / 16) of them readable) and columns n < m (a multiple of 16) from qp (row 0 of words, at the first
    column; ldw words a row): `_sums8_range`'s sums, 32 x 32 at a time. k4 a multiple of 16."""
    chunks, ldq, ldacc = k4 // 16, 4 * ldw, 4 * m
    _amx_begin()
    b = 0
    while b < nb:
        two = nb - b > 16
        x, a = xqp + b * ldxq, accp + b * ldacc
        n = 0
        while n < m:
            if n + 32 <= m and two:
                _AMX22(x, ldxq, qp + 4 * n, ldq, a + 4 * n, ldacc, chunks)
            elif n + 32 <= m:
                _AMX12(x, ldxq, qp + 4 * n, ldq, a + 4 * n, ldacc, chunks)
            elif two:
                _AMX21(x, ldxq, qp + 4 * n, ldq, a + 4 * n, ldacc, chunks)
            else:
                _AMX11(x, ldxq, qp + 4 * n, ldq, a + 4 * n, ldacc, chunks)
            n += 32
        b += 32 if two else 16
    _amx_end()


@intrinsic
def _f32_at(typingctx, address):
    """A float32 pointer at `address` (intp), for numba.carray."""
    sig = types.CPointer(types.float32)(types.intp)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.FloatType().as_pointer())

    return sig, codegen


@intrinsic
def _i32_at(typingctx, address):
    """An int32 pointer at `address` (intp), for numba.carray."""
    sig = types.CPointer(types.int32)(types.intp)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(32).as_pointer())

    return sig, codegen


# No fast-math, said explicitly (numba's callees inherit their caller's fast-math where they set none): these float32
# operations are the same on every target, vectorized or not, with no reciprocal or fused multiply-add.
_EXACT = dict(fastmath=False, error_model="numpy", cache=True)


@njit(**_EXACT)
def quantize8(x, xq):
    """x (K,) float32 -> xq[:K] uint8 = round(x * (127 / max|x|)) + 128 (ties to even), in [1, 255]; returns the
    scale max|x| / 127 (a zero vector: every xq 128, scale 0). xq may be longer than K: the rest is left alone."""
    bits = x.view(np.int32)
    top = np.int32(0)
    for i in range(x.shape[0]):  # max|x| as the largest of the bits with the sign cleared (an integer max vectorizes)
        b = np.int32(bits[i] & np.int32(0x7FFFFFFF))
        top = b if b > top else top
    peak = np.int32(top).view(np.float32)
    if peak == 0:
        xq[:x.shape[0]] = 128
        return np.float32(0)
    inverse = np.float32(127) / peak
    for i in range(x.shape[0]):
        xq[i] = np.uint8(np.int32(np.rint(x[i] * inverse)) + 128)
    return peak / np.float32(127)


@njit(**_EXACT)
def _epilogue8(y, a, bias, scale, colsum, acc, x_scale):
    """y[n] = (a[n] + bias[n]) + (x_scale * scale[n]) * float32(acc[n] - colsum[n]) (y may be a). The difference is
    sum_i (xq[i] - 128) q[i, n], at most 127 * 128 * K in size: int32 holds it (numba would widen int32 - int32 to
    int64, whose conversion to float32 takes twice the instructions for the same value)."""
    for n in range(y.shape[0]):
        y[n] = (a[n] + bias[n]) + (x_scale * scale[n]) * np.float32(np.int32(acc[n] - colsum[n]))


@njit(**_EXACT)
def _epilogue8_rows(y, a, rows, bias, scale, colsum, acc, x_scale):
    """`_epilogue8` for streams b < acc.shape[0] at once, the same operations on each output: y[b, n] = (a[b, n] +
    bias[n]) + (x_scale[b] * scale[n]) * float32(acc[b, n] - colsum[n]), n < acc.shape[1]; a's row 0 for every
    stream where not `rows` (y may be a)."""
    for b in range(acc.shape[0]):
        s, ar = x_scale[b], a[b if rows else 0]
        for n in range(acc.shape[1]):
            y[b, n] = (ar[n] + bias[n]) + (s * scale[n]) * np.float32(np.int32(acc[b, n] - colsum[n]))


@njit(**_OPTIONS)
def _sums8_range(qp, ldw, k4, xqp, accp, first, last, cp):
    """acc[n - first] = sum_i xq[i] * q[i, n] for n in [first, last): `_sums8` blocks, vectors, then columns. qp:
    the product's first row of words, ldw its row stride in words; cp: its 128 x column sums (int32), column 0's."""
    n = first
    while n + _NV8 * _L <= last:
        _SUMS8(qp + 4 * n, ldw, xqp, accp + 4 * (n - first), k4, cp + 4 * n)
        n += _NV8 * _L
    while n + _L <= last:
        _SUMS8_VEC(qp + 4 * n, ldw, xqp, accp + 4 * (n - first), k4, cp + 4 * n)
        n += _L
    while n < last:
        _SUMS8_ONE(qp + 4 * n, ldw, xqp, accp + 4 * (n - first), k4, cp + 4 * n)
        n += 1


@njit(**_OPTIONS)
def _quantize_rows(xp, ldx, K, nb, work):
    """Quantize streams b < nb's x (K,) (by address and row stride in floats) for `_products8`: into work's rows
    (`work8`, one part's), xq[b, :K] and x_scale[b] (`quantize8`). Once per product input, however many products
    (both halves of a gate, residual and skip) read it."""
    xq, x_scale = work[0], work[1]
    for b in range(nb):
        x_scale[b] = quantize8(carray(_f32_at(xp + 4 * b * ldx), K), xq[b])


@njit(**_OPTIONS)
def _products8(qp, ldw, K, bp, sp, cp, work, yp, ldy, ap, lda, nb, first, last):
    """The w8a8 `_products`: y[b, n - first] = (a[b, n - first] + bias[n]) + the product of stream b's x (K,)
    quantized (`_quantize_rows`, into work) and the int8 weights, for n in [first, last), streams b < nb (see the
    w8a8 note). qp, ldw: the weights' first row of words (`w8a8_layout`, ceil(K / 4) rows) and its stride in words;
    bp, sp, cp: bias, column scales and 128 x column sums (int32), indexed by n; y, a by address and row stride in
    floats; work: one part's `work8` (its int32 sums too: no allocation in the hot path)."""
    k4 = (K + 3) // 4
    m = last - first
    xq, x_scale, acc = work
    bias = carray(_f32_at(bp + 4 * first), m)
    scale = carray(_f32_at(sp + 4 * first), m)
    colsum = carray(_i32_at(cp + 4 * first), m)
    if HAS_AMX and nb >= _AMX_STREAMS and nb * K >= _AMX_INPUTS and k4 % 16 == 0 and m % 16 == 0:  # the tiles
        _sums8_amx(qp + 4 * first, ldw, k4, _at(xq), xq.strides[0], _at(acc), nb, m)
        _epilogue8_rows(carray(_f32_at(yp), (nb, ldy)), carray(_f32_at(ap), (nb if lda else 1, max(lda, m))), lda > 0,
                        bias, scale, colsum, acc[:nb * m].reshape((nb, m)), x_scale)
        return
    for b in range(nb):
        _sums8_range(qp, ldw, k4, _at(xq[b]), _at(acc), first, last, cp)
        _epilogue8(carray(_f32_at(yp + 4 * b * ldy), m), carray(_f32_at(ap + 4 * b * lda), m), bias, scale, colsum,
                   acc[:m], x_scale[b])


@njit(**_OPTIONS)
def _lines(nbytes):
    """nbytes of zeros (uint8) starting on a cache line. numba's own arrays start on 32 bytes, so two threads'
    parts of one array could share the line at their bound and pass it to and fro as each writes its part (the
    split's scratch: w8a8 1.07-1.10x, docs/BENCHMARKS.md); with every part's bound at a multiple of 64
    bytes (`share_span`: whole vectors) from an array that starts on a line, none do."""
    raw = np.zeros(nbytes + 64, np.uint8)
    skip = -_at(raw) % 64
    return raw[skip:skip + nbytes]


@njit(**_OPTIONS)
def _floats(rows, cols):
    """A (rows, cols) float32 array of zeros starting on a cache line (`_lines`)."""
    return _lines(4 * rows * cols).view(np.float32).reshape((rows, cols))


@njit(**_OPTIONS)
def work8(parts, tile, k, n):
    """w8a8 work arrays for `parts` parts of a tile of streams, inputs of up to k, outputs of up to n: xq (parts,
    tile, at least 4 ceil(k/4)) uint8 (past an input's K any value: its weights are zero there), x_scale (parts, at
    least tile) float32, acc (parts, at least n) int32, each part's rows on cache lines of their own (`_lines`).
    Where no product is w8a8, k = n = 0. `part8` gives one part's."""
    k64, t16, n16 = (k + 63) // 64 * 64, (tile + 15) // 16 * 16, (n + 15) // 16 * 16
    sums = t16 * n16 if HAS_AMX else n16  # (the tiles' sums: a row per stream)
    return (_lines(parts * t16 * k64).reshape((parts, t16, k64)),
            _floats(parts, t16),
            _lines(4 * parts * sums).view(np.int32).reshape((parts, sums)))


@njit(**_OPTIONS, inline="always")
def part8(work, part):
    """Part `part`'s `work8` arrays: (xq (tile, k4), x_scale (tile,), acc (n,))."""
    return work[0][part], work[1][part], work[2][part]


@njit(**_OPTIONS)
def _matmul8_with(v, bias, scale, colsum, x, nb, y, first, last, start, work):
    """`_matmul` at w8a8, whole arrays: v (ceil(K/4), 4N) int8 (`w8a8_layout`), bias, scale (N,) float32, colsum (N,)
    int32 (128 x column sums), x (>= nb, K), y (>= nb, N), start (>= nb, N) or (1, N) (every stream's); work: one
    part's `work8`."""
    lda = start.shape[1] if start.shape[0] > 1 else 0
    _quantize_rows(_at(x), x.shape[1], x.shape[1], nb, work)
    _products8(_at(v), v.shape[1] // 4, x.shape[1], _at(bias), _at(scale), _at(colsum),
               work, _at(y) + 4 * first, y.shape[1], _at(start) + 4 * first, lda, nb, first, last)


@njit(**_OPTIONS)
def _matmul8(v, bias, scale, colsum, x, nb, y, first, last, start):
    """`_matmul8_with` with work arrays of its own."""
    _matmul8_with(v, bias, scale, colsum, x, nb, y, first, last, start,
                  part8(work8(_1, max(nb, 1), x.shape[1], v.shape[1] // 4), 0))


def w8a8_layout(q: np.ndarray, taps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights (..., taps * K, N) (taps stacked, each its own product) -> (the w8a8 products' layout (...,
    taps * ceil(K/4), 4N) int8: row j of a tap holds, for each column n, its inputs 4j .. 4j+3 in one 32-bit word,
    zero past K; 128 x each tap's column sums (..., taps, N) int32)."""
    *lead, rows, n = q.shape
    k = rows // taps
    k4 = -(-k // 4)
    if q.size and q.min() < -127:  # `_sums8`'s byte pairs are exact for q in [-127, 127] (int8_parts' range)
        raise ValueError("w8a8 weights must lie in [-127, 127]")
    padded = np.zeros((*lead, taps, 4 * k4, n), np.int8)
    padded[..., :k, :] = q.reshape(*lead, taps, k, n)
    words = padded.reshape(*lead, taps, k4, 4, n).swapaxes(-1, -2)  # (..., taps, k4, n, 4)
    layout = np.ascontiguousarray(words).reshape(*lead, taps * k4, 4 * n)
    return layout, 128 * padded.astype(np.int32).sum(axis=-2, dtype=np.int32)


@njit(**_OPTIONS, inline="always")
def _tap_slot(offset, d, k, j, t):
    """The queue row holding tap j (of k, oldest first; j < k - 1) of the layer whose ring starts at `offset` with
    dilation d, at time t (k >= 2: the config refuses 1). Tap 0's is the slot the layer's input at t goes to."""
    return offset + (t - (k - 1 - j) * d) % ((k - 1) * d)


@njit(**_OPTIONS, inline="always")
def _tap_row(queues, b0, offset, d, k, j, t):
    """Address of stream b0's queue row `_tap_slot`. Stream b0 + i's is strides[0] * i on."""
    return _at(queues) + b0 * queues.strides[0] + _tap_slot(offset, d, k, j, t) * queues.strides[1]


@njit(**_OPTIONS)
def share_span(parts, n):
    """Outputs per part when n outputs are split in `parts`: whole lone-stream blocks where there are enough, else
    whole vectors (the last part may be shorter or empty)."""
    span = (n + parts - 1) // parts
    unit = BLOCK.nv1 * _L if span >= BLOCK.nv1 * _L else _L
    return (span + unit - 1) // unit * unit


@njit(**_OPTIONS)
def _share(part, parts, n):
    """Part `part` of `parts` of n outputs, [first, last) (`share_span` each; empty past the end)."""
    span = share_span(parts, n)
    first = min(n, part * span)
    return first, min(n, first + span)


@njit(**_INLINED)
def _write_slot(queues, b0, nb, row, xs, c0, c1):
    """Channels [c0, c1) of the layer's input xs into queue row `row` of streams b0 .. b0+nb-1. Inlined: the tile
    path's c0 is a constant 0 there, and compiled apart with c0 an argument the tile path's steps ran 2-4 % slower
    at 8-128 streams of `standard`."""
    for bb in range(nb):
        for c in range(c0, c1):
            queues[b0 + bb, row, c] = xs[bb, c]


@njit(**_INLINED)
def _gate_part(part, parts, nb, wl, bias, ws, zp, queues, b0, off, d, k, t, xs, z, gated, ap, lda, blocks, layer,
               vp, cp, pl, work, sl):
    """A layer's gate for part `part` of `parts` of its G channels (all of them for one part): the k taps' products
    into both halves of z for those channels (oldest tap first, the first starting from the bias and `ap`, the
    conditioning terms or zeros, the next from the sums so far), then the gated values. wl (k*R, 2G) the layer's
    dilated weights, bias/ws/zp addresses (bias, int8 scales, zeros); the taps are queue rows, then xs. Split in
    parts, each part reads its own contiguous blocks, blocks[layer, part, half] (`split_blocks`, in strips): its
    tanh columns, then its sigmoid columns, each `share_span` wide. At w8a8, cp addresses the layer's 128 x column sums
    (`CpuWeights.dilated_c`), vp its weights in the w8a8 layout (`dilated_v`), and the blocks are in that layout too;
    both 0 otherwise, and work is the part's `work8`. pl: the layer's weights in panels (`CpuWeights.dilated_p`),
    read instead of wl where given (one part only), or empty; sl the same in strips (`dilated_l`), read instead of wl
    where given (one part: a tile of one stream, or of a few of int8's large layers)."""
    R, G2 = xs.shape[1], z.shape[1]
    G = G2 // 2
    zc, qs0 = _at(z), queues.strides[0]
    c0, c1 = (0, G) if parts == 1 else _share(part, parts, G)
    for j in range(k):  # tap j of k, oldest first: the queue slots, then the new input
        if parts == 1 and j == 1:  # tap 0's slot, read, is where the input goes (`_out_layer` says why here)
            _write_slot(queues, b0, nb, _tap_slot(off, d, k, 0, t), xs, 0, R)
        if j < k - 1:
            xp, ldx = _tap_row(queues, b0, off, d, k, j, t), qs0 // 4
        else:
            xp, ldx = _at(xs), R
        cj = cp + 4 * j * G2  # w8a8: tap j's column sums
        if cp != 0 and c0 < c1:  # w8a8: the tap quantized once for both halves
            _quantize_rows(xp, ldx, R, nb, work)
        if parts == 1 and cp != 0:  # w8a8, both halves in one product: tap j's rows of words
            qp = vp + j * ((R + 3) // 4) * 4 * G2
            if j == 0:
                _products8(qp, G2, R, bias, ws, cj, work, zc, G2, ap, lda, nb, _0, G2)
            else:
                _products8(qp, G2, R, zp, ws, cj, work, zc, G2, zc, G2, nb, _0, G2)
            continue
        if parts == 1 and sl.shape[0] > 0:  # a few streams: the weights in strips
            if j == 0:
                _strips(sl, _0, R, bias, ws, xp, ldx, zc, G2, ap, lda, nb, _0, G2, zp)
            else:
                _strips(sl, j * R, R, zp, ws, xp, ldx, zc, G2, zc, G2, nb, _0, G2, zp)
            continue
        if parts == 1 and pl.shape[0] > 0:  # many streams: the weights in panels
            if j == 0:
                _panel_products(pl, _0, R, bias, ws, xp, ldx, zc, G2, ap, lda, nb, _0, G2, zp)
            else:
                _panel_products(pl, j * R, R, zp, ws, xp, ldx, zc, G2, zc, G2, nb, _0, G2, zp)
            continue
        if parts == 1:  # both halves in one product
            if j == 0:
                _products(wl, _0, R, bias, ws, xp, ldx, zc, G2, ap, lda, nb, _0, G2, zp)
            else:  # go on from the taps so far
                _products(wl, j * R, R, zp, ws, xp, ldx, zc, G2, zc, G2, nb, _0, G2, zp)
            continue
        for half in range(2):
            wb = blocks[layer, part, half]
            g0 = half * G + c0  # the half's first output, in z and the bias: the block's column 0
            shift = 4 * g0  # so that the block's column i reads bias[g0 + i] and scale[g0 + i]
            if c0 < c1 and cp != 0:  # w8a8: tap j's rows of words (one block, not strips)
                ldw = wb.shape[2] // 4
                qp = _at(wb) + j * ((R + 3) // 4) * 4 * ldw
                if j == 0:
                    _products8(qp, ldw, R, bias + shift, ws + shift, cj + shift, work, zc + 4 * g0, G2, ap + 4 * g0,
                               lda, nb, _0, c1 - c0)
                else:
                    _products8(qp, ldw, R, zp + shift, ws + shift, cj + shift, work, zc + 4 * g0, G2, zc + 4 * g0,
                               G2, nb, _0, c1 - c0)
            elif c0 < c1 and j == 0:
                _strips(wb, _0, R, bias + shift, ws + shift, xp, ldx, zc + 4 * g0, G2, ap + 4 * g0, lda, nb, _0,
                        c1 - c0, zp)
            elif c0 < c1:
                _strips(wb, j * R, R, zp + shift, ws + shift, xp, ldx, zc + 4 * g0, G2, zc + 4 * g0, G2, nb, _0,
                        c1 - c0, zp)
    gc, zs, gs = _at(gated), z.strides[0], gated.strides[0]
    for bb in range(nb):  # vectors, then single values: the same operations (`_gate_block`)
        c = c0
        while c + _L <= c1:
            _GATE(zc + bb * zs + 4 * c, gc + bb * gs + 4 * c, G)
            c += _L
        while c < c1:
            _GATE_ONE(zc + bb * zs + 4 * c, gc + bb * gs + 4 * c, G)
            c += 1


@njit(**_INLINED)
def _out_part(part, parts, nb, ow, obp, osp, gated, xs, skip, residual, blocks, layer, zp, vp, cp, pl, work, sl):
    """A layer's 1x1 outputs for part `part` of `parts` of its residual channels (where `residual`: into xs, from
    xs) and of its skip channels (into the skip sums): ow (G, R+S), obp/osp the bias's and int8 scales' addresses.
    Split in parts, each part reads its own contiguous block, blocks[layer, part] (`split_blocks`, in strips): its
    residual columns, then from `share_span(parts, R)` on its skip columns. At w8a8, cp addresses the layer's 128 x
    column sums (`CpuWeights.out_c`), vp its weights in the w8a8 layout (`out_v`), and the blocks are in that layout
    too; both 0 otherwise, and work is the part's `work8`. pl: the layer's weights in panels (`CpuWeights.out_p`), read
    instead of ow where given (one part only), or empty; sl the same in strips (`out_l`), read where given."""
    R, S, G = xs.shape[1], skip.shape[1], gated.shape[1]
    gp, xp, sp = _at(gated), _at(xs), _at(skip)
    if cp != 0:  # w8a8: the gated values quantized once for the residual and the skip outputs
        _quantize_rows(gp, G, G, nb, work)
    if parts == 1 and cp != 0:
        if residual:
            _products8(vp, R + S, G, obp, osp, cp, work, xp, R, xp, R, nb, _0, R)
        _products8(vp, R + S, G, obp, osp, cp, work, sp, S, sp, S, nb, R, R + S)
        return
    if parts == 1 and sl.shape[0] > 0:
        if residual:
            _strips(sl, _0, G, obp, osp, gp, G, xp, R, xp, R, nb, _0, R, zp)
        _strips(sl, _0, G, obp, osp, gp, G, sp, S, sp, S, nb, R, R + S, zp)
        return
    if parts == 1 and pl.shape[0] > 0:
        if residual:
            _panel_products(pl, _0, G, obp, osp, gp, G, xp, R, xp, R, nb, _0, R, zp)
        _panel_products(pl, _0, G, obp, osp, gp, G, sp, S, sp, S, nb, R, R + S, zp)
        return
    if parts == 1:
        if residual:
            _products(ow, _0, G, obp, osp, gp, G, xp, R, xp, R, nb, _0, R, zp)
        _products(ow, _0, G, obp, osp, gp, G, sp, S, sp, S, nb, R, R + S, zp)
        return
    wb = blocks[layer, part]
    r0, r1 = _share(part, parts, R)
    s0, s1 = _share(part, parts, S)
    qp, ldw = _at(wb), wb.shape[2] // 4  # (w8a8 blocks: one, not strips)
    if residual and r0 < r1:  # block columns [0, r1 - r0) are outputs r0 ..
        shift = 4 * r0
        if cp != 0:
            _products8(qp, ldw, G, obp + shift, osp + shift, cp + shift, work, xp + 4 * r0, R, xp + 4 * r0, R, nb, _0,
                       r1 - r0)
        else:
            _strips(wb, _0, G, obp + shift, osp + shift, gp, G, xp + 4 * r0, R, xp + 4 * r0, R, nb, _0, r1 - r0, zp)
    if s0 < s1:  # block columns lf .. are outputs R + s0 ..
        lf = share_span(parts, R)
        shift = 4 * (R + s0 - lf)
        if cp != 0:
            _products8(qp, ldw, G, obp + shift, osp + shift, cp + shift, work, sp + 4 * s0, S, sp + 4 * s0, S, nb, lf,
                       lf + s1 - s0)
        else:
            _strips(wb, _0, G, obp + shift, osp + shift, gp, G, sp + 4 * s0, S, sp + 4 * s0, S, nb, lf, lf + s1 - s0,
                    zp)


def split_blocks(w, parts: int):
    """Each part's weights of every layer, contiguous (so a thread streams one block instead of a share of every
    row, which the prefetchers follow poorly: an int8 product split by columns gained 1.13x on two threads, by
    blocks 1.42x, docs/BENCHMARKS.md): gate blocks, a part's tanh columns, then its sigmoid columns, each half a
    block of its own (a product reads whole rows: 1.02-1.14x on r9y9's shape over the halves side by side in one
    block's rows, docs/BENCHMARKS.md), and output blocks, a part's residual columns, then from span_R on its skip
    columns; spans by `share_span`, in the weights' own dtype, zero where a part is short. Each block in strips
    (`strip_layout`, so that a block's rows lie one after another as its products walk them; STRIP columns, or the
    block's width where that is less or the skip columns would not start a strip): gate (L, parts, 2, strips, k*R,
    width), outputs (L, parts, strips, G, width). At w8a8
    each block in `w8a8_layout`, one strip: (L, parts, 2, 1, k * ceil(R/4), 4 span_G), (L, parts, 1, ceil(G/4),
    4 (span_R + span_S)). w: CpuWeights."""
    L, KR, G2 = w.dilated_w.shape
    G, RS = G2 // 2, w.out_w.shape[2]
    R = w.embed.shape[2]
    S = RS - R
    sg, sr, ss = share_span(parts, G), share_span(parts, R), share_span(parts, S)
    gate = np.zeros((L, parts, 2, KR, sg), w.dilated_w.dtype)
    out = np.zeros((L, parts, G, sr + ss), w.out_w.dtype)
    for part in range(parts):
        c0, c1 = _share(part, parts, G)
        gate[:, part, 0, :, :c1 - c0] = w.dilated_w[:, :, c0:c1]
        gate[:, part, 1, :, :c1 - c0] = w.dilated_w[:, :, G + c0:G + c1]
        r0, r1 = _share(part, parts, R)
        s0, s1 = _share(part, parts, S)
        out[:, part, :, :r1 - r0] = w.out_w[:, :, r0:r1]
        out[:, part, :, sr:sr + s1 - s0] = w.out_w[:, :, R + s0:R + s1]
    if w.head2_c.shape[0] > 0:  # w8a8: each block in its products' layout, one strip wide
        return w8a8_layout(gate, KR // R)[0][:, :, :, None], w8a8_layout(out)[0][:, :, None]
    # an output block in strips only where its skip columns start a strip: a product cut elsewhere than before runs
    # other blocks (`standard`'s split, 32 residual columns: 0.96-0.98x with a strip boundary inside its skip share)
    return strip_layout(gate, min(STRIP, sg)), strip_layout(out, STRIP if sr % STRIP == 0 else sr + ss)


@njit(**_OPTIONS)
def _step_input(b0, nb, codes, scalar, w, inputs, xs, skip):
    """A step's input stage for streams b0 .. b0+nb-1: each one's input vector xs[bb] from codes[bb] (class codes,
    or sample values when `scalar`) and, with input taps, its past codes (`inputs`, shifted on); skip sums zeroed."""
    embed = w.embed
    k_in, R, S = embed.shape[0], embed.shape[2], skip.shape[1]
    for bb in range(nb):
        b = b0 + bb
        for c in range(S):
            skip[bb, c] = 0.0
        if scalar:
            value = np.float32(codes[bb])
            for c in range(R):
                xs[bb, c] = value * embed[0, 0, c] + embed[0, 1, c]
            continue
        code = int(codes[bb])
        for c in range(R):
            xs[bb, c] = embed[k_in - 1, code, c]
        for j in range(k_in - 1):
            past = inputs[b, j]
            if past >= 0:
                for c in range(R):
                    xs[bb, c] += embed[j, past, c]
        for j in range(k_in - 2):
            inputs[b, j] = inputs[b, j + 1]
        if k_in > 1:
            inputs[b, k_in - 2] = code


@njit(**_OPTIONS)
def _is_w8a8(w):
    """Whether the weights are w8a8 (`CpuWeights`: its 8-bit layouts and column sums are given)."""
    return w.head2_c.shape[0] > 0


@njit(**_OPTIONS)
def _taps(w):
    """The layers' taps k (dilated_w may be empty where the panels are given)."""
    return max(w.dilated_w.shape[1], w.dilated_p.shape[2]) // w.embed.shape[2]


@njit(**_OPTIONS)
def _prefetch_rows(queues, w, b0, nb, layer, t):
    """Ask for the queue rows the layer after `layer` reads at time t (after the last, the first layer's at t + 1),
    for streams b0 .. b0+nb-1: each stream's lie far apart, so no hardware prefetcher finds them, and the products
    would wait for each. The split path's threads ask for them; tiles do not (for a tile of 128 of r9y9's streams
    the burst of requests was 2.7 % of the step and its removal gained 1.03x; `standard` and small tiles 0.99-1.01x:
    a row's 2 KB are a run the prefetchers follow once the products start on it)."""
    k, L, R = _taps(w), w.dilated_b.shape[0], w.embed.shape[2]
    ahead, ta = (layer + 1, t) if layer + 1 < L else (0, t + 1)
    qs0 = queues.strides[0]
    for j in range(k - 1):
        row = _tap_row(queues, b0, w.offsets[ahead], w.dilations[ahead], k, j, ta)
        for bb in range(nb):
            for line in range(0, 4 * R, 64):
                _prefetch(row + bb * qs0 + line)


@njit(**_INLINED)
def _gate_layer(part, parts, nb, w, queues, b0, t, cond, s, layer, xs, z, gated, zeros, blocks, work):
    """Layer `layer`'s gate, part `part` of `parts` (`_gate_part`) for streams b0 .. b0+nb-1 at time t, step s of the
    call (its conditioning terms: cond[b, s, layer]; cond[0, s, layer] for every stream where cond holds one stream's;
    none where cond is empty); zeros: `_scratch`'s."""
    zp = _at(zeros)
    if cond.shape[0] > 0:  # the first tap starts from the layer's conditioning terms (and the bias)
        lda = cond.strides[0] // 4 if cond.shape[0] > 1 else 0  # one row of terms: every stream's
        ap = _at(cond) + b0 * 4 * lda + s * cond.strides[1] + layer * cond.strides[2]
    else:
        ap, lda = zp, 0
    vp, cp = (_at(w.dilated_v[layer]), _at(w.dilated_c[layer])) if _is_w8a8(w) else (0, 0)
    ws = _at(w.dilated_s[layer]) if w.dilated_s.shape[1] > 0 else 0  # (0: not int8, `_panel_products`)
    _gate_part(part, parts, nb, w.dilated_w[layer], _at(w.dilated_b[layer]), ws, zp, queues, b0,
               w.offsets[layer], w.dilations[layer], _taps(w), t, xs, z, gated, ap, lda, blocks, layer, vp, cp,
               w.dilated_p[layer], work, w.dilated_l[layer])


@njit(**_INLINED)
def _out_layer(part, parts, nb, w, queues, b0, t, layer, xs, gated, skip, zeros, blocks, work):
    """Layer `layer`'s outputs, part `part` of `parts`, for streams b0 .. b0+nb-1 at time t: first the part's share
    of the layer's input channels into the queue slot for time t (after the gate's products, which with k = 2 read
    that slot, and before the residual products change them), then `_out_part` (the last layer's residual output,
    which feeds nothing, skipped; its skip sums, the part's share, through a relu). One part writes the slot sooner,
    in `_gate_part`, right after tap 0's products read it: written here, after the gate's weights had passed
    through the caches, every slot's lines came from memory again (4 % of r9y9's step at 128 streams)."""
    R, S, L = xs.shape[1], skip.shape[1], w.dilated_b.shape[0]
    if parts > 1:
        r0, r1 = _share(part, parts, R)
        _write_slot(queues, b0, nb, _tap_slot(w.offsets[layer], w.dilations[layer], _taps(w), 0, t), xs, r0, r1)
    vp, cp = (_at(w.out_v[layer]), _at(w.out_c[layer])) if _is_w8a8(w) else (0, 0)
    osp = _at(w.out_s[layer]) if w.out_s.shape[1] > 0 else 0  # (0: not int8, `_panel_products`)
    _out_part(part, parts, nb, w.out_w[layer], _at(w.out_b[layer]), osp, gated, xs, skip, layer < L - 1,
              blocks, layer, _at(zeros), vp, cp, w.out_p[layer], work, w.out_l[layer])
    if layer == L - 1:
        s0, s1 = (0, S) if parts == 1 else _share(part, parts, S)
        for bb in range(nb):
            for c in range(s0, s1):
                skip[bb, c] = max(skip[bb, c], np.float32(0.0))


@njit(**_OPTIONS)
def _head_part(part, parts, stage, nb, w, skip, hidden, logits, zeros, work):
    """The head, part `part` of `parts` of its outputs: stage 1 the hidden layer (through a relu) from the skip
    sums, stage 2 the outputs from the hidden layer (at w8a8 each part quantizes the stage's input for itself)."""
    if stage == 1:
        x, y, m, v, bias, scale, colsum = skip, hidden, w.head1_w, w.head1_v, w.head1_b, w.head1_s, w.head1_c
    else:
        x, y, m, v, bias, scale, colsum = hidden, logits, w.head2_w, w.head2_v, w.head2_b, w.head2_s, w.head2_c
    N = m.shape[1]
    f, end = (_0, N) if parts == 1 else _share(part, parts, N)
    if f < end:
        if _is_w8a8(w):
            _matmul8_with(v, bias, scale, colsum, x, nb, y, f, end, zeros, work)
        else:
            _matmul_with(m, bias, x, nb, y, f, end, zeros, scale, zeros)
    if stage == 1:
        for bb in range(nb):
            for c in range(f, end):
                y[bb, c] = max(y[bb, c], np.float32(0.0))


@njit(**_INLINED)
def _tile_step(b0, nb, codes, scalar, t, w, queues, inputs, cond, s, xs, z, gated, skip, hidden, logits, zeros,
               work):
    """Advance streams b0 .. b0+nb-1 by one step on this thread, consuming codes[0:nb] (class codes, or sample
    values when `scalar`); logits[0:nb] receive the head's outputs. w: CpuWeights. cond (B, steps, L, 2G) holds gate
    terms, read at step s (or (1, steps, L, 2G): one stream's, read for every stream); a conditionless model passes a
    (0, 0, 0, 0) array. queues and cond need contiguous last axes. The rest is `_scratch` (work: its `work8`, one
    part's). The products read a layer's taps where they lie (queue slots, then the new input) and accumulate in
    place (`_products`)."""
    _step_input(b0, nb, codes, scalar, w, inputs, xs, skip)
    for layer in range(w.dilated_b.shape[0]):
        _gate_layer(0, 1, nb, w, queues, b0, t, cond, s, layer, xs, z, gated, zeros, _NO_GATE_BLOCKS, work)
        _out_layer(0, 1, nb, w, queues, b0, t, layer, xs, gated, skip, zeros, _NO_BLOCKS, work)
    _head_part(_0, _1, _1, nb, w, skip, hidden, logits, zeros, work)
    _head_part(_0, _1, _2, nb, w, skip, hidden, logits, zeros, work)


# ---- one stream on every core: the threads meet at barriers throughout a call ----------------------------------
#
# `generate_split` and `teacher_forced_split` run one tile of every stream on `parts` threads that run through the
# whole call (`run_shares`). A step is a sequence of phases (a layer's gate, its outputs, each head
# product: `parts` parts each, one per thread's share of the outputs; the sampling and the next input: one part),
# and a phase starts when every part of the one before is done. Each part of each phase is done exactly once, by
# whichever thread claims it: a thread first claims the part with its own number (so in the usual case a thread
# always reads the same weight blocks), then any other part not yet claimed, and only then waits for the phase to
# end. So a thread that is late (descheduled on a busy machine, or never started because the pool's threads were
# busy with another call) costs time, never a deadlock: the others do its parts. sync
# (parts, 16) int64, -1 at first: [p, 0] the last phase part p was claimed in, [p, 8] the last it was done in (a
# cache line apart). Waits spin with the CPU's pause hint, then yield the core (`_SPINS`). Every part computes the
# same fma chains in the same order whichever thread runs it, so a stream's numbers do not depend on the number of
# threads. Measured against a parallel region per phase in docs/BENCHMARKS.md.

_SPINS = 2000  # pause hints before a wait starts yielding the core (about 30-100 us)


@intrinsic
def _load_acquire(typingctx, address):
    """The int64 at `address`, an atomic load (acquire: what its writer stored before it is visible after)."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(builder.inttoptr(args[0], ir.IntType(64).as_pointer()), "acquire", 8)

    return types.int64(types.intp), codegen


@intrinsic
def _store_release(typingctx, address, value):
    """Store an int64 at `address` atomically (release: what this thread stored before is visible first)."""
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[1], builder.inttoptr(args[0], ir.IntType(64).as_pointer()), "release", 8)
        return context.get_dummy_value()

    return types.void(types.intp, types.int64), codegen


@intrinsic
def _compare_exchange(typingctx, address, expected, value):
    """Atomically: if the int64 at `address` is `expected`, store `value` there; whether it did."""
    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(builder.inttoptr(args[0], ir.IntType(64).as_pointer()), args[1], args[2], "acq_rel",
                               "acquire")
        return builder.extract_value(pair, 1)

    return types.boolean(types.intp, types.int64, types.int64), codegen


@intrinsic
def _pause(typingctx):
    """The x86 spin-wait hint (nothing elsewhere)."""
    def codegen(context, builder, signature, args):
        if _X86:
            name = "llvm.x86.sse2.pause"
            fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                                 name)
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _yield_core(typingctx):
    """sched_yield(2): let another thread have this core (nothing on Windows, which has no such call)."""
    def codegen(context, builder, signature, args):
        if not sys.platform.startswith("win"):
            fn = builder.module.globals.get("sched_yield") or ir.Function(
                builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(**_OPTIONS)
def _claim(sync, part, phase):
    """Claim part `part` of phase `phase` (true: this thread does it; false: another thread has)."""
    address = _at(sync[part])
    seen = _load_acquire(address)
    while seen < phase:
        if _compare_exchange(address, seen, phase):
            return True
        seen = _load_acquire(address)
    return False


@njit(**_OPTIONS)
def _done(sync, part, phase):
    """Part `part` of phase `phase` is done (its results visible to whoever sees this)."""
    _store_release(_at(sync[part]) + 64, phase)


@njit(**_OPTIONS)
def _wait(sync, parts, phase):
    """Wait until parts 0 .. parts-1 of phase `phase` are done."""
    spins = 0
    for part in range(parts):
        address = _at(sync[part]) + 64
        while _load_acquire(address) < phase:
            if spins < _SPINS:
                _pause()
                spins += 1
            else:
                _yield_core()


@intrinsic
def _borrowed(typingctx, value):
    """`value` (an array, or a tuple or NamedTuple of arrays and scalars, nested) with every array's memory owner
    dropped: numba counts references to an array's owner at every view it takes (a row, a slice, a tuple unpacked),
    atomically, and two threads working on the same arrays passed that counter's cache line to and fro at every
    one (the split path's share on `standard` at batch 1 ran 0.64x the `prange` kernel, whose loop body gets its
    arrays without an owner, as these). The caller holds the arrays for the whole call (`run_shares`)."""
    def strip(context, builder, typ, val):
        if isinstance(typ, types.Array):
            array = context.make_array(typ)(context, builder, value=val)
            array.meminfo = cgutils.get_null_value(array.meminfo.type)
            return array._getvalue()
        if isinstance(typ, types.BaseTuple):
            items = [strip(context, builder, t, builder.extract_value(val, i)) for i, t in enumerate(typ)]
            return context.make_tuple(builder, typ, items)
        return val

    def codegen(context, builder, signature, args):
        return strip(context, builder, signature.args[0], args[0])

    return value(value), codegen


def _claims(n: int) -> np.ndarray:
    """A `_claim` array for n parts (tiles, or a split's parts), -1 at first, each row on cache lines of its own."""
    raw = np.empty(n * 128 + 64, np.uint8)
    start = -_at(raw) % 64
    sync = raw[start:start + n * 128].view(np.int64).reshape(n, 16)
    sync[:] = -1
    return sync


# ---- the threads ------------------------------------------------------------------------------------------------
#
# A call's work runs on threads of our own rather than in a numba `prange` region: numba compiled each parallel
# function's loop body into three more functions (the gufunc and its wrappers), each with the whole kernel inlined,
# optimized and emitted again, 16 s of a 62 s first compile for `tiny` (docs/BENCHMARKS.md). Each share is a
# `nogil` kernel called from Python; share 0 runs on the caller's thread, the others on a pool of threads kept for
# the process. Every share takes its work by `_claim` (tiles for `generate`, parts of each phase for the split
# path), so a share that starts late, or never (its thread busy with another call), costs time, not a lost tile:
# the caller, done with what it could claim, takes back the shares that never started and waits for the rest.

_POOL: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None  # (the process that made it, the pool)
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's pool of kernel threads, numba's most threads less the caller's (a forked child makes its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            workers = max(1, numba.config.NUMBA_NUM_THREADS - 1)
            _POOL = (os.getpid(), concurrent.futures.ThreadPoolExecutor(workers, "fastwavenet-kernel"))
        return _POOL[1]


def run_shares(shares: int, kernel, *args):
    """kernel(share, shares, *args) for share 0 .. shares-1, share 0 on this thread, the others on the pool's;
    returns when every share that started has ended. The shares write into the caller's arrays, so a Ctrl-C (which
    Python sees only between the kernels' calls) waits for them and is raised after; a share's error is raised."""
    if shares <= 1:
        kernel(0, 1, *args)
        return
    pool = _pool()
    futures = [pool.submit(kernel, share, shares, *args) for share in range(1, shares)]
    interrupted = None
    try:
        kernel(0, shares, *args)
    finally:
        running = [f for f in futures if not f.cancel()]  # a share not yet started: its work was claimed by others
        while running:
            try:
                concurrent.futures.wait(running)
                running = []
            except KeyboardInterrupt as exc:
                interrupted = exc
    for f in futures:
        if not f.cancelled():
            f.result()
    if interrupted is not None:
        raise interrupted


@njit(**_INLINED)
def _phase_part(kind, part, parts, layer, nb, t, s, w, queues, cond, xs, z, gated, skip, hidden, logits, zeros,
                work, gate_blocks, out_blocks):
    """Part `part` of a split phase of streams 0 .. nb-1: kind 0 layer `layer`'s gate, 1 its outputs, 2 and 3 the
    head's stages (`_head_part`). work: `work8` for every part."""
    if kind == 0:
        _gate_layer(part, parts, nb, w, queues, 0, t, cond, s, layer, xs, z, gated, zeros, gate_blocks,
                    part8(work, part))
    elif kind == 1:
        _out_layer(part, parts, nb, w, queues, 0, t, layer, xs, gated, skip, zeros, out_blocks, part8(work, part))
    else:
        _head_part(part, parts, kind - 1, nb, w, skip, hidden, logits, zeros, part8(work, part))


@njit(**_INLINED)
def _split_layers(tid, parts, sync, phase, nb, t, s, w, queues, cond, xs, z, gated, skip, hidden, logits, zeros,
                  work, gate_blocks, out_blocks):
    """Thread `tid`'s share of one step's layers and head for streams 0 .. nb-1 (input in xs, outputs into logits),
    from phase `phase` on, `parts` parts a phase; returns the next phase."""
    L = w.dilated_b.shape[0]
    for i in range(2 * L + 2):
        kind, layer = (i % 2, i // 2) if i < 2 * L else (2 + i - 2 * L, 0)
        if kind == 0:
            _prefetch_rows(queues, w, 0, nb, layer, t)  # into this thread's caches
        for j in range(parts):
            part = (tid + j) % parts
            if _claim(sync, part, phase):
                _phase_part(kind, part, parts, layer, nb, t, s, w, queues, cond, xs, z, gated, skip, hidden, logits,
                            zeros, work, gate_blocks, out_blocks)
                _done(sync, part, phase)
        _wait(sync, parts, phase)
        phase += 1
    return phase


@njit(**_OPTIONS)
def _sample_tile(b0, nb, s, logits, distribution, log_scale_min, u, temperature, top_k, top_p, argmax, step_codes,
                 out_codes, p, p64, order):
    """Draw step s's code (or sample value) of streams b0 .. b0+nb-1 from logits[0:nb] into step_codes[0:nb] and
    out_codes[b, s] (`generate`'s arguments); p, p64, order: scratch (C,)."""
    for bb in range(nb):
        b = b0 + bb
        if distribution == SOFTMAX:
            code = sample_one(logits[bb], u[s, b, 0], temperature[b], top_k[b], top_p[b], argmax[b], p, order)
            step_codes[bb] = code
            out_codes[b, s] = code
        else:
            value = sample_continuous(logits[bb], np.float64(u[s, b, 0]), np.float64(u[s, b, 1]), distribution,
                                      np.float64(temperature[b]), argmax[b], log_scale_min, p64)
            step_codes[bb] = value
            out_codes[b, s] = value


@njit(**_OPTIONS)
def _scratch(tile, w, parts):
    """Per-tile work arrays, (tile, n) each: x, z, gated, skip, hidden, logits; then one row of zeros (1, n) as
    wide as any matrix (the start of plain products, and what chunks of a product add to the sums so far): -0.0,
    which adds to every float exactly (+0.0 turns -0.0 into +0.0); then `work8` for `parts` parts (empty unless the
    weights are w8a8). Each starts on a cache line (`_lines`)."""
    R, G2, S, H = w.embed.shape[2], w.dilated_b.shape[1], w.head1_w.shape[0], w.head1_w.shape[1]
    wide = max(G2, w.out_b.shape[1], H, w.head2_w.shape[1])
    w8a8 = _is_w8a8(w)
    zeros = _floats(_1, wide)
    zeros[:] = -0.0
    return (_floats(tile, R), _floats(tile, G2), _floats(tile, G2 // 2), _floats(tile, S), _floats(tile, H),
            _floats(tile, w.head2_w.shape[1]), zeros,
            work8(parts, tile, max(R, G2 // 2, S, H) if w8a8 else 0, wide if w8a8 else 0))


# top-k / top-p sort only the classes within a factor of the most probable one (at first 1/64; the factor shrinks if
# they are not enough); past this many candidates a full stable sort of all classes is cheaper than insertion sort.
_CANDIDATES_MAX = 64


@njit(**_OPTIONS)
def _truncate(p, top_k, top_p, order):
    """Zero the probabilities p (C,) that top-k / top-p drop; max(p) is 1. Classes are taken in order of
    probability (the lower class first on ties) while fewer than top_k are kept and the probability kept so far is
    below top_p * total.

    Only the candidates p >= floor are sorted (insertion sort, stable: gathered in class order). They are the head
    of the full order, so if the walk stops inside them it keeps what a full sort would keep, summing the same
    numbers in the same order; if it runs out of candidates first, the floor drops and it starts again. Past
    _CANDIDATES_MAX candidates every class is sorted (stable mergesort) and walked the same way. order (C,) int64
    is scratch."""
    C = p.shape[0]
    total = np.float32(0.0)
    for c in range(C):
        total += p[c]
    limit = top_p * total
    floor = np.float32(1.0 / 64.0)
    while True:
        n = 0
        for c in range(C):
            if p[c] >= floor:
                order[n] = c
                n += 1
        if n > _CANDIDATES_MAX:  # too many for insertion sort: sort every class
            order[:] = np.argsort(-p, kind="mergesort")
            n = C
        else:
            for i in range(1, n):  # stable: a class moves left only past strictly smaller ones
                c = order[i]
                j = i - 1
                while j >= 0 and p[order[j]] < p[c]:
                    order[j + 1] = order[j]
                    j -= 1
                order[j + 1] = c
        before = np.float32(0.0)
        kept = n
        for rank in range(n):
            if (top_k > 0 and rank >= top_k) or not before < limit:
                kept = rank
                break
            before += p[order[rank]]
        if kept < n or n == C:
            break
        floor = floor / np.float32(64.0) if floor > np.float32(1e-30) else np.float32(0.0)
    for rank in range(kept):  # mark the kept by sign, then zero the rest
        p[order[rank]] = -p[order[rank]]
    for c in range(C):
        p[c] = -p[c] if p[c] < 0 else np.float32(0.0)


@njit(**_OPTIONS)
def sample_one(logits, u, temperature, top_k, top_p, argmax, p, order):
    """The sampling rule of fastwavenet/sampling.py for one stream. p and order are (C,) scratch arrays."""
    C = logits.shape[0]
    if argmax:
        best = 0
        for c in range(1, C):
            if logits[c] > logits[best]:
                best = c
        return best
    top = logits[0]
    for c in range(1, C):
        top = max(top, logits[c])
    scale = np.float32(1.0) / temperature
    for c in range(C):
        p[c] = fast_exp_neg((logits[c] - top) * scale)
    if top_k > 0 or top_p < 1.0:
        _truncate(p, top_k, top_p, order)
    total = np.float32(0.0)
    for c in range(C):
        total += p[c]
    target = u * total
    acc = np.float32(0.0)
    kept = 0
    for c in range(C):
        if p[c] > 0:
            acc += p[c]
            kept = c
            if acc > target:
                return c
    # Reached only when rounding leaves the running sum at or below u * total (u near 1): the last class that was
    # kept, never one that truncation dropped.
    return kept


@njit(**_OPTIONS)
def normal_quantile(v):
    """The standard normal distribution's inverse CDF at v in (0, 1): Acklam's approximation (sampling_constants)."""
    a, b, c, d = NORMAL_A, NORMAL_B, NORMAL_C, NORMAL_D
    if v < NORMAL_LOW or v > 1.0 - NORMAL_LOW:
        q = math.sqrt(-2.0 * math.log(v if v < NORMAL_LOW else 1.0 - v))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) \
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
        return x if v < NORMAL_LOW else -x
    q = v - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q \
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)


@njit(**_OPTIONS)
def sample_continuous(y, u0, u1, distribution, temperature, argmax, log_scale_min, p):
    """The rule of fastwavenet/distributions.py for one stream: a sample value in [-1, 1] from the head's outputs y
    (3K mixture parameters, or a Gaussian's mean and log scale), in float64. u0 picks the mixture component, u1
    makes the continuous draw; p (>= K,) is scratch."""
    if distribution == GAUSSIAN:
        k = 0
        mean, raw_scale = np.float64(y[0]), np.float64(y[1])
    else:
        K = y.shape[0] // 3
        k = 0
        for c in range(1, K):
            if y[c] > y[k]:
                k = c
        if not argmax:
            top = np.float64(y[k])
            total = 0.0
            for c in range(K):
                p[c] = math.exp((np.float64(y[c]) - top) / temperature)
                total += p[c]
            target = u0 * total
            acc = 0.0
            k = K - 1  # where rounding leaves the running sum at or below u0 * total: the last component
            for c in range(K):
                acc += p[c]
                if acc > target:
                    k = c
                    break
        mean, raw_scale = np.float64(y[K + k]), np.float64(y[2 * K + k])
    if argmax:
        x = mean
    else:
        scale = math.exp(max(raw_scale, log_scale_min)) * temperature
        v = min(max(np.float64(u1), U_EDGE), 1.0 - U_EDGE)
        if distribution == GAUSSIAN:
            x = mean + scale * normal_quantile(v)
        else:
            x = mean + scale * (math.log(v) - math.log(1.0 - v))
    return min(max(x, -1.0), 1.0)


@njit(**_INLINED)
def _teacher_tile(b0, nb, tile, codes, scalar, t0, w, queues, inputs, cond, out_logits):
    """`teacher_forced` for streams b0 .. b0+nb-1 (nb <= tile)."""
    T = codes.shape[1]
    xs, z, gated, skip, hidden, logits, zeros, work = _scratch(tile, w, _1)
    step_codes = np.empty(tile, codes.dtype)
    for s in range(T):
        for bb in range(nb):
            step_codes[bb] = codes[b0 + bb, s]
        _tile_step(b0, nb, step_codes, scalar, t0 + s, w, queues, inputs, cond, s, xs, z, gated, skip,
                   hidden, logits, zeros, part8(work, 0))
        for bb in range(nb):
            out_logits[b0 + bb, s, :] = logits[bb, :]


@njit(**_INLINED)
def _claimed_tile(claims, share, shares, tiles, j):
    """The j-th tile of share `share`'s turn (each share starts at its own part of the tiles and goes round), if
    this share claims it (`_claims`), else -1: another share has it."""
    ti = (share * tiles // shares + j) % tiles
    return ti if _claim(claims, ti, _0) else -1


@njit(**_SHARE)
def _teacher_share(share, shares, claims, codes, scalar, t0, tile, w, queues, inputs, cond, out_logits):
    """One thread's share of `teacher_forced`: the tiles it claims (`_claims`)."""
    claims, codes, w, queues, inputs, cond, out_logits = _borrowed((claims, codes, w, queues, inputs, cond, out_logits))
    B = codes.shape[0]
    tiles = (B + tile - 1) // tile
    for j in range(tiles):
        ti = _claimed_tile(claims, share, shares, tiles, j)
        if ti >= 0:
            b0 = ti * tile
            _teacher_tile(b0, min(tile, B - b0), tile, codes, scalar, t0, w, queues, inputs, cond, out_logits)


def teacher_forced(codes, scalar, t0, tile, w, queues, inputs, cond, out_logits):
    """Consume codes (B, T) (int64 class codes, or float32 sample values when `scalar`) from time t0 with weights w
    (CpuWeights) and gate terms cond (B, T, L, 2G), (1, T, L, 2G) for every stream, or (0, 0, 0, 0); out_logits
    (B, T, O) receives the head's outputs after each step. Streams run in tiles of `tile`, the tiles on numba's
    thread count of threads (`run_shares`)."""
    tiles = (codes.shape[0] + tile - 1) // tile
    run_shares(min(tiles, numba.get_num_threads()), _teacher_share, _claims(tiles), codes, scalar, t0, tile, w,
               queues, inputs, cond, out_logits)


@njit(**_SHARE)
def _teacher_split_share(tid, parts, scratch, sync, codes, scalar, t0, w, queues, inputs, cond, out_logits,
                         gate_blocks, out_blocks):
    """Thread `tid`'s share of `teacher_forced_split` (the note above `_claim`); the last step's logits are left in
    the scratch's."""
    scratch, sync, codes, w, queues, inputs, cond, out_logits, gate_blocks, out_blocks = _borrowed(
        (scratch, sync, codes, w, queues, inputs, cond, out_logits, gate_blocks, out_blocks))
    B, T = codes.shape
    xs, z, gated, skip, hidden, logits, zeros, work = scratch
    phase = _0
    for s in range(T):
        if _claim(sync, _0, phase):  # the last step's logits out, this step's input in
            if s > 0:
                for b in range(B):
                    out_logits[b, s - 1, :] = logits[b, :]
            _step_input(_0, B, codes[:, s], scalar, w, inputs, xs, skip)
            _done(sync, _0, phase)
        _wait(sync, _1, phase)
        phase = _split_layers(tid, parts, sync, phase + 1, B, t0 + s, s, w, queues, cond, xs, z, gated, skip,
                              hidden, logits, zeros, work, gate_blocks, out_blocks)


def teacher_forced_split(codes, scalar, t0, w, queues, inputs, cond, out_logits, parts, gate_blocks, out_blocks):
    """`teacher_forced` as one tile of every stream on `parts` threads meeting at barriers (the note above `_claim`),
    each layer's outputs split in `parts`, each part reading its own weight blocks (`split_blocks(w, parts)`)."""
    B, T = codes.shape
    scratch = _scratch(B, w, parts)
    run_shares(parts, _teacher_split_share, scratch, _claims(parts), codes, scalar, t0, w, queues, inputs, cond,
               out_logits, gate_blocks, out_blocks)
    if T > 0:
        out_logits[:, T - 1, :] = scratch[5][:B]


@njit(**_INLINED)
def _generate_tile(b0, nb, tile, last, scalar, distribution, log_scale_min, t0, u, temperature, top_k, top_p, argmax,
                   w, queues, inputs, cond, out_codes):
    """`generate` for streams b0 .. b0+nb-1 (nb <= tile)."""
    n = u.shape[0]
    C = w.head2_w.shape[1]
    xs, z, gated, skip, hidden, logits, zeros, work = _scratch(tile, w, _1)
    p, p64, order = np.empty(C, np.float32), np.empty(C, np.float64), np.empty(C, np.int64)
    step_codes = last[b0:b0 + nb].copy()
    for s in range(n):
        _tile_step(b0, nb, step_codes, scalar, t0 + s, w, queues, inputs, cond, s, xs, z, gated, skip,
                   hidden, logits, zeros, part8(work, 0))
        _sample_tile(b0, nb, s, logits, distribution, log_scale_min, u, temperature, top_k, top_p, argmax,
                     step_codes, out_codes, p, p64, order)
    for bb in range(nb):
        last[b0 + bb] = step_codes[bb]


@njit(**_SHARE)
def _generate_share(share, shares, claims, last, scalar, distribution, log_scale_min, t0, u, temperature, top_k,
                    top_p, argmax, tile, w, queues, inputs, cond, out_codes):
    """One thread's share of `generate`: the tiles it claims (`_claims`)."""
    claims, last, u, temperature, top_k, top_p, argmax, w, queues, inputs, cond, out_codes = _borrowed(
        (claims, last, u, temperature, top_k, top_p, argmax, w, queues, inputs, cond, out_codes))
    B = u.shape[1]
    tiles = (B + tile - 1) // tile
    for j in range(tiles):
        ti = _claimed_tile(claims, share, shares, tiles, j)
        if ti >= 0:
            b0 = ti * tile
            _generate_tile(b0, min(tile, B - b0), tile, last, scalar, distribution, log_scale_min, t0, u,
                           temperature, top_k, top_p, argmax, w, queues, inputs, cond, out_codes)


def generate(last, scalar, distribution, log_scale_min, t0, u, temperature, top_k, top_p, argmax, tile, w, queues,
             inputs, cond, out_codes):
    """Generate n = u.shape[0] codes (or sample values) per stream: consume last (B,) first, then each sampled one
    in turn, with weights w (CpuWeights) and gate terms cond (B, n, L, 2G), (1, n, L, 2G) for every stream, or
    (0, 0, 0, 0).

    scalar, distribution, log_scale_min: the model's input and output (module docstring); last and out_codes are
    int64 for class input, float32 for scalar input;
    tile: as in `teacher_forced`;
    u (n, B, U) float32 uniforms, U = 1 for SOFTMAX, 2 for the continuous outputs; temperature, top_k, top_p,
    argmax: each stream's sampling rule, (B,) arrays of float32, int64, float32 and bool, so streams of one call may
    sample differently (top_k and top_p apply to SOFTMAX only);
    out_codes (B, n) receives what was drawn; last is updated to the final one.
    """
    tiles = (u.shape[1] + tile - 1) // tile
    run_shares(min(tiles, numba.get_num_threads()), _generate_share, _claims(tiles), last, scalar, distribution,
               log_scale_min, t0, u, temperature, top_k, top_p, argmax, tile, w, queues, inputs, cond, out_codes)


@njit(**_SHARE)
def _generate_split_share(tid, parts, scratch, sampling, sync, scalar, distribution, log_scale_min, t0, u,
                          temperature, top_k, top_p, argmax, w, queues, inputs, cond, out_codes, gate_blocks,
                          out_blocks):
    """Thread `tid`'s share of `generate_split` (the note above `_claim`); the last step's draw is left to the
    caller (`generate_split`)."""
    scratch, sampling, sync, u, temperature, top_k, top_p, argmax, w, queues, inputs, cond, out_codes = _borrowed(
        (scratch, sampling, sync, u, temperature, top_k, top_p, argmax, w, queues, inputs, cond, out_codes))
    gate_blocks, out_blocks = _borrowed((gate_blocks, out_blocks))
    n, B = u.shape[0], u.shape[1]
    xs, z, gated, skip, hidden, logits, zeros, work = scratch
    p, p64, order, step_codes = sampling
    phase = _0
    for s in range(n):
        if _claim(sync, _0, phase):  # the last step's draw, this step's input
            if s > 0:
                _sample_tile(_0, B, s - 1, logits, distribution, log_scale_min, u, temperature, top_k, top_p,
                             argmax, step_codes, out_codes, p, p64, order)
            _step_input(_0, B, step_codes, scalar, w, inputs, xs, skip)
            _done(sync, _0, phase)
        _wait(sync, _1, phase)
        phase = _split_layers(tid, parts, sync, phase + 1, B, t0 + s, s, w, queues, cond, xs, z, gated, skip,
                              hidden, logits, zeros, work, gate_blocks, out_blocks)


def generate_split(last, scalar, distribution, log_scale_min, t0, u, temperature, top_k, top_p, argmax, w, queues,
                   inputs, cond, out_codes, parts, gate_blocks, out_blocks):
    """`generate` as one tile of every stream on `parts` threads meeting at barriers (the note above `_claim`), each
    layer's outputs split in `parts`, each part reading its own weight blocks (`split_blocks(w, parts)`): for fewer
    streams than threads on models whose weights are worth splitting (backends/numba_cpu.py decides)."""
    n, B = u.shape[0], u.shape[1]
    C = w.head2_w.shape[1]
    scratch = _scratch(B, w, parts)
    sampling = (np.empty(C, np.float32), np.empty(C, np.float64), np.empty(C, np.int64), last.copy())
    run_shares(parts, _generate_split_share, scratch, sampling, _claims(parts), scalar, distribution,
               log_scale_min, t0, u, temperature, top_k, top_p, argmax, w, queues, inputs, cond, out_codes,
               gate_blocks, out_blocks)
    p, p64, order, step_codes = sampling
    if n > 0:
        _sample_tile(_0, B, n - 1, scratch[5], distribution, log_scale_min, u, temperature, top_k, top_p, argmax,
                     step_codes, out_codes, p, p64, order)
    last[:] = step_codes
