"""A training checkpoint -> a model file (`export`). The layout and the way into it and back (`fold`, `unfold`) are
fastwavenet/folded.py's; the inference path and the importers never import this module, which imports training.
"""

from __future__ import annotations

import os

from .files import check_writable
from .folded import fold, unfold  # noqa: F401  (bench.py and some tests still import fold and unfold from here)
from .modelfile import ModelFile, save_model
from .training import model_from_checkpoint


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, sampling=None) -> ModelFile:
    """A training checkpoint (file or run directory) -> a model file at `out`, with `sampling` (a Sampling, or
    None) as its default rule."""
    check_writable(out)
    model = model_from_checkpoint(checkpoint)
    weights = fold(model)
    save_model(out, model.config, weights, sampling)
    return ModelFile(model.config, weights, sampling)
