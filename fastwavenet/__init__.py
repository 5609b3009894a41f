"""fastwavenet: train WaveNets in PyTorch and generate audio from them with per-layer queues (Fast WaveNet).

The public API:
    load(model=None, backend="auto", device="cpu") -> Generator    (None: the bundled piano demo model)
    Generator.generate(seconds=...), Generator.stream(seconds=..., chunk=...), Generator.forward/prime/new_state
    Sampling(temperature, top_k, top_p, argmax)
    Engine(model, max_active=...): submit(...) -> Request (iterate, async iterate, cancel, feed/close mel); many
        independent requests batched together
    WaveNetConfig, preset, PRESETS; load_model, save_model, ModelFile; FastWaveNetError
    train, TrainOptions, export (the training side)
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from .files import cache_root as _cache_root, place_numba_cache as _place_numba_cache

# numba's compiled kernels go to the user's cache, not beside the installed source: set before any kernel module
# (`fastwavenet.kernels.cpu` and the rest are decorated with cache=True) can be imported.
_place_numba_cache(_cache_root() / "numba")

if TYPE_CHECKING:  # the names below, for type checkers and editors; at run time each loads on first use
    from .config import PRESETS, WaveNetConfig, preset
    from .convert import export
    from .engine import Engine
    from .errors import FastWaveNetError
    from .generator import Generator, generate_to_wav
    from .modelfile import ModelFile, load_model, save_model
    from .sampling import Sampling
    from .training import TrainOptions, train

# Every name is imported when first used (PEP 562): `import fastwavenet` costs nothing (the `fastwavenet` command
# imports torch inside its own handling of Ctrl-C), and a service that only generates never imports the training side.
_WHERE = {"PRESETS": "config", "WaveNetConfig": "config", "preset": "config", "Engine": "engine",
          "FastWaveNetError": "errors", "Generator": "generator", "generate_to_wav": "generator",
          "ModelFile": "modelfile", "load_model": "modelfile", "save_model": "modelfile", "Sampling": "sampling",
          "train": "training", "TrainOptions": "training", "export": "convert"}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_WHERE})


def load(model=None, backend: str = "auto", device: str = "cpu") -> Generator:
    """A Generator for a model file (None: the bundled demo model) on `device` with `backend`."""
    from .generator import Generator

    return Generator(model, backend=backend, device=device)


__all__ = ["PRESETS", "WaveNetConfig", "preset", "FastWaveNetError", "Generator", "Engine", "Sampling", "load",
           "generate_to_wav", "ModelFile", "load_model", "save_model", "export", "train", "TrainOptions",
           "__version__"]
