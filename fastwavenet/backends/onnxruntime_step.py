"""`onnxruntime`: the exported ONNX step (fastwavenet/onnx_step.py) run by ONNX Runtime, one step at a time; the
sampling stays on the host (the base class's plain loop)."""

from __future__ import annotations

import numpy as np
import torch

from ..onnx_step import graph_names, missing_onnx, step_graph
from ..state import QueueState
from .base import Backend


class OnnxRuntimeBackend(Backend):
    """One InferenceSession of the step graph, built from the folded weights when the backend is made."""

    name = "onnxruntime"
    devices = ("cpu",)
    requires = "onnxruntime"

    @classmethod
    def missing_module(cls) -> str | None:
        return missing_onnx("onnxruntime")

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the thread count the user gave torch
        # Idle threads sleep: spinning ones would take the cores that the host's sampling runs on between steps.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(step_graph(config, weights), options,
                                                    providers=["CPUExecutionProvider"])
        self.outputs = graph_names(config)[1]

    def forward(self, state: QueueState, codes: torch.Tensor, cond=None) -> torch.Tensor:
        c = self.config
        codes = codes.cpu().numpy()
        cond = None if cond is None else cond.cpu().numpy()
        queues, inputs = np.ascontiguousarray(state.queues.numpy()), np.ascontiguousarray(state.inputs.numpy())
        out = []
        for i in range(codes.shape[1]):
            feed = {"queues": queues, "codes": np.ascontiguousarray(codes[:, i]), "t": np.array(state.t, np.int64)}
            if c.input_kernel_size > 1:
                feed["inputs"] = inputs
            if cond is not None:
                feed["cond"] = np.ascontiguousarray(cond[:, i])
            results = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
            queues = results["queues_out"]
            inputs = results.get("inputs_out", inputs)
            out.append(torch.from_numpy(results["outputs"]))
            state.t += 1
        # In place: the state may be a view of a larger one (the engine's pool).
        state.queues.copy_(torch.from_numpy(queues))
        state.inputs.copy_(torch.from_numpy(inputs))
        return torch.stack(out, dim=1)
