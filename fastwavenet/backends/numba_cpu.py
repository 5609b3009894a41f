"""`numba`: the whole generation loop compiled for the CPU (fastwavenet.kernels.cpu), sampling included, streams in
tiles across cores; `numba-split`: the same, with every product split between the cores where the batch has fewer
streams than cores. This module is the only place that knows how that kernel wants its arrays."""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

from .. import distributions
from ..sampling import per_stream
from ..state import QueueState
from .base import Backend

_START_LOCK = threading.Lock()
_started = False


def numba_threads() -> int:
    """numba's thread count, its thread pool started the first time, with torch's thread count kept as it was.

    With numba's OpenMP layer (numba's first choice where TBB is missing), starting the pool sets the OpenMP thread
    count of the whole process, and torch's CPU wheels share that OpenMP runtime: a caller's
    `torch.set_num_threads(1)` or `OMP_NUM_THREADS=1` silently became numba's count (every core) after the first
    numba generation. Every use of numba's threads in fastwavenet goes through here."""
    global _started
    import numba

    if not _started:  # the lock only until the pool has started (this runs on every generation call)
        with _START_LOCK:
            if not _started:
                before = torch.get_num_threads()
                numba.get_num_threads()  # starts the pool
                if torch.get_num_threads() != before:
                    torch.set_num_threads(before)
                _started = True
    return numba.get_num_threads()


def _aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of `a` starting on an `align`-byte boundary (numpy's own allocations are 16-byte
    aligned; the kernel's vector loads of rows that cross cache lines made products 10-20 % slower)."""
    raw = np.empty(a.nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _no_cond() -> np.ndarray:
    return np.zeros((0, 0, 0, 0), np.float32)


def _kernel_cond(cond: torch.Tensor | None) -> np.ndarray:
    """Gate terms (B, n, L, 2G) as the kernel reads them: contiguous float32, or where every stream shares one
    stream's terms (stride 0 on the first axis, `Conditioning.terms`) those alone, (1, n, L, 2G), which the kernel
    reads for every stream."""
    if cond is None:
        return _no_cond()
    if cond.shape[0] > 1 and cond.stride(0) == 0:
        cond = cond[:1]
    return np.ascontiguousarray(cond.cpu().numpy(), np.float32)


class NumbaBackend(Backend):
    """The whole loop compiled with numba on the CPU, sampling included; streams in tiles across cores."""

    name = "numba"
    devices = ("cpu",)
    requires = "numba"
    first_call = "compiling the CPU kernels for this machine (first run only, kept in numba's cache; under a minute)"
    precisions = ("float32", "bf16", "int8", "w8a8")

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        from ..folded import int8_parts
        from ..kernels.cpu import CpuWeights, panel_layout, strip_layout, w8a8_layout

        numba_threads()  # before any parallel call, so that torch's thread count stays the caller's

        # The kernel reads the folded layout, (in, out); at bf16 as 16-bit patterns, at int8 (and w8a8) as bytes
        # and the float32 scales of their columns (`int8_parts` of the rounded weights gives back the q and scales
        # that rounded them, exactly).
        def matrix(t, store):
            if store == "bf16":  # the rounded weights' bit patterns, exact: they are bf16 values already
                t = t.detach().cpu().to(torch.bfloat16).view(torch.int16)
                return _aligned(t.numpy().view(np.uint16)), np.zeros(t.shape[:-2] + (0,), np.float32)
            if store in ("int8", "w8a8"):
                q, scale = int8_parts(t.detach().cpu())
                return _aligned(q.numpy()), np.ascontiguousarray(scale.numpy())
            return _aligned(t.detach().cpu().numpy()), np.zeros(t.shape[:-2] + (0,), np.float32)

        plain = lambda t: np.ascontiguousarray(t.detach().cpu().numpy())  # noqa: E731
        layout = config.queue_layout()

        def kernel_weights(store):
            dilated_w, dilated_s = matrix(weights.dilated_w.reshape(config.layers, -1, 2 * config.gate_channels),
                                          store)
            (out_w, out_s), (head1_w, head1_s), (head2_w, head2_s) = (
                matrix(weights.out_w, store), matrix(weights.head1_w, store), matrix(weights.head2_w, store))
            L = config.layers
            if store == "w8a8":  # the same int8 weights again in the 8-bit products' layout, and column sums
                (dilated_v, dilated_c), (out_v, out_c), (head1_v, head1_c), (head2_v, head2_c) = (
                    w8a8_layout(dilated_w, config.kernel_size), w8a8_layout(out_w), w8a8_layout(head1_w),
                    w8a8_layout(head2_w))
                dilated_v, out_v, head1_v, head2_v = map(_aligned, (dilated_v, out_v, head1_v, head2_v))
                out_c, head1_c, head2_c = out_c[:, 0], head1_c[0], head2_c[0]
            else:
                dilated_v, out_v = np.zeros((L, 0, 0), np.int8), np.zeros((L, 0, 0), np.int8)
                head1_v, head2_v = np.zeros((0, 0), np.int8), np.zeros((0, 0), np.int8)
                dilated_c, out_c = np.zeros((L, 0, 0), np.int32), np.zeros((L, 0), np.int32)
                head1_c, head2_c = np.zeros(0, np.int32), np.zeros(0, np.int32)
            no_panels = np.zeros((L, 0, 0, 0), np.float32)
            no_strips = np.zeros((L, 0, 0, 0), dilated_w.dtype)  # the format of the strips `stripped` makes
            return CpuWeights(
                embed=plain(weights.embed), dilated_w=dilated_w, dilated_b=plain(weights.dilated_b), out_w=out_w,
                out_b=plain(weights.out_b), head1_w=head1_w, head1_b=plain(weights.head1_b), head2_w=head2_w,
                head2_b=plain(weights.head2_b), dilated_s=dilated_s, out_s=out_s, head1_s=head1_s, head2_s=head2_s,
                dilations=layout.dilations, offsets=layout.offsets, dilated_v=dilated_v, out_v=out_v,
                head1_v=head1_v, head2_v=head2_v, dilated_c=dilated_c, out_c=out_c, head1_c=head1_c,
                head2_c=head2_c, dilated_p=no_panels, out_p=no_panels, dilated_l=no_strips, out_l=no_strips)

        def in_panels(w, dtype):
            # w's layers' matrices in panels of `dtype` only
            none = np.zeros((config.layers, 0, 0), w.dilated_w.dtype)  # (int8: one compiled kernel, panels or not)
            return w._replace(dilated_w=none, out_w=none, dilated_p=_aligned(panel_layout(w.dilated_w, dtype=dtype)),
                              out_p=_aligned(panel_layout(w.out_w, dtype=dtype)))

        def panelled():
            # float32 panels: bf16's rounded weights, int8's q (the kernel factors the scales out of the sums, as it
            # does reading q as int8: the same numbers)
            return in_panels(kernel_weights("float32") if precision == "bf16" else self.weights, np.float32)

        def narrow_panelled():
            # bf16's own 16-bit patterns in panels (a large model's small tiles)
            return in_panels(self.weights, np.uint16)

        def stripped():
            # the layers' matrices again, in their own format, in strips (one stream's products, a few of int8's)
            w = self.weights
            return w._replace(dilated_l=_aligned(strip_layout(w.dilated_w)), out_l=_aligned(strip_layout(w.out_w)))

        self.weights = kernel_weights(precision)
        self._make_panelled, self._panelled, self._panel_lock = panelled, None, threading.Lock()
        self._make_narrow_panelled, self._narrow_panelled = narrow_panelled, None
        self._make_stripped, self._stripped = stripped, None

    # Streams per tile from which the layers' products read the weights as float32 panels (`cpu._panel_products`;
    # made at the first such tile and kept, so a float32 model then holds its layers' weights again). Narrow
    # weights save the weight traffic that bounds small tiles; a tile of many streams is bound by arithmetic, where
    # widening every weight in the inner loop costs more than it saves (int8 panels widened in the loop: 0.89x at
    # 64 streams of r9y9's shape, Zen 4), and the panels' blocks of 12 streams read a third of the weight bytes per
    # fma that the 4 x 4 blocks of the natural layout read. The same numbers, bit for bit, in every layout
    # (tests/test_precision.py, tests/test_exactness.py). w8a8 has none: its activations are 8-bit in every tile.
    # (For bf16, measured before the panels in docs/BENCHMARKS.md: about even at 16-24, widened 4-12 % faster from
    # 32, bf16 faster below 16.)
    WIDEN_FROM = 32
    # Float32 and bf16 models with large layers (LARGE_TILES_FROM) read panels from tiles of two streams: their
    # weights come from memory, and the natural layout's 4 x 4 blocks, walking rows 2 KB apart, read them at about
    # 10 GB/s a core. Float32 panels add no bytes to float32 weights; bf16's small tiles read panels of their own
    # 16-bit patterns (widened in registers, as the natural layout's are), float32 panels from WIDEN_FROM. r9y9's
    # shape, Zen 4, one thread, paired in one process, codes equal: float32 tiles of 2-16 streams 1.24-1.53x, batch 8
    # in tiles of 4 on two threads 1.45x; bf16 tiles of 2-32 1.33-1.08x (0.97x float32 panels at 32 and 64)
    # (docs/BENCHMARKS.md). `standard`'s layers, from L2: float32 0.84x at 2 streams, 1.01-1.03x at 4-16, bf16
    # 0.79-0.96x at 2-32, so WIDEN_FROM there. int8's 8-bit panels ran 0.70-1.22x (not taken). (To run such a model's
    # small tiles on the natural layout, raise this, not WIDEN_FROM.)
    LARGE_PANELS_FROM = 2

    # A tile of one stream (batch 1; a few streams over as many threads) reads the layers' matrices in strips of its
    # block's width, each strip's rows one run of memory (`cpu._strips`), made at the first such tile and kept:
    # another copy (up to three with the panels, four for bf16 with its own panels). On r9y9's shape one Zen 4 core
    # read them at 10-12 GB/s in the natural layout (rows 2 KB apart, which the hardware prefetchers do not follow
    # across pages) and at 25-26 GB/s in strips (docs/BENCHMARKS.md); the same numbers, bit for bit. w8a8 has its
    # own products.
    # int8 models with large layers read them in tiles of fewer than BLOCK.sb streams too, whose blocks of one or two
    # streams ask for no lines ahead in the natural layout: r9y9's shape, Zen 4, one thread, tiles of 2 and 3
    # 1.64x and 1.26x, of 4-16 0.73-0.92x (the natural layout's blocks of 4 ask ahead); float32 and bf16 0.96-1.05x
    # and 0.64-1.15x of their panels, `standard` 0.92-1.00x (docs/BENCHMARKS.md).

    def _panels_from(self) -> int:
        """Streams per tile from which the layers' products read panels (WIDEN_FROM, LARGE_PANELS_FROM)."""
        large = self.precision in ("float32", "bf16") and self._large_layers()
        return self.LARGE_PANELS_FROM if large else self.WIDEN_FROM

    def _kernel_weights(self, tile: int):
        """The copy of the weights a tile of `tile` streams reads: one stream strips (int8's large layers up to 3), a
        few the natural layout, many panels (float32, or bf16's own below WIDEN_FROM)."""
        from ..kernels.cpu import BLOCK

        few = tile < BLOCK.sb and self.precision == "int8" and self._large_layers()
        panels_from = self._panels_from()
        if self.precision == "w8a8" or (1 < tile < panels_from and not few):
            return self.weights
        if tile < panels_from or few:
            return self._made("_stripped")
        narrow = self.precision == "bf16" and tile < self.WIDEN_FROM
        return self._made("_narrow_panelled" if narrow else "_panelled")

    def _made(self, name: str):
        """The copy `name` (`_panelled`, `_narrow_panelled`, `_stripped`), made by `_make` + its name the first
        time and kept (its maker, a closure that may hold the torch weights, then goes)."""
        with self._panel_lock:
            if getattr(self, name) is None:
                setattr(self, name, getattr(self, "_make" + name)())
                setattr(self, "_make" + name, None)
            return getattr(self, name)

    def thread_setup(self):
        """numba keeps its thread count per thread (`numba.set_num_threads`, as corpus ranks sharing a machine set
        theirs), and a thread started later gets numba's default: this thread's count, for that one to take."""
        import numba

        count = numba_threads()
        return lambda: numba.set_num_threads(count)

    def _split_parts(self, batch: int) -> int:
        """The parts each product is split in for `batch` streams: 1, tiles of streams across the threads
        (`NumbaSplitBackend` splits)."""
        return 1

    def splits(self, batch: int) -> bool:
        return self._split_parts(batch) > 1

    def _blocks(self, parts: int):
        """Each part's weights, contiguous (`cpu.split_blocks`), made at the first split call for this count."""
        from ..kernels import cpu

        if getattr(self, "_split", (None,))[0] != parts:
            self._split = (parts, tuple(_aligned(a) for a in cpu.split_blocks(self.weights, parts)))
        return self._split[1]

    # Float32 bytes of one layer's matrices from which tiles take up to 128 streams instead of 64: each tile step
    # streams every weight from L3 or memory once, so a vocoder's (r9y9's 3.9 MB a layer) pays per stream half as
    # much in tiles twice as large (1.08-1.17x on r9y9's shape, docs/BENCHMARKS.md), where `standard`'s (0.1 MB a
    # layer, read from L2) lost 10 % to the larger tile's scratch.
    LARGE_TILES_FROM = 1 << 20

    def _tile(self, batch: int) -> int:
        """Streams per tile: the batch spread over numba's threads, at most 64 (a tile's scratch stays in cache), or
        128 for models with large layers (LARGE_TILES_FROM)."""
        return max(1, min(128 if self._large_layers() else 64, math.ceil(batch / numba_threads())))

    def _large_layers(self) -> bool:
        """Whether one layer's matrices (the gate's k taps and the 1x1 outputs) hold LARGE_TILES_FROM float32 bytes."""
        c = self.config
        layer = 4 * c.gate_channels * (2 * c.kernel_size * c.residual_channels + c.residual_channels + c.skip_channels)
        return layer >= self.LARGE_TILES_FROM

    def forward(self, state: QueueState, codes: torch.Tensor, cond=None) -> torch.Tensor:
        from ..kernels import cpu

        codes = np.ascontiguousarray(codes.cpu().numpy())
        cond = _kernel_cond(cond)
        logits = np.empty((state.batch, codes.shape[1], self.config.output_channels), np.float32)
        tile, parts = self._tile(state.batch), self._split_parts(state.batch)
        if parts > 1:
            cpu.teacher_forced_split(codes, self.config.scalar_input, state.t, self.weights, state.queues.numpy(),
                                     state.inputs.numpy(), cond, logits, parts, *self._blocks(parts))
        else:
            cpu.teacher_forced(codes, self.config.scalar_input, state.t, tile, self._kernel_weights(tile),
                               state.queues.numpy(), state.inputs.numpy(), cond, logits)
        state.t += codes.shape[1]
        return torch.from_numpy(logits)

    def generate(self, state: QueueState, n, u, sampling, cond=None):
        from ..kernels import cpu

        c = self.config
        cond = _kernel_cond(cond)
        out = np.empty((state.batch, n), np.float32 if c.scalar_input else np.int64)
        rules = per_stream(sampling, state.batch)
        distributions.check_rules(c, rules)
        temperature = np.array([r.temperature for r in rules], np.float32)
        top_k = np.array([r.top_k for r in rules], np.int64)
        top_p = np.array([r.top_p for r in rules], np.float32)
        argmax = np.array([r.argmax for r in rules], np.bool_)
        tile, parts = self._tile(state.batch), self._split_parts(state.batch)
        # The kernel updates `last` in place; a strided one (a column of a code matrix, assigned by a caller) would
        # be another signature for numba to compile the whole kernel for.
        state.last = state.last.contiguous()
        args = (state.last.numpy(), c.scalar_input, distributions.KERNEL_CODES[c.output], float(c.log_scale_min),
                state.t, np.ascontiguousarray(u, np.float32).reshape(n, state.batch, -1), temperature, top_k, top_p,
                argmax)
        arrays = (state.queues.numpy(), state.inputs.numpy(), cond, out)
        if parts > 1:  # a few streams, the narrow weights (the batch stays below WIDEN_FROM)
            cpu.generate_split(*args, self.weights, *arrays, parts, *self._blocks(parts))
        else:
            cpu.generate(*args, tile, self._kernel_weights(tile), *arrays)
        state.t += n
        return torch.from_numpy(out)


class NumbaSplitBackend(NumbaBackend):
    """`numba` with one tile whose every layer is split between numba's threads (`cpu.generate_split`) where the
    batch has fewer streams than threads, instead of leaving threads idle; from as many streams as threads, numba's
    own tiles. A stream's numbers are numba's, bit for bit, call after call (tests/test_cpu_split.py, and
    recipes/split_stress.py for r9y9's shape). The threads run through a whole call (`cpu.run_shares`) and
    meet at a barrier 2L + 3 times a step (about 0.3 us each on two cores, plus the layer's values crossing between
    the cores): worth it where a step streams megabytes of weights (r9y9's LJSpeech shape at every precision;
    `standard` in float32, not with its narrow weights: docs/BENCHMARKS.md). A thread that other work keeps off its
    core costs time, not a stall: the others do its parts. `auto` chooses between the two by a trial."""

    name = "numba-split"

    def _split_parts(self, batch: int) -> int:
        threads = numba_threads()
        return threads if batch < threads else 1
