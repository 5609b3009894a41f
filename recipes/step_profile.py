"""The CPU kernel's step, part by part: a copy of kernels/cpu.py with cycle counters (LLVM's readcyclecounter, the
TSC on x86) around each part of `_tile_step` and around the sampling in `generate`, run on the `standard` shape
(random weights, plain sampling), with the cycles per sample and the share of each part. No profiler is needed
(perf in a VM often has no hardware counters). The counters cost a few per cent; the shares are what to read.

Run: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python recipes/step_profile.py [BATCH] [STEPS] [float32|bf16] [SHAPE]
(SHAPE: a preset, or `vocoder`, r9y9's LJSpeech shape as a class model; tiles as the backend sizes them)
The copy is made by inserting lines at fixed places of kernels/cpu.py; if the kernel changes there, this says
which place it could not find."""
import sys
from pathlib import Path

import torch

from fastwavenet import preset
from fastwavenet.backends.numba_cpu import NumbaBackend
from fastwavenet.bench import random_model_file
from kernel_timing import load_kernel, time_generate, vocoder_config

PARTS = {1: "dilated taps (products) + gate", 2: "queue write", 3: "residual + skip (products)",
         4: "head (relu + 2 products)", 5: "sampling"}
STEP = 8  # the slot of the whole step

COUNTERS = '''
@intrinsic
def _cycles(typingctx):
    def codegen(context, builder, signature, args):
        fn = builder.module.globals.get("llvm.readcyclecounter") or ir.Function(
            builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@intrinsic
def _add_at(typingctx, address, value):
    def codegen(context, builder, signature, args):
        p = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        builder.store(builder.add(builder.load(p), args[1]), p)
        return context.get_dummy_value()

    return types.void(types.intp, types.int64), codegen


PROF = np.zeros(16, np.int64)
_P = PROF.ctypes.data

'''

# (anchor, replacement): each anchor must occur exactly once in kernels/cpu.py.
EDITS = [
    ("_L = BLOCK.lanes\n", COUNTERS + "_L = BLOCK.lanes\n"),
    ("        _gate_layer(0, 1,", "        c2 = _cycles()\n        _gate_layer(0, 1,"),
    ("        _out_layer(0, 1, nb, w, queues, b0, t, layer, xs, gated, skip, zeros, _NO_BLOCKS, work)\n",
     "        c3 = _cycles()\n        _add_at(_P + 8 * 1, c3 - c2)\n"
     "        _out_layer(0, 1, nb, w, queues, b0, t, layer, xs, gated, skip, zeros, _NO_BLOCKS, work)\n"
     "        _add_at(_P + 8 * 3, _cycles() - c3)\n"),
    # the queue write (slot 2) happens inside the gate's slot on one thread, taken out in main
    ("    for bb in range(nb):\n        for c in range(c0, c1):\n            queues[b0 + bb, row, c] = xs[bb, c]\n",
     "    q0 = _cycles()\n"
     "    for bb in range(nb):\n        for c in range(c0, c1):\n            queues[b0 + bb, row, c] = xs[bb, c]\n"
     "    _add_at(_P + 8 * 2, _cycles() - q0)\n"),
    ("    _head_part(0, 1, 1, nb,", "    c5 = _cycles()\n    _head_part(0, 1, 1, nb,"),
    ("    _head_part(0, 1, 2, nb, w, skip, hidden, logits, zeros, work)\n",
     "    _head_part(0, 1, 2, nb, w, skip, hidden, logits, zeros, work)\n    _add_at(_P + 8 * 4, _cycles() - c5)\n"),
    ("    for s in range(n):\n        _tile_step(",
     "    for s in range(n):\n        e0 = _cycles()\n        _tile_step("),
    ("        _sample_tile(b0, nb, s, logits,",
     "        e1 = _cycles()\n        _add_at(_P + 8 * 8, e1 - e0)\n        _sample_tile(b0, nb, s, logits,"),
    ("                     step_codes, out_codes, p, p64, order)\n    for bb in range(nb):\n        last[b0 + bb]",
     "                     step_codes, out_codes, p, p64, order)\n        _add_at(_P + 8 * 5, _cycles() - e1)\n"
     "    for bb in range(nb):\n        last[b0 + bb]"),
]


def instrumented():
    """kernels/cpu.py with the counters in, loaded as a module of its own from a fresh temporary directory."""
    source = (Path(__file__).resolve().parents[1] / "kernels" / "cpu.py").read_text()
    for anchor, replacement in EDITS:
        if source.count(anchor) != 1:
            sys.exit(f"step_profile: kernels/cpu.py has {source.count(anchor)} of {anchor.strip()!r}, not one")
        source = source.replace(anchor, replacement)
    return load_kernel(source, "cpu_profiled")


def main():
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    precision = sys.argv[3] if len(sys.argv) > 3 else "float32"
    shape = sys.argv[4] if len(sys.argv) > 4 else "standard"
    cpu = instrumented()
    config = vocoder_config() if shape == "vocoder" else preset(shape)
    backend = NumbaBackend(config, random_model_file(config).weights, torch.device("cpu"), precision)
    tile = backend._tile(batch)
    weights = backend._kernel_weights(tile)  # what the backend's tiles of this size read

    def run(n):
        return time_generate(cpu, weights, config, batch, n, tile)[0]

    run(4)  # compiles
    cpu.PROF[:] = 0
    rate = run(steps)
    counts = cpu.PROF.astype(float)
    counts[1] -= counts[2]  # the queue write is timed inside the gate's slot
    total, samples = counts[STEP] + counts[5], batch * steps
    print(f"{shape}, {precision}, batch {batch}, {steps} steps: {rate:,.0f} samples/s (with the counters), "
          f"{total / samples:,.0f} counter cycles per sample ({total / (samples / rate) / 1e9:.2f} GHz)")
    c = config
    flops = {1: 2 * c.layers * c.kernel_size * c.residual_channels * 2 * c.gate_channels,
             3: 2 * (c.layers * c.gate_channels * (c.residual_channels + c.skip_channels)
                     - c.gate_channels * c.residual_channels),
             4: 2 * (c.skip_channels * c.head_channels + c.head_channels * c.classes)}
    hz = total / (samples / rate)  # counter ticks per second, from the same run
    for i, name in PARTS.items():
        speed = f"  {flops[i] * samples / (counts[i] / hz) / 1e9:6.1f} GFLOP/s" if i in flops else ""
        print(f"  {name:28s} {counts[i] / total:6.1%}  {counts[i] / samples:8,.0f} cycles/sample{speed}")
    other = total - sum(counts[i] for i in PARTS)
    print(f"  {'the rest (input, relu, loop)':28s} {other / total:6.1%}  {other / samples:8,.0f} cycles/sample")


if __name__ == "__main__":
    main()
