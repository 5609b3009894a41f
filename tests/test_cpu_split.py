"""The split kernel's barrier (kernels/cpu.py, the note above `_claim`): every part of every phase is done exactly
once, by whichever thread claims it, and a phase starts only when every part of the one before is done, however
many threads run the call (more parts than threads: one thread does the parts of another that never started)."""
import numpy as np
import pytest
from numba import njit

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


@njit(nogil=True)
def _chain(tid, parts, phases, sync, values, runs):
    """Thread tid's share. Phase ph, part p: values[ph % 2, p] from the sum of phase ph - 1's values and p;
    runs[ph, p] counts its runs. Some phases have part 0 alone, as the split kernel's sampling does."""
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
    cpu.run_shares(parts, _chain, phases, sync, values, runs)  # on the kernels' threads (fewer than 5 here)
    expected, want = np.zeros((2, parts), np.int64), np.zeros((phases, parts), np.int64)
    for ph in range(phases):
        m = parts if ph % 3 else 1
        total = expected[(ph + 1) % 2].sum()
        for p in range(m):
            expected[ph % 2, p] = (total * 31 + p) % 1000003
            want[ph, p] = 1
    np.testing.assert_array_equal(runs, want)
    np.testing.assert_array_equal(values, expected)


def test_a_stream_gets_the_same_numbers_call_after_call_split_or_not():
    """The split kernel (on however many threads numba has; both parts on one thread if one) gives the one-thread
    kernel's logits bit for bit, call after call, while the scratch arrays fall at different addresses each call.
    A one-layer model of r9y9's widths (sample-value input, a mixture of logistics). When the gate nonlinearity
    was a numba loop that LLVM compiled twice (vector, with fast-math's approximate division, and scalar, exact)
    and picked between by where its arrays lay, 25 of these 60 split calls differed (kernels/cpu.py, the note above
    `_OPTIONS`).
    """
    import dataclasses

    import torch

    from fastwavenet import preset
    from fastwavenet.backends.numba_cpu import NumbaBackend
    from fastwavenet.bench import random_model_file

    config = dataclasses.replace(preset("r9y9-ljspeech"), layers_per_stack=1, stacks=1)
    backend = NumbaBackend(config, random_model_file(config, 0).weights, torch.device("cpu"), "float32")
    weights, parts, T = backend._kernel_weights(1), 2, 3
    rng = np.random.default_rng(1)
    codes = rng.random((1, T), dtype=np.float32) * 2 - 1
    cond = rng.standard_normal((1, T, config.layers, 2 * config.gate_channels)).astype(np.float32)

    blocks = backend._blocks(parts)

    def run(split):
        state = backend.new_state(1, 0.0)
        out = np.zeros((1, T, config.output_channels), np.float32)
        arrays = (weights, state.queues.numpy(), state.inputs.numpy(), cond, out)
        if split:
            cpu.teacher_forced_split(codes, True, 0, *arrays, parts, *blocks)
        else:
            cpu.teacher_forced(codes, True, 0, 1, *arrays)
        return out

    outs = [run(split) for split in [False] * 20 + [True] * 60]  # kept, so that each call's arrays lie elsewhere
    unlike = [not np.array_equal(out, outs[0]) for out in outs]
    assert not any(unlike), f"{sum(unlike[:20])} of 20 one-thread and {sum(unlike[20:])} of 60 split calls differ"
