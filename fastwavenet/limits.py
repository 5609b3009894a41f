"""The machine's limits that `fastwavenet bench` holds its figures against (bench.measure_limits times these):
probes compiled by numba for the same target as the CPU kernel (kernels/cpu.py), with its vector width and its own
product, so that a limit is what code of that kind could reach on this machine."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernels.cpu import (BLOCK, HAS_AMX, HAS_VNNI, SUMS8_KIND, _amx_begin, _amx_call, _amx_end, _matmul,
                          _pair_sums)

_LANES = BLOCK.lanes

# The batch-1 limit's matrix is this many columns wide: one lone-stream block, so a pass reads it front to back.
READ_COLUMNS = BLOCK.nv1 * _LANES


@njit(cache=True)
def read_passes(w, passes):
    """Stream w (rows, READ_COLUMNS) float32 through the kernel's lone-stream product `passes` times, on one core:
    one sequential read of its bytes per pass, with as many independent fma chains as the kernel uses. The benchmark
    times it over the model's weight bytes as the machine's batch-1 limit (a generator at batch 1 must read every
    weight once per sample)."""
    x = np.ones((1, w.shape[0]), np.float32)
    y = np.empty((1, w.shape[1]), np.float32)
    zeros = np.zeros((1, w.shape[1]), np.float32)
    for _ in range(passes):
        _matmul(w, zeros[0], x, 1, y, 0, w.shape[1], zeros)
    return y[0, 0]


@njit(cache=True, parallel=True)
def read_passes_split(shares, passes):
    """`read_passes` on shares.shape[0] numba threads at once, thread t streaming its own share shares[t] (rows,
    READ_COLUMNS), as a stream split over the cores reads its weights (`numba-split`): the benchmark times it over
    the model's weight bytes as the batch-1 limit of rows that run one tile on every core."""
    out = np.zeros(shares.shape[0], np.float32)
    for t in prange(shares.shape[0]):
        out[t] = read_passes(shares[t], passes)
    return out.sum()


# The FMA peak's independent chains: enough to cover fma latency x fma units on current cores (4-5 cycles x 2), few
# enough to stay in AVX2's 16 vector registers with the two operands.
PEAK_CHAINS = 12


def _chains(builder, step, accs, operands, iterations, add):
    """`iterations` rounds of acc = step(acc, *operands) on every accumulator (allocas), then their sum by `add`."""
    with cgutils.for_range(builder, iterations):
        for acc in accs:
            builder.store(builder.call(step, [builder.load(acc), *operands]), acc)
    total = builder.load(accs[0])
    for acc in accs[1:]:
        total = add(total, builder.load(acc))
    return total


@intrinsic
def _fma_chains(typingctx, iterations):
    """PEAK_CHAINS independent chains of `iterations` fused multiply-adds on full vectors of the target (acc = acc *
    m + c, which settles near 1: no overflow, no subnormals), then the sum of every lane, so none is dead code."""
    sig = types.float32(types.intp)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, _LANES)
        name = f"llvm.fma.v{_LANES}f32"
        fma = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(vec, [vec] * 3), name)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [float(j)] * _LANES))
                for j in range(PEAK_CHAINS)]
        m, c = ir.Constant(vec, [0.999] * _LANES), ir.Constant(vec, [0.001] * _LANES)
        total = _chains(builder, fma, accs, (m, c), args[0], builder.fadd)
        out = builder.extract_element(total, ir.Constant(ir.IntType(32), 0))
        for lane in range(1, _LANES):
            out = builder.fadd(out, builder.extract_element(total, ir.Constant(ir.IntType(32), lane)))
        return out

    return sig, codegen


@njit(cache=True, parallel=True)
def fma_peak(iterations, threads):
    """Run `_fma_chains(iterations)` on each of `threads` numba threads at once: 2 * PEAK_CHAINS * lanes *
    iterations floating-point operations per thread, all in registers. The benchmark times it as the machine's
    batched limit for code of numba's target ISA (vendor-neutral, unlike a vendor's sgemm)."""
    out = np.zeros(threads, np.float32)
    for t in prange(threads):
        out[t] = _fma_chains(iterations)
    return out.sum()


# The int8 peak: `vpdpbusd` chains (as the FMA peak's, 4 multiply-adds a 32-bit lane), or AVX2's byte pairs where the
# kernel sums by them (`kernels.cpu.SUMS8_KIND`: vpsignb, vpmaddubsw, vpmaddwd, vpaddd, the same 4 a lane), or, where
# the kernel has AMX, four independent `tdpbusd` on tiles in registers (16 x 16 x 64 multiply-adds each).
INT8_CHAINS = 12
AMX_MACS = 4 * 16 * 16 * 64


@intrinsic
def _int8_chains(typingctx, iterations):
    """`iterations` rounds of the kernel's int8 products in registers, no memory touched: four `tdpbusd` on tiles
    where `HAS_AMX`, else INT8_CHAINS `vpdpbusd` on full vectors where `HAS_VNNI`, else INT8_CHAINS of byte pairs
    where the kernel sums by them, else nothing; returns a lane of the sums (the tiles': 0), so that none is dead
    code. `int8_macs_per_iteration` says how many multiply-adds."""
    sig = types.int32(types.intp)

    def codegen(context, builder, signature, args):
        i8, i32 = ir.IntType(8), ir.IntType(32)
        if HAS_AMX:
            for t in range(8):
                _amx_call(builder, "llvm.x86.tilezero", [ir.Constant(i8, t)])
            with cgutils.for_range(builder, args[0]):
                for c, a, b in ((0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7)):
                    _amx_call(builder, "llvm.x86.tdpbusd", [ir.Constant(i8, c), ir.Constant(i8, a), ir.Constant(i8, b)])
            return ir.Constant(i32, 0)
        if SUMS8_KIND == "pairs":
            vec = ir.VectorType(i32, _LANES)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [j] * _LANES)) for j in range(INT8_CHAINS)]
            w = ir.Constant(vec, [0x01FF01FF] * _LANES)
            total = _chains(builder, _pairs_step(builder.module, vec), accs, (w,), args[0], builder.add)
            return builder.extract_element(total, ir.Constant(i32, 0))
        if not HAS_VNNI:
            return ir.Constant(i32, 0)
        vec = ir.VectorType(i32, _LANES)
        name = f"llvm.x86.avx512.vpdpbusd.{32 * _LANES}"
        dot = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(vec, [vec] * 3), name)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [j] * _LANES)) for j in range(INT8_CHAINS)]
        x, w = ir.Constant(vec, [0x01010101] * _LANES), ir.Constant(vec, [0x01FF01FF] * _LANES)  # sums stay small
        total = _chains(builder, dot, accs, (x, w), args[0], builder.add)
        return builder.extract_element(total, ir.Constant(i32, 0))

    return sig, codegen


def _pairs_step(module, vec):
    """acc + the kernel's byte-pair sums (`kernels.cpu._pair_sums`) of acc's own bytes (as u8, and as the signs put
    on w): a function, so that `_chains` calls it as it calls an intrinsic; its inputs come from the chain, so
    nothing folds to a constant."""
    name = "fastwavenet_pairs_step"
    if name in module.globals:
        return module.globals[name]
    step = ir.Function(module, ir.FunctionType(vec, [vec, vec]), name)
    step.linkage = "internal"
    step.attributes.add("alwaysinline")
    b = ir.IRBuilder(step.append_basic_block())
    acc, w = step.args
    x = b.bitcast(acc, ir.VectorType(ir.IntType(8), 4 * vec.count))
    b.ret(_pair_sums(b, acc, x, x, w))
    return step


def int8_macs_per_iteration() -> int:
    """Multiply-adds one thread makes in one iteration of `int8_peak` (0: no int8 products of their own here)."""
    return AMX_MACS if HAS_AMX else INT8_CHAINS * _LANES * 4 if HAS_VNNI or SUMS8_KIND == "pairs" else 0


@njit(cache=True)
def _int8_on_thread(iterations):
    _amx_begin()
    out = _int8_chains(iterations)
    _amx_end()
    return out


@njit(cache=True, parallel=True)
def int8_peak(iterations, threads):
    """Run `_int8_chains(iterations)` on each of `threads` numba threads at once (the tiles configured and released
    on each): the int8 multiply-adds the kernel's w8a8 products are made of, in registers. The benchmark times it as
    the limit of w8a8's batched rows, as `fma_peak` is float32's peak."""
    out = np.zeros(threads, np.int32)
    for t in prange(threads):
        out[t] = _int8_on_thread(iterations)
    return out.sum()
