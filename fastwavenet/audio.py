"""Reading any audio to mono float at a rate; writing WAV atomically, whole or as a stream."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

import numpy as np
import soundfile

from .errors import FastWaveNetError
from .files import check_writable, fsync_path, temporary_beside, write_failed

# The highest sample rate an upload may have: with the length limit, it bounds what one decoding holds.
UPLOAD_MAX_RATE = 384_000

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3", ".opus", ".m4a"}


def read(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 in [-1, 1] at `sample_rate` Hz (mixing channels, resampling).

    soundfile reads WAV, FLAC, OGG and the other libsndfile formats; anything else goes through librosa.
    Unreadable, empty or non-finite audio raises FastWaveNetError.
    """
    path = Path(path)
    if path.is_dir():
        raise FastWaveNetError(f"{path} is a folder, not an audio file")
    if not path.is_file():
        raise FastWaveNetError(f"no such audio file: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        data = data.mean(axis=1)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        data, rate = _read_with_librosa(path)
    return _checked(data, rate, sample_rate, str(path))


def read_bytes(data: bytes, sample_rate: int, what: str = "audio",
               max_seconds: float | None = None) -> np.ndarray:
    """`read` for the bytes of a file in one of libsndfile's formats (WAV, FLAC, OGG, ...): an upload, say.

    max_seconds: refuse longer audio from the file's header, before decoding it (a few KB of compressed silence can
    hold hours), and audio above UPLOAD_MAX_RATE Hz; the decoding stops at that length whatever the header says, and
    mixes channels block by block: at most max_seconds x UPLOAD_MAX_RATE samples of float32 are held."""
    import io

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            frames, rate = f.frames, f.samplerate
            if max_seconds is not None:
                if rate > UPLOAD_MAX_RATE:
                    raise FastWaveNetError(f"{what} is at {rate} Hz; at most {UPLOAD_MAX_RATE} Hz is taken")
                if frames > max_seconds * rate:
                    raise FastWaveNetError(f"{what} holds {frames / rate:g} s of audio; this server makes at most "
                                           f"{max_seconds:g} s per request")
                frames = min(frames, int(max_seconds * rate))
            samples = np.empty(frames, np.float32)
            made = 0
            while made < frames:
                block = f.read(min(1 << 16, frames - made), dtype="float32", always_2d=True)
                if not len(block):
                    break
                samples[made:made + len(block)] = block.mean(axis=1)
                made += len(block)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        # libsndfile's own words: the whole message would name the BytesIO by its address
        raise FastWaveNetError(f"cannot read {what}: {getattr(exc, 'error_string', exc)}") from None
    return _checked(samples[:made], rate, sample_rate, what)


def _checked(data: np.ndarray, rate: int, sample_rate: int, what: str) -> np.ndarray:
    if data.size == 0:
        raise FastWaveNetError(f"audio file is empty: {what}")
    if not np.isfinite(data).all():
        raise FastWaveNetError(f"audio file holds NaN or infinite samples: {what}")
    if rate != sample_rate:
        import librosa

        data = librosa.resample(data, orig_sr=rate, target_sr=sample_rate)
    return np.clip(data, -1.0, 1.0).astype(np.float32)


def _read_with_librosa(path: Path):
    import librosa

    failure = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data, rate = librosa.load(str(path), sr=None, mono=True)
        except Exception as exc:  # librosa raises many types for unreadable files
            failure = type(exc).__name__
        if failure is not None:
            # audioread can leave the file open when a reader fails half-way (a truncated WAV header) and the
            # traceback holds it: collect it here, where the "unclosed file" ResourceWarning is silenced.
            gc.collect()
    if failure is not None:
        raise FastWaveNetError(f"cannot read audio {path}: {failure}")
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


# A WAV file's sizes are 32-bit: its data chunk holds at most 2**32 - 1 bytes (minus the header), 2 bytes a sample.
WAV_MAX_FRAMES = (2**32 - 1 - 44) // 2


class WavStream:
    """A WAV file written as samples arrive, under a temporary name beside the target, renamed into place by `close`.

    `close` (also reached on Ctrl-C or SIGTERM through the context manager) writes the final header, syncs the file
    to disk once and renames it, so the target path only ever holds a complete WAV. Writes in between are not synced
    (one sync per chunk per file capped throughput at large batches); a process killed outright (SIGKILL, power
    loss) leaves only a hidden `.partial` file, never a file at the target path. PCM 16-bit, mono.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int):
        self.path = check_writable(path)
        self._tmp = temporary_beside(self.path)
        self._file = soundfile.SoundFile(str(self._tmp), mode="w", samplerate=sample_rate, channels=1,
                                         subtype="PCM_16", format="WAV")
        self.frames = 0

    def write(self, samples: np.ndarray):
        try:
            self._file.write(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0))
        except (soundfile.LibsndfileError, OSError) as exc:
            raise write_failed(self.path, exc) from None
        self.frames += len(samples)

    def close(self):
        if self._file.closed:
            return
        try:
            self._file.close()
            fsync_path(self._tmp)
            os.replace(self._tmp, self.path)
        except (soundfile.LibsndfileError, OSError) as exc:
            error = write_failed(self.path, exc)  # (before the file goes: it is what fills the disk)
            self._tmp.unlink(missing_ok=True)
            raise error from None

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
