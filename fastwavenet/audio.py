"""Reading any audio to mono float at a rate; writing WAV atomically, whole or as a stream."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile

from .errors import FastWaveNetError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3", ".opus", ".m4a"}


def read(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 in [-1, 1] at `sample_rate` Hz (mixing channels, resampling).

    soundfile reads WAV, FLAC, OGG and the other libsndfile formats; anything else goes through librosa.
    Unreadable, empty or non-finite audio raises FastWaveNetError.
    """
    path = Path(path)
    if not path.is_file():
        raise FastWaveNetError(f"no such audio file: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        data = data.mean(axis=1)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        data, rate = _read_with_librosa(path)
    if data.size == 0:
        raise FastWaveNetError(f"audio file is empty: {path}")
    if not np.isfinite(data).all():
        raise FastWaveNetError(f"audio file holds NaN or infinite samples: {path}")
    if rate != sample_rate:
        import librosa

        data = librosa.resample(data, orig_sr=rate, target_sr=sample_rate)
    return np.clip(data, -1.0, 1.0).astype(np.float32)


def _read_with_librosa(path: Path):
    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, rate = librosa.load(str(path), sr=None, mono=True)
    except Exception as exc:  # librosa raises many types for unreadable files
        raise FastWaveNetError(f"cannot read audio {path}: {type(exc).__name__}") from None
    return data.astype(np.float32), int(rate)


def source_rate(path: str | os.PathLike) -> int | None:
    """The sample rate stored in the file, or None if soundfile cannot tell."""
    try:
        return soundfile.info(str(path)).samplerate
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None


def list_audio(paths) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of audio files."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise FastWaveNetError(f"no such file or folder: {p}")
    return found


def give_default_permissions(path: Path):
    """mkstemp creates files readable by the owner only; give the mode a plain open() would (0666 less umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with a clear message, if a file cannot be created at `path`."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FastWaveNetError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise FastWaveNetError(f"no permission to write in {folder}")
    if path.is_dir():
        raise FastWaveNetError(f"output path is a folder: {path}")
    return path


# A WAV file's sizes are 32-bit: its data chunk holds at most 2**32 - 1 bytes (minus the header), 2 bytes a sample.
WAV_MAX_FRAMES = (2**32 - 1 - 44) // 2


class WavStream:
    """A WAV file written as samples arrive, under a temporary name, renamed into place on `close`.

    The header is rewritten at every `write`, so even a killed process leaves a readable temporary file; `close`
    (also reached on Ctrl-C through the context manager) renames it to the final path. PCM 16-bit, mono.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int):
        self.path = check_writable(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent or ".")
        os.close(fd)
        self._tmp = Path(tmp)
        give_default_permissions(self._tmp)
        self._file = soundfile.SoundFile(tmp, mode="w", samplerate=sample_rate, channels=1, subtype="PCM_16",
                                         format="WAV")
        self.frames = 0

    def write(self, samples: np.ndarray):
        self._file.write(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0))
        self._file.flush()
        self.frames += len(samples)

    def close(self):
        if self._file.closed:
            return
        self._file.close()
        os.replace(self._tmp, self.path)

    def discard(self):
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # Keep what was generated when the user interrupts; drop the file on any other failure.
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            if self.frames or exc_type is None:
                self.close()
                return
        self.discard()


def write(path: str | os.PathLike, samples: np.ndarray, sample_rate: int):
    """Write a whole mono WAV atomically."""
    with WavStream(path, sample_rate) as out:
        out.write(samples)
