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

from helpers import run_cli, save_models

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


@pytest.mark.parametrize("option", [["--seed", "3"], ["--temperature", "0.5"], ["--batch", "2"]])
def test_per_item_options_belong_in_the_manifest(models, tmp_path, option):
    manifest = write_manifest(tmp_path, [{"id": "a", "seconds": 0.1}])
    result = run_cli("generate", "--model", models["tiny"], "--manifest", manifest, "--out-dir", tmp_path, *option)
    assert result.returncode == 2 and "each line of the manifest" in result.stderr


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
