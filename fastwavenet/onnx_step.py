"""One incremental step of a model as an ONNX graph (opset 17), for runtimes and languages other than Python; the
`onnxruntime` backend runs it. docs/ONNX.md describes the graph's inputs and outputs; the file's metadata repeats it.

The graph is the torch backend's step (backends/torch_queues.py) written without in-place updates: the state goes in
and the updated state comes out. The ring slots are computed inside the graph from the step index t (an int64 input)
with Mod, so the queues are stored exactly as QueueState stores them and a caller only counts steps.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import mulaw
from .config import WaveNetConfig
from .errors import FastWaveNetError
from .files import atomic_path
from .folded import FoldedWeights, gate_and_project
from .modelfile import ModelFile, load_model

OPSET = 17
INSTALL = "pip install 'fastwavenet[onnx]'"


def missing_onnx(module: str = "onnx") -> str | None:
    """Why ONNX export (or, for module="onnxruntime", running it) cannot work here, in one line; None if it can."""
    for name in dict.fromkeys([module, "onnx"]):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed: {INSTALL}"
    return None


def graph_names(config: WaveNetConfig) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in order (the input taps and conditioning only where the model has them)."""
    inputs = ["queues", "codes", "t"]
    outputs = ["outputs", "queues_out"]
    if config.input_kernel_size > 1:
        inputs.append("inputs")
        outputs.append("inputs_out")
    if config.conditioned:
        inputs.append("cond")
    return inputs, outputs


def describe(config: WaveNetConfig) -> dict[str, str]:
    """Each input and output of the graph: shape, type and meaning (B is the batch, free; the rest are fixed)."""
    c = config
    q, r, k_in, o = c.queue_length, c.residual_channels, c.input_kernel_size, c.output_channels
    what = {
        "queues": f"(B, {q}, {r}) float32: every layer's ring of past inputs (queue_layout: offsets, sizes); "
                  "zeros at the start",
        "codes": "(B,) float32: the newest sample value in [-1, 1]" if c.scalar_input
        else f"(B,) int64: the newest code, 0..{c.classes - 1}",
        "t": "() int64: steps consumed so far, 0 at the start; the ring slots are computed from it",
        "inputs": f"(B, {k_in - 1}) int64: the last codes the input convolution saw, oldest first, -1 before the start",
        "cond": f"(B, {c.layers}, {2 * c.gate_channels}) float32: this step's per-layer gate terms from the mel frame "
                "and speaker (fastwavenet.conditioning)",
        "outputs": f"(B, {o}) float32: " + ("logits over the classes" if c.output == "softmax"
                                            else f"the {c.output} distribution's parameters (distributions.py)"),
        "queues_out": "the queues after this step: the next step's queues",
        "inputs_out": "the input taps after this step: the next step's inputs",
    }
    names = graph_names(config)
    return {name: what[name] for name in names[0] + names[1]}


def metadata(config: WaveNetConfig) -> dict[str, str]:
    """What the file's metadata_props hold: enough to drive the step from another language."""
    layout = config.queue_layout()
    inputs, outputs = graph_names(config)
    return {
        "fastwavenet.config": config.to_json(),
        "sample_rate": str(config.sample_rate),
        "output": config.output,
        "scalar_input": str(config.scalar_input).lower(),
        "classes": str(config.classes),
        "silence": json.dumps(_silence(config)),
        "queue_length": str(config.queue_length),
        "queue_offsets": json.dumps(layout.offsets.tolist()),
        "queue_sizes": json.dumps(layout.sizes.tolist()),
        "queue_dilations": json.dumps(layout.dilations.tolist()),
        "inputs": json.dumps(inputs),
        "outputs": json.dumps(outputs),
        **{f"doc.{name}": text for name, text in describe(config).items()},
    }


def _silence(config: WaveNetConfig):
    """What a new stream consumes first (generator.silence_code, which stands above the backends that import this)."""
    return 0.0 if config.scalar_input else int(mulaw.encode(np.zeros(1), config.classes)[0])


class Step(torch.nn.Module):
    """One step for every stream, without in-place updates: (queues, codes, t[, inputs][, cond]) ->
    (outputs, queues_out[, inputs_out]), shapes as in `describe`."""

    def __init__(self, config: WaveNetConfig, weights: FoldedWeights):
        super().__init__()
        c = self.config = config
        k = c.kernel_size
        self.w = weights
        self.dilated = weights.dilated_w.reshape(c.layers, k * c.residual_channels, 2 * c.gate_channels)
        # The input taps get a zero row at index `classes`, which stands for "before the start" (-1).
        self.embed = torch.cat([weights.embed, torch.zeros_like(weights.embed[:, :1])], dim=1)
        layout = c.queue_layout()
        self.sizes = torch.from_numpy(layout.sizes)
        self.offsets = torch.from_numpy(layout.offsets)
        # Tap j of layer l (j = 0 oldest) reads the input of (k - 1 - j) * d steps ago; lag <= size, so
        # t + size - lag >= 0 and Mod needs no negative operands.
        self.lags = torch.from_numpy(layout.dilations)[:, None] * torch.arange(k - 1, 0, -1)[None, :]

    def forward(self, queues, codes, t, *rest):
        c, w = self.config, self.w
        r, n, k = c.residual_channels, c.layers, c.kernel_size
        inputs = rest[0] if c.input_kernel_size > 1 else None
        cond = rest[-1] if c.conditioned else None
        if c.scalar_input:
            x = codes[:, None] * w.embed[0, 0] + w.embed[0, 1]
        else:
            x = self.embed[-1][codes]
        if inputs is not None:
            past = torch.where(inputs < 0, torch.full_like(inputs, c.classes), inputs)
            for j in range(c.input_kernel_size - 1):
                x = x + self.embed[j][past[:, j]]
        reads = self.offsets[:, None] + torch.remainder(t + self.sizes[:, None] - self.lags, self.sizes[:, None])
        writes = self.offsets + torch.remainder(t, self.sizes)  # (L,)
        taps = queues.index_select(1, reads.reshape(-1)).reshape(-1, n, (k - 1) * r)  # (B, L, (k-1) R)
        written, skip = [], None
        for layer in range(n):
            written.append(x)
            z = torch.addmm(w.dilated_b[layer], torch.cat([taps[:, layer], x], dim=1), self.dilated[layer])
            if cond is not None:
                z = z + cond[:, layer]
            x, s = gate_and_project(w, layer, z, x, last=layer == n - 1)
            skip = s if skip is None else skip + s
        h = F.relu(torch.addmm(w.head1_b, F.relu(skip), w.head1_w))
        outputs = torch.addmm(w.head2_b, h, w.head2_w)
        # Every read above came first, so writing all layers now is what the stepwise writes do.
        slots = writes[None, :, None].expand(queues.shape[0], n, r)
        queues_out = queues.scatter(1, slots, torch.stack(written, dim=1))
        if inputs is None:
            return outputs, queues_out
        return outputs, queues_out, torch.cat([inputs[:, 1:], codes[:, None]], dim=1)


def example_inputs(config: WaveNetConfig, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs of the start state for `batch` streams, in graph order."""
    c = config
    codes = (torch.zeros(batch) if c.scalar_input else torch.full((batch,), _silence(c), dtype=torch.int64))
    args = [torch.zeros(batch, c.queue_length, c.residual_channels), codes, torch.tensor(0, dtype=torch.int64)]
    if c.input_kernel_size > 1:
        args.append(torch.full((batch, c.input_kernel_size - 1), -1, dtype=torch.int64))
    if c.conditioned:
        args.append(torch.zeros(batch, c.layers, 2 * c.gate_channels))
    return tuple(args)


def step_graph(config: WaveNetConfig, weights: FoldedWeights) -> bytes:
    """The serialized ONNX model of one step (weights inside), with `metadata` and each input's and output's
    description. Needs the onnx package (`missing_onnx`)."""
    import warnings

    import onnx

    inputs, outputs = graph_names(config)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter announces its deprecation on every call
        warnings.simplefilter("ignore")
        torch.onnx.export(Step(config, weights.to("cpu")), example_inputs(config), buffer, dynamo=False,
                          opset_version=OPSET, input_names=inputs, output_names=outputs,
                          dynamic_axes={name: {0: "B"} for name in inputs + outputs if name != "t"})
    model = onnx.load_from_string(buffer.getvalue())
    docs = describe(config)
    for value in list(model.graph.input) + list(model.graph.output):
        value.doc_string = docs[value.name]
    model.doc_string = "fastwavenet: one incremental step of a WaveNet; see docs/ONNX.md"
    for key, value in metadata(config).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def export_step(model: ModelFile | str | os.PathLike, out: str | os.PathLike):
    """Write one step of `model` (a ModelFile or a model file's path) as an ONNX file at `out`."""
    reason = missing_onnx()
    if reason:
        raise FastWaveNetError(f"ONNX export: {reason}")
    if not isinstance(model, ModelFile):
        if os.path.isdir(model) or str(model).endswith(".pt"):
            raise FastWaveNetError(f"{model} is a training checkpoint: export it to a model file (.safetensors) "
                                   "first, then that file to .onnx")
        model = load_model(model)
    graph = step_graph(model.config, model.weights)
    with atomic_path(out) as tmp:
        tmp.write_bytes(graph)
