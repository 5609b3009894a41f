import dataclasses

import numpy as np
import pytest
import torch

from fastwavenet import FastWaveNetError, Generator, Sampling, preset
from fastwavenet.folded import fold, unfold
from fastwavenet.modelfile import ModelFile, load_model, save_model
from fastwavenet.sampling import sample

from helpers import random_model

CPU_BACKENDS = ["naive", "torch", "numba"]
# Skipped where not available; the Triton backends draw by one code (kernels/gpu.py), the others by the host's rule.
OPTIONAL_BACKENDS = ["triton", "onnxruntime", "torch-compile"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    config = preset("tiny")
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, config, fold(random_model(config, 4)))
    return path


def test_model_file_round_trip_and_unfold(tiny_file):
    loaded = load_model(tiny_file)
    model = random_model(preset("tiny"), 4)
    for name, tensor in fold(model).tensors().items():
        assert torch.equal(tensor, getattr(loaded.weights, name)), name
    codes = torch.randint(0, 256, (2, 70))
    with torch.no_grad():
        assert torch.allclose(unfold(loaded.weights, loaded.config)(codes), model(codes), atol=1e-5)


def test_sampling_rule_by_hand():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    pick = lambda u, **kw: sample(logits, torch.tensor([u]), Sampling(**kw)).item()  # noqa: E731
    assert [pick(u) for u in (0.05, 0.15, 0.45, 0.95)] == [0, 1, 2, 3]  # inverse CDF in class order
    assert pick(0.0, argmax=True) == 3
    assert [pick(u, top_k=2) for u in (0.0, 0.42, 0.43, 0.99)] == [2, 2, 3, 3]  # keeps 0.3 and 0.4
    assert [pick(u, top_p=0.65) for u in (0.0, 0.42, 0.43)] == [2, 2, 3]  # 0.4 + 0.3 reaches 0.65
    assert pick(0.99, top_p=0.3) == 3  # the likeliest class always stays
    low = [pick(u, temperature=0.01) for u in np.linspace(0.001, 0.999, 7)]
    assert low == [3] * 7


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=-1), dict(top_k=-1), dict(top_p=0),
                                    dict(top_p=1.5), dict(temperature=float("nan"))])
def test_sampling_refuses_nonsense(kwargs):
    with pytest.raises(FastWaveNetError):
        Sampling(**kwargs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_seed_reproduces_bit_for_bit_and_chunking_does_not_matter(tiny_file, backend):
    gen = Generator(tiny_file, backend=backend)
    n = 150 if backend == "naive" else 600
    a = gen.generate(samples=n, batch=2, seed=3, sampling=Sampling(top_k=20, temperature=0.9))
    b = np.concatenate(list(gen.stream(samples=n, batch=2, chunk=77, seed=3,
                                       sampling=Sampling(top_k=20, temperature=0.9))), axis=1)
    assert a.shape == (2, n) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1]), "streams of a batch should differ"
    c = gen.generate(samples=n, batch=2, seed=4, sampling=Sampling(top_k=20, temperature=0.9))
    assert not np.array_equal(a, c)


def test_backends_agree_on_argmax_generation(tiny_file):
    # Argmax is deterministic, and the logits agree to 1e-4, so the codes agree unless two logits tie that closely.
    runs = [Generator(tiny_file, backend=b).generate(samples=120, sampling=Sampling(argmax=True))
            for b in CPU_BACKENDS]
    for other in runs[1:]:
        assert np.array_equal(runs[0], other)


def test_state_copy_and_reset(tiny_file):
    gen = Generator(tiny_file, backend="numba")
    state = gen.new_state(1)
    gen.prime(state, np.arange(50) % 256)
    fork = state.copy()
    a = gen.generate_codes(state, 40, rng=np.random.default_rng(0))
    b = gen.generate_codes(fork, 40, rng=np.random.default_rng(0))
    assert torch.equal(a, b)
    state.reset(127)
    fresh = gen.new_state(1)
    assert torch.equal(state.queues, fresh.queues) and state.t == 0 and state.last.item() == 127


def test_prime_audio_and_stream_with_prime(tiny_file):
    gen = Generator(tiny_file, backend="torch")
    prime = 0.3 * np.sin(np.arange(400) / 10.0)
    chunks = list(gen.stream(samples=100, chunk=40, prime=prime, seed=1))
    assert [c.shape for c in chunks] == [(1, 40), (1, 40), (1, 20)]
    assert all(np.isfinite(c).all() and np.abs(c).max() <= 1 for c in chunks)


@pytest.mark.parametrize("call, words", [
    (lambda g: g.generate(seconds=0), "seconds"),
    (lambda g: g.generate(seconds=-1.0), "seconds"),
    (lambda g: g.generate(samples=10, batch=0), "batch"),
    (lambda g: g.forward(g.new_state(1), np.array([[300]])), "codes must lie"),
    (lambda g: g.forward(g.new_state(2), np.zeros((3, 4), np.int64)), "batch=2"),
    (lambda g: g.prime(g.new_state(1), np.zeros(0, np.int64)), "empty"),
])
def test_bad_generator_calls(tiny_file, call, words):
    with pytest.raises(FastWaveNetError, match=words):
        call(Generator(tiny_file, backend="torch"))


@pytest.fixture(scope="module")
def other_files(tmp_path_factory):
    """A plain model of another shape than `tiny`, and two vocoders of different shapes."""
    from helpers import vocoder_config

    folder = tmp_path_factory.mktemp("others")
    configs = {"plain": dataclasses.replace(preset("tiny"), residual_channels=16), "vocoder": vocoder_config(),
               "vocoder-wider": vocoder_config(residual_channels=16)}
    for name, config in configs.items():
        save_model(folder / f"{name}.safetensors", config, fold(random_model(config, 5)))
    return {name: folder / f"{name}.safetensors" for name in configs}


def _set(state, **fields):
    for name, value in fields.items():
        setattr(state, name, value)
    return state


U5 = np.full((5, 2), 0.5, np.float32)  # uniforms of 5 steps of 2 streams


@pytest.mark.parametrize("backend", ["torch", "numba"])  # (naive's state holds codes alone: any model's fits)
@pytest.mark.parametrize("call", [
    lambda g, o: g.generate_codes(o.new_state(2), 50),
    lambda g, o: g.prime(o.new_state(2), np.full((2, 40), 127)),
    lambda g, o: list(g.stream(samples=100, state=o.new_state(1))),
])
def test_another_models_state_is_refused(tiny_file, other_files, backend, call):
    """The numba kernels read and wrote another model's state out of bounds: a segfault."""
    with pytest.raises(FastWaveNetError, match="state.queues is .* make states with its new_state"):
        call(Generator(tiny_file, backend=backend), Generator(other_files["plain"], backend=backend))


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_input_taps_past_the_classes_are_refused(tiny_file, backend):
    """The numba kernel indexed its input table with them: a segfault (naive's state has no taps)."""
    gen = Generator(tiny_file, backend=backend)
    with pytest.raises(FastWaveNetError, match=r"state\.inputs must hold codes in \[0, 255\], or -1"):
        gen.generate_codes(_set(gen.new_state(1), inputs=torch.full((1, 1), 1 << 40)), 5)


def test_another_backends_state_is_refused(tiny_file):
    naive, numba = Generator(tiny_file, backend="naive"), Generator(tiny_file, backend="numba")
    with pytest.raises(FastWaveNetError, match="state must be a QueueState"):
        numba.generate_codes(naive.new_state(1), 5)
    with pytest.raises(FastWaveNetError, match="state must be a HistoryState"):
        naive.generate_codes(numba.new_state(1), 5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("call, words", [
    # fields a caller set: a code past the classes indexed past the input table
    (lambda g, o: g.generate_codes(_set(g.new_state(1), last=torch.tensor([10**9])), 5), r"codes in \[0, 255\]"),
    (lambda g, o: g.generate_codes(_set(g.new_state(2), last=torch.tensor([7])), 5), r"state\.\w+ is"),
    (lambda g, o: g.generate_codes(_set(g.new_state(1), t=-1), 5), "step count"),
    # step's own arguments
    (lambda g, o: g.step(g.new_state(2), 5, U5.T.copy(), Sampling()), r"uniforms must be .* \(5, 2\)"),
    (lambda g, o: g.step(g.new_state(2), 5, U5.astype(np.int64), Sampling()), "float32"),
    (lambda g, o: g.step(g.new_state(2), 5, U5 * np.nan, Sampling()), r"\[0, 1\)"),
    (lambda g, o: g.step(g.new_state(2), 5, U5 + 1, Sampling()), r"\[0, 1\)"),
    (lambda g, o: g.step(g.new_state(2), 5, U5, Sampling(), torch.zeros(2, 5, 6, 16)), "no conditioning"),
    (lambda g, o: g.step(g.new_state(2), 5, U5, "argmax"), "sampling must be a Sampling"),
    (lambda g, o: g.generate_codes(g.new_state(1), -1), "steps must be an integer >= 0"),
    (lambda g, o: g.generate_codes(g.new_state(1), 5, rng=0), "rng must be"),
    (lambda g, o: g.forward(g.new_state(1), np.zeros((1, 3), np.int64), conditioning="x"), "conditioning must"),
    # what was taken for something else
    (lambda g, o: g.prime(g.new_state(1), np.array([0.5, -0.3, 0.2])), "codes must be integers"),  # was truncated
    (lambda g, o: g.prime_audio(g.new_state(1), np.zeros((2, 10))), "mono"),
    (lambda g, o: g.generate(samples=5, prime="x.wav"), "prime audio must be an array"),
    (lambda g, o: g.generate(samples=5, batch=True), "batch must be a positive integer"),
    (lambda g, o: g.generate(samples=10, sampling="x"), "sampling must be a Sampling"),
])
def test_a_callers_mistake_with_states_and_steps_is_a_one_line_error(tiny_file, other_files, backend, call, words):
    with pytest.raises(FastWaveNetError, match=words):
        call(Generator(tiny_file, backend=backend), Generator(other_files["plain"], backend=backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_vocoders_step_is_given_terms_of_its_own(other_files, backend):
    gen = Generator(other_files["vocoder"], backend=backend)
    wider = Generator(other_files["vocoder-wider"], backend=backend)
    mel = np.zeros((8, 4), np.float32)
    state = gen.new_state(2)
    with pytest.raises(FastWaveNetError, match="this model is conditioned: terms"):
        gen.step(state, 5, U5, Sampling())  # the conditioning was ignored
    with pytest.raises(FastWaveNetError, match="terms must be"):
        gen.step(state, 5, U5, Sampling(), torch.zeros(2, 1, 8, 16))  # 1 step's terms for 5 (read past the end)
    with pytest.raises(FastWaveNetError, match="another model"):
        gen.generate_codes(state, 5, conditioning=wider.conditioning(2, mel))
    terms = gen.conditioning(2, mel).terms(0, 5)
    assert gen.step(state, 5, U5, Sampling(), terms).shape == (2, 5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_numbers_of_numpy_types_and_zero_steps_are_taken(tiny_file, backend):
    gen = Generator(tiny_file, backend=backend)
    assert gen.generate(samples=np.int64(5), batch=np.int64(2), seed=0).shape == (2, 5)
    state = gen.new_state(np.int64(3))
    assert gen.generate_codes(state, 0).shape == (3, 0) and state.t == 0  # numba's raised a reshape error


def test_backend_choice_errors(tiny_file):
    with pytest.raises(FastWaveNetError, match="unknown backend"):
        Generator(tiny_file, backend="fortran")
    if not torch.cuda.is_available():
        with pytest.raises(FastWaveNetError, match="CUDA is not available"):
            Generator(tiny_file, device="cuda")
    assert Generator(tiny_file).backend.name == "numba"


def test_unsupported_shape_falls_back_and_says_so_once():
    import warnings

    from fastwavenet import WaveNetConfig
    from fastwavenet.backends import available_backends

    if "triton" not in available_backends("cuda" if torch.cuda.is_available() else "cpu"):
        pytest.skip("triton is not available here (no GPU and no interpreter)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = WaveNetConfig(classes=16, residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
                           input_kernel_size=3, layers_per_stack=2, stacks=1)
    model = ModelFile(config, fold(random_model(config)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = Generator(model, backend="triton", device=device)
        second = Generator(model, backend="triton", device=device)
    assert first.backend.name == second.backend.name == "torch"
    assert len([w for w in caught if "does not support this model" in str(w.message)]) == 1
    # auto: what supports the shape (on the CPU numba or numba-split, by their trial; torch on CUDA)
    assert Generator(model, backend="auto", device=device).backend.name in ("numba", "numba-split", "torch")


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_long_prime_after_generation_equals_stepping(tiny_file, backend):
    """prime steps through only the last receptive field of a long prime; a state that has already generated
    must end where stepping through every code takes it."""
    gen = Generator(tiny_file, backend=backend)
    rf = gen.config.receptive_field
    codes = torch.randint(0, gen.config.classes, (2, 5 * rf), generator=torch.Generator().manual_seed(7))
    primed, stepped = gen.new_state(2), gen.new_state(2)
    for state in (primed, stepped):
        gen.generate_codes(state, 13, rng=np.random.default_rng(1))
    gen.prime(primed, codes)
    gen.forward(stepped, codes[:, :-1])
    stepped.last = codes[:, -1].clone()
    assert primed.t == stepped.t
    assert torch.equal(primed.queues, stepped.queues) and torch.equal(primed.inputs, stepped.inputs)
    more = codes[:, :40]
    assert torch.equal(gen.forward(primed, more), gen.forward(stepped, more))


def test_a_strided_last_code_is_generated_from_without_another_compile(tiny_file):
    """A caller may set a state's `last` to a column of a code matrix (a strided tensor). The numba kernel updates
    `last` in place, and numba compiles the whole kernel once more for a strided array (about 20 s): the backend
    hands it a contiguous one, and the state holds the codes drawn last."""
    from numba import types

    from fastwavenet.kernels import cpu

    gen = Generator(tiny_file, backend="numba")
    codes = torch.randint(0, gen.config.classes, (2, 5), generator=torch.Generator().manual_seed(3))
    state = gen.new_state(2)
    state.last = codes[:, -1]
    assert not state.last.is_contiguous()
    drawn = gen.generate_codes(state, 4, rng=np.random.default_rng(2))
    assert torch.equal(state.last, drawn[:, -1])
    layouts = {a.layout for signature in cpu._generate_share.signatures for a in signature
               if isinstance(a, types.Array)}
    assert layouts == {"C"}


def test_default_chunk_keeps_chunks_short_for_many_streams():
    from fastwavenet.generator import default_chunk

    assert default_chunk(16000, 1) == 1600  # a tenth of a second
    for batch in (1, 8, 64, 1024, 10**6):
        chunk = default_chunk(16000, batch)
        assert 16 <= chunk <= 1600 and (chunk * batch <= 1 << 16 or chunk == 16)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.7), Sampling(top_k=1), Sampling(top_k=5),
                                      Sampling(top_k=40), Sampling(top_p=0.5), Sampling(top_p=0.9),
                                      Sampling(top_p=0.999), Sampling(top_k=3, top_p=0.6), Sampling(argmax=True)],
                         ids=lambda s: repr(s))
def test_numba_sampling_follows_the_rule(sampling):
    """The compiled sampler (insertion sort of the likeliest classes, a full sort past 64 of them) draws what the
    reference rule of fastwavenet/sampling.py draws, on peaked and on flat distributions."""
    pytest.importorskip("numba")
    from fastwavenet.kernels.cpu import sample_one

    rng = np.random.default_rng(11)
    draws = 600
    logits = (rng.standard_normal((draws, 256)) * rng.choice([0.3, 2.0, 8.0], (draws, 1))).astype(np.float32)
    u = rng.random(draws, dtype=np.float32)
    expected = sample(torch.from_numpy(logits), torch.from_numpy(u), sampling).numpy()
    p, order = np.empty(256, np.float32), np.empty(256, np.int64)
    got = np.array([sample_one(logits[i], u[i], np.float32(sampling.temperature), sampling.top_k,
                               np.float32(sampling.top_p), sampling.argmax, p, order) for i in range(draws)])
    # Sums in another order can move a class boundary by a rounding step; u falling within one is rare.
    assert np.mean(got == expected) >= 0.995, np.flatnonzero(got != expected)[:10]


def test_numba_softmax_exp_is_within_a_few_rounding_steps():
    """The compiled sampler's vectorizable exp (kernels/cpu.py, fast_exp_neg) against float64 exp over the range
    the softmax uses (x <= 0), and exactly 0 where float32 exp leaves the normal range."""
    pytest.importorskip("numba")
    from numba import njit

    from fastwavenet.kernels.cpu import fast_exp_neg

    @njit
    def each(x):
        return np.array([fast_exp_neg(v) for v in x], np.float32)

    x = -np.concatenate([np.linspace(0, 87.3, 200_001), np.random.default_rng(3).exponential(2, 100_000)])
    x = x.astype(np.float32)
    got, exact = each(x), np.exp(x.astype(np.float64))
    normal = exact >= np.finfo(np.float32).tiny
    assert (np.abs(got[normal] - exact[normal]) / exact[normal]).max() < 1e-6
    assert got[0] == 1.0 and np.all(each(np.array([-87.5, -100, -1e30], np.float32)) == 0)


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_numba_generators_run_from_several_threads(tiny_file, layer):
    """Two threads generating at once must neither crash the process (numba's workqueue layer ends it on
    concurrent parallel calls) nor change what each generates."""
    pytest.importorskip("numba")
    import subprocess
    import sys

    script = f"""
import sys, threading, numpy as np
from fastwavenet import Generator
gens = [Generator({str(tiny_file)!r}, backend="numba") for _ in range(3)]
alone = [g.generate(samples=3000, batch=4, seed=i) for i, g in enumerate(gens)]
together = {{}}
def work(i):
    together[i] = gens[i].generate(samples=3000, batch=4, seed=i)
threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
sys.exit(0 if all(np.array_equal(alone[i], together[i]) for i in range(3)) else 3)
"""
    env = dict(__import__("os").environ)
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("how", ["set_num_threads", "OMP_NUM_THREADS"])
def test_numba_generation_keeps_the_callers_torch_threads(tiny_file, how):
    """numba's OpenMP layer sets the process's OpenMP thread count when its pool starts, and torch shares that
    runtime: a caller's one torch thread became numba's count after the first numba generation. Run in a fresh
    process (the pool starts once per process), with numba given two threads whatever the machine has."""
    pytest.importorskip("numba")
    import os
    import subprocess
    import sys

    script = f"""
import sys, torch
if {how == "set_num_threads"}:
    torch.set_num_threads(1)
from fastwavenet import Generator
import numba
before = torch.get_num_threads()
Generator({str(tiny_file)!r}, backend="numba").generate(samples=200, batch=4, seed=0)
print(before, torch.get_num_threads(), numba.get_num_threads())
"""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    env.pop("OMP_NUM_THREADS", None)
    if how == "OMP_NUM_THREADS":
        env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after, numba_threads = map(int, result.stdout.split()[-3:])
    assert (before, after, numba_threads) == (1, 1, 2)


U_MAX = np.nextafter(np.float32(1), np.float32(0))  # the largest float32 below 1
TRUNCATING = [Sampling(top_k=20), Sampling(top_p=0.9), Sampling(top_k=3, top_p=0.6), Sampling()]


def kept_classes(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """(N, C) bool: the classes the reference rule keeps after temperature and truncation (p > 0)."""
    from fastwavenet.sampling import _truncate

    p = torch.softmax(logits.double() / sampling.temperature, dim=1)
    return (_truncate(p, sampling) if sampling.truncates else p) > 0


@pytest.mark.parametrize("sampling", TRUNCATING, ids=repr)
@pytest.mark.parametrize("u", [np.float32(0), U_MAX], ids=["u=0", "u=max"])
def test_samplers_never_return_a_dropped_class(sampling, u):
    """At u = 0 and at the largest float32 below 1, on peaked and flat distributions, the reference rule and the
    compiled sampler return a class that truncation kept. (Where rounding leaves the running sum at or below
    u * total, the numba sampler once fell back to class C - 1, dropped or not: about a fifth of its draws at u = max
    with top-k 20.)"""
    pytest.importorskip("numba")
    from fastwavenet.kernels.cpu import sample_one

    rng = np.random.default_rng(7)
    draws = 400
    logits = (rng.standard_normal((draws, 256)) * rng.choice([0.3, 2.0, 8.0], (draws, 1))).astype(np.float32)
    kept = kept_classes(torch.from_numpy(logits), sampling).numpy()
    reference = sample(torch.from_numpy(logits), torch.full((draws,), float(u)), sampling).numpy()
    p, order = np.empty(256, np.float32), np.empty(256, np.int64)
    compiled = np.array([sample_one(logits[i], u, np.float32(sampling.temperature), sampling.top_k,
                                    np.float32(sampling.top_p), False, p, order) for i in range(draws)])
    for name, codes in (("reference", reference), ("numba", compiled)):
        dropped = np.flatnonzero(~kept[np.arange(draws), codes])
        assert dropped.size == 0, f"{name} drew dropped classes in draws {dropped[:10]}"
    if u == 0:  # the first kept class in class order
        assert np.array_equal(reference, kept.argmax(axis=1))


@pytest.mark.parametrize("backend", CPU_BACKENDS + OPTIONAL_BACKENDS)
def test_generation_at_extreme_uniforms_keeps_to_the_kept_classes(backend):
    """Every backend's generate path (the kernels' own samplers included) with uniforms all 0 or all at the largest
    float32 below 1: every code is one the reference rule keeps for the logits that preceded it."""
    from fastwavenet.backends import available_backends

    if backend not in available_backends("cpu"):
        pytest.skip(f"{backend} is not available on the CPU here")
    config = preset("tiny")
    model = random_model(config, 8)
    gen = Generator(ModelFile(config, fold(model)), backend=backend)
    steps = 12 if backend == "naive" or backend.startswith("triton") else 80
    interpreted = backend.startswith("triton") and not torch.cuda.is_available()
    # Triton's tl.sort takes about a second a draw under the interpreter: fewer truncated draws, one stream, there.
    batch = 1 if interpreted else 3
    for sampling in (Sampling(top_k=20), Sampling(top_p=0.9), Sampling(temperature=0.5)):
        n = 4 if interpreted and sampling.truncates else steps
        for u in (np.float32(0), U_MAX):
            state = gen.new_state(batch)
            first = state.last.clone()
            codes = gen.backend.generate(state, n, np.full((n, batch), u, np.float32), sampling).cpu()
            inputs = torch.cat([first[:, None].cpu(), codes[:, :-1]], dim=1)
            with torch.no_grad():
                logits = model(inputs).transpose(1, 2).reshape(-1, config.classes)
            ok = kept_classes(logits, sampling)[torch.arange(logits.shape[0]), codes.reshape(-1)]
            assert ok.all(), f"{sampling}, u={u}: dropped classes at {torch.nonzero(~ok)[:5].tolist()}"


def test_files_are_synced_once_each_when_finished(tiny_file, tmp_path, monkeypatch):
    """Writing a chunk syncs nothing (one fsync per file per chunk capped throughput at large batches); each file
    is synced once, when it is finished, then renamed into place."""
    import os

    import soundfile

    from fastwavenet.generator import generate_to_wav

    synced, flushed = [], []
    real_fsync, real_flush = os.fsync, soundfile.SoundFile.flush
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    # SoundFile.flush is libsndfile's sf_write_sync, an fsync; SoundFile.close calls it once.
    monkeypatch.setattr(soundfile.SoundFile, "flush", lambda self: (flushed.append(self.name), real_flush(self))[1])
    paths = generate_to_wav(Generator(tiny_file, backend="numba"), tmp_path / "x.wav", 1000 / 4410, batch=3, seed=1,
                            chunk=50)
    assert len(flushed) == 3 and len(set(flushed)) == 3  # at close only: 20 chunks each made 20 before
    assert len(synced) == 3  # the finished file, header included, before the rename
    assert len(paths) == 3 and all(soundfile.info(p).frames == 1000 for p in paths)


def test_torch_compile_allows_its_recompiles_in_every_thread_that_steps(tiny_file):
    """torch 2.13 keeps dynamo's settings per thread: the limit the backend raised in the thread that built it was
    the default 8 in an engine's scheduler thread, which failed ("Hard failure due to fullgraph=True") once the
    process had compiled eight variants of the step (test_precision's, then test_engine's, in one worker)."""
    import threading

    from fastwavenet.backends import registry
    from fastwavenet.backends.torch_compile import RECOMPILE_LIMIT

    if registry()["torch-compile"].unavailable_reason(torch.device("cpu")):
        pytest.skip("torch-compile does not run here")
    gen = Generator(tiny_file, backend="torch-compile")
    seen = []

    def other_thread():
        gen.generate(samples=5, seed=0)
        seen.append(torch._dynamo.config.recompile_limit)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(300)
    assert seen and seen[0] >= RECOMPILE_LIMIT, seen


@pytest.mark.parametrize("fails", ["write", "close"])
def test_a_write_that_fails_midway_is_one_line_and_leaves_no_file(tiny_file, tmp_path, monkeypatch, fails):
    """A full disk made libsndfile raise "System error." through generate as a traceback."""
    import shutil

    import soundfile

    from fastwavenet.generator import generate_to_wav

    def full(*args, **kwargs):
        raise soundfile.LibsndfileError(2)  # libsndfile's "System error." (what a full disk gives)

    monkeypatch.setattr(soundfile.SoundFile, fails, full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    with pytest.raises(FastWaveNetError, match="cannot write .*x.wav: no space left on the device"):
        generate_to_wav(Generator(tiny_file, backend="numba"), tmp_path / "x.wav", 500 / 4410, seed=1, chunk=100)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", CPU_BACKENDS + OPTIONAL_BACKENDS)
def test_generate_path_draws_what_the_reference_rule_draws(backend):
    """Given the same uniforms, each backend's own generation (the compiled samplers inside the numba and Triton
    kernels included) draws the codes that the reference rule of fastwavenet/sampling.py draws from the training
    model's logits for the same inputs. Disagreement is allowed only where the reference's cumulative sum lies
    within float rounding (1e-5) of u * total; such cases are counted and must stay rare."""
    from fastwavenet.backends import available_backends
    from fastwavenet.sampling import _truncate

    if backend not in available_backends("cpu"):
        pytest.skip(f"{backend} is not available on the CPU here")
    config = preset("tiny")
    model = random_model(config, 12)
    gen = Generator(ModelFile(config, fold(model)), backend=backend)
    steps, batch = (10, 3) if backend == "naive" or backend.startswith("triton") else (120, 4)
    samplings = [Sampling(), Sampling(temperature=0.7), Sampling(argmax=True), Sampling(top_k=5),
                 Sampling(top_p=0.8)]
    near, draws = 0, 0
    for i, sampling in enumerate(samplings):
        # Triton's tl.sort takes about a second a draw under the interpreter: fewer truncated draws there.
        n = 4 if backend.startswith("triton") and sampling.truncates and not torch.cuda.is_available() else steps
        u = np.random.default_rng(i).random((n, batch), dtype=np.float32)
        state = gen.new_state(batch)
        first = state.last.clone().cpu()
        codes = gen.backend.generate(state, n, u, sampling).cpu()
        with torch.no_grad():
            logits = model(torch.cat([first[:, None], codes[:, :-1]], dim=1)).transpose(1, 2)  # (B, steps, C)
        flat = logits.reshape(-1, config.classes)
        uu = torch.from_numpy(u.T.copy()).reshape(-1)
        expected = sample(flat, uu, sampling)
        got = codes.reshape(-1)
        p = torch.softmax(flat.double() / sampling.temperature, dim=1)
        p = _truncate(p, sampling) if sampling.truncates else p
        cdf = p.cumsum(dim=1)
        margin = (cdf - uu.double()[:, None] * cdf[:, -1:]).abs().amin(dim=1)
        mismatch = got != expected
        assert not sampling.argmax or not mismatch.any(), f"argmax differs at {torch.nonzero(mismatch)[:5]}"
        assert (margin[mismatch] < 1e-5).all(), f"{sampling}: draws differ away from a class boundary"
        near += int(mismatch.sum())
        draws += got.numel()
    assert near <= max(1, draws // 100), f"{near} of {draws} draws fell on a rounding boundary"
