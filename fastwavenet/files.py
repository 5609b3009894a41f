"""Writing files so that a reader never sees half of one: a temporary file beside the target, renamed onto it when
complete. Every file fastwavenet writes goes through here; `cache_root` says where its cache folder is."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import FastWaveNetError


def cache_root() -> Path:
    """fastwavenet's folder in the user's cache: $FASTWAVENET_CACHE_DIR, else $XDG_CACHE_HOME/fastwavenet, else
    ~/.cache/fastwavenet. `auto`'s choices, numba's compiled kernels and Triton's key of itself are kept there."""
    root = os.environ.get("FASTWAVENET_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastwavenet"
    return Path(root)


def place_numba_cache(folder: Path):
    """Keep numba's compiled code in `folder` (fastwavenet's user cache, files.cache_root) instead of beside the
    kernels' source, inside the installed package: `pip uninstall` left that folder behind, and a later editable
    install then imported `fastwavenet` as an empty namespace package. A user's own NUMBA_CACHE_DIR is kept.

    numba reads NUMBA_CACHE_DIR when it is first imported and places a function's cache when the function is
    decorated, so this runs when fastwavenet is imported (its __init__), before any kernel module (and sets numba's
    setting too if numba came first). numba has one cache folder per process: other numba code in the process caches
    there too."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    config = sys.modules.get("numba.core.config")
    if config is not None and not config.CACHE_DIR:
        config.CACHE_DIR = str(folder)


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


def temporary_beside(path: Path) -> Path:
    """A new empty file in `path`'s folder, hidden and marked .partial, with the mode a plain open() would give.
    A folder that refuses new files (where os.access said yes: /sys, a full disk) is a one-line error."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise write_failed(path, exc) from None
    os.close(fd)
    give_default_mode(Path(tmp))
    return Path(tmp)


def partial_target(name: str) -> str | None:
    """The name of the file that the temporary file `name` (made by `temporary_beside`) was to become; None if `name`
    is not one. Exact: mkstemp's random part holds no dot, so the target is all before the last one (the temporary
    files of `a.wav` and of `a.wav.wav` are told apart, where a pattern `.a.wav.*.partial` took both)."""
    if not (name.startswith(".") and name.endswith(".partial")):
        return None
    target, dot, random_part = name[1:-len(".partial")].rpartition(".")
    return target if dot and target and random_part else None


def write_failed(path: Path, exc: Exception) -> FastWaveNetError:
    """The one-line error for a write to `path` that failed with `exc`: an OSError, or a library's own error, which
    may name no cause (libsndfile's "System error.", torch.save's "unexpected pos"): a full disk is checked for."""
    reason = getattr(exc, "strerror", None) or getattr(exc, "error_string", None) or str(exc)
    try:
        if shutil.disk_usage(path.parent if str(path.parent) else ".").free < 1 << 20:
            reason = "no space left on the device"
    except OSError:
        pass
    return FastWaveNetError(f"cannot write {path}: {reason}")


def give_default_mode(path: Path):
    """The mode a plain open() gives (0666 less the umask): mkstemp, and safetensors, make files for the owner only."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def fsync_path(path: Path):
    """Flush a written file's data to disk, so that a rename after it never exposes an empty file after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to. When the block ends normally the file is synced and
    renamed onto `path`; when it raises, the temporary file is removed and `path` is left as it was.

    OSErrors become FastWaveNetError naming the target."""
    path = check_writable(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        give_default_mode(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_failed(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data, **dumps_options):
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, **dumps_options) + "\n")
