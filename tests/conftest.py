import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

# `auto`'s trials (numba against numba-split on the CPU) timed under the tests' load would be kept in the user's
# cache and chosen from in later runs: the tests keep theirs in a folder of their own, and numba's compiled kernels
# where they always are (set before fastwavenet is imported, which places numba's cache).
if not os.environ.get("FASTWAVENET_CACHE_DIR"):
    _user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastwavenet"
    os.environ.setdefault("NUMBA_CACHE_DIR", str(_user_cache / "numba"))
    os.environ["FASTWAVENET_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastwavenet-tests-")

# README's test command runs two pytest-xdist workers. Each worker's torch computes on one thread, and OpenMP threads
# that wait (torch's, numba's omp layer) sleep instead of spinning: with teams of two spinning threads in each of
# two workers on two cores, a torch test ran 60 times slower than alone (docs/ARCHITECTURE.md, "Tests").
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Without CUDA, Triton kernels run under Triton's interpreter on the CPU. It is read when kernels are decorated,
# so it must be set before anything imports triton.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        try:  # numba's pool started now, through the function that keeps torch's count (tests call kernels directly)
            from fastwavenet.backends.numba_cpu import numba_threads

            numba_threads()
        except ImportError:
            pass
except ImportError:
    pass


def _patch_triton_language_once_per_launch():
    """Triton's interpreter (3.x) patches triton.language for a launch, and then again, from scratch, on every call
    of a device function inside it (`_patch_lang` in `InterpretedFunction.__call__`: an `inspect.getmembers` over
    several modules per call), including triton.language's own jit functions (`tl.zeros`, `tl.sum`, which read
    triton.language.core). In the kernel of kernels/gpu.py that was a third of all interpreter time (cProfile of one
    exactness test: 71 of 209 s). Here a launch patches both triton.language and triton.language.core, restoring
    both when it ends, and device calls inside it use those patches. Nothing changes where the interpreter has no
    `_patch_lang`."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang", None)
    if original is None or getattr(original, "once_per_launch", False):
        return
    import triton.language as tl

    class every_language:  # what `_patch_lang` reads of a function: the modules it sees
        __globals__ = {"tl": tl, "core": tl.core}

    active = []  # the scopes of the launches in progress

    def patch_lang(fn):
        if active:
            return active[-1]  # a device call inside a launch
        scope = original(every_language)
        active.append(scope)
        restore = scope.restore

        def restore_and_forget():
            active.remove(scope)
            restore()

        scope.restore = restore_and_forget
        return scope

    patch_lang.once_per_launch = True
    interpreter._patch_lang = patch_lang


_patch_triton_language_once_per_launch()


@pytest.fixture
def sine_folder(tmp_path):
    """Three short WAV files of tones with a little noise, 4410 Hz mono, and one 8 kHz stereo file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "audio"
    folder.mkdir()
    for i, freq in enumerate((220.0, 330.0, 440.0)):
        t = np.arange(6000) / 4410
        x = 0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
        soundfile.write(folder / f"tone{i}.wav", x.astype(np.float32), 4410)
    t = np.arange(8000) / 8000
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 500 * t)], axis=1)
    soundfile.write(folder / "stereo.flac", stereo.astype(np.float32), 8000)
    return folder
