import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

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

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PIANO = SHARED / "data" / "chopin-piano-4410"
KERAS = SHARED / "models" / "basveeling-wavenet-vctk-4k"


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


def random_model(config, seed=0):
    """A training model of `config` with weights drawn stronger than the default init, so that every path of the
    network matters to its output."""
    import torch

    from fastwavenet.model import WaveNet

    torch.manual_seed(seed)
    model = WaveNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def vocoder_config(**changes):
    """A small mel vocoder shape for tests: 8 bands, hop 32, 4410 Hz."""
    import dataclasses

    from fastwavenet import WaveNetConfig

    config = WaveNetConfig(sample_rate=4410, residual_channels=8, gate_channels=8, skip_channels=16,
                           head_channels=16, layers_per_stack=4, stacks=2, n_mels=8, hop_length=32, n_fft=128)
    return dataclasses.replace(config, **changes)


def save_models(folder):
    """Model files of random weights in folder: `tiny` (the preset) and `vocoder` (vocoder_config())."""
    from fastwavenet import preset
    from fastwavenet.convert import fold
    from fastwavenet.modelfile import save_model

    paths = {"tiny": folder / "tiny.safetensors", "vocoder": folder / "vocoder.safetensors"}
    save_model(paths["tiny"], preset("tiny"), fold(random_model(preset("tiny"), 1)))
    save_model(paths["vocoder"], vocoder_config(), fold(random_model(vocoder_config(), 2)))
    return paths


def wait_until(predicate, seconds=30):
    """Poll predicate until it holds (True) or `seconds` pass (False)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def run_cli(*args, env=None):
    """Run `python -m fastwavenet ARGS` in a subprocess; returns CompletedProcess with text output."""
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastwavenet", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=600)


def one_triton_on_cpu(backends):
    """backends without `triton-stream` where Triton runs under its interpreter (seconds a step): it shares all but
    its matrix products with the tiled `triton`, and test_exactness.py holds its products to the training model on
    every configuration. Where CUDA is, both stay."""
    import torch

    if torch.cuda.is_available():
        return list(backends)
    return [b for b in backends if getattr(b, "values", (b,))[0] != "triton-stream"]
