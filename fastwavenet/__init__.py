"""fastwavenet: train WaveNets in PyTorch and generate audio from them with per-layer queues (Fast WaveNet).

The public API:
    load(model=None, backend="auto", device="cpu") -> Generator    (None: the bundled piano demo model)
    Generator.generate(seconds=...), Generator.stream(seconds=..., chunk=...), Generator.forward/prime/new_state
    Sampling(temperature, top_k, top_p, argmax)
    WaveNetConfig, preset, PRESETS; train, TrainOptions; export; FastWaveNetError
"""

__version__ = "0.1.0"

from .config import PRESETS, WaveNetConfig, preset  # noqa: E402
from .errors import FastWaveNetError  # noqa: E402
from .export import export, load_model  # noqa: E402
from .generator import Generator, generate_to_wav  # noqa: E402
from .sampling import Sampling  # noqa: E402
from .train import TrainOptions, train  # noqa: E402


def load(model=None, backend: str = "auto", device: str = "cpu") -> Generator:
    """A Generator for a model file (None: the bundled demo model) on `device` with `backend`."""
    return Generator(model, backend=backend, device=device)


__all__ = ["PRESETS", "WaveNetConfig", "preset", "FastWaveNetError", "Generator", "Sampling", "load",
           "generate_to_wav", "export", "load_model", "train", "TrainOptions", "__version__"]
