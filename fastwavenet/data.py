"""Training data: audio files -> mu-law codes -> random fixed-length crops, split into train and validation by file."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import audio, mulaw
from .errors import FastWaveNetError


@dataclass
class Corpus:
    """Encoded audio: one int64 code array per file, with the file names; for conditioned models also each file's
    log-mel frames (n_mels, 1 + len // hop) and speaker id."""

    names: list[str]
    codes: list[np.ndarray]
    mels: list[np.ndarray] | None = None
    speakers: list[int] | None = None

    def subset(self, keep: list[int]) -> "Corpus":
        pick = lambda items: None if items is None else [items[i] for i in keep]  # noqa: E731
        return Corpus(pick(self.names), pick(self.codes), pick(self.mels), pick(self.speakers))

    @property
    def samples(self) -> int:
        return sum(len(c) for c in self.codes)


def speaker_names(paths) -> list[str]:
    """Speakers are the folders that hold audio files: their names, sorted; a speaker's id is its index here."""
    return sorted({p.parent.name for p in audio.list_audio(paths)})


def load_corpus(paths, sample_rate: int, classes: int, min_samples: int = 1, config=None,
                speakers: list[str] | None = None) -> Corpus:
    """Read files and folders, skip (with a warning naming each) what cannot be read or is shorter than
    `min_samples`, and raise FastWaveNetError if nothing usable is left. With a conditioned `config`, also compute
    log-mel features (if config.n_mels) and speaker ids from parent folder names in `speakers`."""
    from .features import log_mel

    files = audio.list_audio(paths)
    names, codes, mels, ids = [], [], [], []
    for path in files:
        try:
            x = audio.read(path, sample_rate)
        except FastWaveNetError as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
            continue
        if len(x) < min_samples:
            warnings.warn(f"skipping {path}: {len(x)} samples, fewer than the {min_samples} a crop needs",
                          stacklevel=2)
            continue
        if config is not None and config.speakers:
            if path.parent.name not in (speakers or []):
                warnings.warn(f"skipping {path}: its folder {path.parent.name!r} is not a known speaker", stacklevel=2)
                continue
            ids.append(speakers.index(path.parent.name))
        names.append(str(path))
        codes.append(mulaw.encode(x, classes))
        if config is not None and config.n_mels:
            mels.append(log_mel(x, config))
    if not codes:
        raise FastWaveNetError(f"no usable audio in {', '.join(map(str, paths))}")
    conditioned = config is not None
    return Corpus(names, codes, mels if conditioned and config.n_mels else None,
                  ids if conditioned and config.speakers else None)


def split_by_file(corpus: Corpus, validation: list[str] | int) -> tuple[Corpus, Corpus | None]:
    """Hold files out for validation: a list of names (matched by file name or stem), or a count taken from the end
    of the sorted list. With a single file and a count, there is no validation set."""
    if isinstance(validation, int):
        if validation <= 0 or len(corpus.names) <= validation:
            return corpus, None
        held = set(range(len(corpus.names) - validation, len(corpus.names)))
    else:
        wanted = set(validation)
        held = {i for i, n in enumerate(corpus.names) if Path(n).name in wanted or Path(n).stem in wanted}
        missing = wanted - {Path(corpus.names[i]).name for i in held} - {Path(corpus.names[i]).stem for i in held}
        if missing:
            raise FastWaveNetError(f"validation file(s) not in the data: {', '.join(sorted(missing))}")
        if len(held) == len(corpus.names):
            raise FastWaveNetError("every file is held out for validation; nothing is left to train on")
    rest = [i for i in range(len(corpus.names)) if i not in held]
    return corpus.subset(rest), corpus.subset(sorted(held))


class CropDataset(Dataset):
    """Item i is a crop of `length` codes, drawn deterministically from (seed, first + i), as a tuple
    (codes (length,), mel (n_mels, length / hop) or empty, speaker id or -1).

    The index alone fixes the crop, so a run resumed at step s sees exactly the crops it would have seen, and a
    DistributedSampler can shard the items across ranks. Files are chosen in proportion to their length. With mel
    features, crops start on a frame boundary (a multiple of `hop`) and `length` must be a multiple of it.
    """

    def __init__(self, corpus: Corpus, length: int, items: int, seed: int = 0, first: int = 0, hop: int = 1):
        keep = [i for i, c in enumerate(corpus.codes) if len(c) >= length]
        if not keep:
            raise FastWaveNetError(f"no file is long enough for a crop of {length} samples")
        if corpus.mels is not None and length % hop:
            raise ValueError("crop length must be a multiple of the hop length")
        corpus = corpus.subset(keep)
        self.codes = [torch.from_numpy(c) for c in corpus.codes]
        self.mels = None if corpus.mels is None else [torch.from_numpy(m) for m in corpus.mels]
        self.speakers = corpus.speakers
        weights = np.array([len(c) - length + 1 for c in corpus.codes], dtype=np.float64)
        self.cumulative = np.cumsum(weights / weights.sum())
        self.length, self.items, self.seed, self.first = length, items, seed, first
        self.hop = hop if self.mels is not None else 1

    def __len__(self):
        return self.items

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.first + i])
        f = min(int(np.searchsorted(self.cumulative, rng.random(), side="right")), len(self.codes) - 1)
        start = self.hop * int(rng.integers(0, (len(self.codes[f]) - self.length) // self.hop + 1))
        return crop(self, f, start, self.length)


def crop(source, f: int, start: int, length: int):
    """(codes, mel, speaker) of file f from sample `start`; `source` has codes, mels, speakers and hop."""
    codes = source.codes[f][start:start + length]
    mel = torch.empty(0, 0)
    if source.mels is not None:
        frame = start // source.hop
        mel = source.mels[f][:, frame:frame + length // source.hop]
    speaker = -1 if source.speakers is None else source.speakers[f]
    return codes, mel, speaker


def validation_crops(corpus: Corpus, length: int, count: int, hop: int = 1):
    """`count` crops spread evenly over the validation files (the same every time), as stacked
    (codes (N, length), mel (N, n_mels, length / hop) or empty, speakers (N,))."""
    source = CropDataset(corpus, length, items=0, hop=hop)
    items = []
    per_file = max(1, count // len(source.codes))
    for f, c in enumerate(source.codes):
        for start in np.linspace(0, (len(c) - length) // source.hop, per_file).astype(int):
            items.append(crop(source, f, int(start) * source.hop, length))
    items = items[:max(count, len(source.codes))]
    return (torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]),
            torch.tensor([i[2] for i in items]))
