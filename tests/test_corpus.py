"""Corpus generation from a manifest: one process and two torchrun ranks give the same bytes; resumable after a
kill; bad lines reported by number while the others run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fastwavenet import FastWaveNetError, preset
from fastwavenet.corpus import Item, derived_seed, read_manifest, shard
from fastwavenet.sampling import Sampling

from helpers import interruptible_cli, run_cli, save_models

pytest.importorskip("numba")

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("models"))


def write_manifest(folder: Path, lines) -> Path:
    path = folder / "items.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def twelve(folder: Path, seconds=0.05) -> Path:
    """A dozen items of different lengths and rules, some with seeds, and three bad lines among them."""
    soundfile.write(folder / "prime.wav", (0.3 * np.sin(np.arange(400) / 3.0)).astype(np.float32), 4410)
    lines = [{"id": f"item{i:02d}", "seconds": seconds * (1 + i % 4), **({"seed": i} if i % 2 else {}),
              **({"temperature": 0.8, "top_k": 30} if i % 3 == 0 else {}), **({"prime": "prime.wav"} if i == 5 else {})}
             for i in range(12)]
    lines.insert(3, "{not json")                                            # line 4
    lines.insert(6, {"id": "bad/id", "seconds": 1})                          # line 7
    lines.insert(8, {"id": "x", "seconds": 1, "prime": "missing.wav"})       # line 9
    return write_manifest(folder, lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_and_two_torchrun_ranks_write_the_same_bytes(models, tmp_path):
    manifest = twelve(tmp_path)
    one = run_cli("generate", "--model", models["tiny"], "--manifest", manifest, "--out-dir", tmp_path / "one",
                  "--quiet")
    assert one.returncode == 2 and "3 of 15 items failed" in one.stderr
    for line in (4, 7, 9):
        assert f"items.jsonl:{line}:" in one.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), "-m", "fastwavenet", "generate", "--model", str(models["tiny"]),
                          "--manifest", str(manifest), "--out-dir", str(tmp_path / "two"), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert "3 of 15 items failed" in two.stderr, two.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").glob("*.wav"))
    assert len(names) == 12 and names == sorted(p.name for p in (tmp_path / "two").glob("*.wav"))
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["items_done"] == 12 and summary["items_failed"] == 3 and len(summary["ranks"]) == 2
    assert all(rank["items"] > 0 for rank in summary["ranks"])
    assert soundfile.info(tmp_path / "one" / "item03.wav").frames == round(0.05 * 4 * 4410)


def test_an_item_is_what_its_line_makes_alone(models, tmp_path):
    """Position and neighbours do not matter: an item alone in a manifest makes the same bytes; without a seed its
    seed comes from its id."""
    manifest = twelve(tmp_path)
    run_cli("generate", "--model", models["tiny"], "--manifest", manifest, "--out-dir", tmp_path / "all", "--quiet")
    (tmp_path / "solo").mkdir()
    solo = write_manifest(tmp_path / "solo", [{"id": "item06", "seconds": 0.05 * 3, "temperature": 0.8, "top_k": 30}])
    assert run_cli("generate", "--model", models["tiny"], "--manifest", solo, "--out-dir", tmp_path / "solo" / "out",
                   "--quiet").returncode == 0
    assert (tmp_path / "all" / "item06.wav").read_bytes() == (tmp_path / "solo" / "out" / "item06.wav").read_bytes()
    (tmp_path / "seeded").mkdir()
    seeded = write_manifest(tmp_path / "seeded", [{"id": "item06", "seconds": 0.15, "temperature": 0.8, "top_k": 30,
                                                   "seed": derived_seed("item06")}])
    run_cli("generate", "--model", models["tiny"], "--manifest", seeded, "--out-dir", tmp_path / "seeded" / "out",
            "--quiet")
    assert (tmp_path / "seeded" / "out" / "item06.wav").read_bytes() == (tmp_path / "all" / "item06.wav").read_bytes()


def test_a_killed_run_resumes_without_redoing_finished_items(models, tmp_path):
    lines = [{"id": f"long{i}", "seconds": 8.0 + i % 3, "seed": i} for i in range(16)]
    manifest = write_manifest(tmp_path, lines)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "fastwavenet", "generate", "--model", str(models["tiny"]),
                                "--manifest", str(manifest), "--out-dir", str(out), "--quiet", "--max-active", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(out.glob("*.wav"))) < 2:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    assert 2 <= len(finished) < 16, finished
    assert list(out.glob(".*.partial"))  # what the kill left, never under a final name
    result = run_cli("generate", "--model", models["tiny"], "--manifest", manifest, "--out-dir", out, "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items_skipped"] == len(finished) and summary["items_done"] == 16 - len(finished)
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in finished.items())
    assert not list(out.glob(".*.partial")) and len(list(out.glob("*.wav"))) == 16
    clean = tmp_path / "clean"
    run_cli("generate", "--model", models["tiny"], "--manifest", manifest, "--out-dir", clean, "--quiet")
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in clean.glob("*.wav"))


def test_vocode_manifest_from_mel_files_and_audio(models, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.standard_normal((8, 10)).astype(np.float32))
    np.save(tmp_path / "wrong.npy", rng.standard_normal((5, 10)).astype(np.float32))
    soundfile.write(tmp_path / "b.wav", (0.3 * np.sin(np.arange(1000) / 4.0)).astype(np.float32), 4410)
    manifest = write_manifest(tmp_path, [{"id": "a", "mel": "a.npy", "seed": 1}, {"id": "b", "audio": "b.wav"},
                                         {"id": "c", "mel": "gone.npy"}, {"id": "d", "mel": "wrong.npy"},
                                         {"id": "e", "seconds": 1}])
    result = run_cli("vocode", models["vocoder"], "--manifest", manifest, "--out-dir", tmp_path / "out", "--quiet")
    assert result.returncode == 2
    assert "items.jsonl:3: mel file not found" in result.stderr and "line 4 (d)" in result.stderr
    assert "items.jsonl:5:" in result.stderr
    assert soundfile.info(tmp_path / "out" / "a.wav").frames == 320
    assert soundfile.info(tmp_path / "out" / "b.wav").frames == 1000
    assert not (tmp_path / "out" / "d.wav").exists()


def test_sharding_balances_length_and_every_rank_agrees():
    lengths = [900, 100, 100, 100, 500, 400, 50, 50]
    items = [Item(n, f"i{n}", length, 0, Sampling()) for n, length in enumerate(lengths, 1)]
    shares = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(i.id for s in shares for i in s) == sorted(i.id for i in items)
    loads = [sum(i.length for i in s) for s in shares]
    assert loads == [900, 650, 650]  # longest first, each to the least loaded rank
    assert shares == [shard(items, rank, 3) for rank in range(3)]


@pytest.mark.parametrize("option, words", [
    (["--seed", "3"], "each line of the manifest"), (["--temperature", "0.5"], "each line of the manifest"),
    (["--batch", "2"], "each line of the manifest"),
    (["--seconds", "2"], "each line of the manifest"), (["-o", "x.wav"], "drop -o"),  # these two were ignored
])
def test_per_item_options_belong_in_the_manifest(models, tmp_path, option, words):
    manifest = write_manifest(tmp_path, [{"id": "a", "seconds": 0.1}])
    result = run_cli("generate", "--model", models["tiny"], "--manifest", manifest, "--out-dir", tmp_path, *option)
    assert result.returncode == 2 and words in result.stderr, result.stderr


def test_manifest_lines_refused_that_got_through_or_stopped_the_run(tmp_path):
    """Each bad line is reported by number with its message (the run goes on with the others); before, these were
    accepted (and failed inside the engine, every item of the round with them) or raised out of read_manifest."""
    lines = [
        {"id": "good", "seconds": 0.1, "seed": 2**63 - 1, "top_k": 256},
        {"id": "newline\n", "seconds": 1},                   # ID_PATTERN's $ let a trailing newline through
        {"id": "long", "seconds": 1e7},                       # past what a WAV file holds
        {"id": "topk", "seconds": 1, "top_k": 10**23},        # the numba backend overflowed
        {"id": "classes", "seconds": 1, "top_k": 257},
        {"id": "bool", "seconds": 1, "top_k": True},          # was top-k 1
        {"id": "seed", "seconds": 1, "seed": 2**63},
        '{"id": "digits", "seconds": 1, "seed": ' + "9" * 5000 + "}",      # a ValueError out of json.loads
        '{"id": "nested", "seconds": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}",  # a RecursionError
        {"id": "cold", "seconds": 1, "temperature": 1e-39},   # constant output
        {"id": "maybe", "seconds": 1, "argmax": "maybe"},
        {"id": "null", "seconds": 1, "seed": None},
        {"id": "volume", "seconds": 1, "volume": 11},
    ]
    items, errors = read_manifest(write_manifest(tmp_path, lines), preset("tiny"), vocode=False)
    assert [item.id for item in items] == ["good"]
    assert items[0].seed == 2**63 - 1 and items[0].sampling == Sampling(top_k=256) and items[0].length == 441
    messages = dict(errors)
    assert sorted(messages) == list(range(2, 14))
    for line, message in [(2, "id must be"), (3, "a WAV file holds at most"), (4, "top-k must be 0"),
                          (5, "257 is more than this model's 256 classes"), (6, "top-k must be"),
                          (7, "seed must be an integer in 0..2**63 - 1"), (8, "a JSON integer of 5000 digits"),
                          (9, "nested too deeply"), (10, "temperature must be a number in [0.001, 1000]"),
                          (11, "argmax must be true or false"), (12, "seed is null"), (13, "unknown field(s): volume")]:
        assert message in messages[line], (line, messages[line])


def test_manifest_errors_without_any_item(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(FastWaveNetError, match="no items"):
        read_manifest(tmp_path / "empty.jsonl", preset("tiny"), vocode=False)
    with pytest.raises(FastWaveNetError, match="cannot read manifest"):
        read_manifest(tmp_path / "absent.jsonl", preset("tiny"), vocode=False)


def test_an_item_removes_only_its_own_temporary_files(models, tmp_path):
    """Ids `a` and `a.wav` on different ranks: `.a.wav.*.partial` also matched the other item's file in progress
    (`.a.wav.wav.XXXXXXXX.partial`), whose rank then failed to rename it (FileNotFoundError)."""
    from fastwavenet.corpus import generate_items
    from fastwavenet.engine import Engine
    from fastwavenet.files import partial_target, temporary_beside

    assert partial_target(temporary_beside(tmp_path / "a.b.wav").name) == "a.b.wav"
    assert partial_target(".a.wav.wav.abcd1234.partial") == "a.wav.wav"
    assert partial_target("a.wav") is None and partial_target(".a.partial") is None
    out = tmp_path / "out"
    out.mkdir()
    others = out / ".a.wav.wav.abcd1234.partial"   # item `a.wav`'s file, being written by another rank
    stale = out / ".a.wav.qwer_678.partial"        # what a killed run left of item `a`
    others.write_bytes(b"RIFF")
    stale.write_bytes(b"RIFF")
    items, _ = read_manifest(write_manifest(tmp_path, [{"id": "a", "seconds": 0.01}]), preset("tiny"), False)
    with Engine(str(models["tiny"]), backend="numba", max_active=1) as engine:
        report = generate_items(engine, items, out)
    assert report.done == ["a"] and soundfile.info(out / "a.wav").frames == round(0.01 * 4410)
    assert others.exists() and not stale.exists()


def _launch_rank(rank: int, port: int, args) -> subprocess.Popen:
    """One of two ranks, started as torchrun starts them; gloo's default timeout (30 minutes) is 6 s here, so a rank
    waiting on another in a collective fails in seconds instead of half an hour."""
    code = ("import datetime, sys; import torch.distributed.distributed_c10d as c10d; "
            "c10d.default_pg_timeout = datetime.timedelta(seconds=6); "
            "from fastwavenet.cli import main; sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", RANK=str(rank),
               LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_two_ranks_under_faults(models, tmp_path):
    """Rank 0's items were all made by an earlier run, so it finishes at once and waits for rank 1; rank 1 is killed
    (SIGKILL) after an item, rank 0 stopped by SIGTERM; the rerun finishes the corpus. Every item is complete or
    absent at each point, and the rerun writes summary.json."""
    manifest = write_manifest(tmp_path, [{"id": f"item{i}", "seconds": 40.0, "seed": i} for i in range(8)])
    items, _ = read_manifest(manifest, preset("tiny"), vocode=False)
    first, second = shard(items, 0, 2), shard(items, 1, 2)
    assert len(first) == len(second) == 4
    out = tmp_path / "out"
    out.mkdir()
    frames = round(40.0 * 4410)
    for item in first:
        soundfile.write(out / f"{item.id}.wav", np.zeros(frames, np.float32), 4410, subtype="PCM_16")

    def check_every_item_complete_or_absent():
        for item in items:
            path = out / f"{item.id}.wav"
            assert not path.exists() or soundfile.info(path).frames == frames, item.id
        names = {p.name for p in out.iterdir() if not p.name.startswith(".")} - {"summary.json"}
        assert names <= {f"{item.id}.wav" for item in items}, names

    # numba named: `auto`'s first trial at one stream would say its choice on stderr too
    args = ["generate", "--model", models["tiny"], "--manifest", manifest, "--out-dir", out, "--quiet",
            "--max-active", "1", "--backend", "numba"]
    port = _free_port()
    ranks = [_launch_rank(0, port, args), _launch_rank(1, port, args)]
    try:
        made_by_one = lambda: [i.id for i in second if (out / f"{i.id}.wav").exists()]  # noqa: E731
        # Waits only until the first file is done; 300 s leaves room for a cold numba compile on a busy machine
        # (120 s once ran out at the start of a CI run, both test workers compiling)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not made_by_one() and ranks[1].poll() is None:
            time.sleep(0.01)
        ranks[1].send_signal(signal.SIGKILL)
        ranks[1].wait(30)
        kept = {name: (out / f"{name}.wav").stat().st_mtime_ns for name in made_by_one()}
        assert 1 <= len(kept) < 4, kept
        assert ranks[0].poll() is None, ranks[0].communicate()[1]  # still waiting for rank 1's report
        ranks[0].send_signal(signal.SIGTERM)
        _, stderr = ranks[0].communicate(timeout=30)
        assert ranks[0].returncode == 143 and stderr.strip() == "fastwavenet: terminated", stderr
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.communicate()
    check_every_item_complete_or_absent()
    assert not (out / "summary.json").exists()

    port = _free_port()
    ranks = [_launch_rank(0, port, args), _launch_rank(1, port, args)]
    try:
        results = [process.communicate(timeout=300) for process in ranks]
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert [p.returncode for p in ranks] == [0, 0], results
    assert "Traceback" not in results[0][1] + results[1][1]
    check_every_item_complete_or_absent()
    assert sorted(p.name for p in out.glob("*.wav")) == sorted(f"{item.id}.wav" for item in items)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file, no reports folder
    assert all((out / f"{name}.wav").stat().st_mtime_ns == mtime for name, mtime in kept.items())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items_skipped"] == 4 + len(kept) and summary["items_done"] == 4 - len(kept)
    assert summary["items_failed"] == 0 and [r["rank"] for r in summary["ranks"]] == [0, 1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_landing_in_a_weakref_callback_still_stops_a_corpus_run(sig):
    """Raised by Python's handler, an interrupt that lands in a weakref callback (asyncio keeps its tasks in a
    WeakSet) is printed as ignored and lost, and a corpus run went on to its end after Ctrl-C. The corpus loop
    calls the signals' handlers itself: what one raises cancels the run's coroutine, its cleanup runs, then that is
    raised; a handler that raises nothing lets the run go on."""
    import asyncio
    import threading
    import weakref

    from fastwavenet.corpus import _run_to_the_end

    class Interrupted(KeyboardInterrupt):
        pass

    def raise_interrupted(signum, frame):
        raise Interrupted(signum)

    def signal_me_inside():  # a weakref callback during which the signal arrives
        threading.Thread(target=os.kill, args=(os.getpid(), sig)).start()
        time.sleep(0.5)

    cleaned = []

    async def main():
        try:
            thing = Interrupted()
            ref = weakref.ref(thing, lambda _: signal_me_inside())
            del thing
            await asyncio.sleep(10)
            cleaned.append("slept to the end")
        finally:
            cleaned.append(ref() is None)

    previous = signal.signal(sig, raise_interrupted)
    try:
        with pytest.raises(Interrupted):
            _run_to_the_end(main())
        assert cleaned == [True]  # cancelled in its sleep, its `finally` run
        assert signal.getsignal(sig) is raise_interrupted  # handed back

        async def brief():
            threading.Timer(0.1, os.kill, (os.getpid(), sig)).start()
            await asyncio.sleep(0.5)
            cleaned.append("ran to the end")

        calls = []
        signal.signal(sig, lambda signum, frame: calls.append(signum))
        _run_to_the_end(brief())
        assert calls == [sig] and cleaned[-1] == "ran to the end"
    finally:
        signal.signal(sig, previous)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("command", ["corpus", "vocode"])
def test_an_interrupted_run_says_one_line_and_keeps_what_it_finished(models, tmp_path, command, sig, code):
    """Ctrl-C during a corpus run printed the engine thread's traceback (it woke the closed event loop)."""
    out = tmp_path / "out"
    if command == "corpus":
        manifest = write_manifest(tmp_path, [{"id": f"long{i}", "seconds": 100.0, "seed": i} for i in range(16)])
        args = ["generate", "--model", models["tiny"], "--manifest", manifest, "--out-dir", out, "--max-active", "2"]
        started = lambda: list(out.glob("*.wav"))  # noqa: E731
    else:
        np.save(tmp_path / "long.npy", np.random.default_rng(0).standard_normal((8, 40000)).astype(np.float32))
        out.mkdir()
        args = ["vocode", models["vocoder"], tmp_path / "long.npy", "-o", out / "voc.wav"]
        started = lambda: [p for p in out.glob(".voc.wav.*.partial") if p.stat().st_size > 44 + 2 * 2000]  # noqa
    # numba named: `auto`'s first trial at fewer streams than threads would say its choice on stderr too.
    with interruptible_cli(*args, "--quiet", "--backend", "numba") as process:
        # Waits only until the first file is done; 300 s leaves room for a cold numba compile on a busy machine
        # (120 s once ran out at the start of a CI run, both test workers compiling)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not started() and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert stderr.strip() in ("fastwavenet: interrupted", "fastwavenet: terminated"), stderr
    wavs = list(out.glob("*.wav"))
    assert wavs and not list(out.glob(".*"))
    for path in wavs:
        assert soundfile.info(path).frames == (441000 if command == "corpus" else soundfile.info(path).frames)
        assert soundfile.read(path)[0].size > 0


def test_rank_zero_takes_only_this_runs_reports_and_gives_up_in_one_line(tmp_path, monkeypatch):
    from fastwavenet import corpus
    from fastwavenet.corpus import Report

    corpus._write_report(tmp_path, Report(1, done=["old"], samples=5, seconds=1.0), "earlier-run")
    monkeypatch.setattr(corpus, "REPORT_WAIT_SECONDS", 0.2)
    with pytest.raises(FastWaveNetError, match=r"no report from rank\(s\) 1 in .* rerun the same command"):
        corpus._gather_reports(tmp_path, 2, "this-run", poll_seconds=0.01)
    corpus._write_report(tmp_path, Report(1, done=["a"], failed=[(3, "b", "bad")], samples=7, seconds=2.0),
                         "this-run")
    assert corpus._gather_reports(tmp_path, 2, "this-run", poll_seconds=0.01) == [
        Report(1, done=["a"], failed=[(3, "b", "bad")], samples=7, seconds=2.0)]
