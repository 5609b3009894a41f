"""fastwavenet: train WaveNets in PyTorch and generate audio from them with per-layer queues (Fast WaveNet)."""

__version__ = "0.1.0"

from .config import PRESETS, WaveNetConfig, preset  # noqa: E402
from .errors import FastWaveNetError  # noqa: E402

__all__ = ["PRESETS", "WaveNetConfig", "preset", "FastWaveNetError", "__version__"]
