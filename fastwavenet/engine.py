"""`Engine`: many independent generation requests batched together (continuous batching), audio streamed out as it
is made.

One scheduler thread owns a pool of stream slots (one QueueState of `max_active` streams). Each round it steps every
runnable request together, one backend call of n steps, then hands each its chunk; requests join and leave between
rounds without stopping the others.

One request, one answer: a request's audio depends only on the model, its seed, its options and its conditioning.
Its uniforms come from its own generator (numpy's default, seeded with its seed); the numba kernel's arithmetic per
stream does not depend on the other streams of a call (kernels/cpu.py); gate terms are made per stream, per mel
frame (fastwavenet/conditioning.py). What remains is the clock: the kernels index every stream's queues by one time t
(layer l writes slot t mod n_l of its ring). Requests start at different times, so a request's rings are laid out
for the clock it was last stepped under, and rotated once, when it runs again under another: the value of time tau
sits at slot (tau + shift) mod n_l, for every layer, which is np.roll of each ring by the shift.

Round length: n steps, chosen so that a round takes about `round_seconds` at the measured rate (a new request waits
at most about one round for its first audio); codes never depend on n.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import distributions
from .backends import full_fp32
from .conditioning import Conditioning, StreamConditioning
from .errors import FastWaveNetError
from .generator import Generator, check_seed, decode, encode, silence_code
from .sampling import Sampling
from .state import QueueState


class EngineFull(FastWaveNetError):
    """The engine's waiting queue is full: try again later."""


class EngineClosed(FastWaveNetError):
    """The engine is shutting down or shut down."""


class Cancelled(FastWaveNetError):
    """The request was cancelled (by its owner, or by an engine shutting down)."""


@dataclass
class _Saved:
    """Where a request stands between rounds."""

    t: int = 0              # the request's own steps consumed (its time, for its conditioning)
    layout_clock: int = 0   # the engine clock its rings are laid out for


class Request:
    """A handle on one submitted request: iterate it (plainly or with `async for`) for its audio chunks, 1-D float32
    arrays in [-1, 1] at the model's rate, as they are made; `cancel()` it; read its `progress`. A streaming vocoding
    request takes its mel frames by `feed(frames)` and `close()`. Leaving a loop over it early (break, an exception)
    cancels it, so an abandoned request never holds a slot."""

    _ids = itertools.count()

    def __init__(self, engine: "Engine", end: int | None, rng: np.random.Generator, sampling: Sampling,
                 cond: StreamConditioning | None, prime: np.ndarray | None):
        self.id = next(self._ids)
        self._engine = engine
        self._end = end                      # the request's final time; None: a streaming mel's end, not known yet
        self._rng, self.sampling, self._cond, self._prime = rng, sampling, cond, prime
        self._pos = _Saved()
        self._cv = threading.Condition()
        self._chunks: collections.deque = collections.deque()
        self._buffered = 0
        self._async_waiters: list = []
        self.made = 0                         # samples handed out so far
        self.status = "waiting"               # waiting, running, done, cancelled, failed
        self.error: BaseException | None = None
        self._cancel = False
        self.submitted = time.monotonic()
        self.first_audio: float | None = None  # seconds from submission to the first chunk

    # ---- what the owner sees --------------------------------------------------------------------------------------
    @property
    def total(self) -> int | None:
        """Samples this request will make (None while a streaming mel is open)."""
        end = self._end
        if end is None and self._cond is not None and self._cond.closed:
            end = self._cond.covered
        return None if end is None else max(0, end - self._start_t)

    @property
    def progress(self) -> tuple[int, int | None]:
        """(samples made, samples in all or None if not known yet)."""
        return self.made, self.total

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")

    def cancel(self):
        """Stop this request: it leaves the engine before its next round; iteration ends with `Cancelled`."""
        self._cancel = True
        self._engine._wake()

    def feed(self, frames):
        """Append mel frames (n_mels, f) to a streaming vocoding request."""
        if self._cond is None or not self._engine.generator.config.n_mels:
            raise FastWaveNetError("this request takes no mel frames")
        self._cond.feed(frames)
        self._engine._wake()

    def close(self):
        """No more mel frames: the request makes audio up to the end of those it has."""
        if self._cond is not None and not self._cond.closed:
            self._cond.close()
            self._engine._wake()

    def __iter__(self):
        complete = False
        try:
            while True:
                with self._cv:
                    while not self._chunks and not self.finished:
                        self._cv.wait()
                    chunk = self._take()
                if chunk is None:
                    complete = True
                    self._raise_if_failed()
                    return
                self._engine._wake()  # (never with self._cv held: the engine takes its lock first, then ours)
                yield chunk
        finally:
            if not complete:
                self.cancel()  # the loop was left early (break, an exception): nobody will read the rest

    def __aiter__(self):
        return self._aiter()

    async def _aiter(self):
        loop = asyncio.get_running_loop()
        complete = False
        try:
            while True:
                with self._cv:
                    chunk = self._take()
                    waiter = None
                    if chunk is None and not self.finished:
                        waiter = loop.create_future()
                        self._async_waiters.append((loop, waiter))
                if chunk is not None:
                    self._engine._wake()
                    yield chunk
                elif waiter is None:
                    complete = True
                    self._raise_if_failed()
                    return
                else:
                    await waiter
        finally:
            if not complete:
                self.cancel()

    def result(self) -> np.ndarray:
        """Wait for the whole audio: (samples,) float32."""
        chunks = list(self)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    # ---- the engine's side ----------------------------------------------------------------------------------------
    @property
    def _start_t(self) -> int:
        return 0 if self._prime is None else len(self._prime) - 1

    def _take(self):
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        return chunk

    def _raise_if_failed(self):
        if self.status == "cancelled":
            raise Cancelled(f"request {self.id} was cancelled")
        if self.status == "failed":
            raise self.error

    def _notify(self):
        waiters, self._async_waiters = self._async_waiters, []
        self._cv.notify_all()
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(lambda w=waiter: w.done() or w.set_result(None))

    def _put(self, chunk: np.ndarray):
        with self._cv:
            if self.first_audio is None:
                self.first_audio = time.monotonic() - self.submitted
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            self.made += len(chunk)
            self._notify()

    def _finish(self, status: str, error: BaseException | None = None):
        with self._cv:
            if self.finished:
                return
            self.status, self.error = status, error
            self._notify()

    def _runnable(self, n: int) -> bool:
        if self._buffered >= self._engine.max_buffered:
            return False  # the owner is not reading: wait, so memory stays bounded
        cond = self._cond
        if cond is None or cond.covered is None or cond.closed:
            return True
        return cond.covered - self._pos.t >= n


class Engine:
    """Generates for many independent requests at once, with one Generator.

    >>> engine = Engine("model.safetensors", max_active=64)
    >>> request = engine.submit(seconds=2.0, seed=1, sampling=Sampling(temperature=0.9))
    >>> for chunk in request:            # or: async for chunk in request
    ...     play(chunk)
    >>> engine.close()

    max_active: requests generated at once (the pool's slots); max_waiting: requests queued beyond those, past which
    `submit` raises EngineFull at once; max_buffered_seconds: audio a request may hold unread before it pauses;
    round_seconds: about how long one round of steps takes (time to first audio is about one to two rounds).
    backend "auto" on CUDA is chosen once, by a trial at max_active streams (`backends.choose_by_trial`): every
    request runs on that backend, alone or beside others.
    """

    def __init__(self, model=None, backend: str = "auto", device: str = "cpu", max_active: int = 64,
                 max_waiting: int = 256, max_buffered_seconds: float = 10.0, round_seconds: float = 0.05,
                 warm_up: bool = True):
        for name, value in (("max_active", max_active), ("max_waiting", max_waiting)):
            if not isinstance(value, int) or value < (1 if name == "max_active" else 0):
                raise FastWaveNetError(f"{name} must be a {'positive' if name == 'max_active' else 'non-negative'} "
                                       f"integer, got {value!r}")
        if not (isinstance(round_seconds, (int, float)) and 0 < round_seconds <= 10):
            raise FastWaveNetError(f"round_seconds must be in (0, 10], got {round_seconds!r}")
        generator = model if isinstance(model, Generator) else Generator(model, backend, device,
                                                                         expected_batch=max_active)
        self.generator = generator
        self.config = generator.config
        self.max_active, self.max_waiting, self.round_seconds = max_active, max_waiting, round_seconds
        self.max_buffered = max(1, int(max_buffered_seconds * self.config.sample_rate))
        self._silence = silence_code(self.config)
        self._pool = generator.new_state(max_active)
        self._layout = self.config.queue_layout()
        self._serving: list[Request] = []   # slot i holds _serving[i]
        self._waiting: collections.deque[Request] = collections.deque()
        self._admitting: list[Request] = []   # taken from _waiting, being given slots
        self._lock = threading.Condition()
        self._closing = False
        self._clock = 0
        self._rates: dict[int, float] = {}  # samples per second over all streams, smoothed, by streams per round
        # Counters for /metrics and `stats()`.
        self.samples_total = 0
        self._last_rate = 0.0
        self.finished_total = collections.Counter()
        self.first_audio_recent: collections.deque = collections.deque(maxlen=1000)
        if warm_up:  # with the rule requests get where they name none: the model file's default
            generator.warm_up(generator.sampling, prime=True)
        self._thread = threading.Thread(target=self._run, name="fastwavenet-engine", daemon=True)
        self._thread.start()

    # ---- the public side ------------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def submit(self, seconds: float | None = None, samples: int | None = None, seed: int | None = None,
               sampling: Sampling | None = None, speaker: int | None = None, prime=None, mel=None,
               stream_mel: bool = False) -> Request:
        """Queue a request and return its handle. Every argument is checked here: a bad one raises
        FastWaveNetError at once, and a full queue raises EngineFull.

        seconds / samples: how much to make (a vocoder, by default, makes what its mel covers);
        seed: a non-negative integer (None: fresh entropy); sampling: the rule (None: the model's default);
        speaker: for speaker models;
        prime: audio (float array at the model's rate) or codes (integer array) to continue from;
        mel: (n_mels, frames) log-mel frames; stream_mel: more frames will come by `feed`, then `close`."""
        gen, config = self.generator, self.config
        sampling = gen.sampling if sampling is None else sampling
        if not isinstance(sampling, Sampling):
            raise FastWaveNetError("sampling must be a fastwavenet.Sampling")
        distributions.check_rules(config, [sampling])
        seed = check_seed(seed)
        prime_codes = None if prime is None else self._prime_codes(prime)
        cond = None
        if config.conditioned or mel is not None or speaker is not None or stream_mel:
            cond = StreamConditioning(config, gen.model.weights, gen.device, mel, speaker, streaming=stream_mel)
        start = 0 if prime_codes is None else len(prime_codes) - 1
        if config.n_mels and seconds is None and samples is None:
            end = None if stream_mel else cond.covered
            if end is not None and end - start < 1:
                raise FastWaveNetError(f"the prime ({start + 1} samples) is as long as the mel spectrogram: "
                                       f"nothing is left to vocode")
        else:
            end = start + gen._length(seconds, samples)
            if cond is not None and cond.covered is not None and not stream_mel and end > cond.covered:
                raise FastWaveNetError(f"the mel spectrogram covers {cond.covered} samples; {end} asked for")
        if prime_codes is not None and cond is not None and cond.covered is not None and cond.covered < start:
            raise FastWaveNetError("the mel frames given must cover the prime")
        request = Request(self, end, np.random.default_rng(seed), sampling, cond, prime_codes)
        with self._lock:
            if self._closing:
                raise EngineClosed("the engine is shut down")
            if len(self._serving) + len(self._admitting) + len(self._waiting) >= self.max_active + self.max_waiting:
                raise EngineFull(f"the engine is full: {len(self._serving)} requests running and "
                                 f"{len(self._waiting)} waiting (max_waiting {self.max_waiting})")
            self._waiting.append(request)
            self._lock.notify_all()
        return request

    def stats(self) -> dict:
        """Counts and rates for monitoring."""
        with self._lock:
            ttfa = sorted(self.first_audio_recent)
            pick = (lambda q: ttfa[min(len(ttfa) - 1, int(q * len(ttfa)))] if ttfa else None)  # noqa: E731
            return dict(active=len(self._serving), waiting=len(self._waiting), samples_total=self.samples_total,
                        samples_per_second=self._last_rate, first_audio_p50=pick(0.5), first_audio_p99=pick(0.99),
                        finished=dict(self.finished_total))

    def close(self, cancel: bool = False, timeout: float | None = None):
        """Stop taking requests; finish those submitted (or cancel them with `cancel`, or once `timeout` seconds
        have passed), then stop the scheduler."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if cancel:
            self._cancel_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._cancel_all()
            self._thread.join()

    def _cancel_all(self):
        with self._lock:
            for r in itertools.chain(self._serving, self._waiting):
                r._cancel = True
            self._lock.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(cancel=exc[0] is not None)

    # ---- the scheduler --------------------------------------------------------------------------------------------
    def _wake(self):
        with self._lock:
            self._lock.notify_all()

    def _prime_codes(self, prime) -> np.ndarray:
        arr = np.asarray(prime)
        if arr.ndim != 1 or arr.size == 0:
            raise FastWaveNetError("prime must be a non-empty 1-D array of audio or codes")
        if np.issubdtype(arr.dtype, np.integer):
            if self.config.scalar_input:
                raise FastWaveNetError("this model reads sample values: prime it with audio, not codes")
            try:
                return self.generator._codes(arr, 1)[0].numpy()  # the Generator's own check of the range
            except FastWaveNetError as exc:
                raise FastWaveNetError(f"prime {exc}") from None
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise FastWaveNetError("prime audio must be finite floats")
        return encode(arr, self.config)

    def _run(self):
        """The scheduler thread. Should anything escape a round (a bug), every request ends with the error and the
        engine refuses new ones: nobody waits forever."""
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001
            error = EngineClosed(f"the engine stopped: {type(exc).__name__}: {exc}")
            with self._lock:
                self._closing = True
                requests = list(self._admitting) + list(self._serving) + list(self._waiting)
                self._serving.clear()
                self._waiting.clear()
            for r in requests:
                self._end(r, "failed", error)
            raise

    def _loop(self):
        while True:
            with self._lock:
                while True:
                    self._drop_finished()
                    if self._closing and not self._serving and not self._waiting:
                        return
                    admit = self._admitting = []
                    while self._waiting and len(self._serving) + len(admit) < self.max_active:
                        admit.append(self._waiting.popleft())
                    n = self._steps()
                    if admit or any(r._runnable(n) for r in self._serving):
                        break
                    self._lock.wait(0.5)
            for r in list(admit):  # _start takes each out of _admitting (the same list)
                self._start(r)
            with self._lock:
                self._admitting = []
            n = self._steps()
            runnable = [r for r in self._serving if r._runnable(n) and not r._cancel]
            if runnable:
                self._round(runnable, n)

    def _drop_finished(self):
        """Remove cancelled requests (lock held)."""
        for r in list(self._waiting):
            if r._cancel:
                self._waiting.remove(r)
                self._end(r, "cancelled")
        for r in [r for r in self._serving if r._cancel]:
            self._remove(r)
            self._end(r, "cancelled")

    def _end(self, r: Request, status: str, error: BaseException | None = None):
        r._finish(status, error)
        self.finished_total[status] += 1

    def _steps(self) -> int:
        """Steps for the next round: about round_seconds at the rate measured with as many streams (or the
        nearest count measured; a batch of one makes fewer samples per second than a batch of 64)."""
        streams = max(1, len(self._serving))
        if not self._rates:
            return 16
        nearest = min(self._rates, key=lambda a: (abs(a - streams), a))
        rate = self._rates[nearest] * min(1.0, streams / nearest)
        return int(min(4096, max(4, rate * self.round_seconds / streams)))

    def _swap(self, i: int, j: int):
        if i == j:
            return
        pool = self._pool
        for tensor in (pool.queues, pool.inputs, pool.last):
            row = tensor[i].clone()
            tensor[i] = tensor[j]
            tensor[j] = row
        s = self._serving
        s[i], s[j] = s[j], s[i]

    def _remove(self, r: Request):
        i = self._serving.index(r)
        self._swap(i, len(self._serving) - 1)
        self._serving.pop()

    def _start(self, r: Request):
        """Give a request a slot: its prime stepped through on a state of its own, then copied in."""
        if r._cancel:
            self._end(r, "cancelled")
            return
        gen, pool = self.generator, self._pool
        slot = len(self._serving)
        try:
            if r._prime is not None:
                state = gen.new_state(1)
                conditioning = None if r._cond is None else Conditioning([r._cond])
                gen.prime(state, torch.from_numpy(r._prime).reshape(1, -1), conditioning)
                pool.queues[slot] = state.queues[0].to(pool.queues.device)
                pool.inputs[slot] = state.inputs[0].to(pool.inputs.device)
                pool.last[slot] = state.last[0].to(pool.last.device)
                r._pos = _Saved(t=state.t, layout_clock=state.t)
            else:
                self._slot_state(slot).reset(self._silence)
                r._pos = _Saved(t=0, layout_clock=self._clock)  # empty rings look the same under any clock
        except Exception as exc:  # noqa: BLE001 - the request fails, the engine goes on
            self._end(r, "failed", exc if isinstance(exc, FastWaveNetError) else FastWaveNetError(str(exc)))
            return
        r.status = "running"
        with self._lock:
            # Moved from _admitting to _serving in one step: counted in both, a request would make `submit` see
            # the engine full while it is not (a spurious EngineFull, a 503 from the server).
            if r in self._admitting:
                self._admitting.remove(r)
            self._serving.append(r)

    def _slot_state(self, slot: int) -> QueueState:
        pool = self._pool
        return QueueState(pool.queues[slot:slot + 1], pool.inputs[slot:slot + 1], pool.last[slot:slot + 1])

    def _rotate(self, slot: int, shift: int):
        """Lay slot's rings out for a clock `shift` steps later than the one they were written under."""
        q = self._pool.queues[slot]
        for off, size in zip(self._layout.offsets, self._layout.sizes):
            s = shift % int(size)
            if s:
                q[off:off + size] = torch.roll(q[off:off + size], s, dims=0)

    def _round(self, runnable: list[Request], n: int):
        # Runnable requests first, in the pool's leading slots.
        for i, r in enumerate(runnable):
            self._swap(i, self._serving.index(r))
        a, c, pool = len(runnable), self.config, self._pool
        per_sample = distributions.uniform_shape(c)
        u = np.empty((n, a) + per_sample, np.float32)
        cond = None
        if c.conditioned:
            cond = torch.empty(a, n, c.layers, 2 * c.gate_channels, device=self.generator.device)
        try:
            for i, r in enumerate(runnable):
                if r._pos.layout_clock != self._clock:
                    self._rotate(i, self._clock - r._pos.layout_clock)
                    r._pos.layout_clock = self._clock
                u[:, i] = r._rng.random((n,) + per_sample, dtype=np.float32)
                if cond is not None:
                    r._cond.terms(r._pos.t, cond[i], pad=True)
            view = QueueState(pool.queues[:a], pool.inputs[:a], pool.last[:a], self._clock)
            started = time.perf_counter()
            with full_fp32(self.generator.device):
                codes = self.generator.backend.generate(view, n, u, [r.sampling for r in runnable], cond)
            codes = codes.cpu().numpy()
            elapsed = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - these requests fail, the engine goes on
            error = exc if isinstance(exc, FastWaveNetError) else FastWaveNetError(f"generation failed: {exc}")
            with self._lock:
                for r in runnable:
                    self._remove(r)
                    self._end(r, "failed", error)
            return
        rate = a * n / max(elapsed, 1e-9)
        self._rates[a] = 0.7 * self._rates[a] + 0.3 * rate if a in self._rates else rate
        self._last_rate = self._rates[a]
        self._clock += n
        audio = decode(codes, c)
        done = []
        for i, r in enumerate(runnable):
            r._pos.layout_clock = self._clock
            end = r._end if r._end is not None else (r._cond.covered if r._cond.closed else None)
            keep = n if end is None else min(n, end - r._pos.t)
            r._pos.t += n
            if r._cond is not None:
                r._cond.forget_before(r._pos.t)
            if keep > 0:
                r._put(audio[i, :keep])
                if r.first_audio is not None and r.made == keep:
                    self.first_audio_recent.append(r.first_audio)
            self.samples_total += max(keep, 0)
            if end is not None and r._pos.t >= end:
                r._end = end
                done.append(r)
        with self._lock:
            for r in done:
                self._remove(r)
                self._end(r, "done")
