"""The backend interface: what every backend offers the Generator, and the plain generation loop they share.

Every backend is built from a config, the folded weights (fastwavenet/folded.py) and a device, and offers:
    new_state(batch, silence)              the state of `batch` new streams (QueueState; HistoryState for naive)
    forward(state, codes, cond)            codes (B, T) int64 -> logits (B, T, O) float32, advancing the state
    generate(state, n, u, sampling, cond)  n codes per stream from uniforms u (n, B), consuming state.last first;
                                           sampling: one Sampling, or one per stream
cond is None for plain models, else the per-layer gate terms of those steps, (B, T or n, L, 2G) float32.
Scalar-input models consume and generate sample values (float32) where class models have codes, their head's O
outputs are a continuous distribution's parameters (fastwavenet/distributions.py), and u is (n, B, 2).
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from dataclasses import replace

import numpy as np
import torch

from .. import distributions
from ..config import WaveNetConfig
from ..errors import FastWaveNetError
from ..folded import FoldedWeights
from ..sampling import Sampling, per_stream, sample_streams
from ..state import QueueState, input_dtype


class Backend:
    name = "?"
    devices = ("cpu",)
    state_type = QueueState  # what new_state makes and the other methods take
    requires: str | None = None  # the module this backend's kernel needs, if any beyond torch
    # What the first call does that later ones do not, said on screen by the CLI when it takes a while (None: nothing)
    first_call = None
    precisions = ("float32", "bf16", "int8")  # and w8a8 (8-bit activations too) where the backend computes it
    # Whether its products run on tensor cores (3xTF32 on CUDA): the bench holds its GPU rows to the tensor cores'
    # rate, not the float32 FMA rate
    tensor_cores = False

    def __init__(self, config: WaveNetConfig, weights: FoldedWeights, device: torch.device,
                 precision: str = "float32"):
        """weights are those it computes with: at precision bf16 or int8 the Generator has rounded the matrices
        already (folded.rounded), so every backend computes the same numbers; a backend may also store them in 16 or
        8 bits. A precision not in `precisions` (w8a8, which the numba backends alone compute) is the user's error."""
        if precision not in self.precisions:
            raise FastWaveNetError(f"backend {self.name!r} does not compute precision {precision!r}; "
                                   "numba and numba-split (CPU) do")
        self.config, self.device, self.precision = config, device, precision

    @classmethod
    def missing_module(cls) -> str | None:
        if cls.requires is not None and importlib.util.find_spec(cls.requires) is None:
            return f"{cls.requires} is not installed"
        return None

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """None if this backend can run on `device`, else why not."""
        if cls.missing_module():
            return cls.missing_module()
        if device.type not in cls.devices:
            return f"runs on {' or '.join(cls.devices)} only"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device here"
        return None

    @classmethod
    def unsupported_reason(cls, config: WaveNetConfig) -> str | None:
        """None if this backend handles models of this shape, else why not."""
        return None

    def new_state(self, batch: int, silence):
        return self.state_type.new(self.config, batch, silence, self.device)

    def splits(self, batch: int) -> bool:
        """Whether `batch` streams run as one tile split over every core (numba-split below its thread count), so
        that all cores together read each weight once a step."""
        return False

    def forward(self, state, codes: torch.Tensor, cond=None) -> torch.Tensor:
        raise NotImplementedError

    def thread_setup(self):
        """What another thread runs before it generates on this backend, so that it computes as the calling thread
        would (a function of no arguments), or None where nothing is kept per thread."""
        return None

    def warm_up(self, sampling: Sampling, teacher: bool = False, every_rule: bool = False):
        """Do what the first call of generate (and of forward, with `teacher`) would: compile kernels or load them
        from the cache, capture graphs. One step on a throwaway state of one stream. `every_rule`: also what a
        batch of other rules would (a server's): a Triton kernel is compiled apart for launches where some stream
        truncates (top-k, top-p) and for those where none does, so both are made here, not mid-stream."""
        c = self.config
        state = self.new_state(1, 0)
        cond = torch.zeros(1, 1, c.layers, 2 * c.gate_channels) if c.conditioned else None
        u = np.full((1, 1) + distributions.uniform_shape(c), 0.5, np.float32)
        self.generate(state, 1, u, sampling, cond)
        if every_rule and c.output == "softmax":  # only classes truncate
            other = replace(sampling, top_k=0, top_p=1.0) if sampling.truncates else replace(sampling, top_p=0.9)
            self.generate(state, 1, u, other, cond)
        if teacher:
            self.forward(state, state.last.reshape(1, 1), cond)

    def generate(self, state, n: int, u: np.ndarray, sampling, cond=None) -> torch.Tensor:
        """The plain loop: one step and one sample per code. Compiled backends override it."""
        samplings = per_stream(sampling, state.batch)
        u = torch.from_numpy(u).to(self.device)
        out = torch.empty(state.batch, n, dtype=input_dtype(self.config), device=self.device)
        last = state.last.to(self.device)
        for i in range(n):
            logits = self.forward(state, last.unsqueeze(1), None if cond is None else cond[:, i:i + 1])[:, 0]
            if self.config.output == "softmax":
                last = sample_streams(logits, u[i], samplings)
            else:
                last = distributions.sample(self.config, logits, u[i], samplings)
            out[:, i] = last
        state.last.copy_(last)  # in place: the state may be a view of a larger one (the engine's pool)
        return out


def resolve_device(name: str | torch.device) -> torch.device:
    """A torch.device for a name a user gave, or a one-line error: unknown names, CUDA where there is none."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FastWaveNetError(f"unknown device {name!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastWaveNetError("--device cuda asked for, but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise FastWaveNetError(f"unsupported device {name!r}; use cpu or cuda")
    return device


_PRECISION_LOCK = threading.RLock()


@contextlib.contextmanager
def full_fp32(device: torch.device):
    """On CUDA, run the block with TF32 off for cuDNN convolutions and matmuls (cuDNN allows it by default, and a
    user may allow it for matmuls), since TF32 breaks the 1e-4 agreement with the training model; the user's settings
    are restored afterwards. They are process-wide, so blocks are serialized across threads. Elsewhere nothing
    changes."""
    if device.type != "cuda":
        yield
        return
    with _PRECISION_LOCK:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                 torch.get_float32_matmul_precision())
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
            torch.set_float32_matmul_precision(saved[2])
