"""The layer-phase GPU kernels: a step as a chain of launches, each spread over every SM (issue 36).

The tiled kernel of kernels/gpu.py gives each tile of streams one program for the whole step, so a batch of B streams
keeps B / 16 SMs busy: for r9y9's vocoder shape at 512 streams, 32 of an H100's 132, each reading all 94.7 MB of
weights once a step. Here every phase of a step is its own launch, over tiles of streams x blocks of output columns:

    start:          each tile's first-layer input (from the codes it consumes), and its skip sums zeroed
    gate, layer l:  (tiles, G / BN) programs: a block of both gate halves from the K taps, tanh x sigmoid
    out, layer l:   (tiles, R / BN + S / BN) programs: a block of the residual (the layer's input into its queue
                    slot first, then x + b + gated @ W in place) or of the skip sum
    head:           (tiles,) programs: the head's two products, then each stream's draw (or, teacher-forced, the
                    logits)

so 2L + 2 launches a step, with as many programs as the shape offers at every phase, and a weight block read once for
each tile that needs it. A launch's end is the only synchronization: every program of a phase has finished before
the next phase starts, so no program waits on another and Triton's interpreter runs the same launches the GPU does.
The products, their epilogues and the draw are those of the tiled kernel (`gpu._gate_block`, `_residual_block`,
`_skip_block`, `_tile_head`, `_draw`), on tensor cores in 3xTF32, so a stream's numbers are the tiled kernel's and do
not depend on the batch.

Launching 2L + 2 kernels from Python costs tens of microseconds each, more than the work of a phase, so the host
(`LayerRunner`) captures a chunk of CHUNK steps' launches in a CUDA graph once and replays it: the position and the
number of live steps are read from a device tensor (`lim`), so one graph serves every position and every chunk
length up to CHUNK (steps past the live ones return at once). Arrays as in kernels/gpu.py; scratch is the tiled
kernel's (stream-major rows, one block per tile).
"""

from __future__ import annotations

import os
import threading
import weakref

import torch
import triton
import triton.language as tl

from fastwavenet.kernels.gpu import (SOFTMAX, GpuWeights, StreamRules, _draw, _gate_block, _residual_block,
                                     _skip_block, _tile_head, _tile_scratch, _tile_start, plain_rules, tile_scratch)

# Steps a captured graph holds: a chunk of the caller's longer than this is replayed in pieces.
CHUNK = 32


def layer_tile() -> int:
    """Streams per tile (the M of each tensor-core product), at least 16; FASTWAVENET_LAYERS_TILE sets it for
    measuring. 32: a weight block read serves twice the streams of the tiled kernel's 16, while the column blocks
    keep every SM busy (r9y9's gate at 512 streams: 16 tiles x 8 blocks of 32 columns = 128 programs)."""
    return int(os.environ.get("FASTWAVENET_LAYERS_TILE", 32))


def layer_blocks() -> tuple[int, int]:
    """(BK, BN) of the layer kernels' products; FASTWAVENET_LAYERS_BLOCKS ("32x32") sets them for measuring."""
    bk, bn = os.environ.get("FASTWAVENET_LAYERS_BLOCKS", "32x32").split("x")
    return int(bk), int(bn)


def layer_warps() -> int:
    """Warps per program; FASTWAVENET_LAYERS_WARPS sets them for measuring."""
    return int(os.environ.get("FASTWAVENET_LAYERS_WARPS", 4))


# Every kernel reads lim = (t0, live steps) and returns at once for a step past the live ones. The integers that
# change from launch to launch (the code's column, the step, the layer, the batch) are not specialized: a graph
# captured after the first run must find every variant compiled (issue 34).
@triton.jit(do_not_specialize=["src_stride", "src_col", "step", "B"])
def _start_kernel(src_ptr, src_stride, src_col, lim_ptr, inputs_ptr, scratch_ptr, embed_ptr, step, B, SCR,
                  C: tl.constexpr, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr, H: tl.constexpr,
                  K_IN: tl.constexpr, SCALAR: tl.constexpr, TILE: tl.constexpr, BN: tl.constexpr):
    """A tile's first-layer input from the codes (or values) it consumes, src[b, src_col], and its skip sums
    zeroed."""
    if step < tl.load(lim_ptr + 1):
        first, x_buf, g_buf, s_buf, h_buf, l_buf = _tile_scratch(scratch_ptr, SCR, R, G, S, H, TILE)
        m = tl.arange(0, TILE)
        live = first + m < B
        code = tl.load(src_ptr + (first + m) * src_stride + src_col, mask=live, other=0)
        prev = tl.full((TILE,), -1, tl.int64)
        if K_IN == 2:
            prev = tl.load(inputs_ptr + first + m, mask=live, other=-1)
        _tile_start(x_buf, s_buf, code, prev, m, live, embed_ptr, C, R, S, K_IN, SCALAR, BN)
        if K_IN == 2:
            tl.store(inputs_ptr + first + m, code, mask=live)


@triton.jit(do_not_specialize=["step", "layer", "B"])
def _gate_kernel(lim_ptr, queues_ptr, cond_ptr, scratch_ptr, dw_ptr, db_ptr, dil_ptr, off_ptr, step, steps, layer,
                 B, L, Q, SCR, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
                 HAS_COND: tl.constexpr, TILE: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    """Layer `layer`'s gated vector, block program_id(1) of BN columns, for a tile."""
    if step < tl.load(lim_ptr + 1):
        t = tl.load(lim_ptr) + step
        first, x_buf, g_buf, s_buf, h_buf, l_buf = _tile_scratch(scratch_ptr, SCR, R, G, S, H, TILE)
        m = tl.arange(0, TILE)
        live = first + m < B
        G2: tl.constexpr = 2 * G
        _gate_block(g_buf, x_buf, queues_ptr + first * Q * R, Q * R, cond_ptr,
                    ((first + m) * steps + step) * L * G2 + layer * G2, db_ptr + layer * G2,
                    dw_ptr + layer * K * R * G2, t, tl.load(off_ptr + layer), tl.load(dil_ptr + layer),
                    tl.program_id(1) * BN, m, live, R, G, K, HAS_COND, BK, BN, TILE)


@triton.jit(do_not_specialize=["step", "layer", "B"])
def _out_kernel(lim_ptr, queues_ptr, scratch_ptr, ow_ptr, ob_ptr, dil_ptr, off_ptr, step, layer, B, L, Q, SCR,
                R: tl.constexpr, G: tl.constexpr, S: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
                TILE: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    """Layer `layer`'s outputs for a tile, block program_id(1) of BN columns: the first R / BN blocks are the
    residual's (the layer's input into its queue slot, then the residual sum in place unless this is the last
    layer), the rest the skip sum's."""
    if step < tl.load(lim_ptr + 1):
        t = tl.load(lim_ptr) + step
        first, x_buf, g_buf, s_buf, h_buf, l_buf = _tile_scratch(scratch_ptr, SCR, R, G, S, H, TILE)
        m = tl.arange(0, TILE)
        live = first + m < B
        RS: tl.constexpr = R + S
        block = tl.program_id(1)
        if block < tl.cdiv(R, BN):
            n = (K - 1) * tl.load(dil_ptr + layer)
            _residual_block(x_buf, g_buf, queues_ptr + first * Q * R, Q * R, tl.load(off_ptr + layer) + t % n,
                            ob_ptr + layer * RS, ow_ptr + layer * G * RS, block * BN, m, live, layer < L - 1,
                            R, G, S, BK, BN, TILE)
        else:
            _skip_block(s_buf, g_buf, ob_ptr + layer * RS, ow_ptr + layer * G * RS, (block - tl.cdiv(R, BN)) * BN,
                        m, live, R, G, S, BK, BN, TILE)


@triton.jit(do_not_specialize=["step", "B"])
def _head_kernel(lim_ptr, scratch_ptr, logits_ptr, out_ptr, u_ptr, h1w_ptr, h1b_ptr, h2w_ptr, h2b_ptr,
                 temperature_ptr, top_k_ptr, top_p_ptr, argmax_ptr, log_scale_min, step, steps, B, SCR,
                 C: tl.constexpr, C_P: tl.constexpr, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
                 H: tl.constexpr, TEACHER: tl.constexpr, TRUNCATE: tl.constexpr, SCALAR: tl.constexpr,
                 DIST: tl.constexpr, TILE: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, DRAW: tl.constexpr):
    """A tile's head and, generating, each stream's draw into out (B, steps)."""
    if step < tl.load(lim_ptr + 1):
        first, x_buf, g_buf, s_buf, h_buf, l_buf = _tile_scratch(scratch_ptr, SCR, R, G, S, H, TILE)
        m = tl.arange(0, TILE)
        live = first + m < B
        _tile_head(s_buf, h_buf, l_buf, logits_ptr, (first + m) * steps + step, h1w_ptr, h1b_ptr, h2w_ptr,
                   h2b_ptr, m, live, S, H, C, TEACHER, BK, BN, TILE)
        if not TEACHER:
            tl.debug_barrier()
            _draw(l_buf, first, m, tl.arange(0, C_P), step, steps, B, u_ptr, out_ptr, temperature_ptr, top_k_ptr,
                  top_p_ptr, argmax_ptr, log_scale_min, C, SCALAR, TRUNCATE, DIST, TILE, DRAW)


def launch_constants(w: GpuWeights, teacher: bool, has_cond: bool, dist: int = SOFTMAX,
                     truncate: bool = False) -> dict:
    """Every compile-time constant of the four kernels for one variant (each kernel takes its own of them:
    `kernel_constants`)."""
    from fastwavenet.kernels import gpu

    constants = gpu.launch_constants(w, teacher, has_cond, dist, layer_tile(), truncate)
    constants["BK"], constants["BN"] = layer_blocks()
    return constants


def kernel_constants(kernel, constants: dict) -> dict:
    """The constants `kernel` declares, from launch_constants."""
    return {name: constants[name] for name in kernel.arg_names if name in constants}


def _memory_ref(t: torch.Tensor):
    """A weak reference to the memory `t` lives in: its storage, one Python object for a tensor and all its views
    (the engine passes views of its pool's state made anew for each call, in inference mode too, where a view has no
    `_base`), alive exactly as long as the memory. Where torch makes a new storage object each time it is asked
    (older versions), a strong hold on `t` instead, as before."""
    storage = t.untyped_storage()
    if storage is t.untyped_storage():
        return weakref.ref(storage)
    return lambda: t


class LayerRunner:
    """The launches of chunks of up to `capacity` steps for one batch of streams (their queues and inputs) and one
    variant, with the arrays those launches read and write: a CUDA graph's static buffers. On CUDA the first chunk
    is launched as it goes (compiling, or loading from Triton's cache), then the launches of `capacity` steps are
    captured in a graph that every later chunk replays; under Triton's interpreter each chunk launches them all.
    It holds its state's memory (the queues, the inputs) by weak reference: a state the caller has dropped is freed,
    and its runner with it (`alive`), instead of staying on the device for as long as the runner is kept. Each call
    passes the arrays it launches on."""

    def __init__(self, w: GpuWeights, queues: torch.Tensor, inputs: torch.Tensor, teacher: bool,
                 cond_shape: tuple | None, dist: int, truncate: bool, code_dtype: torch.dtype,
                 log_scale_min: float, capacity: int | None = None):
        capacity = capacity or CHUNK
        B, device = queues.shape[0], queues.device
        self.w, self.teacher, self.capacity = w, teacher, capacity
        self._memory = [_memory_ref(queues)] + ([_memory_ref(inputs)] if inputs.numel() else [])
        self.constants = c = launch_constants(w, teacher, cond_shape is not None, dist, truncate)
        self.log_scale_min = log_scale_min
        # The shape of every launch, fixed with the constants (the knobs are read once, here)
        self.options = {"num_warps": layer_warps()}
        self.kernel_constants = {k: kernel_constants(k, c) for k in (_start_kernel, _gate_kernel, _out_kernel,
                                                                      _head_kernel)}
        self.grid = triton.cdiv(B, c["TILE"])
        self.gate_grid = (self.grid, triton.cdiv(c["G"], c["BN"]))
        self.out_grid = (self.grid, triton.cdiv(c["R"], c["BN"]) + triton.cdiv(c["S"], c["BN"]))
        self.scratch = tile_scratch(c, B, device)
        self.lim = torch.zeros(2, dtype=torch.int64, device=device)  # the chunk's first position, its live steps
        # Where the input has one tap the state's inputs are empty: an array of the runner's own, never read
        self.own_inputs = None if inputs.numel() else torch.empty(B, dtype=torch.int64, device=device)
        # Teacher-forced: the chunk's codes; generating: the code each stream consumes first.
        self.codes = torch.zeros(B, capacity if teacher else 1, dtype=code_dtype, device=device)
        self.out = torch.zeros(B, 1 if teacher else capacity, dtype=code_dtype, device=device)
        self.logits = torch.zeros(B, capacity, c["C"], device=device) if teacher else None
        self.u = torch.zeros(capacity, B, *(() if dist == SOFTMAX else (2,)), device=device)
        self.cond = None if cond_shape is None else torch.zeros(B, capacity, *cond_shape, device=device)
        self.rules = plain_rules(B, device)  # each call's rules copied in
        self.graph = None

    def alive(self) -> bool:
        """Whether the state's memory that the launches (and a captured graph) address is still there."""
        return all(ref() is not None for ref in self._memory)

    def _enqueue(self, steps: int, q: torch.Tensor, inputs: torch.Tensor):
        """Launch every phase of steps 0 .. steps - 1 of the chunk, on the state's queues and inputs."""
        w, B, cap, options = self.w, q.shape[0], self.capacity, self.options
        inputs = inputs if self.own_inputs is None else self.own_inputs
        L, Q, SCR = w.dilated_b.shape[0], q.shape[1], self.scratch.shape[1]
        start, gate, out, head = (self.kernel_constants[k] for k in (_start_kernel, _gate_kernel, _out_kernel,
                                                                     _head_kernel))
        cond = q if self.cond is None else self.cond
        logits = self.scratch if self.logits is None else self.logits
        for step in range(steps):
            if self.teacher:
                src, src_stride, src_col = self.codes, cap, step
            elif step == 0:
                src, src_stride, src_col = self.codes, 1, 0
            else:  # the code this stream drew a step before
                src, src_stride, src_col = self.out, cap, step - 1
            _start_kernel[(self.grid,)](src, src_stride, src_col, self.lim, inputs, self.scratch, w.embed, step, B,
                                        SCR, **start, **options)
            for layer in range(L):
                _gate_kernel[self.gate_grid](self.lim, q, cond, self.scratch, w.dilated_w, w.dilated_b, w.dilations,
                                        w.offsets, step, cap, layer, B, L, Q, SCR, **gate, **options)
                _out_kernel[self.out_grid](self.lim, q, self.scratch, w.out_w, w.out_b, w.dilations, w.offsets, step,
                                      layer, B, L, Q, SCR, **out, **options)
            r = self.rules
            _head_kernel[(self.grid,)](self.lim, self.scratch, logits, self.out, self.u, w.head1_w, w.head1_b,
                                       w.head2_w, w.head2_b, r.temperature, r.top_k, r.top_p, r.argmax,
                                       self.log_scale_min, step, cap, B, SCR, **head, **options)

    def _run(self, live: int, queues, inputs):
        if self.lim.device.type != "cuda":
            self._enqueue(self.capacity, queues, inputs)  # as a replay does: steps past the live ones return at once
        elif self.graph is None:
            self._enqueue(live, queues, inputs)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._enqueue(self.capacity, queues, inputs)
            self.graph = graph
        else:
            self.graph.replay()

    def run(self, codes, t0: int, u, queues, inputs, cond, logits_out, codes_out, rules: StreamRules | None):
        """One call's steps, `capacity` at a time, on the queues and inputs this runner was made for (the same
        memory; a captured graph replays on it): arguments as gpu.launch's."""
        n = codes.shape[1] if self.teacher else u.shape[0]
        if rules is not None:
            for mine, given in zip(self.rules, rules):
                mine.copy_(given)
        for c0 in range(0, n, self.capacity):
            live = min(self.capacity, n - c0)
            self.lim[0].fill_(t0 + c0)  # fills, not a copy from host memory (which waits for the stream)
            self.lim[1].fill_(live)
            if self.teacher:
                self.codes[:, :live].copy_(codes[:, c0:c0 + live])
            else:
                self.codes.copy_(codes if c0 == 0 else codes_out[:, c0 - 1:c0])
                self.u[:live].copy_(u[c0:c0 + live])
            if self.cond is not None:
                self.cond[:, :live].copy_(cond[:, c0:c0 + live])
            self._run(live, queues, inputs)
            if self.teacher:
                logits_out[:, c0:c0 + live].copy_(self.logits[:, :live])
            else:
                codes_out[:, c0:c0 + live].copy_(self.out[:, :live])


class LayerRunners:
    """A few LayerRunners, the most recently used kept, one for each batch of streams (its state's arrays) and
    variant, a runner dropped once its state is gone; the lock keeps two threads from running one runner's buffers
    at once."""

    def __init__(self, keep: int = 4):
        self.keep, self.runners, self.lock = keep, {}, threading.Lock()

    def launch(self, codes, t0, u, w: GpuWeights, queues, inputs, cond, logits_out, codes_out, teacher: bool,
               rules: StreamRules | None = None, truncate: bool = False, dist: int = SOFTMAX,
               log_scale_min: float = -7.0):
        """gpu.launch's arguments and meaning."""
        cond_shape = None if cond is None else tuple(cond.shape[2:])
        key = (queues.data_ptr(), tuple(queues.shape), queues.stride(), inputs.data_ptr(), teacher, cond_shape,
               truncate, dist, codes.dtype, log_scale_min)
        with self.lock:
            for gone in [k for k, r in self.runners.items() if not r.alive()]:
                del self.runners[gone]
            runner = self.runners.pop(key, None)
            if runner is None:
                runner = LayerRunner(w, queues, inputs, teacher, cond_shape, dist, truncate, codes.dtype,
                                     log_scale_min)
            self.runners[key] = runner  # the newest last
            while len(self.runners) > self.keep:
                self.runners.pop(next(iter(self.runners)))
            runner.run(codes, t0, u, queues, inputs, cond, logits_out, codes_out, rules)


# Each kernel's runtime arguments and their types, for compiling a variant ahead of time without a GPU (`fastwavenet
# doctor`); a scalar-input model's codes and drawn values are float32 (`compile_variants` says so).
ARGUMENT_TYPES = {
    "_start_kernel": {"src_ptr": "*i64", "src_stride": "i32", "src_col": "i32", "lim_ptr": "*i64",
                      "inputs_ptr": "*i64", "scratch_ptr": "*fp32", "embed_ptr": "*fp32", "step": "i32", "B": "i32",
                      "SCR": "i32"},
    "_gate_kernel": {"lim_ptr": "*i64", "queues_ptr": "*fp32", "cond_ptr": "*fp32", "scratch_ptr": "*fp32",
                     "dw_ptr": "*fp32", "db_ptr": "*fp32", "dil_ptr": "*i64", "off_ptr": "*i64", "step": "i32",
                     "steps": "i32", "layer": "i32", "B": "i32", "L": "i32", "Q": "i32", "SCR": "i32"},
    "_out_kernel": {"lim_ptr": "*i64", "queues_ptr": "*fp32", "scratch_ptr": "*fp32", "ow_ptr": "*fp32",
                    "ob_ptr": "*fp32", "dil_ptr": "*i64", "off_ptr": "*i64", "step": "i32", "layer": "i32",
                    "B": "i32", "L": "i32", "Q": "i32", "SCR": "i32"},
    "_head_kernel": {"lim_ptr": "*i64", "scratch_ptr": "*fp32", "logits_ptr": "*fp32", "out_ptr": "*i64",
                     "u_ptr": "*fp32", "h1w_ptr": "*fp32", "h1b_ptr": "*fp32", "h2w_ptr": "*fp32", "h2b_ptr": "*fp32",
                     "temperature_ptr": "*fp64", "top_k_ptr": "*i32", "top_p_ptr": "*fp32", "argmax_ptr": "*i8",
                     "log_scale_min": "fp32", "step": "i32", "steps": "i32", "B": "i32", "SCR": "i32"},
}
KERNELS = {"_start_kernel": _start_kernel, "_gate_kernel": _gate_kernel, "_out_kernel": _out_kernel,
           "_head_kernel": _head_kernel}


def compile_variants(w, teacher: bool, has_cond: bool, dist: int = SOFTMAX, truncate: bool = False):
    """(name, kernel, signature, constants, options) of each kernel one variant launches (weights: any objects
    with `.shape`), for compiling ahead of time."""
    constants = launch_constants(w, teacher, has_cond, dist, truncate)
    for name, kernel in KERNELS.items():
        types = dict(ARGUMENT_TYPES[name])
        if dist != SOFTMAX:
            types.update({k: "*fp32" for k in ("src_ptr", "out_ptr") if k in types})
        mine = kernel_constants(kernel, constants)
        yield name.strip("_").removesuffix("_kernel"), kernel, {**types, **{k: "constexpr" for k in mine}}, mine, \
            {"num_warps": layer_warps()}
