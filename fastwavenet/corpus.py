"""Corpus generation from a manifest: one item per line, sharded over torchrun's ranks, run through the serving
engine, resumable, deterministic.

A manifest is JSON Lines, one object per item:
    {"id": "utt001", "seconds": 2.5, "seed": 7, "temperature": 0.9, "top_k": 0, "top_p": 1.0, "argmax": false,
     "speaker": 0, "prime": "intro.wav"}                                   (generate)
    {"id": "utt002", "mel": "mels/utt002.npy", "seed": 3}                  (vocode: mel frames .npy/.npz ...)
    {"id": "utt003", "audio": "speech/utt003.wav"}                         (... or audio to resynthesize)
`id` names the output, DIR/<id>.wav (letters, digits, `.`, `_`, `-`; unique). Paths are relative to the manifest's
folder. Without a `seed`, an item's seed is derived from its id (the first 8 bytes of SHA-256 of it), so its audio
still depends on nothing but its own line and the model: not on the number of ranks, its position in the manifest
or what it was batched with (the engine's one-request-one-answer guarantee).

Sharding: every rank reads the whole manifest and assigns all its valid items the same way (longest first, each to
the rank with the least audio so far), so ranks agree without talking; then each rank skips its items whose output
already exists. Outputs are written under a temporary name and renamed when complete, so an existing DIR/<id>.wav is
always a finished one; an interrupted run leaves none of its unfinished items behind, and rerunning the same command
redoes only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import audio
from .errors import FastWaveNetError
from .files import partial_target
from .request import GenerationRequest, arg_positive_integer, parse_json
from .sampling import Sampling

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,200}")  # fullmatch: `$` would let a trailing newline through
KEYS = {"id", "prime", "mel", "audio"}  # the corpus's own fields; the others are a GenerationRequest's


@dataclass
class Item:
    line: int
    id: str
    length: int                     # samples to make (for a vocoding item from audio: an estimate, for sharding)
    seed: int
    sampling: Sampling
    speaker: int | None = None
    prime: Path | None = None
    mel: Path | None = None
    audio: Path | None = None


@dataclass
class Report:
    """What one rank did."""

    rank: int
    done: list = field(default_factory=list)      # ids
    skipped: list = field(default_factory=list)   # ids whose output existed
    failed: list = field(default_factory=list)    # (line, id, message)
    samples: int = 0
    seconds: float = 0.0


def derived_seed(item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def read_manifest(path, config, vocode: bool,
                  sampling: Sampling = Sampling()) -> tuple[list[Item], list[tuple[int, str]]]:
    """The valid items of a manifest, and (line number, message) for each line that is not one. A line's sampling
    fields override `sampling` (the model's default) field by field."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FastWaveNetError(f"cannot read manifest {path}: {exc}") from None
    items, errors, seen = [], [], set()
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            item = _item(parse_json(text), number, path.parent, config, vocode, sampling)
        except FastWaveNetError as exc:
            errors.append((number, str(exc)))
            continue
        if item.id in seen:
            errors.append((number, f"id {item.id!r} appears on an earlier line"))
            continue
        seen.add(item.id)
        items.append(item)
    if not items and not errors:
        raise FastWaveNetError(f"manifest {path} holds no items")
    return items, errors


def _item(obj, number: int, folder: Path, config, vocode: bool, default: Sampling) -> Item:
    if not isinstance(obj, dict):
        raise FastWaveNetError("a line must be a JSON object")
    item_id = obj.get("id")
    if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
        raise FastWaveNetError("id must be a string of letters, digits, '.', '_' or '-'")
    request = GenerationRequest.from_manifest({k: v for k, v in obj.items() if k not in KEYS})

    def existing(key):
        if key not in obj:
            return None
        if not isinstance(obj[key], str):
            raise FastWaveNetError(f"{key} must be a path")
        p = folder / obj[key]
        if not p.is_file():
            raise FastWaveNetError(f"{key} file not found: {p}")
        return p

    prime, mel, source = existing("prime"), existing("mel"), existing("audio")
    rate = config.sample_rate
    if vocode:
        if (mel is None) == (source is None):
            raise FastWaveNetError("a vocoding item needs a mel file or an audio file (one of them)")
        if request.seconds is not None:
            raise FastWaveNetError("a vocoding item makes what its mel covers: seconds is not a field")
        # Its frames are read when it runs: checked here as a request whose frames are still to come.
        dataclasses.replace(request, stream_mel=True).check(config)
        if mel is not None:
            if mel.suffix.lower() not in (".npy", ".npz"):
                raise FastWaveNetError("mel must be a .npy or .npz file (audio to resynthesize goes in `audio`)")
            length = _frames(mel, config) * config.hop_length
        else:
            info = _audio_info(source)
            length = int(round(info.frames * rate / info.samplerate))
    else:
        if mel is not None or source is not None:
            raise FastWaveNetError("mel and audio are for `fastwavenet vocode --manifest`")
        request.check(config)
        length = round(request.seconds * rate)
    seed = derived_seed(item_id) if request.seed is None else request.seed
    return Item(number, item_id, length, seed, request.sampling(default), request.speaker, prime, mel, source)


def _frames(path: Path, config) -> int:
    axis = 0 if config.r9y9_features else -1  # r9y9's features are (frames, bands)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return int(data["mel"].shape[axis]) if "mel" in data else 0
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[axis])
    except (OSError, ValueError, EOFError, IndexError) as exc:
        raise FastWaveNetError(f"cannot read mel file {path}: {exc}") from None


def _audio_info(path: Path):
    import soundfile

    try:
        return soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise FastWaveNetError(f"cannot read audio file {path}: {exc}") from None


def shard(items: list[Item], rank: int, world: int) -> list[Item]:
    """This rank's items: longest first, each to the rank with the least audio so far (lowest rank on ties); every
    rank computes the same assignment. Returned in manifest order."""
    load = [0] * world
    mine = []
    for item in sorted(items, key=lambda i: (-i.length, i.line)):
        target = min(range(world), key=lambda r: (load[r], r))
        load[target] += item.length
        if target == rank:
            mine.append(item)
    return sorted(mine, key=lambda i: i.line)


def run_manifest(model, manifest, out_dir, vocode: bool = False, backend: str = "auto", device: str = "cpu",
                 precision: str = "float32", max_active: int = 64, progress: bool = False) -> dict:
    """Make every item of `manifest` (JSON Lines, docs/CORPUS.md) into out_dir/<id>.wav, skipping those already
    there: all of them in one process, or this rank's share under torchrun (RANK and WORLD_SIZE in the environment;
    with device "cuda", each rank takes cuda:LOCAL_RANK). `model`: a model file (None: the bundled demo) or a
    Generator. Bad lines and failed items are printed to stderr (bad lines by rank 0 only) and the others still run.

    Returns the run's summary (the counts, failures with their lines, seconds of audio, samples/s per rank and in
    all), which rank 0 also writes to out_dir/summary.json; another rank returns the summary of its own share."""
    from .engine import Engine
    from .files import write_json
    from .generator import Generator

    rank, world, local = distributed()
    run_id = None
    if world > 1:
        run_id = _agree_on_run_id(rank)
        if device == "cuda":
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
        _share_cores(local)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FastWaveNetError(f"cannot create {out_dir}: {exc.strerror}") from None
    generator = model if isinstance(model, Generator) else Generator(model, backend=backend, device=device,
                                                                     precision=precision, expected_batch=max_active)
    if bool(generator.config.n_mels) != vocode:
        raise FastWaveNetError("this model is a vocoder: use fastwavenet vocode --manifest" if not vocode else
                               "this model is not a vocoder (it takes no mel features)")
    items, errors = read_manifest(manifest, generator.config, vocode, generator.sampling)
    if rank == 0:
        for number, message in errors:
            print(f"fastwavenet: {manifest}:{number}: {message}", file=sys.stderr)
    engine = Engine(generator, max_active=max_active, max_waiting=2 * max_active)
    try:
        report = generate_items(engine, shard(items, rank, world), out_dir, rank, progress=progress)
    finally:
        engine.close(cancel=True)
    if rank > 0:
        _write_report(out_dir, report, run_id)
        return summarize([report], [], generator.sample_rate)
    reports = [report] + (_gather_reports(out_dir, world, run_id) if world > 1 else [])
    summary = summarize(reports, errors, generator.sample_rate)
    write_json(out_dir / "summary.json", summary)
    if world > 1:
        shutil.rmtree(out_dir / REPORTS, ignore_errors=True)
    return summary


def add_manifest_arguments(parser):
    """generate's and vocode's --manifest, --out-dir and --max-active: `generate_corpus` instead of one file."""
    group = parser.add_argument_group("corpus generation (one process, or one per rank under torchrun)")
    group.add_argument("--manifest", help="JSON Lines, one item per line (docs/CORPUS.md); outputs OUT_DIR/<id>.wav")
    group.add_argument("--out-dir", help="folder for the manifest's outputs and summary.json")
    group.add_argument("--max-active", type=arg_positive_integer, default=64,
                       help="items generated at once (default 64)")


def check_manifest_args(args):
    """With --manifest (`add_manifest_arguments`): --out-dir given, and none of generate's and vocode's flags that a
    manifest's line sets for its own item instead. One-line FastWaveNetError."""
    if not args.out_dir:
        raise FastWaveNetError("--manifest needs --out-dir")
    if getattr(args, "output", None) is not None:
        raise FastWaveNetError("with --manifest, each item's file goes to --out-dir: drop -o")
    per_line = [name for name, default in (("seconds", None), ("seed", None), ("speaker", None),
                                           ("global_features", None), ("prime", None), ("temperature", None),
                                           ("top_k", None), ("top_p", None), ("argmax", False), ("batch", 1))
                if getattr(args, name, default) != default]
    if per_line:
        raise FastWaveNetError(f"with --manifest, {', '.join('--' + n.replace('_', '-') for n in per_line)} "
                               f"belong(s) on each line of the manifest")


def generate_corpus(model, manifest, out_dir, vocode: bool = False, backend: str = "auto", device: str = "cpu",
                    precision: str = "float32", max_active: int = 64, progress: bool = False) -> dict:
    """What `fastwavenet generate --manifest` (or `vocode --manifest`) does: `run_manifest`, then, on rank 0, the
    run's summary in one line; a FastWaveNetError once it is written if any item failed. Returns the summary."""
    summary = run_manifest(model, manifest, out_dir, vocode, backend=backend, device=device, precision=precision,
                           max_active=max_active, progress=progress)
    if distributed()[0] > 0:
        return summary  # rank 0 speaks for the run
    print(f"{summary['items_done']} items made, {summary['items_skipped']} already there, "
          f"{summary['items_failed']} failed; {summary['seconds_of_audio']:.1f} s of audio at "
          f"{summary['samples_per_s']:,.0f} samples/s over {len(summary['ranks'])} process(es); "
          f"{os.path.join(out_dir, 'summary.json')}")
    if summary["items_failed"]:
        total = summary["items_done"] + summary["items_skipped"] + summary["items_failed"]
        raise FastWaveNetError(f"{summary['items_failed']} of {total} items failed (see above and summary.json)")
    return summary


def generate_items(engine, items: list[Item], out_dir: Path, rank: int = 0, progress: bool = False,
                   max_loaded: int | None = None) -> Report:
    """Generate items into out_dir/<id>.wav through the engine, skipping those already complete and removing what
    an interrupted run left of the others (only the rank that makes an item ever writes its file)."""
    report = Report(rank)
    complete = _remove_partials(out_dir, items)
    todo = []
    for item in items:
        if f"{item.id}.wav" in complete:
            report.skipped.append(item.id)
        else:
            todo.append(item)
    bar = None
    if progress:
        from .progress import progress_bar

        bar = progress_bar(total=sum(i.length for i in todo), unit="sample", unit_scale=True, dynamic_ncols=True,
                   desc=f"rank {rank}", position=rank)
    started = time.perf_counter()
    try:
        _run_to_the_end(_run_all(engine, todo, out_dir, report, bar, max_loaded or 2 * engine.max_active))
    finally:
        report.seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
        # An interrupt can land anywhere, an item's own cleanup included: what is left of unfinished items goes.
        _remove_partials(out_dir, todo)
    return report


def _remove_partials(out_dir: Path, items: list[Item]) -> set[str]:
    """Remove the temporary files of these items (only the rank that makes an item ever writes them), from one
    listing of out_dir; return the names of the complete files it holds."""
    complete, left_behind = set(), {}  # target name -> its temporary files
    with os.scandir(out_dir) as entries:
        for entry in entries:
            if entry.is_file():
                complete.add(entry.name)
                target = partial_target(entry.name)
                if target is not None:
                    left_behind.setdefault(target, []).append(entry.name)
    for item in items:
        for stale in left_behind.get(f"{item.id}.wav", []):
            (out_dir / stale).unlink(missing_ok=True)
    return complete


def _run_to_the_end(main):
    """Run the coroutine `main` on a new event loop, as asyncio.run does, except that when Ctrl-C or SIGTERM stops
    the loop, `main` is cancelled and its cleanup runs before the loop closes, then what the signal's handler raised
    (KeyboardInterrupt; the CLI's `Terminated`) is raised. (With asyncio.run, SIGTERM landing inside a task left that
    task's exception unretrieved, logged with a traceback.) In the main thread the loop calls the signals' handlers
    itself (`_stop_on_signals`); elsewhere, or for a signal whose handler is not Python's, they raise wherever they
    land, as before."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(main)
    try:
        with _stop_on_signals(loop, task) as raised:
            try:
                loop.run_until_complete(task)
            except asyncio.CancelledError:
                if not raised:
                    raise
        if raised:
            raise raised[0]
    finally:
        try:
            if not task.done():
                task.cancel()
                loop.run_until_complete(asyncio.wait([task]))
            if not task.cancelled():
                task.exception()  # raised above already: marked as seen, so that it is not logged again
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


@contextlib.contextmanager
def _stop_on_signals(loop, task):
    """While `loop` runs `task` in the main thread, the Python handlers of Ctrl-C and SIGTERM run as the loop's
    callbacks, not wherever the main thread happens to be: an interrupt raised in a weakref callback or a __del__ is
    printed as ignored and lost, and a corpus run went on to its end after Ctrl-C (seen once in CI, in asyncio's
    WeakSet of tasks). Yields a list that receives what a handler raises, the task then cancelled; a handler that
    raises nothing lets the run go on, as it would have. Signals whose handler is not a Python function (SIG_DFL,
    SIG_IGN) are left alone."""
    raised, taken = [], []
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if callable(handler):
                def call(signum=signum, handler=handler):
                    try:
                        handler(signum, None)
                    except BaseException as exc:  # (KeyboardInterrupt, the CLI's Terminated): the run stops with it
                        raised.append(exc)
                        task.cancel()
                loop.add_signal_handler(signum, call)
                taken.append((signum, handler))
    try:
        yield raised
    finally:
        for signum, handler in taken:
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)


async def _run_all(engine, todo, out_dir, report, bar, max_loaded):
    # Inputs (mel frames, prime audio) are loaded only when an item is about to be submitted, a bounded number at a
    # time, so a manifest of any size holds a bounded amount in memory.
    gate = asyncio.Semaphore(max_loaded)
    live = set()  # requests submitted and not seen to end
    tasks = [asyncio.create_task(_run_one(engine, item, out_dir, report, bar, gate, live)) for item in todo]
    try:
        # Not gather's first exception: a Ctrl-C or SIGTERM raised inside an item's task has left the event loop
        # already, and raised in here as well it would be an exception nobody retrieves (logged, with a traceback).
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                raise outcome  # a bug
    finally:
        try:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            _let_go(live)


def _let_go(requests):
    """Cancel the requests and wait (blocking) until the engine has ended each. The engine wakes a request's event
    loop until the request ends, and the loop closes when generate_items returns: after Ctrl-C, a request the engine
    still held made its thread fail on the closed loop, with a traceback."""
    for request in requests:
        request.cancel()
    for request in requests:
        with contextlib.suppress(FastWaveNetError):  # Cancelled, or the error it failed with
            for _ in request:
                pass


async def _run_one(engine, item: Item, out_dir: Path, report: Report, bar, gate, live: set):
    loop = asyncio.get_running_loop()
    async with gate:
        stream = None
        request = None
        try:
            length, kwargs = await loop.run_in_executor(None, _inputs, item, engine.config)
            request = engine.submit(samples=length, seed=item.seed, sampling=item.sampling, speaker=item.speaker,
                                    **kwargs)
            live.add(request)
            stream = audio.WavStream(out_dir / f"{item.id}.wav", engine.config.sample_rate)
            async for chunk in request:
                stream.write(chunk)
                report.samples += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            stream.close()
            report.done.append(item.id)
        except FastWaveNetError as exc:
            report.failed.append((item.line, item.id, str(exc)))
            print(f"fastwavenet: line {item.line} ({item.id}): {exc}", file=sys.stderr)
        finally:
            if request is not None:
                if request.finished:
                    live.discard(request)
                else:
                    request.cancel()
            if stream is not None:
                stream.discard()  # a no-op after close; otherwise the unfinished file goes


def _inputs(item: Item, config) -> tuple[int, dict]:
    """Samples to make and the inputs to submit, read as `vocode` and `generate --prime` read them."""
    kwargs = {}
    length = item.length
    if item.prime is not None:
        kwargs["prime"] = audio.read(item.prime, config.sample_rate)
    if item.mel is not None or item.audio is not None:
        from .features import features_from_file

        kwargs["mel"], length = features_from_file(item.mel or item.audio, config)
    return length, kwargs


def distributed() -> tuple[int, int, int]:
    """(rank, world size, processes on this node) from torchrun's environment; (0, 1, 1) without it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_WORLD_SIZE", world))


def _share_cores(local: int):
    """Ranks on one machine share its cores: each gets its part of numba's threads."""
    if importlib.util.find_spec("numba") is None:
        return
    import numba

    from .backends.numba_cpu import numba_threads

    numba.set_num_threads(max(1, min(numba_threads(), (os.cpu_count() or 1) // local)))


# Ranks exchange nothing while they generate: each writes its report to out_dir/.reports/rank-K.json when done, and
# rank 0 waits for them, however long the others take (a rank whose items were all made by an earlier run is done
# at once). A collective there ended the job when one rank waited longer than gloo's timeout (30 minutes), and could
# not be interrupted. Rank 0 gives up after REPORT_WAIT_SECONDS in which no report arrives.
REPORTS = ".reports"
REPORT_WAIT_SECONDS = 24 * 3600.0


def _agree_on_run_id(rank: int) -> str:
    """A name for this run that every rank knows, so that rank 0 never takes an earlier run's report for this one's:
    rank 0 draws it and sends it to the others, at the start, when torchrun has just started them all."""
    import uuid

    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        chosen = [uuid.uuid4().hex if rank == 0 else None]
        dist.broadcast_object_list(chosen, src=0)
    finally:
        dist.destroy_process_group()
    return chosen[0]


def _write_report(out_dir: Path, report: Report, run_id: str):
    from .files import write_json

    folder = out_dir / REPORTS
    folder.mkdir(exist_ok=True)
    write_json(folder / f"rank-{report.rank}.json", dict(run=run_id, **asdict(report)))


def _gather_reports(out_dir: Path, world: int, run_id: str, poll_seconds: float = 0.5) -> list[Report]:
    """The reports of ranks 1 .. world - 1 of run `run_id`, waited for (interruptibly: Ctrl-C and SIGTERM stop it)."""
    reports = {}
    waited_since = time.monotonic()
    while len(reports) < world - 1:
        for rank in range(1, world):
            if rank in reports:
                continue
            try:
                data = json.loads((out_dir / REPORTS / f"rank-{rank}.json").read_text())
            except FileNotFoundError:
                continue
            if data.pop("run") == run_id:
                data["failed"] = [tuple(f) for f in data["failed"]]
                reports[rank] = Report(**data)
                waited_since = time.monotonic()
        if len(reports) < world - 1:
            if time.monotonic() - waited_since > REPORT_WAIT_SECONDS:
                missing = sorted(set(range(1, world)) - set(reports))
                raise FastWaveNetError(f"no report from rank(s) {', '.join(map(str, missing))} in "
                                       f"{REPORT_WAIT_SECONDS / 3600:g} hours: rerun the same command to finish "
                                       f"(finished items are kept)")
            time.sleep(poll_seconds)
    return [reports[rank] for rank in range(1, world)]


def summarize(reports: list[Report], errors: list[tuple[int, str]], audio_rate: int) -> dict:
    done = sum(len(r.done) for r in reports)
    samples = sum(r.samples for r in reports)
    return dict(items_done=done, items_skipped=sum(len(r.skipped) for r in reports),
                items_failed=len(errors) + sum(len(r.failed) for r in reports),
                failed=[dict(line=n, error=m) for n, m in errors] +
                       [dict(line=n, id=i, error=m) for r in reports for n, i, m in r.failed],
                seconds_of_audio=samples / audio_rate,
                ranks=[dict(rank=r.rank, items=len(r.done), samples=r.samples, seconds=r.seconds,
                            samples_per_s=r.samples / r.seconds if r.seconds else 0.0) for r in reports],
                samples_per_s=samples / max(r.seconds for r in reports) if reports and
                max(r.seconds for r in reports) else 0.0)
