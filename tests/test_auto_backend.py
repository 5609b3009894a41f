"""`auto`: the fastest of its candidates by a short measured trial at first use, kept per device model, software,
model shape, precision and batch; on CUDA every available backend, on the CPU numba against numba-split at fewer
streams than numba's threads. No GPU here: the trial's logic runs with the CPU backends, which are timed the same
way."""

import json
import os
from pathlib import Path

import pytest
import torch

from fastwavenet import backends, preset
from fastwavenet.backends import NumbaBackend, NumbaSplitBackend, TorchBackend, choose_by_trial, make_backend

from fastwavenet.folded import fold
from fastwavenet.modelfile import ModelFile

from helpers import random_model

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTWAVENET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "_trials", {})  # this process's memory of earlier choices
    return tmp_path / "cache" / "auto-backend.json"


def model_file(name="tiny"):
    return ModelFile(preset(name), fold(random_model(preset(name))))


def tiny():
    model = model_file()
    return model.config, model.weights


def rates(table, calls):
    def rate(backend, batch):
        calls.append((backend.name, batch))
        if isinstance(table[backend.name], Exception):
            raise table[backend.name]
        return table[backend.name]
    return rate


def test_trial_times_real_backends_and_keeps_the_fastest(cache, capsys):
    config, weights = tiny()
    chosen = choose_by_trial(["numba", "torch"], config, weights, CPU, batch=3)
    kept = json.loads(cache.read_text())
    (key, entry), = kept.items()
    assert "batch 3" in key and "float32" in key and f"torch {torch.__version__}" in key and "numba threads" in key
    measured = entry["samples_per_s"]
    assert set(measured) == {"numba", "torch"} and min(measured.values()) > 0
    assert chosen == entry["backend"] == max(measured, key=measured.get)
    assert f"-> {chosen}" in capsys.readouterr().err


def test_trial_is_kept_in_the_process_and_in_the_file(cache, monkeypatch):
    config, weights = tiny()
    calls = []
    assert choose_by_trial(["numba", "torch"], config, weights, CPU, rate=rates({"numba": 1.0, "torch": 2.0},
                                                                                calls)) == "torch"
    assert calls == [("numba", 1), ("torch", 1)]
    fail = rates({"numba": RuntimeError("timed again"), "torch": RuntimeError("timed again")}, calls)
    assert choose_by_trial(["numba", "torch"], config, weights, CPU, rate=fail) == "torch"
    monkeypatch.setattr(backends, "_trials", {})  # a new process: only the file remembers
    assert choose_by_trial(["numba", "torch"], config, weights, CPU, rate=fail) == "torch"
    assert len(calls) == 2, "a kept choice was measured again"
    # another batch, precision or model shape is another trial
    choose_by_trial(["numba", "torch"], config, weights, CPU, batch=64, rate=rates({"numba": 3.0, "torch": 2.0},
                                                                                    calls))
    choose_by_trial(["numba", "torch"], config, weights, CPU, precision="bf16",
                    rate=rates({"numba": 3.0, "torch": 2.0}, calls))
    small = model_file("small")
    choose_by_trial(["numba", "torch"], small.config, small.weights, CPU,
                    rate=rates({"numba": 3.0, "torch": 2.0}, calls))
    assert len(calls) == 8
    assert sorted(entry["backend"] for entry in json.loads(cache.read_text()).values()) == \
        ["numba", "numba", "numba", "torch"]


def test_trial_ties_failures_and_a_corrupt_or_unwritable_cache(cache, capsys, monkeypatch):
    config, weights = tiny()
    calls = []
    # a tie keeps the candidates' order
    assert choose_by_trial(["numba", "torch"], config, weights, CPU, rate=rates({"numba": 5.0, "torch": 5.0},
                                                                                calls)) == "numba"
    monkeypatch.setattr(backends, "_trials", {})
    cache.write_text("{not json")
    # a backend that fails its trial is not chosen, and says why
    assert choose_by_trial(["numba", "torch"], config, weights, CPU,
                           rate=rates({"numba": RuntimeError("no kernel"), "torch": 1.0}, calls)) == "torch"
    assert "numba failed its trial (RuntimeError: no kernel)" in capsys.readouterr().err
    assert json.loads(cache.read_text())  # the corrupt file was replaced
    monkeypatch.setattr(backends, "_trials", {})
    cache.unlink()
    # all fail: the first candidate, not kept
    assert choose_by_trial(["numba", "torch"], config, weights, CPU,
                           rate=rates({"numba": RuntimeError("a"), "torch": RuntimeError("b")}, calls)) == "numba"
    assert not cache.exists()
    # a cache that cannot be written: the choice still stands, and is said
    cache.parent.rmdir()
    cache.parent.write_text("a file where the cache folder would be")
    assert choose_by_trial(["numba", "torch"], config, weights, CPU, rate=rates({"numba": 1.0, "torch": 2.0},
                                                                                calls)) == "torch"
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert "-> torch (not kept in " in said, said  # it said "kept in X", then "cannot keep the choice in X"


def test_auto_on_the_cpu_times_numba_against_numba_split_at_fewer_streams_than_threads(cache, monkeypatch):
    """Below numba's thread count `auto` times numba and numba-split (never torch) and takes the faster; from as
    many streams as threads, numba untimed (numba-split runs numba's tiles there)."""
    config, weights = tiny()
    calls = []
    monkeypatch.setattr(backends, "numba_threads", lambda: 2)
    monkeypatch.setattr(backends, "trial_rate", rates({"numba": 1.0, "numba-split": 2.0, "torch": 3.0}, calls))
    assert type(make_backend("auto", config, weights, CPU, batch=1)) is NumbaSplitBackend
    assert calls == [("numba", 1), ("numba-split", 1)]
    for batch in (2, 16):
        assert type(make_backend("auto", config, weights, CPU, batch=batch)) is NumbaBackend
    assert type(make_backend("numba", config, weights, CPU)) is NumbaBackend  # a named backend is not timed
    assert len(calls) == 2
    monkeypatch.setattr(backends, "_trials", {})  # a new process: the file keeps the choice
    assert type(make_backend("auto", config, weights, CPU, batch=1)) is NumbaSplitBackend
    assert len(calls) == 2


def test_generator_and_engine_pass_their_batch_to_auto(monkeypatch):
    from fastwavenet import Generator, engine

    seen = []

    def spy(name, config, weights, device, precision="float32", batch=1):
        seen.append((name, batch))
        return TorchBackend(config, weights, device, precision)

    monkeypatch.setattr("fastwavenet.generator.make_backend", spy)
    model = model_file()
    Generator(model, expected_batch=12)
    with engine.Engine(model, max_active=5, warm_up=False) as e:
        assert e.max_active == 5
    assert seen == [("auto", 12), ("auto", 5)]


def test_doctor_shows_the_kept_choices(cache):
    from fastwavenet.doctor import format_report, report

    assert report()["auto_choices"] == []
    config, weights = tiny()
    choose_by_trial(["numba", "torch"], config, weights, CPU, batch=7, rate=rates({"numba": 1.0, "torch": 2.0}, []))
    info = report()
    (line,) = info["auto_choices"]
    assert line.startswith("torch for ") and line.endswith("batch 7") and info["auto_choices_file"] == str(cache)
    assert "auto_choices: torch for " in format_report(info)


def test_auto_uses_the_backend_its_trial_built(cache, monkeypatch):
    config, weights = tiny()
    timed = []
    monkeypatch.setattr(backends, "trial_rate", lambda backend, batch: (timed.append(backend), 1.0)[1])
    monkeypatch.setattr(backends, "numba_threads", lambda: 2)
    chosen = make_backend("auto", config, weights, CPU)
    assert chosen is timed[0]  # numba, first of equals: not built a second time


def test_cpu_trial_stops_after_its_seconds(monkeypatch):
    """On the CPU a trial times calls of 8 steps until its steps or its seconds are spent: a candidate slowed by
    other work on the cores (numba-split's barriers wait for the layer's other parts) is timed for about `seconds`,
    not for 64 slow steps."""
    config, weights = tiny()
    backend = TorchBackend(config, weights, CPU)
    calls = []
    generate = backend.generate
    monkeypatch.setattr(backend, "generate", lambda state, n, *rest: (calls.append(n), generate(state, n, *rest))[1])
    assert backends.trial_rate(backend, 2, steps=64, seconds=1e9) > 0
    assert calls[calls.index(8):] == [8] * 9  # after the warm-up: the untimed call, then 64 steps in 8 calls
    calls.clear()
    assert backends.trial_rate(backend, 2, steps=64, seconds=0.0) > 0
    assert calls[calls.index(8):] == [8, 8]  # the untimed call and one timed call


def test_triton_key_is_kept_for_the_next_process(tmp_path, monkeypatch):
    """Triton hashes its own files (a 415 MB library among them) once a process before loading a cached kernel; a
    CUDA Triton backend keeps that key in the cache folder, per Triton folder, beside a fingerprint of those files, so
    a returning process reads it instead (issue 34: 0.5-0.6 s of a returning `generate` on an H200). The kept key is
    Triton's own; a changed Triton (another fingerprint) computes it afresh; a process that has computed the key
    already keeps nothing; an unwritable cache folder changes nothing."""
    import functools

    cache_module = pytest.importorskip("triton.runtime.cache")
    if not hasattr(cache_module, "triton_key"):
        pytest.skip("this Triton keeps its key elsewhere (older versions): nothing is kept")
    from fastwavenet.backends import triton_gpu

    calls = []

    def triton_own():
        calls.append(1)
        return "the key Triton computes"

    monkeypatch.setenv("FASTWAVENET_CACHE_DIR", str(tmp_path / "cache"))
    kept_at = tmp_path / "cache" / "triton-key.json"
    for process in range(2):  # a first process computes and keeps the key, a second reads it
        monkeypatch.setattr(cache_module, "triton_key", triton_own)
        triton_gpu.keep_triton_key()
        assert cache_module.triton_key() == "the key Triton computes"
        assert cache_module.triton_key.kept_by_fastwavenet and len(calls) == 1
    [(folder, kept)] = json.loads(kept_at.read_text()).items()
    assert folder == str(Path(os.path.abspath(cache_module.__file__)).parents[1])
    assert kept["key"] == "the key Triton computes" and len(kept["fingerprint"]) == 64
    # A Triton whose files changed: the fingerprint differs, the key is computed again
    kept_at.write_text(json.dumps({folder: {**kept, "fingerprint": "0" * 64}}))
    monkeypatch.setattr(cache_module, "triton_key", triton_own)
    triton_gpu.keep_triton_key()
    assert cache_module.triton_key() == "the key Triton computes" and len(calls) == 2
    # A process whose Triton has computed its key (its files may have changed since): nothing kept, nothing replaced
    computed = functools.lru_cache()(lambda: "the key of an older Triton")
    computed()
    kept_at.unlink()
    monkeypatch.setattr(cache_module, "triton_key", computed)
    triton_gpu.keep_triton_key()
    assert cache_module.triton_key is computed and not kept_at.exists()
    # A cache folder that cannot be written (a file where the folder should be): Triton's key all the same
    kept_at.write_text("{}")
    monkeypatch.setenv("FASTWAVENET_CACHE_DIR", str(kept_at))
    monkeypatch.setattr(cache_module, "triton_key", triton_own)
    triton_gpu.keep_triton_key()
    assert cache_module.triton_key() == "the key Triton computes" and len(calls) == 3
