"""A training checkpoint -> a model file (`export`). The layout and the way into it and back (`fold`, `unfold`) are
fastwavenet/folded.py's; the inference path and the importers never import this module, which imports training.
"""

from __future__ import annotations

import os

from .errors import FastWaveNetError
from .files import check_writable
from .folded import fold
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


def export_model(source: str | os.PathLike, out: str | os.PathLike, request=None):
    """What `fastwavenet export` does: fold a training run or checkpoint (`source`) into a model file at `out`; or,
    given a model file (.safetensors), write it to `out` again with a new default sampling. `request`: a
    GenerationRequest whose sampling fields, those given, become the default sampling (over the model file's own).
    An `out` ending in .onnx writes one incremental step of a model file as an ONNX graph instead (`onnx_step`;
    sampling stays with the caller there). Returns the default sampling that the written file holds (a Sampling,
    or None)."""
    from .modelfile import load_model, set_default_sampling
    from .request import SAMPLING_FIELDS
    from .sampling import Sampling

    given = request is not None and any(getattr(request, name) is not None for name in SAMPLING_FIELDS)
    if str(out).endswith(".onnx"):
        if given:
            raise FastWaveNetError("an .onnx step holds no sampling (its caller samples): drop the sampling options")
        from .onnx_step import export_step

        export_step(source, out)
        return None
    if str(source).endswith(".safetensors"):
        check_writable(out)
        loaded = load_model(source)
        sampling = request.sampling(loaded.sampling or Sampling()) if given else loaded.sampling
        set_default_sampling(source, sampling, out)
        return sampling
    sampling = request.sampling(Sampling()) if given else None
    export(source, out, sampling)
    return sampling
