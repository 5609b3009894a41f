"""The demo model that ships inside the package (trained by recipes/piano-demo.sh on Chopin piano, 4410 Hz)."""

from __future__ import annotations

from pathlib import Path

from .errors import FastWaveNetError

DEMO_MODEL = Path(__file__).resolve().parent / "models" / "piano.safetensors"


def demo_model_path() -> Path:
    if not DEMO_MODEL.is_file():
        raise FastWaveNetError(f"the bundled demo model is missing ({DEMO_MODEL}); pass --model MODEL")
    return DEMO_MODEL
