"""The models that ship inside the package, both trained on Chopin piano at 4410 Hz: the demo model
(recipes/piano-demo.sh), which `generate` uses when no model is named, and a mel vocoder (recipes/piano-vocoder.sh),
which `vocode` uses when no model is named."""

from __future__ import annotations

from pathlib import Path

from .errors import FastWaveNetError

MODELS = Path(__file__).resolve().parent / "models"
DEMO_MODEL = MODELS / "piano.safetensors"
DEMO_VOCODER = MODELS / "piano-vocoder.safetensors"


def demo_model_path() -> Path:
    if not DEMO_MODEL.is_file():
        raise FastWaveNetError(f"the bundled demo model is missing ({DEMO_MODEL}); pass --model MODEL")
    return DEMO_MODEL


def demo_vocoder_path() -> Path:
    if not DEMO_VOCODER.is_file():
        raise FastWaveNetError(f"no vocoder is bundled in this install ({DEMO_VOCODER} is missing; its training is "
                               f"in progress, docs/VOCODER.md); name one: fastwavenet vocode MODEL INPUT -o OUTPUT")
    return DEMO_VOCODER
