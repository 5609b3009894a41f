"""The split kernel's barrier (kernels/cpu.py, the note above `_claim`): every part of every phase is done exactly
once, by whichever thread claims it, and a phase starts only when every part of the one before is done, however
many threads run the region (more parts than threads: one thread does the parts of another that never started)."""
import numpy as np
import pytest
from numba import njit, prange

from fastwavenet.kernels import cpu


def test_a_part_is_claimed_once_a_phase_and_waits_end_at_done():
    sync = np.full((2, 16), -1, np.int64)
    assert cpu._claim(sync, 0, 0) and not cpu._claim(sync, 0, 0)
    assert cpu._claim(sync, 1, 0)
    assert cpu._claim(sync, 0, 3) and not cpu._claim(sync, 0, 1)  # a phase without part 0 in between; none behind
    cpu._done(sync, 0, 0)
    cpu._done(sync, 1, 0)
    cpu._wait(sync, 2, 0)  # returns: both parts of phase 0 are done
    assert sync[0, 0] == 3 and sync[0, 8] == 0 and sync[1, 8] == 0


@njit(parallel=True)
def _chain(parts, phases, sync, values, runs):
    """Phase ph, part p: values[ph % 2, p] from the sum of phase ph - 1's values and p; runs[ph, p] counts its
    runs. Some phases have part 0 alone, as the split kernel's sampling does."""
    for tid in prange(parts):
        for ph in range(phases):
            m = parts if ph % 3 else 1
            for j in range(m):
                p = (tid + j) % m
                if cpu._claim(sync, p, ph):
                    total = 0
                    for q in range(parts):
                        total += values[(ph + 1) % 2, q]
                    values[ph % 2, p] = (total * 31 + p) % 1000003
                    runs[ph, p] += 1
                    cpu._done(sync, p, ph)
            cpu._wait(sync, m, ph)


@pytest.mark.parametrize("parts", [1, 2, 5])
def test_every_part_of_every_phase_runs_once_and_in_order(parts):
    phases = 3000
    sync = np.full((parts, 16), -1, np.int64)
    values, runs = np.zeros((2, parts), np.int64), np.zeros((phases, parts), np.int64)
    _chain(parts, phases, sync, values, runs)
    expected, want = np.zeros((2, parts), np.int64), np.zeros((phases, parts), np.int64)
    for ph in range(phases):
        m = parts if ph % 3 else 1
        total = expected[(ph + 1) % 2].sum()
        for p in range(m):
            expected[ph % 2, p] = (total * 31 + p) % 1000003
            want[ph, p] = 1
    np.testing.assert_array_equal(runs, want)
    np.testing.assert_array_equal(values, expected)
