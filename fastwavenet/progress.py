"""Progress bars (tqdm) without tqdm's multiprocessing lock.

tqdm makes a multiprocessing RLock (a POSIX semaphore) the first time any bar is made, for bars written from forked
processes. fastwavenet's bars are each written by one thread of one process (corpus runs on torchrun have one bar
per process, each on its own line), and on the H200 machine of docs/BENCHMARKS.md creating that lock took 0.5-0.8 s
of a 5-second `fastwavenet generate` (cProfile). A thread lock is set instead, unless a bar was made before."""

from __future__ import annotations

import threading


def progress_bar(**kwargs):
    """A tqdm bar with these arguments."""
    from tqdm import tqdm

    if not hasattr(tqdm, "_lock"):
        tqdm.set_lock(threading.RLock())
    return tqdm(**kwargs)
