"""The machine's limits that `fastwavenet bench` holds its figures against (bench.measure_limits times these):
probes compiled by numba for the same target as the CPU kernel (kernels/cpu.py), with its vector width and its own
product, so that a limit is what code of that kind could reach on this machine."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernels.cpu import BLOCK, _matmul

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
        with cgutils.for_range(builder, args[0]):
            for acc in accs:
                builder.store(builder.call(fma, [builder.load(acc), m, c]), acc)
        total = builder.load(accs[0])
        for acc in accs[1:]:
            total = builder.fadd(total, builder.load(acc))
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
