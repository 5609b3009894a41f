"""`triton`, `triton-stream`, `triton-spread` and `triton-layers`: one Triton launch generates a chunk of samples for
a batch of streams (time loop inside the kernel), in tiles of 16 streams per program (`triton`: products on tensor
cores, each weight block read once for the tile), one stream per program (`triton-stream`: matrix-vector sums), both
fastwavenet.kernels.gpu, or many programs per stream, one per SM, meeting at barriers between layer phases
(`triton-spread`, fastwavenet.kernels.gpu_spread: the shortest step at batch 1); or one launch per layer phase over
tiles of streams x blocks of columns, replayed from a CUDA graph (`triton-layers`, fastwavenet.kernels.gpu_layers:
every SM busy at every phase, for many streams of a large model). Each computes a stream the same way whatever else is
in the batch; they differ from each other by float rounding. This module is the only place that knows how those
kernels want their arrays."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from .. import distributions
from ..sampling import per_stream
from ..state import QueueState, input_dtype
from .base import Backend


def keep_triton_key():
    """Let a returning process skip Triton's hash of itself. Before it can load a kernel from its cache, Triton
    computes a key of its own files once a process (`triton.runtime.cache.triton_key`), a 415 MB library among them:
    0.5-0.6 s of a returning `generate --device cuda` on an H200 (issue 34). The key is kept in fastwavenet's cache
    folder, per Triton folder, beside a fingerprint of that folder's files (each .py and library under it, linked
    folders followed: its path, size, inode and times), and handed to Triton the way Triton hands it to its own
    warm-up workers (`triton.runtime.cache.triton_key = lambda: key`); another or a changed Triton computes it
    afresh. Whatever goes wrong here leaves Triton's own function."""
    import hashlib
    import json

    import triton
    import triton.runtime.cache as cache

    from ..files import cache_root, write_json

    # (older Tritons keep it in triton.compiler.compiler: left as they are)
    original = getattr(cache, "triton_key", None)
    if original is None or getattr(original, "kept_by_fastwavenet", False):
        return
    info = getattr(original, "cache_info", None)  # Triton's is an lru_cache
    if info is not None and info().currsize:
        return  # this process has computed it already (and Triton's files may have changed since: keep nothing)
    folder = os.path.dirname(os.path.dirname(os.path.abspath(cache.__file__)))

    def fingerprint() -> str:
        stamp = hashlib.sha256(f"{triton.__version__} {folder}\n".encode())
        for where, _, names in sorted(os.walk(folder, followlinks=True)):
            for name in sorted(n for n in names if n.endswith((".py", ".so", ".pyd", ".dll", ".dylib"))):
                st = os.stat(os.path.join(where, name))
                stamp.update(os.fsencode(os.path.join(where, name)))
                stamp.update(f" {st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}\n".encode())
        return stamp.hexdigest()

    try:
        before = fingerprint()
        path = cache_root() / "triton-key.json"
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            kept = {}
        kept = kept if isinstance(kept, dict) else {}
        mine = kept.get(folder)
        key = mine.get("key") if isinstance(mine, dict) and mine.get("fingerprint") == before else None
        if not isinstance(key, str):
            key = original()
            if fingerprint() != before:  # Triton changed while it hashed itself: keep nothing
                return
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json(path, {**kept, folder: {"fingerprint": before, "key": key}})
            except Exception:  # a read-only cache folder: this process has the key all the same
                pass
    except Exception:
        return

    def kept_key():
        return key

    kept_key.kept_by_fastwavenet = True
    cache.triton_key = kept_key


def _on(device: torch.device):
    """Launches go to the current CUDA device: make it the backend's (cuda:1 runs on device 1)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class TritonBackend(Backend):
    name = "triton"
    tiled = True  # streams per program: the kernel's tile_for(weights), or one
    tensor_cores = True  # a tile's products; a lone stream's are sums on CUDA cores
    devices = ("cuda",)
    requires = "triton"
    first_call = "compiling the GPU kernel (first run only, kept in Triton's cache)"

    @classmethod
    def unavailable_reason(cls, device):
        # Triton's interpreter runs the kernel on the CPU (the tests do this): then only the install matters.
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return cls.missing_module()
        return super().unavailable_reason(device)

    @classmethod
    def unsupported_reason(cls, config):
        from ..kernels.gpu import unsupported_reason

        return unsupported_reason(config.input_kernel_size)

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        from ..kernels import gpu

        self.dist = distributions.KERNEL_CODES[config.output]
        if device.type == "cuda":  # the interpreter compiles nothing
            keep_triton_key()
        w = weights.to(device)
        layout = config.queue_layout()
        self.weights = gpu.GpuWeights(
            embed=w.embed, dilated_w=w.dilated_w.reshape(config.layers, -1, 2 * config.gate_channels).contiguous(),
            dilated_b=w.dilated_b, out_w=w.out_w, out_b=w.out_b, head1_w=w.head1_w, head1_b=w.head1_b,
            head2_w=w.head2_w, head2_b=w.head2_b, dilations=torch.from_numpy(layout.dilations).to(device),
            offsets=torch.from_numpy(layout.offsets).to(device))
        if precision == "bf16":
            # The Generator rounded the matrices to bf16 values: held as bf16 they read half the bytes (L2, HBM),
            # the same numbers, widened to float32 as each block is read. (int8 stays float32: no Triton kernel
            # widens int8 yet.)
            self.weights = self.weights._replace(**{name: getattr(self.weights, name).to(torch.bfloat16) for name in
                                                    ("dilated_w", "out_w", "head1_w", "head2_w")})
        self.tile = gpu.tile_for(self.weights) if self.tiled else 1

    def _launch(self, *args, **kwargs):
        from ..kernels import gpu

        gpu.launch(*args, **kwargs, tile=self.tile)

    def forward(self, state: QueueState, codes: torch.Tensor, cond=None) -> torch.Tensor:
        codes = codes.to(self.device).contiguous()
        B, T = codes.shape
        logits = torch.empty(B, T, self.config.output_channels, device=self.device)
        unused_u = torch.zeros(T, B, device=self.device)
        unused_codes = torch.empty(B, T, dtype=input_dtype(self.config), device=self.device)
        cond = None if cond is None else cond.to(self.device).contiguous()
        with _on(self.device):
            self._launch(codes, state.t, unused_u, self.weights, state.queues, state.inputs, cond, logits,
                         unused_codes, teacher=True, dist=self.dist)
        state.t += T
        return logits

    def generate(self, state: QueueState, n, u, sampling, cond=None):
        from ..kernels import gpu

        rules = per_stream(sampling, state.batch)
        distributions.check_rules(self.config, rules)
        device, classes = self.device, self.config.output_channels
        stream_rules = gpu.StreamRules(
            temperature=torch.tensor([r.temperature for r in rules], dtype=torch.float64, device=device),
            # top-k past the classes cuts nothing: capped there, any top-k fits int32
            top_k=torch.tensor([min(r.top_k, classes) for r in rules], dtype=torch.int32, device=device),
            top_p=torch.tensor([r.top_p for r in rules], dtype=torch.float32, device=device),
            argmax=torch.tensor([r.argmax for r in rules], dtype=torch.int8, device=device))
        B = state.batch
        first = state.last.to(self.device).reshape(B, 1).contiguous()
        out = torch.empty(B, n, dtype=input_dtype(self.config), device=self.device)
        u = torch.from_numpy(np.ascontiguousarray(u, np.float32)).to(self.device)
        cond = None if cond is None else cond.to(self.device).contiguous()
        with _on(self.device):
            self._launch(first, state.t, u, self.weights, state.queues, state.inputs, cond, None, out, teacher=False,
                         rules=stream_rules, truncate=any(r.truncates for r in rules), dist=self.dist,
                         log_scale_min=float(self.config.log_scale_min))
        state.t += n
        state.last.copy_(out[:, -1])  # in place, as every backend
        return out


class TritonStreamBackend(TritonBackend):
    name = "triton-stream"
    tiled = False
    tensor_cores = False


class TritonSpreadBackend(TritonBackend):
    name = "triton-spread"
    tiled = False
    tensor_cores = False

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        from ..kernels import gpu_spread

        # bf16: held as bf16, as TritonBackend holds them. The spread layout replaces the input-major one: no second
        # copy of the weights stays on the device.
        self.weights = gpu_spread.spread_weights(self.weights,
                                                 torch.bfloat16 if precision == "bf16" else torch.float32)
        self.programs = gpu_spread.programs_for(
            self.weights, gpu_spread.resident_programs(device) if device.type == "cuda" else None)

    def _launch(self, *args, **kwargs):
        from ..kernels import gpu_spread

        gpu_spread.launch(*args, **kwargs, programs=self.programs)


class TritonLayersBackend(TritonBackend):
    """`triton-layers`: a step as one launch per layer phase, each over tiles of streams x blocks of output columns
    (fastwavenet.kernels.gpu_layers), so every SM works at every phase; a chunk's launches are captured in a CUDA
    graph once and replayed."""

    name = "triton-layers"
    tiled = False  # the tile is gpu_layers.layer_tile(), read by the runners
    tensor_cores = True

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        from ..kernels import gpu_layers

        self.runners = gpu_layers.LayerRunners()

    def _launch(self, *args, **kwargs):
        self.runners.launch(*args, **kwargs)
