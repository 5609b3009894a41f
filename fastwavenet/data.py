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
    """Encoded audio: one int64 code array per file, with the file names."""

    names: list[str]
    codes: list[np.ndarray]

    @property
    def samples(self) -> int:
        return sum(len(c) for c in self.codes)


def load_corpus(paths, sample_rate: int, classes: int, min_samples: int = 1) -> Corpus:
    """Read files and folders, skip (with a warning naming each) what cannot be read or is shorter than
    `min_samples`, and raise FastWaveNetError if nothing usable is left."""
    files = audio.list_audio(paths)
    names, codes = [], []
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
        names.append(str(path))
        codes.append(mulaw.encode(x, classes))
    if not codes:
        raise FastWaveNetError(f"no usable audio in {', '.join(map(str, paths))}")
    return Corpus(names, codes)


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
    pick = lambda keep: Corpus([corpus.names[i] for i in keep], [corpus.codes[i] for i in keep])  # noqa: E731
    rest = [i for i in range(len(corpus.names)) if i not in held]
    return pick(rest), pick(sorted(held))


class CropDataset(Dataset):
    """Item i is a crop of `length` codes, drawn deterministically from (seed, first + i).

    The index alone fixes the crop, so a run resumed at step s sees exactly the crops it would have seen, and a
    DistributedSampler can shard the items across ranks. Files are chosen in proportion to their length.
    """

    def __init__(self, corpus: Corpus, length: int, items: int, seed: int = 0, first: int = 0):
        usable = [c for c in corpus.codes if len(c) >= length]
        if not usable:
            raise FastWaveNetError(f"no file is long enough for a crop of {length} samples")
        self.codes = [torch.from_numpy(c) for c in usable]
        weights = np.array([len(c) - length + 1 for c in usable], dtype=np.float64)
        self.cumulative = np.cumsum(weights / weights.sum())
        self.length, self.items, self.seed, self.first = length, items, seed, first

    def __len__(self):
        return self.items

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.first + i])
        f = min(int(np.searchsorted(self.cumulative, rng.random(), side="right")), len(self.codes) - 1)
        start = int(rng.integers(0, len(self.codes[f]) - self.length + 1))
        return self.codes[f][start:start + self.length]


def validation_crops(corpus: Corpus, length: int, count: int) -> torch.Tensor:
    """`count` crops spread evenly over the validation files (the same every time): (count, length) int64."""
    crops = []
    usable = [c for c in corpus.codes if len(c) >= length]
    if not usable:
        raise FastWaveNetError(f"no validation file is long enough for a crop of {length} samples")
    per_file = max(1, count // len(usable))
    for c in usable:
        for start in np.linspace(0, len(c) - length, per_file).astype(int):
            crops.append(torch.from_numpy(c[start:start + length]))
    return torch.stack(crops[:max(count, len(usable))])
