"""`Engine`: many independent generation requests batched together (continuous batching), audio streamed out as it
is made.

One scheduler thread owns a pool of stream slots (`state.StatePool`: one state of `max_active` streams, of whatever
kind the backend keeps). Each round it steps every runnable request together, one batched step of n steps
(`Generator.step`), then hands each its chunk; requests join and leave between rounds without stopping the others.
The engine touches the state only through the pool (take a slot, release it, bring streams to the front), so every
backend serves, `naive` included.

One request, one answer: a request's audio depends only on the model, its seed, its options and its conditioning.
Its uniforms come from its own generator (numpy's default, seeded with its seed); the numba kernel's arithmetic per
stream does not depend on the other streams of a call (kernels/cpu.py); gate terms are made per stream, per mel
frame (fastwavenet/conditioning.py). What remains is the clock: the queue kernels index every stream's rings by
one time t, and requests start at different times; the pool keeps each slot laid out for the clock it was last
stepped under and relays it out when it runs again (`QueueState.relayout_row`).

Round length: n steps, chosen so that a round takes about `round_seconds` at the measured rate (a new request waits
at most about one round for its first audio); codes never depend on n.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
import weakref

import numpy as np
import torch

from . import distributions
from .conditioning import Conditioning, Scratch, StreamConditioning
from .errors import FastWaveNetError
from .generator import Generator, decode, encode, silence_code
from .request import GenerationRequest
from .sampling import Sampling
from .state import StatePool


class EngineFull(FastWaveNetError):
    """The engine's waiting queue is full: try again later."""


class EngineClosed(FastWaveNetError):
    """The engine is shutting down or shut down."""


class Cancelled(FastWaveNetError):
    """The request was cancelled (by its owner, or by an engine shutting down)."""


class _Job:
    """The engine's side of one request: where it stands, its uniforms, its conditioning, the audio made and not yet
    read. The engine holds jobs; owners hold `Request` handles, so a handle dropped unread frees its slot."""

    _ids = itertools.count()

    def __init__(self, engine: "Engine", end: int | None, rng: np.random.Generator, sampling: Sampling,
                 cond: StreamConditioning | None, prime: np.ndarray | None):
        self.id = next(self._ids)
        self.engine = engine
        self.end = end                       # the request's final time; None: a streaming mel's end, not known yet
        self.rng, self.sampling, self.cond, self.prime = rng, sampling, cond, prime
        self.t = 0                           # the request's own steps consumed (its time, for its conditioning)
        self.cv = threading.Condition()
        self.chunks: collections.deque = collections.deque()
        self.buffered = 0
        self.async_waiters: list = []
        self.made = 0
        self.taken = 0                        # samples the owner has read
        self.status = "waiting"               # waiting, running, done, cancelled, failed
        self.error: BaseException | None = None
        self.cancelled = False
        self.drop_reason: str | None = None   # why the engine dropped it (a stalled reader), for its error
        self.submitted = time.monotonic()
        self.last_read = self.submitted
        self.first_audio: float | None = None

    @property
    def start_t(self) -> int:
        return 0 if self.prime is None else len(self.prime) - 1

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")

    def final_time(self) -> int | None:
        if self.end is None and self.cond is not None and self.cond.closed:
            return self.cond.covered
        return self.end

    def cancel(self):
        self.cancelled = True
        self.engine._wake()

    def abandon(self):
        """The owner's handle was garbage-collected: nobody will read the rest. Only a flag (the collector may run
        this on any thread, holding any lock); the scheduler sees it within its next wait."""
        self.cancelled = True

    def take(self):
        """The next chunk, or None (cv held)."""
        if not self.chunks:
            return None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        self.taken += len(chunk)
        self.last_read = time.monotonic()
        return chunk

    def raise_if_failed(self):
        if self.status == "cancelled":
            raise Cancelled(f"request {self.id} was cancelled")
        if self.status == "failed":
            raise self.error

    def notify(self):
        """Wake the owner's readers (cv held). A reader's event loop may be closed under it (an `async for` left
        by a timeout, then the loop shut): that owner is gone, so its request is cancelled, and nothing of it reaches
        the scheduler."""
        waiters, self.async_waiters = self.async_waiters, []
        self.cv.notify_all()
        for loop, waiter in waiters:
            try:
                loop.call_soon_threadsafe(lambda w=waiter: w.done() or w.set_result(None))
            except RuntimeError:  # the loop is closed
                self.cancelled = True

    def put(self, chunk: np.ndarray):
        with self.cv:
            now = time.monotonic()
            if self.first_audio is None:
                self.first_audio = now - self.submitted
            if not self.chunks:
                self.last_read = now  # the unread clock starts when there is something to read
            self.chunks.append(chunk)
            self.buffered += len(chunk)
            self.made += len(chunk)
            self.notify()

    def finish(self, status: str, error: BaseException | None = None) -> bool:
        with self.cv:
            if self.finished:
                return False
            self.status, self.error = status, error
            self.notify()
            return True

    def runnable(self, n: int) -> bool:
        if self.buffered >= self.engine.max_buffered:
            return False  # the owner is not reading: wait, so memory stays bounded
        cond = self.cond
        if cond is None or cond.covered is None or cond.closed:
            return True
        return cond.covered - self.t >= n


def _job_field(name: str, doc: str) -> property:
    return property(lambda self: getattr(self._job, name), doc=doc)


class Request:
    """A handle on one submitted request: iterate it (plainly or with `async for`) for its audio chunks, 1-D float32
    arrays in [-1, 1] at the model's rate, as they are made; `cancel()` it; read its `progress`. A streaming vocoding
    request takes its mel frames by `feed(frames)` and `close()`. Leaving a loop over it early (break, an exception)
    cancels it, and so does dropping the handle: an abandoned request never holds a slot."""

    def __init__(self, job: _Job):
        self._job = job
        weakref.finalize(self, job.abandon)

    id = _job_field("id", "The request's number, unique in this process.")
    sampling = _job_field("sampling", "The rule its codes are drawn by (the model's default under its own fields).")
    status = _job_field("status", "waiting, running, done, cancelled or failed.")
    error = _job_field("error", "What it failed with, or None.")
    made = _job_field("made", "Samples handed out so far.")
    first_audio = _job_field("first_audio", "Seconds from submission to the first chunk (None before it).")

    @property
    def total(self) -> int | None:
        """Samples this request will make (None while a streaming mel is open)."""
        end = self._job.final_time()
        return None if end is None else max(0, end - self._job.start_t)

    @property
    def progress(self) -> tuple[int, int | None]:
        """(samples made, samples in all or None if not known yet)."""
        return self.made, self.total

    @property
    def finished(self) -> bool:
        return self._job.finished

    def cancel(self):
        """Stop this request: it leaves the engine before its next round; iteration ends with `Cancelled`."""
        self._job.cancel()

    def feed(self, frames):
        """Append mel frames (n_mels, f) to a streaming vocoding request."""
        job = self._job
        if job.cond is None or not job.engine.config.n_mels:
            raise FastWaveNetError("this request takes no mel frames")
        if (job.cancelled or job.finished) and not job.cond.closed:  # (frames it would never use; closed: cond says)
            raise FastWaveNetError(f"request {job.id} is {'cancelled' if job.cancelled else job.status}: it takes no "
                                   f"more mel frames")
        job.cond.feed(frames)
        job.engine._wake()

    def close(self):
        """No more mel frames: the request makes audio up to the end of those it has."""
        job = self._job
        if job.cond is not None and not job.cond.closed:
            job.cond.close()
            job.engine._wake()

    def __iter__(self):
        job = self._job
        complete = False
        try:
            while True:
                with job.cv:
                    while not job.chunks and not job.finished:
                        job.cv.wait()
                    chunk = job.take()
                if chunk is None:
                    complete = True
                    job.raise_if_failed()
                    return
                job.engine._wake()  # (never with job.cv held: the engine takes its lock first, then a job's)
                yield chunk
        finally:
            if not complete:
                self.cancel()  # the loop was left early (break, an exception): nobody will read the rest

    def __aiter__(self):
        return self._aiter()

    async def _aiter(self):
        job = self._job
        loop = asyncio.get_running_loop()
        complete = False
        try:
            while True:
                with job.cv:
                    chunk = job.take()
                    waiter = None
                    if chunk is None and not job.finished:
                        waiter = loop.create_future()
                        job.async_waiters.append((loop, waiter))
                if chunk is not None:
                    job.engine._wake()
                    yield chunk
                elif waiter is None:
                    complete = True
                    job.raise_if_failed()
                    return
                else:
                    await waiter
        finally:
            if not complete:
                self.cancel()

    def result(self) -> np.ndarray:
        """Wait for the whole audio: (samples,) float32. Each chunk is handed out once: after result() or an
        iteration has taken some, this is an error (it would return what is left, or nothing)."""
        if self._job.taken:
            raise FastWaveNetError(f"request {self._job.id}'s audio was read already (result() and iterating hand "
                                   f"each chunk out once)")
        chunks = list(self)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


class Engine:
    """Generates for many independent requests at once, with one Generator.

    >>> engine = Engine("model.safetensors", max_active=64)
    >>> request = engine.submit(seconds=2.0, seed=1, sampling=Sampling(temperature=0.9))
    >>> for chunk in request:            # or: async for chunk in request
    ...     play(chunk)
    >>> engine.close()

    max_active: requests generated at once (the pool's slots); max_waiting: requests queued beyond those, past which
    `submit` raises EngineFull at once; max_buffered_seconds: audio a request may hold unread before it pauses;
    max_unread_seconds: how long a paused request may go unread before it is dropped (it fails with a message
    saying so), so that an owner that stopped reading cannot hold a slot forever;
    round_seconds: about how long one round of steps takes (time to first audio is about one to two rounds).
    backend "auto" is chosen once, on CUDA (and on the CPU where max_active is below numba's thread count) by a
    trial at max_active streams (`backends.choose_by_trial`): every request runs on that backend, alone or beside
    others.
    """

    def __init__(self, model=None, backend: str = "auto", device: str = "cpu", max_active: int = 64,
                 max_waiting: int = 256, max_buffered_seconds: float = 10.0, round_seconds: float = 0.05,
                 max_unread_seconds: float = 30.0, warm_up: bool = True):
        for name, value in (("max_active", max_active), ("max_waiting", max_waiting)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "max_active" else 0):
                raise FastWaveNetError(f"{name} must be a {'positive' if name == 'max_active' else 'non-negative'} "
                                       f"integer, got {value!r}")
        for name, value, top in (("round_seconds", round_seconds, 10), ("max_buffered_seconds", max_buffered_seconds,
                                                                       3600),
                                 ("max_unread_seconds", max_unread_seconds, 86400)):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value <= top):
                raise FastWaveNetError(f"{name} must be in (0, {top}], got {value!r}")
        generator = model if isinstance(model, Generator) else Generator(model, backend, device,
                                                                         expected_batch=max_active)
        self.generator = generator
        self.config = generator.config
        self.max_active, self.max_waiting, self.round_seconds = max_active, max_waiting, round_seconds
        self.max_unread_seconds = max_unread_seconds
        self.max_buffered = max(1, int(max_buffered_seconds * self.config.sample_rate))
        self._pool = StatePool(generator.new_state(max_active), silence_code(self.config))
        self._serving = self._pool.owners   # the jobs in the pool's slots, slot i holding _serving[i]
        self._waiting: collections.deque[_Job] = collections.deque()
        self._admitting: list[_Job] = []   # taken from _waiting, being given slots
        self._lock = threading.Condition()
        self._closing = False
        self.stopped_because: str | None = None  # set if the scheduler ever stops on a bug
        self._rates: dict[int, float] = {}  # samples per second over all streams, smoothed, by streams per round
        self._terms = Scratch()  # each round's gate terms (its step is done before the next round's are made)
        # Counters for /metrics and `stats()`.
        self.samples_total = 0
        self._last_rate = 0.0
        self.finished_total = collections.Counter()
        self.first_audio_recent: collections.deque = collections.deque(maxlen=1000)
        if warm_up:  # with the rule requests get where they name none (the model file's default), and the others
            generator.warm_up(generator.sampling, prime=True, every_rule=True)
        # the scheduler thread computes as its creator would (`Backend.thread_setup`: numba's thread count)
        self._thread_setup = generator.backend.thread_setup()
        self._thread = threading.Thread(target=self._run, name="fastwavenet-engine", daemon=True)
        self._thread.start()

    # ---- the public side ------------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def submit(self, request: GenerationRequest | None = None, /, **kwargs) -> Request:
        """Queue a request and return its handle: a GenerationRequest, or its fields as keywords
        (`GenerationRequest.from_kwargs`). It is checked here against the model: a bad one raises FastWaveNetError
        at once, and a full queue raises EngineFull.

        seconds / samples: how much to make (a vocoder, by default, makes what its mel covers);
        seed: a non-negative integer (None: fresh entropy); sampling: the rule (None: the model's default; or its
        fields temperature, top_k, top_p, argmax, each over the model's default); speaker: for speaker models;
        prime: audio (float array at the model's rate) or codes (integer array) to continue from;
        mel: (n_mels, frames) log-mel frames; stream_mel: more frames will come by `feed`, then `close`."""
        if request is None:
            request = GenerationRequest.from_kwargs(**kwargs)
        elif kwargs or not isinstance(request, GenerationRequest):
            raise FastWaveNetError("submit takes a GenerationRequest, or its fields as keywords, not both")
        gen, config = self.generator, self.config
        request.check(config)
        prime_codes = None if request.prime is None else self._prime_codes(request.prime)
        cond = None
        if config.conditioned:
            cond = StreamConditioning(config, gen.model.weights, gen.device, request.mel, request.speaker,
                                      streaming=request.stream_mel)
        start = 0 if prime_codes is None else len(prime_codes) - 1
        length = request.length(config)
        if length is None:
            end = None  # a streaming mel, to its end
        elif request.samples is None and request.seconds is None:
            end = length  # a vocoder's default: all its mel covers, the prime included
            if end - start < 1:
                raise FastWaveNetError(f"the prime ({start + 1} samples) is as long as the mel spectrogram: "
                                       f"nothing is left to vocode")
        else:
            end = start + length
            if cond is not None and cond.covered is not None and not request.stream_mel and end > cond.covered:
                raise FastWaveNetError(f"the mel spectrogram covers {cond.covered} samples; {end} asked for")
        if prime_codes is not None and cond is not None and cond.covered is not None and cond.covered < start:
            raise FastWaveNetError("the mel frames given must cover the prime")
        sampling = request.sampling(gen.sampling)
        return self._queue(_Job(self, end, np.random.default_rng(request.seed), sampling, cond, prime_codes))

    def _queue(self, job: _Job) -> Request:
        with self._lock:
            if self._closing:
                raise EngineClosed("the engine is shut down" if self.stopped_because is None else
                                   f"the engine is shut down (it stopped: {self.stopped_because})")
            if len(self._serving) + len(self._admitting) + len(self._waiting) >= self.max_active + self.max_waiting:
                raise EngineFull(f"the engine is full: {len(self._serving)} requests running and "
                                 f"{len(self._waiting)} waiting (max_waiting {self.max_waiting})")
            handle = Request(job)
            self._waiting.append(job)
            self._lock.notify_all()
        return handle

    def stats(self) -> dict:
        """Counts and rates for monitoring."""
        with self._lock:
            ttfa = sorted(self.first_audio_recent)
            pick = (lambda q: ttfa[min(len(ttfa) - 1, int(q * len(ttfa)))] if ttfa else None)  # noqa: E731
            return dict(active=len(self._serving), waiting=len(self._waiting), samples_total=self.samples_total,
                        samples_per_second=self._last_rate, first_audio_p50=pick(0.5), first_audio_p99=pick(0.99),
                        finished=dict(self.finished_total), stopped_because=self.stopped_because)

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
            for job in itertools.chain(self._serving, self._waiting):
                job.cancelled = True
            self._lock.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(cancel=exc[0] is not None)

    # ---- the scheduler --------------------------------------------------------------------------------------------
    def _wake(self):
        with self._lock:
            self._lock.notify_all()

    def _prime_codes(self, prime: np.ndarray) -> np.ndarray:
        """A prime as codes: an integer array is codes already (GenerationRequest judged its shape and range), audio
        is encoded."""
        if np.issubdtype(prime.dtype, np.integer):
            return prime.astype(np.int64)
        return encode(prime, self.config)

    def _run(self):
        """The scheduler thread. Nothing a request or its owner does can end it: a request's own failure ends that
        request alone. Should anything still escape a round (a bug in the engine or a backend), it says why on every
        request, in `stats()` and on stderr, and the engine refuses new requests: nobody waits forever."""
        try:
            if self._thread_setup is not None:
                self._thread_setup()
            self._loop()
        except BaseException as exc:  # noqa: BLE001
            self.stopped_because = f"{type(exc).__name__}: {exc}"
            error = EngineClosed(f"the engine stopped: {self.stopped_because}")
            with self._lock:
                self._closing = True
                jobs = list(self._admitting) + list(self._serving) + list(self._waiting)
                self._waiting.clear()
            for job in jobs:
                self._end(job, "failed", error)
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
                    if admit or any(job.runnable(n) for job in self._serving):
                        break
                    self._lock.wait(0.5)
            for job in list(admit):  # _start takes each out of _admitting (the same list)
                self._start(job)
            with self._lock:
                self._admitting = []
            n = self._steps()
            runnable = [job for job in self._serving if job.runnable(n) and not job.cancelled]
            if runnable:
                self._round(runnable, n)

    def _drop_finished(self):
        """Remove cancelled requests, and those whose owner has not read for max_unread_seconds (lock held)."""
        now = time.monotonic()
        for job in self._serving:
            if job.buffered >= self.max_buffered and now - job.last_read > self.max_unread_seconds:
                job.drop_reason = (f"request {job.id} was dropped: its audio went unread for "
                                   f"{self.max_unread_seconds:g} s")
                job.cancelled = True
        for job in list(self._waiting):
            if job.cancelled:
                self._waiting.remove(job)
                self._end(job, "cancelled")
        for job in [job for job in self._serving if job.cancelled]:
            self._pool.release(job)
            if job.drop_reason is not None:
                self._end(job, "failed", FastWaveNetError(job.drop_reason))
            else:
                self._end(job, "cancelled")

    def _end(self, job: _Job, status: str, error: BaseException | None = None):
        if job.finish(status, error):
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

    def _start(self, job: _Job):
        """Give a request a slot: its prime stepped through on a state of its own, then loaded into the slot."""
        if job.cancelled:
            self._end(job, "cancelled")
            return
        gen = self.generator
        primed = None
        try:
            if job.prime is not None:
                primed = gen.new_state(1)
                conditioning = None if job.cond is None else Conditioning([job.cond])
                gen.prime(primed, torch.from_numpy(job.prime).reshape(1, -1), conditioning)
                job.t = primed.t
        except Exception as exc:  # noqa: BLE001 - the request fails, the engine goes on
            self._end(job, "failed", exc if isinstance(exc, FastWaveNetError) else FastWaveNetError(str(exc)))
            return
        job.status = "running"
        with self._lock:
            # Moved from _admitting to a slot in one step: counted in both, a request would make `submit` see the
            # engine full while it is not (a spurious EngineFull, a 503 from the server).
            if job in self._admitting:
                self._admitting.remove(job)
            self._pool.take(job, primed)

    def _inputs(self, runnable: list[_Job], n: int):
        """Each request's uniforms (n, a, ...) and gate terms (a, n, L, 2G) for the next n steps, written in place. A
        request whose own inputs fail (its conditioning) fails alone and leaves the round; returns those that remain,
        with their inputs."""
        c = self.config
        u = np.empty((n, len(runnable)) + distributions.uniform_shape(c), np.float32)
        cond = None
        if c.conditioned:
            cond = self._terms.get((len(runnable), n, c.layers, 2 * c.gate_channels), self.generator.device)
        kept = []
        for job in runnable:
            i = len(kept)
            try:
                u[:, i] = job.rng.random(u.shape[:1] + u.shape[2:], dtype=np.float32)
                if cond is not None:
                    job.cond.terms(job.t, cond[i], pad=True)
            except Exception as exc:  # noqa: BLE001
                error = exc if isinstance(exc, FastWaveNetError) else FastWaveNetError(f"request {job.id}: {exc}")
                with self._lock:
                    self._pool.release(job)
                    self._end(job, "failed", error)
                continue
            kept.append(job)
        a = len(kept)
        return kept, u[:, :a], None if cond is None else cond[:a]

    def _round(self, runnable: list[_Job], n: int):
        runnable, u, cond = self._inputs(runnable, n)
        if not runnable:
            return
        a, c = len(runnable), self.config
        try:
            view = self._pool.front(runnable)
            started = time.perf_counter()
            codes = self.generator.step(view, n, u, [job.sampling for job in runnable], cond)
            elapsed = time.perf_counter() - started
            self._pool.store(view)
        except Exception as exc:  # noqa: BLE001 - the backend failed: these requests fail, the engine goes on
            error = exc if isinstance(exc, FastWaveNetError) else FastWaveNetError(f"generation failed: {exc}")
            with self._lock:
                for job in runnable:
                    self._pool.release(job)
                    self._end(job, "failed", error)
            return
        rate = a * n / max(elapsed, 1e-9)
        self._rates[a] = 0.7 * self._rates[a] + 0.3 * rate if a in self._rates else rate
        self._last_rate = self._rates[a]
        audio = decode(codes.numpy(), c)
        done = []
        for i, job in enumerate(runnable):
            end = job.final_time()
            keep = n if end is None else min(n, end - job.t)
            job.t += n
            if job.cond is not None:
                job.cond.forget_before(job.t)
            if keep > 0:
                job.put(audio[i, :keep])
                if job.first_audio is not None and job.made == keep:
                    self.first_audio_recent.append(job.first_audio)
            self.samples_total += max(keep, 0)
            if end is not None and job.t >= end:
                job.end = end
                done.append(job)
        with self._lock:
            for job in done:
                self._pool.release(job)
                self._end(job, "done")
