"""The GPU's own limits, probed by Triton kernels compiled like the generation kernels (`bench.measure_gpu_limits`
times them): a read of a buffer kept in L2, and a float32 FMA rate. Imported only where a GPU is measured or the
kernels compiled (it needs triton); the CPU's probes are in limits.py."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["passes"])
def read_passes_kernel(buf_ptr, chunks, passes, out_ptr, BLOCK: tl.constexpr):
    """Read buf (chunks x BLOCK float32) `passes` times over, all programs together reading each chunk once per
    pass (each pass shifts which program reads which chunk, so no load repeats one of the pass before). out[program]
    = the sum of what that program read: passes x sum(buf) over all programs. A buffer that fits in L2 is read from
    L2 after the first pass."""
    program, programs = tl.program_id(0), tl.num_programs(0)
    acc = tl.zeros((BLOCK,), tl.float32)
    for p in range(passes):
        for chunk in range(program, chunks, programs):
            acc += tl.load(buf_ptr + ((chunk + p) % chunks) * BLOCK + tl.arange(0, BLOCK))
    tl.store(out_ptr + program, tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["iterations"])
def fma_chains_kernel(out_ptr, iterations, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """BLOCK independent chains per program of UNROLL x `iterations` dependent float32 fused multiply-adds (acc =
    acc * 0.999 + 0.001, which settles near 1: no overflow, no subnormals), in registers: 2 x UNROLL x BLOCK x
    iterations floating-point operations per program (UNROLL per loop iteration, so the loop's own instructions
    count for little). out[program] = the sum of its chains, so none is dead code."""
    acc = tl.arange(0, BLOCK).to(tl.float32) * 0.001 + tl.program_id(0).to(tl.float32)
    for _ in range(iterations):
        for _ in tl.static_range(UNROLL):
            acc = acc * 0.999 + 0.001
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc, axis=0))
