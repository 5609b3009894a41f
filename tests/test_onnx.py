"""One step as an ONNX graph (fastwavenet/onnx_step.py, docs/ONNX.md): the exported file stepped by onnxruntime gives
the training model's outputs (1e-4) for softmax, mixture+scalar and mel+speaker models; its metadata; the driver of
docs/ONNX.md; the one-line refusals without the optional packages. The `onnxruntime` and `torch-compile` backends
themselves are checked by tests/test_exactness.py and the generate-path tests of tests/test_generator.py."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fastwavenet import Generator, WaveNetConfig, preset
from fastwavenet.folded import FoldedWeights, convolve, expected_shapes, fold
from fastwavenet.modelfile import ModelFile, save_model

from helpers import random_model
from test_exactness import CONFIGS, conditioning_inputs, model_logits

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "softmax": preset("tiny"),
    "mixture+scalar": WaveNetConfig(sample_rate=8000, scalar_input=True, output="logistic_mixture", mixtures=3,
                                    input_kernel_size=1, residual_channels=6, gate_channels=8, skip_channels=8,
                                    head_channels=10, layers_per_stack=3, stacks=2),
    "mel+speaker": CONFIGS["mel+speaker"],
}


def export(config, path, seed=0):
    """Save a random model of `config` and export its step to `path` by the command line. Returns the training
    model, or for an imported kind (mixture outputs: training builds softmax models only) its folded weights."""
    from fastwavenet.cli import main

    if config.output == "softmax":
        model = random_model(config, seed)
        weights = fold(model)
    else:
        g = torch.Generator().manual_seed(seed)
        model = weights = FoldedWeights(**{name: torch.randn(shape, generator=g) * 0.3
                                           for name, shape in expected_shapes(config).items()})
    source = path.with_suffix(".safetensors")
    save_model(source, config, weights)
    assert main(["export", str(source), "-o", str(path)]) == 0
    return model


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_step_gives_the_training_models_outputs(name, tmp_path):
    config = MODELS[name]
    path = tmp_path / "step.onnx"
    model = export(config, path)
    batch, steps = 2, config.receptive_field + 9  # every ring wraps
    if config.scalar_input:
        codes = torch.rand(batch, steps, generator=torch.Generator().manual_seed(1)) * 2 - 1
    else:
        codes = torch.randint(0, config.classes, (batch, steps), generator=torch.Generator().manual_seed(1))
    mel, speaker = conditioning_inputs(config, batch, steps)
    if config.output == "softmax":
        expected = model_logits(model, codes, mel, speaker)
    else:  # the whole-sequence forward over folded weights, itself checked against r9y9's code (tests/test_r9y9.py)
        expected = convolve(model, config, codes).transpose(1, 2)
    cond = None
    if config.conditioned:
        gen = Generator(ModelFile(config, fold(model)), backend="torch")
        cond = gen.conditioning(batch, mel, speaker).terms(0, steps).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    state = {"queues": np.zeros((batch, config.queue_length, config.residual_channels), np.float32)}
    if config.input_kernel_size > 1:
        state["inputs"] = np.full((batch, config.input_kernel_size - 1), -1, np.int64)
    got = []
    for t in range(steps):
        feed = {**state, "codes": codes[:, t].numpy(), "t": np.array(t, np.int64)}
        if cond is not None:
            feed["cond"] = np.ascontiguousarray(cond[:, t])
        result = dict(zip(outputs, session.run(outputs, feed)))
        state = {key: result[key + "_out"] for key in state}
        got.append(result["outputs"])
    got = torch.from_numpy(np.stack(got, axis=1))
    assert got.shape == expected.shape == (batch, steps, config.output_channels)
    assert (got - expected).abs().max().item() <= 1e-4


def test_the_file_describes_itself(tmp_path):
    config = CONFIGS["mel+speaker"]  # input taps, conditioning
    path = tmp_path / "step.onnx"
    export(config, path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    meta = {p.key: p.value for p in model.metadata_props}
    layout = config.queue_layout()
    assert meta["sample_rate"] == "8000" and meta["output"] == "softmax" and meta["classes"] == "64"
    assert json.loads(meta["queue_offsets"]) == layout.offsets.tolist()
    assert json.loads(meta["queue_sizes"]) == layout.sizes.tolist()
    assert int(meta["queue_length"]) == config.queue_length == sum(layout.sizes)
    assert WaveNetConfig.from_json(meta["fastwavenet.config"]) == config
    assert json.loads(meta["inputs"]) == [i.name for i in model.graph.input] == ["queues", "codes", "t", "inputs",
                                                                                "cond"]
    assert json.loads(meta["outputs"]) == [o.name for o in model.graph.output] == ["outputs", "queues_out",
                                                                                  "inputs_out"]
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.input) + list(model.graph.output)}
    assert shapes["queues"] == shapes["queues_out"] == ["B", config.queue_length, 6]
    assert shapes["cond"] == ["B", config.layers, 10] and shapes["t"] == [] and shapes["outputs"] == ["B", 64]
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.doc_string and meta[f"doc.{value.name}"] == value.doc_string


def test_the_documented_driver_draws_what_the_reference_rule_draws(tmp_path):
    from fastwavenet.generator import silence_code
    from fastwavenet.sampling import Sampling, sample

    text = (ROOT / "docs" / "ONNX.md").read_text()
    program = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    driver = {}
    exec(compile(program, "docs/ONNX.md", "exec"), driver)
    config = preset("tiny")
    path = tmp_path / "step.onnx"
    model = export(config, path)
    u = np.random.default_rng(3).random(60, dtype=np.float32)
    codes = driver["generate"](str(path), u)
    inputs = torch.from_numpy(np.concatenate([[silence_code(config)], codes[:-1]]))[None]
    with torch.no_grad():
        logits = model(inputs)[0].T  # (steps, classes)
    assert np.array_equal(codes, sample(logits, torch.from_numpy(u), Sampling()).numpy())


def test_without_onnx_the_command_says_which_extra_in_one_line(tmp_path, monkeypatch, capsys):
    from fastwavenet.backends import OnnxRuntimeBackend, available_backends
    from fastwavenet.cli import main

    config = preset("tiny")
    source = tmp_path / "m.safetensors"
    save_model(source, config, fold(random_model(config)))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert main(["export", str(source), "-o", str(tmp_path / "step.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnx is not installed" in err and "fastwavenet[onnx]" in err
    assert not (tmp_path / "step.onnx").exists()
    assert "fastwavenet[onnx]" in OnnxRuntimeBackend.unavailable_reason(torch.device("cpu"))
    assert "onnxruntime" not in available_backends("cpu")
    wav = tmp_path / "x.wav"
    assert main(["generate", "--model", str(source), "--backend", "onnxruntime", "-o", str(wav), "--seconds", "0.01",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fastwavenet[onnx]" in err and not wav.exists()


def test_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    from fastwavenet.cli import main

    assert main(["export", str(tmp_path), "-o", str(tmp_path / "step.onnx")]) == 2
    assert "export it to a model file (.safetensors) first" in capsys.readouterr().err
