"""What the kernel recipes share (recipes/kernel_ab.py, kernel_ab_tiles.py, products_vs_step.py, step_profile.py): a
copy of a CPU kernel loaded as a module of its own, one timed `generate` call on a fresh state, and the weights in
the layout older kernels read."""
import dataclasses
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np

from fastwavenet import preset


def vocoder_config():
    """r9y9's LJSpeech shape (R 512, G 256, S and H 256, 24 layers in 4 stacks of 6, 3 taps) as a class model on
    `standard`'s head: the shape the batched vocoder figures of docs/BENCHMARKS.md are measured on."""
    return dataclasses.replace(preset("standard"), residual_channels=512, gate_channels=256, skip_channels=256,
                               head_channels=256, kernel_size=3, layers_per_stack=6, stacks=4, input_kernel_size=1)


def load_kernel(source: str, name: str):
    """A kernel module from its source text, written to a fresh temporary directory first: numba cannot reload its
    cached code for a module loaded from a file path, so every run compiles its own copy."""
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_generate(kernel, weights, config, batch: int, n: int, tile: int = 64):
    """Generate n steps for `batch` streams from an empty state with `kernel` (a kernels/cpu.py module): plain
    sampling from fixed uniforms, tiles of up to `tile` streams. Returns (samples per second, the codes (batch, n))."""
    queues = np.empty((batch, config.queue_length, config.residual_channels), np.float32)
    queues.fill(0.0)  # written, as a generator's are after its first steps: untouched pages of zeros all map to one
    # page of the OS's, so the kernel's reads of them would hit in cache whatever the layout
    inputs = np.full((batch, max(1, config.input_kernel_size - 1)), -1, np.int64)
    u = np.random.default_rng(0).random((n, batch, 1)).astype(np.float32)
    out = np.empty((batch, n), np.int64)
    t0 = time.perf_counter()
    kernel.generate(np.full(batch, 128, np.int64), False, 0, -7.0, 0, u, np.ones(batch, np.float32),
                    np.zeros(batch, np.int64), np.ones(batch, np.float32), np.zeros(batch, np.bool_),
                    max(1, min(tile, batch)), weights, queues, inputs, np.zeros((0, 0, 0, 0), np.float32), out)
    return batch * n / (time.perf_counter() - t0), out


def natural(weights):
    """`CpuWeights` whose layers' matrices are given in panels only (a tile of many streams) with them back in the
    natural layout, for kernels older than the panels; other weights as they are."""
    def unpanelled(panels, bias):  # (L, panels, rows, P) -> (L, rows, N), N = bias.shape[1]
        L, count, rows, width = panels.shape
        return np.ascontiguousarray(panels.transpose(0, 2, 1, 3).reshape(L, rows, count * width)[..., :bias.shape[1]])

    if weights.dilated_p.shape[1] == 0:
        return weights
    return weights._replace(dilated_w=unpanelled(weights.dilated_p, weights.dilated_b),
                            out_w=unpanelled(weights.out_p, weights.out_b))
