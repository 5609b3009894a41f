"""Generation state, owned by the caller: what one backend advances, step by step, for B streams; and `StatePool`,
the slots of one state that the serving engine gives to requests.

Every state kind offers the same row operations, so that whoever keeps streams in a state (the engine) never
reaches into its tensors:
    batch, t, copy(), reset(silence)      the whole state
    clear_row(i, silence)                 stream i starts afresh (nothing before it, silence to consume first)
    load_row(i, other, j=0)               stream i takes stream j of another state of the same kind
    swap_rows(i, j)                       streams i and j trade places
    head(n) / store_head(view)            the first n streams as a state of their own, and back after a step
    relayout_row(i, shift)                stream i was laid out for a clock `shift` steps earlier than t
    check(config, device)                 a one-line error unless this is a state of that model's on that device
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import WaveNetConfig
from .errors import FastWaveNetError


def input_dtype(config: WaveNetConfig) -> torch.dtype:
    """What a stream consumes and generates: int64 class codes, or float32 sample values for scalar input."""
    return torch.float32 if config.scalar_input else torch.int64


def _resolved(device: torch.device) -> torch.device:
    """A bare `cuda` as the GPU the kernels launch on: the current one."""
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" and device.index is None \
        else device


def _check_tensor(name: str, tensor, shape: tuple, dtype: torch.dtype, device: torch.device):
    """A state's array as this model's kernels read it, or a one-line error: they index it by the model's shape, so a
    state of another model, or an array a caller replaced, would be read out of bounds. device: `_resolved`."""
    if not isinstance(tensor, torch.Tensor):
        raise FastWaveNetError(f"state.{name} must be a torch tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != shape or tensor.dtype != dtype or tensor.device.type != device.type or (
            device.type == "cuda" and tensor.device.index != device.index):
        raise FastWaveNetError(f"state.{name} is {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}; this "
                               f"model's is {shape} {dtype} on {device}: make states with its new_state")


def _values(tensor: torch.Tensor) -> list:
    """A tensor's values, or its least and greatest (NaN if any is), to judge a range by (a list: quicker for a few)."""
    if tensor.numel() <= 64:
        return tensor.flatten().tolist()
    return [v.item() for v in torch.aminmax(tensor)]


def _check_clock_and_last(state, config: WaveNetConfig, device: torch.device):
    """`t` a step count, `last` (B,) codes of this model (sample values in [-1, 1] for scalar input): a code past the
    classes would index past the input table."""
    if isinstance(state.t, bool) or not isinstance(state.t, int) or state.t < 0:
        raise FastWaveNetError(f"state.t must be a step count (an int >= 0), got {state.t!r}")
    last = state.last
    if not isinstance(last, torch.Tensor) or last.ndim != 1:
        raise FastWaveNetError(f"state.last must be a (batch,) tensor, got {getattr(last, 'shape', type(last))}")
    _check_tensor("last", last, (len(last),), input_dtype(config), device)
    if not last.numel():
        return
    if config.scalar_input:
        if not all(-1 <= v <= 1 for v in _values(last)):  # (NaN fails)
            raise FastWaveNetError("state.last must hold sample values in [-1, 1]")
    elif not all(0 <= v < config.classes for v in _values(last)):
        raise FastWaveNetError(f"state.last must hold codes in [0, {config.classes - 1}]")


def _swap(tensor: torch.Tensor, i: int, j: int):
    row = tensor[i].clone()
    tensor[i] = tensor[j]
    tensor[j] = row


@dataclass
class QueueState:
    """Per-stream generation state of the queue backends (the caller owns it; several may share one Generator).

    queues: (B, queue_length, R) float32, layer l's ring of (k - 1) * d_l past inputs at its offset;
    inputs: (B, k_in - 1) int64, the last codes seen by the input convolution, oldest first, -1 before the start;
    last:   (B,) int64, the newest code not yet consumed (float32, the newest sample value, for scalar input);
    t:      steps consumed so far (the same for every stream); the kernels index every stream's rings by it.
    """

    queues: torch.Tensor
    inputs: torch.Tensor
    last: torch.Tensor
    t: int = 0
    layout: tuple | None = None  # ((offset, size), ...) per layer, for relayout_row; set by `new`

    @classmethod
    def new(cls, config: WaveNetConfig, batch: int, silence, device: torch.device) -> "QueueState":
        """The state of `batch` streams before their first step: empty rings, the input taps before the start,
        silence as the first code to consume."""
        layout = config.queue_layout()
        return cls(queues=torch.zeros(batch, config.queue_length, config.residual_channels, device=device),
                   inputs=torch.full((batch, config.input_kernel_size - 1), -1, dtype=torch.int64, device=device),
                   last=torch.full((batch,), silence, dtype=input_dtype(config), device=device),
                   layout=tuple(zip(layout.offsets.tolist(), layout.sizes.tolist())))

    @property
    def batch(self) -> int:
        return self.last.shape[0]

    def copy(self) -> "QueueState":
        return QueueState(self.queues.clone(), self.inputs.clone(), self.last.clone(), self.t, self.layout)

    def reset(self, silence):
        self.queues.zero_()
        self.inputs.fill_(-1)
        self.last.fill_(silence)
        self.t = 0

    def clear_row(self, i: int, silence):
        self.queues[i] = 0
        self.inputs[i] = -1
        self.last[i] = silence

    def load_row(self, i: int, other: "QueueState", j: int = 0):
        """Stream i takes stream j of `other`, its rings laid out for this state's clock."""
        self.queues[i] = other.queues[j].to(self.queues.device)
        self.inputs[i] = other.inputs[j].to(self.inputs.device)
        self.last[i] = other.last[j].to(self.last.device)
        self.relayout_row(i, self.t - other.t)

    def swap_rows(self, i: int, j: int):
        if i != j:
            for tensor in (self.queues, self.inputs, self.last):
                _swap(tensor, i, j)

    def head(self, n: int) -> "QueueState":
        """The first n streams, sharing memory with this state: a step on it advances them here."""
        return QueueState(self.queues[:n], self.inputs[:n], self.last[:n], self.t, self.layout)

    def store_head(self, view: "QueueState"):
        """After a step on head(n): nothing to copy back (shared memory); the clock is the view's."""
        self.t = view.t

    def check(self, config: WaveNetConfig, device: torch.device):
        device = _resolved(device)
        _check_clock_and_last(self, config, device)
        b = self.batch
        _check_tensor("queues", self.queues, (b, config.queue_length, config.residual_channels), torch.float32, device)
        _check_tensor("inputs", self.inputs, (b, config.input_kernel_size - 1), torch.int64, device)
        # the input taps' past codes index the input table too (-1: before the start)
        if self.inputs.numel() and not config.scalar_input and not all(-1 <= v < config.classes
                                                                        for v in _values(self.inputs)):
            raise FastWaveNetError(f"state.inputs must hold codes in [0, {config.classes - 1}], or -1 before the "
                                   f"start")

    def relayout_row(self, i: int, shift: int):
        """Stream i's rings were written under a clock `shift` steps earlier than this state's: the value of time
        tau sits at slot (tau + shift) mod n_l of layer l's ring, so each ring rolls by the shift."""
        if self.layout is None:
            raise ValueError("this QueueState has no layout (make it with QueueState.new)")
        q = self.queues[i]
        for off, size in self.layout:
            s = shift % size
            if s:
                q[off:off + size] = torch.roll(q[off:off + size], s, dims=0)


@dataclass
class HistoryState:
    """State of the `naive` backend: the last receptive-field codes (or sample values) of each stream,
    (B, W <= receptive_field), newest last; `valid` (B, W) bool, False where a stream had not started yet (a stream
    that joined a batch later than the others); for conditioned models their gate terms, (B, L, 2G, W), else None."""

    history: torch.Tensor
    valid: torch.Tensor
    last: torch.Tensor
    cond: torch.Tensor | None
    t: int = 0

    @classmethod
    def new(cls, config: WaveNetConfig, batch: int, silence, device: torch.device) -> "HistoryState":
        return cls(history=torch.zeros(batch, 0, dtype=input_dtype(config), device=device),
                   valid=torch.zeros(batch, 0, dtype=torch.bool, device=device),
                   last=torch.full((batch,), silence, dtype=input_dtype(config), device=device),
                   cond=torch.zeros(batch, config.layers, 2 * config.gate_channels, 0, device=device)
                   if config.conditioned else None)

    @property
    def batch(self) -> int:
        return self.last.shape[0]

    @property
    def width(self) -> int:
        return self.history.shape[1]

    def copy(self) -> "HistoryState":
        return HistoryState(self.history.clone(), self.valid.clone(), self.last.clone(),
                            None if self.cond is None else self.cond.clone(), self.t)

    def reset(self, silence):
        self.history = self.history[:, :0]
        self.valid = self.valid[:, :0]
        if self.cond is not None:
            self.cond = self.cond[..., :0]
        self.last.fill_(silence)
        self.t = 0

    def append(self, codes: torch.Tensor, cond: torch.Tensor | None, keep: int):
        """Consume one step: codes (B,), cond (B, L, 2G) or None; keep the newest `keep` columns."""
        self.history = torch.cat([self.history, codes[:, None]], dim=1)[:, -keep:]
        started = torch.ones(self.batch, 1, dtype=torch.bool, device=self.valid.device)
        self.valid = torch.cat([self.valid, started], dim=1)[:, -keep:]
        if self.cond is not None:
            self.cond = torch.cat([self.cond, cond.unsqueeze(3)], dim=3)[..., -keep:]
        self.t += 1

    def _widen(self, width: int):
        """Pad every stream on the left (older than anything held) to `width` columns, not valid there."""
        pad = width - self.width
        if pad > 0:
            b = self.batch
            self.history = torch.cat([self.history.new_zeros(b, pad), self.history], dim=1)
            self.valid = torch.cat([self.valid.new_zeros(b, pad), self.valid], dim=1)
            if self.cond is not None:
                self.cond = torch.cat([self.cond.new_zeros(*self.cond.shape[:3], pad), self.cond], dim=3)

    def clear_row(self, i: int, silence):
        self.history[i] = 0
        self.valid[i] = False
        if self.cond is not None:
            self.cond[i] = 0
        self.last[i] = silence

    def load_row(self, i: int, other: "HistoryState", j: int = 0):
        self._widen(other.width)
        w = other.width
        self.clear_row(i, other.last[j])
        if w:
            self.history[i, -w:] = other.history[j].to(self.history.device)
            self.valid[i, -w:] = other.valid[j].to(self.valid.device)
            if self.cond is not None:
                self.cond[i, ..., -w:] = other.cond[j].to(self.cond.device)

    def swap_rows(self, i: int, j: int):
        if i != j:
            for tensor in (self.history, self.valid, self.cond, self.last):
                if tensor is not None:
                    _swap(tensor, i, j)

    def head(self, n: int) -> "HistoryState":
        """The first n streams (a step replaces the view's tensors: `store_head` brings them back)."""
        return HistoryState(self.history[:n], self.valid[:n], self.last[:n],
                            None if self.cond is None else self.cond[:n], self.t)

    def store_head(self, view: "HistoryState"):
        n, w = view.batch, view.width
        self._widen(w)
        self.last[:n] = view.last
        self.t = view.t
        if not w:
            return
        self.history[:n, -w:] = view.history
        self.valid[:n, -w:] = view.valid
        if self.cond is not None:
            self.cond[:n, ..., -w:] = view.cond

    def check(self, config: WaveNetConfig, device: torch.device):
        device = _resolved(device)
        _check_clock_and_last(self, config, device)
        b, w = self.batch, self.history.shape[-1] if isinstance(self.history, torch.Tensor) else 0
        _check_tensor("history", self.history, (b, w), input_dtype(config), device)
        _check_tensor("valid", self.valid, (b, w), torch.bool, device)
        if config.conditioned:
            _check_tensor("cond", self.cond, (b, config.layers, 2 * config.gate_channels, w), torch.float32, device)
        elif self.cond is not None:
            raise FastWaveNetError("state.cond must be None for a model without conditioning")

    def relayout_row(self, i: int, shift: int):
        """Nothing to do: a history is indexed by each stream's own past, not by a clock."""


class StatePool:
    """`size` stream slots in one state of a backend's kind, for requests that come and go (the serving engine).

    Occupied slots are the leading ones, in the order of `owners`; a step runs on a leading run of them. The
    queue backends index every stream's rings by one clock, so a stream that sat out some steps is laid out for an
    older clock; the pool remembers which, and relays it out when it runs again."""

    def __init__(self, state, silence):
        self.state = state
        self.silence = silence
        self.owners: list = []
        self._laid_out_for: list[int] = []   # the clock each occupied slot's rings are laid out for

    @property
    def size(self) -> int:
        return self.state.batch

    @property
    def free(self) -> int:
        return self.size - len(self.owners)

    def take(self, owner, primed=None):
        """Give `owner` the next free slot: a fresh stream, or stream 0 of `primed` (a state of the same kind)."""
        if not self.free:
            raise RuntimeError("no free slot")  # the engine admits at most `size` requests: a bug if reached
        slot = len(self.owners)
        if primed is None:
            self.state.clear_row(slot, self.silence)
            self._laid_out_for.append(self.state.t)  # empty rings look the same under any clock
        else:
            self.state.load_row(slot, primed)
            self._laid_out_for.append(self.state.t)
        self.owners.append(owner)

    def release(self, owner):
        """Free owner's slot: the last occupied slot moves into it, so occupied slots stay the leading ones."""
        i = self.owners.index(owner)
        self._move(i, len(self.owners) - 1)
        self.owners.pop()
        self._laid_out_for.pop()

    def _move(self, i: int, j: int):
        if i != j:
            self.state.swap_rows(i, j)
            o, c = self.owners, self._laid_out_for
            o[i], o[j] = o[j], o[i]
            c[i], c[j] = c[j], c[i]

    def front(self, owners: list):
        """Move these owners into the leading slots, in this order, laid out for the current clock; returns the
        state of those streams (sharing memory where the kind allows) to step on."""
        for i, owner in enumerate(owners):
            self._move(i, self.owners.index(owner))
            if self._laid_out_for[i] != self.state.t:
                self.state.relayout_row(i, self.state.t - self._laid_out_for[i])
                self._laid_out_for[i] = self.state.t
        return self.state.head(len(owners))

    def store(self, view):
        """After a step on `front`'s view: its streams are laid out for the new clock."""
        self.state.store_head(view)
        for i in range(view.batch):
            self._laid_out_for[i] = self.state.t
