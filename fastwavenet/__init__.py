"""fastwavenet: train WaveNets in PyTorch and generate audio from them with per-layer queues (Fast WaveNet).

The public API:
    load(model=None, backend="auto", device="cpu") -> Generator    (None: the bundled piano demo model)
    Generator.generate(seconds=...), Generator.stream(seconds=..., chunk=...), Generator.forward/prime/new_state
    Sampling(temperature, top_k, top_p, argmax)
    Engine(model, max_active=...): submit(...) -> Request (iterate, async iterate, cancel, feed/close mel); many
        independent requests batched together
    WaveNetConfig, preset, PRESETS; load_model, save_model, ModelFile; FastWaveNetError
    train, TrainOptions, export (the training side: imported on first use, so generating never loads it)
"""

__version__ = "0.1.0"

from .config import PRESETS, WaveNetConfig, preset  # noqa: E402
from .engine import Engine  # noqa: E402
from .errors import FastWaveNetError  # noqa: E402
from .generator import Generator, generate_to_wav  # noqa: E402
from .modelfile import ModelFile, load_model, save_model  # noqa: E402
from .sampling import Sampling  # noqa: E402

# The training side, loaded when first named (PEP 562), so that a service that only generates never imports it.
_TRAINING = {"train": "training", "TrainOptions": "training", "export": "convert"}


def __getattr__(name):
    if name in _TRAINING:
        import importlib

        return getattr(importlib.import_module(f".{_TRAINING[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(model=None, backend: str = "auto", device: str = "cpu") -> Generator:
    """A Generator for a model file (None: the bundled demo model) on `device` with `backend`."""
    return Generator(model, backend=backend, device=device)


__all__ = ["PRESETS", "WaveNetConfig", "preset", "FastWaveNetError", "Generator", "Engine", "Sampling", "load",
           "generate_to_wav", "ModelFile", "load_model", "save_model", "export", "train", "TrainOptions",
           "__version__"]
