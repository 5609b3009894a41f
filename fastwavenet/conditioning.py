"""What a conditioned model generates from: per-layer gate terms made from log-mel frames and a speaker id, one
stream at a time, one mel frame at a time.

The upsampler is a transposed convolution whose kernel equals its stride (`hop_length`), or r9y9 0.1's stack of
one-channel 2-D transposed convolutions whose time kernel equals their time stride: either way frame i alone makes
samples i * hop .. (i + 1) * hop - 1. So a stream's gate terms are computed frame by frame, each frame by the same
fixed-shape products, and a frame's terms are the same numbers however the mel arrived (whole, or fed a few frames
at a time), whichever chunk asks for them, and whichever other streams run beside it. The upsampler's lookahead is
therefore zero: the samples of frame i can be made as soon as frame i is known.

r9y9's master-branch upsampler ("r9y9-convin") looks at neighbours: its input convolution spans cin_pad frames on
each side, and each of its U levels mixes a sample with one stretched unit on each side, which reaches less than
one frame further per level. The samples of frame i are therefore computed from a window of frames i - U - cin_pad
.. i + U + cin_pad alone (clipped at the mel's ends, where the mel is edge-padded as r9y9 pads it and the levels
zero-pad as they do over the whole mel), and equal the whole mel's; a streamed mel needs U + cin_pad frames of
lookahead.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np
import torch

from .backends import full_fp32
from .config import WaveNetConfig
from .errors import FastWaveNetError


def check_mel(mel, config: WaveNetConfig, what: str = "mel features") -> torch.Tensor:
    """(n_mels, frames) finite float32 frames (frames may be 0), or a one-line error."""
    try:
        mel = torch.as_tensor(np.asarray(mel, dtype=np.float32)) if not isinstance(mel, torch.Tensor) else mel
    except (TypeError, ValueError) as exc:
        raise FastWaveNetError(f"{what} are not an array of numbers: {exc}") from None
    if mel.ndim != 2 or mel.shape[0] != config.n_mels:
        raise FastWaveNetError(f"{what} must be ({config.n_mels} bands, frames), got shape {tuple(mel.shape)}")
    mel = mel.detach().to(torch.float32).cpu()
    if not torch.isfinite(mel).all():
        raise FastWaveNetError(f"{what} hold NaN or infinite values")
    return mel


# Each weights' mel projection as one matrix per device (`_mel_matrix`), by (id(mel_w), device), dropped with mel_w.
_MEL_MATRICES: dict[tuple[int, str], torch.Tensor] = {}


def _forget_mel_matrices(key: int):
    for k in [k for k in _MEL_MATRICES if k[0] == key]:
        _MEL_MATRICES.pop(k, None)


def _mel_matrix(mel_w: torch.Tensor, device: torch.device) -> torch.Tensor:
    """mel_w (L, M, 2G) as one (M, L * 2G) matrix on `device`, so that a frame's terms for every layer are one
    product (features.T @ it: the numbers of the einsum over layers it replaces, in about half the time, without
    that einsum's copy of the weights at every frame). Made once per weights and device, for every stream."""
    key = (id(mel_w), str(device))
    matrix = _MEL_MATRICES.get(key)
    if matrix is None:
        L, M, G2 = mel_w.shape
        matrix = mel_w.to(device).permute(1, 0, 2).reshape(M, L * G2).contiguous()
        if not any(k[0] == key[0] for k in _MEL_MATRICES):
            weakref.finalize(mel_w, _forget_mel_matrices, key[0])
        _MEL_MATRICES[key] = matrix
    return matrix


class StreamConditioning:
    """One stream's conditioning: mel frames and/or a speaker id. With `streaming`, frames arrive by `feed` and
    `close` says there are no more; otherwise the mel given is all there is.

    Frames whose samples are behind the stream can be dropped (`forget_before`), so a stream of any length holds a
    bounded number of frames."""

    def __init__(self, config: WaveNetConfig, weights, device: torch.device, mel=None, speaker=None,
                 streaming: bool = False):
        self.config, self.device = config, device
        self.hop = config.hop_length
        self._frames = torch.zeros(config.n_mels, 0)
        self._first_frame = 0       # index of self._frames[:, 0] in the whole mel
        self._cached = (-1, None)   # (frame index, its terms (hop, L * 2G)), for frames a call takes part of
        self._lock = threading.Lock()  # feed (a client's thread) against forget_before and terms (the engine's)
        # Frames on each side that the samples of one frame depend on (module docstring).
        self.reach = len(config.upsample_scales) + config.cin_pad if config.upsampler == "r9y9-convin" else 0
        self.closed = not streaming
        self.global_terms = None
        if config.n_mels:
            if mel is None and not streaming:
                raise FastWaveNetError("this model is a vocoder: it needs a mel spectrogram")
            self.upsample_w = weights.upsample_w.to(device)
            self.upsample_b = None if weights.upsample_b is None else weights.upsample_b.to(device)
            self.upsample_in_w = None if weights.upsample_in_w is None else weights.upsample_in_w.to(device)
            self.mel_matrix = _mel_matrix(weights.mel_w, device)
            if mel is not None:
                self._frames = check_mel(mel, config)
                if not streaming and self._frames.shape[1] == 0:
                    raise FastWaveNetError("mel features hold no frames")
        elif mel is not None or streaming:
            raise FastWaveNetError("this model takes no mel spectrogram")
        if config.speakers:
            if speaker is None:
                raise FastWaveNetError(f"this model needs a speaker id in [0, {config.speakers - 1}]")
            if not isinstance(speaker, (int, np.integer)) or not 0 <= speaker < config.speakers:
                raise FastWaveNetError(f"speaker id out of range: the model knows speakers 0..{config.speakers - 1}, "
                                       f"got {speaker!r}")
            with full_fp32(device):
                self.global_terms = torch.einsum("e,lec->lc", weights.speaker_embed[int(speaker)].to(device),
                                                 weights.speaker_w.to(device))
        elif config.global_features:
            features = None if speaker is None else np.asarray(speaker, dtype=np.float64)
            if features is None or features.shape != (config.speaker_channels,) or not np.isfinite(features).all():
                raise FastWaveNetError(f"this model takes global features: {config.speaker_channels} finite values "
                                       f"per stream (as the speaker argument), got "
                                       f"{'none' if features is None else f'shape {features.shape}'}")
            with full_fp32(device):
                self.global_terms = torch.einsum("e,lec->lc", torch.as_tensor(features, dtype=torch.float32,
                                                                              device=device),
                                                 weights.speaker_w.to(device))
        elif speaker is not None:
            raise FastWaveNetError("this model takes no global features" if isinstance(speaker, np.ndarray)
                                   else "this model takes no speaker id")

    @property
    def frames(self) -> int:
        """Mel frames received so far (all of them, dropped ones included)."""
        return self._first_frame + self._frames.shape[1]

    @property
    def covered(self) -> int | None:
        """Samples the frames received so far make (those whose frames' lookahead has arrived, while more may come);
        None for a model without mel input (no limit)."""
        if not self.config.n_mels:
            return None
        return (self.frames if self.closed else max(self.frames - self.reach, 0)) * self.hop

    def feed(self, frames):
        """Append mel frames (n_mels, f) of a streaming input."""
        if self.closed:
            raise FastWaveNetError("this input is closed: no more mel frames can be fed")
        frames = check_mel(frames, self.config)
        with self._lock:
            self._frames = torch.cat([self._frames, frames], dim=1)

    def close(self):
        self.closed = True

    def forget_before(self, sample: int):
        """Drop the frames all of whose samples come before `sample`."""
        with self._lock:
            drop = sample // self.hop - self.reach - self._first_frame
            if drop > 0:
                self._frames = self._frames[:, drop:]
                self._first_frame += drop

    def _frame_terms(self, f: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Frame f's terms (hop, L * 2G): into `out` where given (a whole frame a call asks for), else kept for the
        next call (one that takes part of the frame). Either way the same product of the same shapes, so the same
        numbers (tests/test_vocoder.py cuts frames both ways)."""
        if out is None and self._cached[0] == f:
            return self._cached[1]
        with self._lock:
            lo, hi = max(f - self.reach, 0), min(f + self.reach, self.frames - 1)
            window = self._frames[:, lo - self._first_frame:hi + 1 - self._first_frame].to(self.device)
            at_end = self.closed and hi == self.frames - 1
        with torch.no_grad(), full_fp32(self.device):
            if self.config.upsampler == "r9y9-convin":
                features = self._upsample_convin(window, f - lo, lo == 0, at_end)
            else:
                features = self._upsample(window[:, 0])
            terms = torch.mm(features.T, self.mel_matrix, out=out)
        if out is None:
            self._cached = (f, terms)
        return terms

    def _upsample_convin(self, window: torch.Tensor, i: int, at_start: bool, at_end: bool) -> torch.Tensor:
        """r9y9's ConvInUpsampleNetwork over a window of frames (M, w): the features of its frame i, (M, hop).
        Frames beyond the mel's ends are its edge frames (r9y9 pads with "replicate"); elsewhere the window's own
        edges are far enough from frame i not to reach it."""
        c = self.config
        p, f = c.cin_pad, c.freq_axis_kernel_size
        x = torch.nn.functional.pad(window[None], (p, p), mode="replicate")[0] if p else window
        # The input convolution makes one frame per frame of the window; away from the mel's ends its edge frames
        # stand in for neighbours outside the window, whose results are dropped below.
        x = torch.nn.functional.conv1d(x[None], self.upsample_in_w)  # (1, M, w)
        first_valid = 0 if at_start else p
        last_valid = x.shape[2] if at_end else x.shape[2] - p
        x = x[:, :, first_valid:last_valid]
        i -= first_valid
        x = x[None]  # (1, 1, M, frames)
        first = 0
        for scale in c.upsample_scales:
            kernel = self.upsample_w[:, first:first + 2 * scale + 1].reshape(1, 1, f, 2 * scale + 1)
            x = torch.repeat_interleave(x, scale, dim=3)  # nearest-neighbour stretch in time
            x = torch.nn.functional.conv2d(x, kernel, padding=((f - 1) // 2, scale))
            first += 2 * scale + 1
        return x[0, 0, :, i * self.hop:(i + 1) * self.hop]

    def _upsample(self, frame: torch.Tensor) -> torch.Tensor:
        """One frame (M,) -> its features at the sample rate, (M, hop)."""
        c = self.config
        if c.upsampler == "transpose":
            return torch.einsum("m,mnj->nj", frame, self.upsample_w) + self.upsample_b[:, None]
        # r9y9 0.1: (1, 1, M, 1) through each ConvTranspose2d(1, 1, (F, s), stride (1, s), padding ((F - 1) / 2,
        # 0)) and its ReLU; the mel axis keeps its size, time grows by s.
        x = frame.reshape(1, 1, -1, 1)
        first = 0
        for i, scale in enumerate(c.upsample_scales):
            kernel = self.upsample_w[:, first:first + scale].reshape(1, 1, c.freq_axis_kernel_size, scale)
            x = torch.relu(torch.nn.functional.conv_transpose2d(x, kernel, self.upsample_b[i:i + 1], stride=(1, scale),
                                                                padding=((c.freq_axis_kernel_size - 1) // 2, 0)))
            first += scale
        return x[0, 0]

    def terms(self, start: int, out: torch.Tensor, pad: bool = False):
        """Fill out (n, L, 2G) with the gate terms of steps start .. start+n-1. Steps past the mel's end are an
        error, or zeros with `pad` (for steps whose output will be thrown away)."""
        n = out.shape[0]
        if not self.config.n_mels:
            out.copy_(self.global_terms.expand(n, -1, -1))
            return
        end = min(start + n, self.covered)
        if end < start + n and not pad:
            raise FastWaveNetError(f"the mel spectrogram covers {self.covered} samples; step {start + n} is past it")
        if start < self._first_frame * self.hop:
            raise FastWaveNetError(f"step {start} is before the frames kept (from {self._first_frame * self.hop})")
        rows = out.view(n, -1) if out.is_contiguous() and n else None  # (n, L * 2G)
        i = start
        while i < end:
            f = i // self.hop
            j0 = i - f * self.hop
            m = min(self.hop - j0, end - i)
            if m == self.hop and rows is not None:  # a whole frame: its product straight into out
                self._frame_terms(f, rows[i - start:i - start + m])
            else:
                rows_of_f = self._frame_terms(f)[j0:j0 + m]
                out[i - start:i - start + m] = rows_of_f.view(m, *out.shape[1:])
            i += m
        if self._cached[0] < (end - 1) // self.hop:  # a frame behind this call's last: no call asks for it again
            self._cached = (-1, None)
        if end < start + n:
            out[max(end - start, 0):].zero_()
        if self.global_terms is not None:
            out += self.global_terms


class Conditioning:
    """Conditioning of B streams: one StreamConditioning each (streams given the same mel and speaker share one,
    computed once)."""

    def __init__(self, streams: list[StreamConditioning]):
        self.streams = streams
        self.batch = len(streams)
        covered = [s.covered for s in streams]
        self.length = None if covered[0] is None else min(covered)
        self._scratch = Scratch()  # `terms`' memory, with reuse
        self.shared = all(s is streams[0] for s in streams)  # one conditioning for every stream

    @classmethod
    def build(cls, config: WaveNetConfig, weights, device: torch.device, batch: int, mel=None, speaker=None):
        """mel: (n_mels, frames) for every stream, or (B, n_mels, frames) one each; speaker: an id, or one each
        (for a model with global features: a vector (E,) for every stream, or (B, E) one each)."""
        mels = [None] * batch
        shared_mel = True
        if mel is not None:
            arr = mel if isinstance(mel, torch.Tensor) else np.asarray(mel)
            if arr.ndim == 3:
                if arr.shape[0] not in (1, batch):
                    raise FastWaveNetError(f"mel features for {arr.shape[0]} streams, but the batch is {batch}")
                shared_mel = arr.shape[0] == 1
                mels = [arr[0]] * batch if shared_mel else list(arr)
            else:
                mels = [arr] * batch
        if config.global_features and speaker is not None:
            vectors = np.asarray(speaker, dtype=np.float64)
            if vectors.ndim not in (1, 2) or (vectors.ndim == 2 and vectors.shape[0] not in (1, batch)):
                raise FastWaveNetError(f"global features must be (channels,) or one row per stream ({batch}), got "
                                       f"shape {vectors.shape}")
            speakers = [tuple(v) for v in np.broadcast_to(vectors, (batch,) + vectors.shape[-1:])]
        elif speaker is not None and np.ndim(speaker) > 0:
            speakers = np.asarray(speaker).reshape(-1).tolist()
            if len(speakers) not in (1, batch):
                raise FastWaveNetError(f"{len(speakers)} speaker ids for a batch of {batch}")
            speakers = speakers * batch if len(speakers) == 1 else speakers
        else:
            speakers = [None if speaker is None else np.asarray(speaker).item()] * batch
        made: dict = {}
        streams = []
        for i in range(batch):
            key = (0 if shared_mel else i, speakers[i])
            if key not in made:
                made[key] = StreamConditioning(config, weights, device, mels[i], speakers[i])
            streams.append(made[key])
        return cls(streams)

    def terms(self, start: int, n: int, reuse: bool = False) -> torch.Tensor:
        """Gate terms of steps start .. start+n-1 for every stream: (B, n, L, 2G) float32. Where every stream shares
        one conditioning (one mel and speaker for the whole batch), one stream's terms expanded over the batch
        (stride 0 on its first axis: read-only, no copies); otherwise each stream's own. With `reuse`, written into
        memory kept from call to call (`Scratch`: fresh memory costs its pages' first touch, about a third of the
        product's time for r9y9's terms), valid until the next call (the Generator's use)."""
        first = self.streams[0]
        c = first.config
        shape = (1 if self.shared else self.batch, n, c.layers, 2 * c.gate_channels)
        out = self._scratch.get(shape, first.device) if reuse else torch.empty(shape, device=first.device)
        if self.shared:
            first.terms(start, out[0])
            return out.expand(self.batch, -1, -1, -1)
        done: dict = {}
        for i, s in enumerate(self.streams):
            if id(s) in done:
                out[i] = out[done[id(s)]]
            else:
                s.terms(start, out[i])
                done[id(s)] = i
        return out


class Scratch:
    """Memory for a caller's successive arrays of gate terms: one block, grown when a call asks for more, so that
    calls after the first skip fresh pages' first touch. What `get` returns is valid until the next `get`."""

    def __init__(self):
        self._block: torch.Tensor | None = None
        self._device: torch.device | None = None

    def get(self, shape: tuple, device: torch.device) -> torch.Tensor:
        """A float32 array of `shape` on `device`, its values left as they are."""
        size = math.prod(shape)
        if self._block is None or self._block.numel() < size or self._device != device:
            self._block, self._device = torch.empty(size, device=device), device
        return self._block[:size].view(shape)
