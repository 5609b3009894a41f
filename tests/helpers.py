"""Helpers the tests share, imported as `from helpers import ...`: pytest puts tests/ on sys.path (its default
"prepend" import mode, as for conftest.py), from the repository root or anywhere else. conftest.py keeps only
fixtures and hooks."""
import contextlib
import os
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PIANO = SHARED / "data" / "chopin-piano-4410"
KERAS = SHARED / "models" / "basveeling-wavenet-vctk-4k"


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
    from fastwavenet.folded import fold
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


@contextlib.contextmanager
def interruptible_cli(*args):
    """`python -m fastwavenet ARGS` as a child process (stdout and stderr piped, text) that Ctrl-C reaches: a test
    runner started as a background job of a non-interactive shell passes SIGINT on ignored, and a child that ignored
    it would run to its end, so its default disposition is restored. Killed on every way out of the block."""
    import signal
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "fastwavenet", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def one_triton_on_cpu(backends):
    """backends without `triton-stream`, `triton-spread` and `triton-layers` where Triton runs under its interpreter
    (seconds a step): they share their samplers with the tiled `triton`, and test_exactness.py holds their products
    to the training model on every configuration and their draws to each stream's rule. Where CUDA is, all
    stay."""
    import torch

    if torch.cuda.is_available():
        return list(backends)
    return [b for b in backends if getattr(b, "values", (b,))[0] not in ("triton-stream", "triton-spread",
                                                                               "triton-layers")]
