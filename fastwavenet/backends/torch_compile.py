"""`torch-compile`: the torch backend's step compiled by torch.compile (Inductor: C++ on the CPU, Triton on CUDA).

On CUDA the compiled step is captured in the torch backend's own CUDA graph (TorchBackend._replay) rather than by
mode="reduce-overhead": the step updates the state's queues in place, and torch.compile's CUDA graphs skip
functions that mutate their inputs unless those inputs have fixed addresses, which a caller's states do not."""

from __future__ import annotations

import importlib.util
import os
import shutil

import torch

from .torch_queues import TorchBackend

# Compiled variants of the step one process may hold (models x batch sizes x conditioned or not).
RECOMPILE_LIMIT = 64


class TorchCompileBackend(TorchBackend):
    name = "torch-compile"
    first_call = "compiling the step with torch.compile (a minute or more)"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        reason = super().unavailable_reason(device)
        if reason is None and device.type == "cpu" and not shutil.which(os.environ.get("CXX", "g++")):
            return "torch.compile needs a C++ compiler on the CPU (g++, or $CXX)"
        if reason is None and device.type == "cuda" and importlib.util.find_spec("triton") is None:
            return "torch.compile needs triton on CUDA"
        return reason

    def __init__(self, config, weights, device, precision="float32"):
        super().__init__(config, weights, device, precision)
        # Every instance compiles the same code object (TorchBackend._step), and dynamo caches per code object: its
        # default of 8 entries is reached by a process holding a few models or batch sizes, after which fullgraph
        # fails. Allow more (only raised). Dynamo's settings are kept per thread, a new thread reading the default
        # (an engine's scheduler failed with "Hard failure due to fullgraph=True" once the process had compiled
        # eight variants): each thread that steps raises its own.
        dynamo = torch._dynamo.config
        compiled = torch.compile(self._step, fullgraph=True)

        def step(queues, inputs, codes, t, cond=None):
            if dynamo.recompile_limit < RECOMPILE_LIMIT:
                dynamo.recompile_limit = RECOMPILE_LIMIT
            # Contiguous copies: the callers' slices of a chunk have strides that vary with the chunk's length, and
            # each new stride would compile the step again. A second batch size compiles once more, for any batch.
            return compiled(queues, inputs, codes.contiguous(), t, None if cond is None else cond.contiguous())

        self._step = step
