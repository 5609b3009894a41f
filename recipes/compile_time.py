"""What the CPU kernel's first compile costs: a copy of a kernels/cpu.py loaded with a fresh numba cache, its first
`generate` (or `generate_split` on two parts) timed on the `tiny` shape in float32, with numba's finalization of each
library it builds (LLVM's module passes, then machine code) timed too, the slowest listed. numba builds every @njit
function it compiles into machine code of its own with all it calls linked in, so a function whose library is the
whole kernel shows up here once per level of the call chain (docs/BENCHMARKS.md, "Compiling the CPU kernel"); then
the functions compiled in more than one signature.

Run: python recipes/compile_time.py [KERNEL_SOURCE] [split]
(KERNEL_SOURCE: a kernels/cpu.py, e.g. from `git show REV:kernels/cpu.py > /tmp/cpu_rev.py`; the package's by
default. Two runs side by side on two cores each get one core: compare them that way or one after the other.)"""
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp()  # before numba is imported: nothing comes from a cache

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba.core import codegen  # noqa: E402
from numba.core.registry import CPUDispatcher  # noqa: E402

from fastwavenet import preset  # noqa: E402
from fastwavenet.backends.numba_cpu import NumbaBackend, _aligned  # noqa: E402
from fastwavenet.bench import random_model_file  # noqa: E402
from kernel_timing import load_kernel  # noqa: E402

finalized = []  # (seconds, library name)
_finalize = codegen.CPUCodeLibrary.finalize


def _timed_finalize(library):
    t = time.perf_counter()
    _finalize(library)
    finalized.append((time.perf_counter() - t, library.name))


codegen.CPUCodeLibrary.finalize = _timed_finalize

args = sys.argv[1:]
split = "split" in args
source = next((a for a in args if a != "split"), str(Path(__file__).resolve().parents[1] / "kernels" / "cpu.py"))
kernel = load_kernel(Path(source).read_text(), "cpu_compile_time")
config = preset("tiny")
backend = NumbaBackend(config, random_model_file(config).weights, torch.device("cpu"), "float32")
batch, n = 1, 2
queues = np.zeros((batch, config.queue_length, config.residual_channels), np.float32)
inputs = np.full((batch, max(1, config.input_kernel_size - 1)), -1, np.int64)
u = np.random.default_rng(0).random((n, batch, 1)).astype(np.float32)
rules = (np.full(batch, 128, np.int64), False, 0, -7.0, 0, u, np.ones(batch, np.float32), np.zeros(batch, np.int64),
         np.ones(batch, np.float32), np.zeros(batch, np.bool_))
arrays = (queues, inputs, np.zeros((0, 0, 0, 0), np.float32), np.empty((batch, n), np.int64))
t = time.perf_counter()
if split:
    blocks = tuple(_aligned(a) for a in kernel.split_blocks(backend.weights, 2))
    kernel.generate_split(*rules, backend.weights, *arrays, 2, *blocks)
else:
    kernel.generate(*rules, 1, backend._kernel_weights(1), *arrays)
total = time.perf_counter() - t
print(f"{source}: first {'generate_split' if split else 'generate'} of tiny (float32) {total:.1f} s; "
      f"{len(finalized)} libraries finalized in {sum(s for s, _ in finalized):.1f} s, the slowest:")
for seconds, name in sorted(finalized, reverse=True)[:10]:
    print(f"  {seconds:6.2f} s  {name[:70]}")
# Each signature of a compiled (not inlined) function is built again with all it calls: where argument types differ
# between call sites (a literal 0 against an int64, an address as uint64 against float64), that is paid once more.
print("compiled in more than one signature:")
for name in sorted(dir(kernel)):
    function = getattr(kernel, name)
    if isinstance(function, CPUDispatcher) and len(function.signatures) > 1:
        print(f"  {name}: {len(function.signatures)}")
