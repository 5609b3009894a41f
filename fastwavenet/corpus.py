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
import dataclasses
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import audio
from .errors import FastWaveNetError
from .request import GenerationRequest, parse_json
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


def run(engine, items: list[Item], out_dir: Path, rank: int = 0, progress: bool = False,
        max_loaded: int | None = None) -> Report:
    """Generate this rank's items into out_dir through the engine; skip those already complete."""
    report = Report(rank)
    todo = []
    for item in items:
        if (out_dir / f"{item.id}.wav").is_file():
            report.skipped.append(item.id)
        else:
            todo.append(item)
            # What a killed run left of this item (only this rank makes it): a hidden, never-finished temporary.
            for stale in out_dir.glob(f".{item.id}.wav.*.partial"):
                stale.unlink(missing_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(i.length for i in todo), unit="sample", unit_scale=True, dynamic_ncols=True,
                   desc=f"rank {rank}", position=rank)
    started = time.perf_counter()
    try:
        asyncio.run(_run_all(engine, todo, out_dir, report, bar, max_loaded or 2 * engine.max_active))
    finally:
        report.seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
    return report


async def _run_all(engine, todo, out_dir, report, bar, max_loaded):
    # Inputs (mel frames, prime audio) are loaded only when an item is about to be submitted, a bounded number at a
    # time, so a manifest of any size holds a bounded amount in memory.
    gate = asyncio.Semaphore(max_loaded)
    tasks = [asyncio.create_task(_run_one(engine, item, out_dir, report, bar, gate)) for item in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run_one(engine, item: Item, out_dir: Path, report: Report, bar, gate):
    loop = asyncio.get_running_loop()
    async with gate:
        stream = None
        request = None
        try:
            length, kwargs = await loop.run_in_executor(None, _inputs, item, engine.config)
            request = engine.submit(samples=length, seed=item.seed, sampling=item.sampling, speaker=item.speaker,
                                    **kwargs)
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
            if request is not None and not request.finished:
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
