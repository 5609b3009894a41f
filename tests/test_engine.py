"""The serving engine: continuous batching, one request one answer, streaming mel input, cancellation, limits."""

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from fastwavenet import FastWaveNetError, Generator, Sampling, preset
from fastwavenet.conditioning import Conditioning, StreamConditioning
from fastwavenet.folded import fold
from fastwavenet.engine import Cancelled, Engine, EngineFull
from fastwavenet.modelfile import ModelFile

from helpers import random_model, vocoder_config, wait_until

numba = pytest.importorskip("numba")

VOCODER = vocoder_config(speakers=3, speaker_channels=4)

RULES = [Sampling(), Sampling(temperature=0.7), Sampling(top_k=12), Sampling(top_p=0.8, temperature=1.2),
         Sampling(argmax=True)]


@pytest.fixture(scope="module")
def tiny():
    config = preset("tiny")
    return Generator(ModelFile(config, fold(random_model(config, 1))), backend="numba")


@pytest.fixture(scope="module")
def vocoder():
    return Generator(ModelFile(VOCODER, fold(random_model(VOCODER, 2))), backend="numba")


def alone(gen, seed, samples, sampling=Sampling(), **kwargs):
    return gen.generate(samples=samples, seed=seed, sampling=sampling, **kwargs)[0]


def test_batched_stream_i_is_seed_plus_i_alone_at_any_thread_count(tiny):
    """`generate --batch N --seed S`: stream i makes what a batch of one seeded S + i makes, whatever the batch
    size, the tile a stream lands in, and numba's thread count."""
    expected = [alone(tiny, 7 + i, 700, RULES[1]) for i in range(6)]
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            got = tiny.generate(samples=700, batch=6, seed=7, sampling=RULES[1])
            assert all(np.array_equal(got[i], expected[i]) for i in range(6)), threads
    finally:
        numba.set_num_threads(before)


def test_the_scheduler_thread_keeps_its_creators_numba_thread_count(tiny):
    """numba keeps a thread count per thread, and a new thread gets numba's default: corpus ranks sharing a machine
    set theirs (`corpus._share_cores`) and then generated on every core from the engine's thread."""
    before = numba.get_num_threads()
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread: nothing to tell apart")
    seen = []
    generate = tiny.backend.generate
    tiny.backend.generate = lambda *args, **kwargs: (seen.append(numba.get_num_threads()), generate(*args, **kwargs))[1]
    try:
        numba.set_num_threads(1)
        with Engine(tiny, max_active=2, warm_up=False) as engine:
            engine.submit(samples=50, seed=0).result()
    finally:
        numba.set_num_threads(before)
        del tiny.backend.generate
    assert seen and set(seen) == {1}, seen


def test_requests_alone_or_together_are_bit_identical(tiny):
    """Nine requests with their own lengths, seeds and sampling rules, three at a time (so they join and leave at
    different clocks, their rings rotated on joining), and one primed with audio: each equals itself run alone,
    whatever the round length."""
    prime = np.sin(np.arange(300) / 7.0) * 0.5
    jobs = [dict(seed=s, samples=300 + 97 * s, sampling=RULES[s % len(RULES)]) for s in range(9)]
    jobs[4]["prime"] = prime
    expected = [alone(tiny, **job) for job in jobs]
    for round_seconds in (0.001, 0.05):
        with Engine(tiny, max_active=3, max_waiting=20, round_seconds=round_seconds) as engine:
            requests = [engine.submit(**job) for job in jobs]
            got = [r.result() for r in requests]
        for job, a, b in zip(jobs, got, expected):
            assert np.array_equal(a, b), job
        assert all(r.status == "done" and r.progress == (len(e), len(e)) for r, e in zip(requests, expected))


def test_async_iteration_and_time_to_first_audio(tiny):
    async def collect(engine, seed):
        return np.concatenate([chunk async for chunk in engine.submit(samples=900, seed=seed)])

    async def main(engine):
        return await asyncio.gather(*(collect(engine, s) for s in range(4)))

    with Engine(tiny, max_active=4) as engine:
        got = asyncio.run(main(engine))
        stats = engine.stats()
    for s in range(4):
        assert np.array_equal(got[s], alone(tiny, s, 900))
    assert stats["finished"] == {"done": 4} and stats["samples_total"] == 3600
    assert 0 < stats["first_audio_p50"] <= stats["first_audio_p99"]


def test_cancel_frees_the_slot_for_a_waiting_request(tiny):
    with Engine(tiny, max_active=1, max_waiting=1, round_seconds=0.001) as engine:
        long = engine.submit(samples=10_000_000, seed=0)
        queued = engine.submit(samples=500, seed=1)
        with pytest.raises(EngineFull, match="full"):  # refused at once, not by blocking
            engine.submit(samples=10, seed=2)
        first = next(iter(long))
        assert len(first) > 0 and queued.status == "waiting"
        long.cancel()
        assert np.array_equal(queued.result(), alone(tiny, 1, 500))
        with pytest.raises(Cancelled):
            list(long)
        assert long.status == "cancelled" and long.made < 10_000_000


def test_an_unread_request_pauses_and_memory_stays_bounded(tiny):
    """A request whose owner does not read stops being stepped once it holds max_buffered samples."""
    with Engine(tiny, max_active=2, max_buffered_seconds=0.05, round_seconds=0.001) as engine:
        request = engine.submit(samples=20_000, seed=3)
        wait_until(lambda: request.made >= engine.max_buffered)
        time.sleep(0.3)
        held = request.made
        assert engine.max_buffered <= held < engine.max_buffered + 4096
        time.sleep(0.3)
        assert request.made == held  # paused
        assert np.array_equal(request.result(), alone(tiny, 3, 20_000))


def test_close_cancels_or_drains(tiny):
    engine = Engine(tiny, max_active=1)
    running = engine.submit(samples=10_000_000, seed=0)
    waiting = engine.submit(samples=100, seed=1)
    next(iter(running))
    engine.close(cancel=True)
    assert running.status == waiting.status == "cancelled"
    with pytest.raises(FastWaveNetError, match="shut down"):
        engine.submit(samples=10)
    engine = Engine(tiny, max_active=1)
    a, b = engine.submit(samples=300, seed=0), engine.submit(samples=300, seed=1)
    engine.close()  # drains
    assert a.status == b.status == "done" and len(b.result()) == 300


@pytest.mark.parametrize("kwargs,message", [
    (dict(seconds=-1), "seconds"), (dict(samples=0), "samples"), (dict(seconds=1, samples=10), "not both"),
    (dict(samples=10, seed=-3), "seed"), (dict(samples=10, seed=1.5), "seed"), (dict(samples=10, prime=[]), "prime"),
    (dict(samples=10, prime=np.array([1, 900])), "prime codes"), (dict(samples=10, mel=np.zeros((8, 4))), "no mel"),
    (dict(samples=10, speaker=1), "no speaker"), (dict(samples=10, sampling="hot"), "Sampling"),
])
def test_bad_requests_are_refused_at_submit(tiny, kwargs, message):
    with Engine(tiny, max_active=1, warm_up=False) as engine:
        with pytest.raises(FastWaveNetError, match=message):
            engine.submit(**kwargs)


@pytest.mark.parametrize("kwargs,message", [(dict(max_active=0), "max_active"), (dict(max_waiting=-1), "max_waiting"),
                                            (dict(round_seconds=0), "round_seconds")])
def test_bad_engine_settings(tiny, kwargs, message):
    with pytest.raises(FastWaveNetError, match=message):
        Engine(tiny, warm_up=False, **kwargs)


def test_streamed_frames_give_the_terms_of_the_whole_mel(vocoder):
    """Gate terms are made frame by frame: fed in uneven pieces, they are the whole mel's, bit for bit, and the
    frames behind the stream are dropped."""
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((8, 40)).astype(np.float32)
    w, c = vocoder.model.weights, VOCODER
    whole = StreamConditioning(c, w, vocoder.device, mel, speaker=2)
    fed = StreamConditioning(c, w, vocoder.device, None, speaker=2, streaming=True)
    out_a, out_b = torch.empty(50, c.layers, 2 * c.gate_channels), torch.empty(50, c.layers, 2 * c.gate_channels)
    cuts = [0, 1, 2, 9, 10, 25, 40]
    start = 0
    for lo, hi in zip(cuts, cuts[1:]):
        fed.feed(mel[:, lo:hi])
        while start + 50 <= fed.covered:
            whole.terms(start, out_a)
            fed.terms(start, out_b)
            assert torch.equal(out_a, out_b)
            fed.forget_before(start)
            start += 50
    assert fed._frames.shape[1] <= 3 and fed.frames == 40
    with pytest.raises(FastWaveNetError, match="past it"):
        whole.terms(40 * 32 - 10, out_a)


def test_streaming_vocoding_equals_the_whole_mel_at_once(vocoder):
    """A vocoding request opened before its mel exists, fed frames as they come, makes what the whole mel makes,
    submitted to the engine or given to the Generator alone; memory for its frames stays bounded."""
    rng = np.random.default_rng(1)
    mel = rng.standard_normal((8, 60)).astype(np.float32)
    expected = alone(vocoder, 5, 60 * 32, mel=mel, speaker=1, sampling=RULES[2])
    with Engine(vocoder, max_active=2, round_seconds=0.001) as engine:
        whole = engine.submit(seed=5, mel=mel, speaker=1, sampling=RULES[2])
        streamed = engine.submit(seed=5, speaker=1, sampling=RULES[2], stream_mel=True)
        other = engine.submit(seed=9, mel=mel[:, :30], speaker=0)
        chunks = []

        def reader():
            chunks.extend(streamed)

        thread = threading.Thread(target=reader)
        thread.start()
        for lo in range(0, 60, 7):
            streamed.feed(mel[:, lo:lo + 7])
            time.sleep(0.02)
            assert streamed._job.cond._frames.shape[1] <= 7 + 4096 // 32 + 1
        assert streamed.total is None
        streamed.close()
        thread.join(60)
        assert np.array_equal(whole.result(), expected)
        assert np.array_equal(np.concatenate(chunks), expected)
        assert len(other.result()) == 30 * 32
    with pytest.raises(FastWaveNetError, match="closed"):
        streamed.feed(mel[:, :1])


def test_a_finished_request_takes_no_frames_and_hands_its_audio_out_once(vocoder, tiny):
    """feed() after cancel() took frames nobody would use, and a second result() returned an empty array."""
    with Engine(vocoder, max_active=1, round_seconds=0.001) as engine:
        streamed = engine.submit(seed=1, speaker=0, stream_mel=True)
        streamed.cancel()
        with pytest.raises(FastWaveNetError, match="cancelled: it takes no more mel frames"):
            streamed.feed(np.zeros((8, 2), np.float32))
    with Engine(tiny, max_active=1, round_seconds=0.001) as engine:
        request = engine.submit(samples=300, seed=2)
        assert len(request.result()) == 300
        with pytest.raises(FastWaveNetError, match="read already"):
            request.result()


def test_streaming_conditioning_is_the_training_models_under_teacher_forcing(vocoder):
    """1e-4 on logits: the generator's forward pass on terms from frames fed one at a time against the training
    model on the whole mel."""
    model = random_model(VOCODER, 2)
    rng = np.random.default_rng(3)
    mel = rng.standard_normal((8, 12)).astype(np.float32)
    codes = torch.randint(0, 256, (1, 12 * 32))
    with torch.no_grad():
        expected = model(codes, mel=torch.from_numpy(mel)[None], speaker=torch.tensor([2])).transpose(1, 2)
    stream = StreamConditioning(VOCODER, vocoder.model.weights, vocoder.device, None, speaker=2, streaming=True)
    for f in range(12):
        stream.feed(mel[:, f:f + 1])
    got = vocoder.forward(vocoder.new_state(1), codes, Conditioning([stream]))
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("backend", ["triton", "triton-spread", "triton-layers"])
def test_triton_requests_alone_or_together_are_bit_identical(backend):
    """The tiled Triton kernel computes each stream of a tile alone (products as fma chains per output, draws one
    stream at a time), and the spread kernel each stream by its own programs: under the engine (Triton's
    interpreter on the CPU here) a request is the same alone or beside others, mixed sampling rules (the plain
    loop) included."""
    pytest.importorskip("triton")
    if backend == "triton-spread" and not torch.cuda.is_available():
        pytest.skip("the spread kernel runs one launch a phase under the interpreter: minutes for this test")
    config = preset("tiny")
    gen = Generator(ModelFile(config, fold(random_model(config, 1))), backend=backend,
                    device="cuda" if torch.cuda.is_available() else "cpu")
    jobs = [dict(seed=s, samples=10 + 8 * s) for s in range(3)]
    expected = [alone(gen, **job) for job in jobs]
    with Engine(gen, max_active=2, round_seconds=0.001, warm_up=False) as engine:
        got = [r.result() for r in [engine.submit(**job) for job in jobs]]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_leaving_the_loop_early_cancels_the_request(tiny):
    async def first_chunk(request):
        async for chunk in request:
            return chunk

    with Engine(tiny, max_active=1, round_seconds=0.001) as engine:
        plain = engine.submit(samples=10_000_000, seed=0)
        for _ in plain:
            break
        assert wait_until(lambda: plain.status == "cancelled")
        asynchronous = engine.submit(samples=10_000_000, seed=1)
        assert len(asyncio.run(first_chunk(asynchronous))) > 0
        assert wait_until(lambda: asynchronous.status == "cancelled")
        assert len(engine.submit(samples=200, seed=2).result()) == 200  # the slot is free again


def test_a_scheduler_failure_ends_every_request_instead_of_hanging(tiny, monkeypatch):
    # The scheduler thread re-raises what escaped it, so the bug is reported as well as ending the requests.
    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append((args.thread.name, args.exc_value)))
    engine = Engine(tiny, max_active=1, warm_up=False)
    monkeypatch.setattr(engine, "_start", lambda r: (_ for _ in ()).throw(RuntimeError("boom")))
    waiting = engine.submit(samples=100, seed=0)
    with pytest.raises(FastWaveNetError, match="engine stopped: RuntimeError: boom"):
        waiting.result()
    with pytest.raises(FastWaveNetError, match="shut down"):
        engine.submit(samples=10)
    engine.close()
    assert [(name, repr(exc)) for name, exc in reported] == [("fastwavenet-engine", "RuntimeError('boom')")]


def test_warm_up_uses_the_model_files_default_sampling():
    """Requests that name no rule get the model file's default, so that is the rule the engine warms up with (a
    backend may compile per rule: the first request must not pay for it)."""
    config = preset("tiny")
    default = Sampling(temperature=1.3, top_p=0.9)
    gen = Generator(ModelFile(config, fold(random_model(config, 1)), default), backend="numba")
    seen = []
    original = gen.warm_up
    gen.warm_up = lambda sampling=Sampling(), prime=False, every_rule=False: (
        seen.append((sampling, prime, every_rule)), original(sampling, prime, every_rule))
    with Engine(gen, max_active=1):
        pass
    assert seen == [(default, True, True)]


@pytest.mark.parametrize("backend", ["naive", "torch", "numba", "numba-split", "triton", "triton-stream",
                                     "onnxruntime", "torch-compile"])
def test_every_backend_serves_requests_that_join_at_different_times(backend):
    """The engine touches a backend's state only through the pool's row operations, so every state kind serves:
    three requests (one primed) sharing two slots, joining and leaving at different clocks, each equal to itself
    alone on that backend."""
    from fastwavenet.backends import registry

    if registry()[backend].unavailable_reason(torch.device("cpu")):
        pytest.skip(f"{backend} does not run here")
    config = preset("tiny")
    gen = Generator(ModelFile(config, fold(random_model(config, 3))), backend=backend)
    prime = np.sin(np.arange(90) / 5.0) * 0.5
    lengths = [30, 12, 20] if backend.startswith("triton") else [300, 120, 200]
    expected = [alone(gen, 10 + i, n, RULES[i], prime=prime if i == 1 else None) for i, n in enumerate(lengths)]
    with Engine(gen, max_active=2, round_seconds=0.001, warm_up=False) as engine:
        requests = [engine.submit(samples=n, seed=10 + i, sampling=RULES[i], prime=prime if i == 1 else None)
                    for i, n in enumerate(lengths)]
        got = [r.result() for r in requests]
    for i in range(3):
        assert np.array_equal(got[i], expected[i]), i


def test_a_dropped_handle_frees_its_slot(tiny):
    import gc

    with Engine(tiny, max_active=1, round_seconds=0.001) as engine:
        dropped = engine.submit(samples=10_000_000, seed=0)
        job = dropped._job
        del dropped
        gc.collect()
        assert wait_until(lambda: job.status == "cancelled")
        assert len(engine.submit(samples=100, seed=1).result()) == 100


def test_a_request_left_unread_loses_its_slot_after_the_stated_time(tiny):
    with Engine(tiny, max_active=1, round_seconds=0.001, max_buffered_seconds=0.01,
                max_unread_seconds=0.3) as engine:
        stalled = engine.submit(samples=10_000_000, seed=0)
        honest = engine.submit(samples=100, seed=1)  # waits for the only slot
        assert len(honest.result()) == 100
        assert stalled.status == "failed"
        with pytest.raises(FastWaveNetError, match="unread for 0.3 s"):
            stalled.result()


def test_an_event_loop_closed_under_async_for_leaves_the_scheduler_running(tiny):
    """A reader's loop that ends while its request is running (an `async for` cut by a timeout, then the loop
    closed): the engine cancels that request and goes on serving."""
    async def read_briefly(request):
        async def read():
            async for _ in request:
                pass
        try:
            await asyncio.wait_for(read(), 0.05)
        except asyncio.TimeoutError:
            pass

    with Engine(tiny, max_active=2, round_seconds=0.001, max_buffered_seconds=0.05) as engine:
        for seed in range(3):
            request = engine.submit(samples=10_000_000, seed=seed)
            loop = asyncio.new_event_loop()
            loop.run_until_complete(read_briefly(request))
            loop.close()
        assert len(engine.submit(samples=200, seed=9).result()) == 200
        assert engine.stats()["stopped_because"] is None


def test_a_request_whose_inputs_fail_fails_alone(vocoder):
    """One request's conditioning raising (here, forced) fails that request; the others in its round finish."""
    mel = np.random.default_rng(0).standard_normal((8, 20)).astype(np.float32)
    with Engine(vocoder, max_active=3, round_seconds=0.001) as engine:
        good = [engine.submit(seed=s, mel=mel, speaker=0) for s in range(2)]
        bad = engine.submit(seed=5, mel=mel, speaker=0)

        def broken(*args, **kwargs):
            raise ValueError("bad frames")
        bad._job.cond.terms = broken
        for r in good:
            assert len(r.result()) == 20 * 32
        with pytest.raises(FastWaveNetError, match="bad frames"):
            bad.result()
