"""The spread GPU kernel: one stream's sample computed by many programs (one per SM), for batch 1 (issue 35).

The per-stream kernel of kernels/gpu.py runs a whole stream on one SM, which reads every weight for every sample:
about 117 us a sample for `standard` on an H200, while the other 131 SMs idle. Here each stream has P programs, and
each layer's work is split between them by output channel, as nv-wavenet and Deep Voice split theirs:

    phase A of layer l: program p computes its share of the gate channels (both halves, so the gate is local),
                        from the layer's taps: the queue's past inputs and the layer's current input x_l;
    phase B of layer l: program p computes its share of the layer's R + S outputs from the whole gated vector:
                        residual channels give x_{l+1}, and the layer's input x_l goes into the queue; skip channels
                        add to the running skip sum (each program owns its skip channels for the whole sample);
    head 1, head 2:     a share of the head's hidden channels, then of its outputs;
    draw:               every program draws the same sample from the whole output row (the same arithmetic on the
                        same numbers), so no phase waits for one program's draw; program 0 writes it.

Each program's share of the weights is the same for every sample, so it stays in that SM's L1 and in L2 when it fits
(3.5 MB of `standard` over 32 programs: 110 KB each). The weights are laid out output-major here (each output
channel's inputs contiguous) so a share is whole rows, read in coalesced 16-byte loads.

Between phases the P programs of a stream meet at a barrier in global memory: each program, after its own threads
have finished writing (a CTA barrier), writes the phase count into its flag with release semantics; the next phase
polls all P flags until each has reached the count (volatile loads, `_wait` says why not acquires). The barrier is split: the work of phase A
that does not depend on the phase before (the queue taps, written steps ago) is done between writing the flag and
polling, hiding part of the wait. Activations written by other programs are read with `.cg` (L2, never a stale L1
line). A program that polls for more than SPIN_LIMIT rounds gives up and raises the launch's failure flag (the host
raises an error) rather than hang the GPU. The P x B programs of a launch must all be resident at once for the
barriers to complete: the host launches at most one program per SM (streams past that go in further launches).

Without the barriers (SPIN false), one launch runs one phase, and the host launches every phase in turn: that is how
Triton's interpreter runs this kernel on the CPU (it runs a grid's programs one after another, so a barrier between
them could never complete), and it computes the same numbers as the persistent launch.

A stream's numbers do not depend on P or on the batch: each output is summed by one program over its inputs in a
fixed order whatever P is (tiles of IN inputs, a shape fixed by the model, not by P). Arrays as in kernels/gpu.py;
weights one `SpreadWeights`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastwavenet.kernels import sampling_constants as rule
from fastwavenet.kernels.gpu import SOFTMAX, StreamRules, _sample_class, _sample_continuous, _tanh

# Polls of a barrier's flags (each an L2 round trip, about half a microsecond) before a program gives up.
SPIN_LIMIT = tl.constexpr(1 << 24)


class SpreadWeights(NamedTuple):
    """The folded weights output-major (each output's inputs contiguous), float32 on the device."""

    embed: torch.Tensor      # (k_in, C, R); scalar input (1, 2, R)
    dilated_w: torch.Tensor  # (L, 2G, k*R): row o holds output o's weights for taps oldest first, then x
    dilated_b: torch.Tensor  # (L, 2G)
    out_w: torch.Tensor      # (L, R+S, G)
    out_b: torch.Tensor      # (L, R+S)
    head1_w: torch.Tensor    # (H, S)
    head1_b: torch.Tensor    # (H,)
    head2_w: torch.Tensor    # (O, H)
    head2_b: torch.Tensor    # (O,)
    dilations: torch.Tensor  # (L,) int64
    offsets: torch.Tensor    # (L,) int64


def spread_weights(w) -> SpreadWeights:
    """From a kernels.gpu.GpuWeights (input-major): the same numbers, output-major."""
    t = lambda a: a.transpose(-1, -2).contiguous()  # noqa: E731
    return SpreadWeights(w.embed.contiguous(), t(w.dilated_w), w.dilated_b.contiguous(), t(w.out_w),
                         w.out_b.contiguous(), t(w.head1_w), w.head1_b.contiguous(), t(w.head2_w),
                         w.head2_b.contiguous(), w.dilations, w.offsets)


@triton.jit
def _arrive(flags, epoch):
    """Say this program has finished the phase `epoch`: after all its threads' writes (the CTA barrier), with
    release semantics at GPU scope."""
    tl.debug_barrier()
    tl.atomic_xchg(flags + tl.program_id(0), epoch, sem="release", scope="gpu")


@triton.jit
def _wait(flags, epoch, fail_ptr, P: tl.constexpr, P_P: tl.constexpr):
    """Poll the stream's P flags until every program has arrived at `epoch`. The polls are volatile loads (from L2,
    past L1), not acquire operations: an acquire compiles to an invalidation of the whole L1 (CCTL.IVALL in sm_90
    SASS), which would evict the program's weights at every barrier. What the other programs wrote before their
    release is read afterwards with `.cg` loads, from L2, where the release put it: the loads are issued only once
    the poll has seen every flag and the program's threads have met (the CTA barrier below)."""
    idx = tl.arange(0, P_P)
    seen = tl.load(flags + idx, mask=idx < P, other=epoch, volatile=True)
    waiting = tl.min(seen, axis=0) < epoch
    polls = 0
    while waiting:
        seen = tl.load(flags + idx, mask=idx < P, other=epoch, volatile=True)
        polls += 1
        waiting = (tl.min(seen, axis=0) < epoch) & (polls < SPIN_LIMIT)
    if polls >= SPIN_LIMIT:
        tl.atomic_max(fail_ptr, 1, sem="relaxed")
    tl.debug_barrier()


@triton.jit
def _input(embed_ptr, code, prev, i, ok, C: tl.constexpr, R: tl.constexpr, K_IN: tl.constexpr,
           SCALAR: tl.constexpr):
    """The input stage's output x_0 at channels i (mask ok) for this step's code (and the one before it)."""
    if SCALAR:  # value * weight row + bias row
        x = code * tl.load(embed_ptr + i, mask=ok, other=0.0) + tl.load(embed_ptr + R + i, mask=ok, other=0.0)
    else:
        x = tl.load(embed_ptr + ((K_IN - 1) * C + code) * R + i, mask=ok, other=0.0)
        if K_IN == 2:  # before the start a tap contributes nothing
            tap = tl.load(embed_ptr + tl.maximum(prev, 0) * R + i, mask=ok, other=0.0)
            x += tl.where(prev >= 0, tap, 0.0)
    return x


@triton.jit
def _rows(acc, x, w_ptr, rows, row_ok, w_stride, i, i_ok):
    """acc + W[rows, i] @ x[i]: one tile of a share's output rows (rows, mask row_ok) times a block of inputs."""
    w = tl.load(w_ptr + rows[:, None] * w_stride + i[None, :], mask=row_ok[:, None] & i_ok[None, :], other=0.0,
                eviction_policy="evict_last")
    return acc + tl.sum(w * x[None, :], axis=1)


@triton.jit(do_not_specialize=["codes_stride", "t0", "steps", "phase_lo", "phase_hi", "first", "B"])
def _spread_kernel(codes_ptr, codes_stride, u_ptr, queues_ptr, inputs_ptr, cond_ptr, logits_ptr, out_ptr,
                   act_ptr, flags_ptr, fail_ptr,
                   embed_ptr, dw_ptr, db_ptr, ow_ptr, ob_ptr, h1w_ptr, h1b_ptr, h2w_ptr, h2b_ptr, dil_ptr, off_ptr,
                   t0, steps, phase_lo, phase_hi, first, B, L, Q,
                   temperature_ptr, top_k_ptr, top_p_ptr, argmax_ptr, log_scale_min,
                   C: tl.constexpr, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr, H: tl.constexpr,
                   K: tl.constexpr, K_IN: tl.constexpr, C_P: tl.constexpr,
                   P: tl.constexpr, P_P: tl.constexpr, GS: tl.constexpr, GS_P: tl.constexpr, OS: tl.constexpr,
                   OS_P: tl.constexpr, HS: tl.constexpr, HS_P: tl.constexpr, CS: tl.constexpr, CS_P: tl.constexpr,
                   IN_R: tl.constexpr, IN_G: tl.constexpr, IN_S: tl.constexpr, IN_H: tl.constexpr,
                   TEACHER: tl.constexpr, TRUNCATE: tl.constexpr, HAS_COND: tl.constexpr, SCALAR: tl.constexpr,
                   DIST: tl.constexpr, SPIN: tl.constexpr):
    p = tl.program_id(0)
    b = first + tl.program_id(1)  # the stream (a launch may run a slice of the batch: `first` onward)
    G2: tl.constexpr = 2 * G
    RS: tl.constexpr = R + S
    KR: tl.constexpr = K * R
    ACT: tl.constexpr = R + G + S + H + C
    # The stream's activations: x (R) | gated (G) | skip (S) | head hidden (H) | head outputs (C).
    x_buf = act_ptr + b * ACT
    g_buf = x_buf + R
    s_buf = g_buf + G
    h_buf = s_buf + S
    l_buf = h_buf + H
    queue = queues_ptr + b * Q * R
    flags = flags_ptr + tl.program_id(1) * P_P
    if TEACHER:  # phases a step: A and B per layer, two of the head, and (generating) the draw
        NPH = 2 * L + 2
    else:
        NPH = 2 * L + 3

    # This program's shares: gate channels, layer outputs, head hidden channels, head outputs.
    gs = p * GS + tl.arange(0, GS_P)
    g_ok = (gs < p * GS + GS) & (gs < G)
    oc = p * OS + tl.arange(0, OS_P)
    o_ok = (oc < p * OS + OS) & (oc < RS)
    is_res = o_ok & (oc < R)
    is_skip = o_ok & (oc >= R)
    hs = p * HS + tl.arange(0, HS_P)
    h_ok = (hs < p * HS + HS) & (hs < H)
    cs = p * CS + tl.arange(0, CS_P)
    c_ok = (cs < p * CS + CS) & (cs < C)
    c_all = tl.arange(0, C_P)

    # The inputs of the launch's first step: its code and, for a 2-tap input, the code before it.
    s0 = phase_lo // NPH
    if TEACHER:
        code = tl.load(codes_ptr + b * codes_stride + s0)
    else:
        code = tl.load(codes_ptr + b * codes_stride + 0)
        if s0 > 0:
            code = tl.load(out_ptr + b * steps + s0 - 1)
    prev = tl.full((), -1, tl.int64)
    if K_IN == 2:
        prev = tl.load(inputs_ptr + b)
        if s0 > 0:
            if TEACHER:
                prev = tl.load(codes_ptr + b * codes_stride + s0 - 1)
            elif s0 == 1:
                prev = tl.load(codes_ptr + b * codes_stride + 0)
            else:
                prev = tl.load(out_ptr + b * steps + s0 - 2)
    following = code
    epoch = 0

    for q in range(phase_lo, phase_hi):
        step = q // NPH
        ph = q - step * NPH
        t = t0 + step
        # A barrier follows every phase but a step's last (below): a phase after one waits at it first.
        pending = (ph > 0) & (q > phase_lo)
        if ph < 2 * L:
            layer = ph // 2
            d = tl.load(dil_ptr + layer)
            off = tl.load(off_ptr + layer)
            n = (K - 1) * d
            if ph % 2 == 0:
                # Phase A: the gate channels gs, tanh half za and sigmoid half zb.
                za = tl.load(db_ptr + layer * G2 + gs, mask=g_ok, other=0.0)
                zb = tl.load(db_ptr + layer * G2 + G + gs, mask=g_ok, other=0.0)
                if HAS_COND:
                    c_at = cond_ptr + ((b * steps + step) * L + layer) * G2
                    za += tl.load(c_at + gs, mask=g_ok, other=0.0)
                    zb += tl.load(c_at + G + gs, mask=g_ok, other=0.0)
                w_layer_a = dw_ptr + layer * G2 * KR
                # The queue's taps first: written steps ago, so this runs before the barrier's wait.
                for j in tl.static_range(K - 1):
                    slot = off + (t - (K - 1 - j) * d + n) % n
                    for i0_a in tl.static_range(0, R, IN_R):
                        i_a = i0_a + tl.arange(0, IN_R)
                        i_ok_a = i_a < R
                        x_a = tl.load(queue + slot * R + i_a, mask=i_ok_a, other=0.0, cache_modifier=".cg")
                        za = _rows(za, x_a, w_layer_a + j * R, gs, g_ok, KR, i_a, i_ok_a)
                        zb = _rows(zb, x_a, w_layer_a + j * R, G + gs, g_ok, KR, i_a, i_ok_a)
                if SPIN:
                    if pending:
                        _wait(flags, epoch, fail_ptr, P, P_P)
                for i0_a in tl.static_range(0, R, IN_R):
                    i_a = i0_a + tl.arange(0, IN_R)
                    i_ok_a = i_a < R
                    if layer == 0:
                        x_a = _input(embed_ptr, code, prev, i_a, i_ok_a, C, R, K_IN, SCALAR)
                    else:
                        x_a = tl.load(x_buf + i_a, mask=i_ok_a, other=0.0, cache_modifier=".cg")
                    za = _rows(za, x_a, w_layer_a + (K - 1) * R, gs, g_ok, KR, i_a, i_ok_a)
                    zb = _rows(zb, x_a, w_layer_a + (K - 1) * R, G + gs, g_ok, KR, i_a, i_ok_a)
                tl.store(g_buf + gs, _tanh(za) * tl.sigmoid(zb), mask=g_ok)
            else:
                # Phase B: outputs oc of the layer's 1x1 (residual channels, then skip channels).
                if SPIN:
                    if pending:
                        _wait(flags, epoch, fail_ptr, P, P_P)
                if layer == 0:
                    x_b = _input(embed_ptr, code, prev, oc, is_res, C, R, K_IN, SCALAR)
                else:
                    x_b = tl.load(x_buf + oc, mask=is_res, other=0.0, cache_modifier=".cg")
                # The layer's input joins its queue, in the slot of the oldest tap (read in phase A).
                tl.store(queue + (off + t % n) * R + oc, x_b, mask=is_res)
                bias = tl.load(ob_ptr + layer * RS + oc, mask=o_ok, other=0.0)
                skip = tl.zeros((OS_P,), tl.float32)
                if layer > 0:
                    skip = tl.load(s_buf + oc - R, mask=is_skip, other=0.0)
                acc = tl.where(is_res, bias + x_b, skip)
                # The last layer's residual output feeds nothing. (The layer as a vector: Triton's interpreter
                # cannot combine a scalar condition with a vector mask.)
                res_out = is_res & ((oc * 0 + layer) < L - 1)
                wanted = is_skip | res_out
                w_layer_b = ow_ptr + layer * RS * G
                for i0_b in tl.static_range(0, G, IN_G):
                    i_b = i0_b + tl.arange(0, IN_G)
                    i_ok_b = i_b < G
                    gv = tl.load(g_buf + i_b, mask=i_ok_b, other=0.0, cache_modifier=".cg")
                    acc = _rows(acc, gv, w_layer_b, oc, wanted, G, i_b, i_ok_b)
                acc = tl.where(is_skip, acc + bias, acc)
                tl.debug_barrier()  # every thread has read x_b and the skip sum before any overwrites them
                tl.store(x_buf + oc, acc, mask=res_out)
                tl.store(s_buf + oc - R, tl.where(layer == L - 1, tl.maximum(acc, 0.0), acc), mask=is_skip)
        elif ph == 2 * L:
            # Head 1: hidden channels hs from relu(skip).
            if SPIN:
                if pending:
                    _wait(flags, epoch, fail_ptr, P, P_P)
            hidden = tl.load(h1b_ptr + hs, mask=h_ok, other=0.0)
            for i0_h in tl.static_range(0, S, IN_S):
                i_h = i0_h + tl.arange(0, IN_S)
                i_ok_h = i_h < S
                sv = tl.load(s_buf + i_h, mask=i_ok_h, other=0.0, cache_modifier=".cg")
                hidden = _rows(hidden, sv, h1w_ptr, hs, h_ok, S, i_h, i_ok_h)
            tl.store(h_buf + hs, tl.maximum(hidden, 0.0), mask=h_ok)
        elif ph == 2 * L + 1:
            # Head 2: outputs cs (logits, or a continuous distribution's parameters).
            if SPIN:
                if pending:
                    _wait(flags, epoch, fail_ptr, P, P_P)
            out = tl.load(h2b_ptr + cs, mask=c_ok, other=0.0)
            for i0_o in tl.static_range(0, H, IN_H):
                i_o = i0_o + tl.arange(0, IN_H)
                i_ok_o = i_o < H
                hv = tl.load(h_buf + i_o, mask=i_ok_o, other=0.0, cache_modifier=".cg")
                out = _rows(out, hv, h2w_ptr, cs, c_ok, H, i_o, i_ok_o)
            if TEACHER:
                tl.store(logits_ptr + (b * steps + step) * C + cs, out, mask=c_ok)
                following = tl.load(codes_ptr + b * codes_stride + tl.minimum(step + 1, steps - 1))
            else:
                tl.store(l_buf + cs, out, mask=c_ok)
        else:
            # The draw, by every program alike.
            if SPIN:
                if pending:
                    _wait(flags, epoch, fail_ptr, P, P_P)
            row = tl.load(l_buf + c_all, mask=c_all < C, other=0.0, cache_modifier=".cg")
            temperature = tl.load(temperature_ptr + b)
            argmax = tl.load(argmax_ptr + b) != 0
            if SCALAR:
                u0 = tl.load(u_ptr + (step * B + b) * 2).to(tl.float64)
                u1 = tl.load(u_ptr + (step * B + b) * 2 + 1).to(tl.float64)
                drawn = _sample_continuous(row, c_all, u0, u1, temperature, argmax, log_scale_min, C,
                                           DIST).to(tl.float32)
            else:
                u = tl.load(u_ptr + step * B + b)
                drawn = _sample_class(row, c_all, u, temperature, tl.load(top_k_ptr + b), tl.load(top_p_ptr + b),
                                      argmax, C, TRUNCATE)
            tl.store(out_ptr + b * steps + step, drawn, mask=p == 0)
            following = drawn
        if ph == NPH - 1:  # the step's last phase: the next step's inputs
            if K_IN == 2:
                prev = code
            code = following
        elif SPIN:
            # Every phase but a step's last is followed by a barrier (after the last, the next step's first phase
            # reads only what this program drew or the codes given).
            epoch += 1
            _arrive(flags, epoch)
    if K_IN == 2:
        tl.store(inputs_ptr + b, prev, mask=(p == 0) & (phase_hi == steps * NPH))


def programs_for(w) -> int:
    """Programs per stream for these weights (any objects with `.shape`): about two gate channels each (half the
    gate's width, a power of two), at least 1. Fixed by the model's shape alone, never by the batch, so a stream's
    tiles and sums are the same whatever the batch (the override FASTWAVENET_SPREAD_PROGRAMS is for measuring)."""
    import os

    override = os.environ.get("FASTWAVENET_SPREAD_PROGRAMS")
    if override:
        return max(1, int(override))
    half = max(1, w.dilated_b.shape[1] // 4)
    return 1 << (half.bit_length() - 1)


def _block(n: int, rows_p: int, budget: int = 2048) -> int:
    """Inputs per tile of a product: the whole input where a tile of `rows_p` rows of it holds about `budget`
    weights, else a power of two that does (at least 16)."""
    return min(triton.next_power_of_2(n), max(16, triton.next_power_of_2(budget // rows_p)))


def launch_constants(w: SpreadWeights, programs: int, teacher: bool, has_cond: bool, dist: int = SOFTMAX,
                     truncate: bool = False, spin: bool = True) -> dict:
    """The compile-time constants of one variant (weights: any objects with `.shape`)."""
    K_IN, R = w.embed.shape[0], w.embed.shape[2]
    C, H = w.head2_w.shape[0], w.head1_w.shape[0]
    G = w.dilated_b.shape[1] // 2
    S = w.out_w.shape[1] - R
    P = programs
    p2 = triton.next_power_of_2
    share = lambda n: -(-n // P)  # noqa: E731
    GS, OS, HS, CS = share(G), share(R + S), share(H), share(C)
    return dict(C=C, R=R, G=G, S=S, H=H, K=w.dilated_w.shape[2] // R, K_IN=K_IN, C_P=p2(C), P=P, P_P=p2(P),
                GS=GS, GS_P=p2(GS), OS=OS, OS_P=p2(OS), HS=HS, HS_P=p2(HS), CS=CS, CS_P=p2(CS),
                IN_R=_block(R, p2(GS)), IN_G=_block(G, p2(OS)), IN_S=_block(S, p2(HS)), IN_H=_block(H, p2(CS)),
                TEACHER=bool(teacher), TRUNCATE=bool(truncate) and not teacher and dist == SOFTMAX,
                HAS_COND=bool(has_cond), SCALAR=dist != SOFTMAX, DIST=dist, SPIN=bool(spin))


def resident_programs(device: torch.device) -> int:
    """Programs that surely run at once on this device: one per SM (a program needs far less than an SM)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch(codes, t0, u, w: SpreadWeights, queues, inputs, cond, logits_out, codes_out, teacher: bool,
           rules: StreamRules | None = None, truncate: bool = False, dist: int = SOFTMAX, log_scale_min: float = -7.0,
           programs: int | None = None, spin: bool | None = None, num_warps: int = 4):
    """Launch one chunk, as kernels.gpu.launch, with `programs` per stream (default `programs_for(w)`). With
    `spin` (the default on a GPU) one persistent launch per group of streams that fits the SMs; without (the
    default under Triton's interpreter) one launch per phase. Raises RuntimeError if a barrier timed out."""
    import os

    B = queues.shape[0]
    steps = codes.shape[1] if teacher else u.shape[0]
    P = programs or programs_for(w)
    if spin is None:
        spin = os.environ.get("TRITON_INTERPRET") != "1"
    constants = launch_constants(w, P, teacher, cond is not None, dist, truncate, spin)
    device = queues.device
    if rules is None:  # teacher forcing draws nothing: plain rules, never read
        rules = StreamRules(*(torch.zeros(B, dtype=dtype, device=device)
                              for dtype in (torch.float64, torch.int32, torch.float32, torch.int8)))
    width = sum(constants[name] for name in ("R", "G", "S", "H", "C"))
    act = torch.empty(B, width, device=device, dtype=torch.float32)
    group = max(1, resident_programs(device) // P) if spin and device.type == "cuda" else B
    flags = torch.zeros(min(group, B), constants["P_P"], device=device, dtype=torch.int32)
    fail = torch.zeros(1, device=device, dtype=torch.int32)
    inputs_arg = inputs if inputs.numel() else torch.empty(B, dtype=torch.int64, device=device)
    phases = steps * (2 * w.dilated_b.shape[0] + (2 if teacher else 3))
    spans = [(0, phases)] if spin else [(q, q + 1) for q in range(phases)]
    for first in range(0, B, group):
        n = min(group, B - first)
        for lo, hi in spans:
            if spin:
                flags.zero_()
            _spread_kernel[(P, n)](
                codes, codes.stride(0), u, queues, inputs_arg, queues if cond is None else cond,
                logits_out if teacher else queues, codes_out, act, flags, fail,
                w.embed, w.dilated_w, w.dilated_b, w.out_w, w.out_b, w.head1_w, w.head1_b, w.head2_w, w.head2_b,
                w.dilations, w.offsets, t0, steps, lo, hi, first, B, w.dilated_b.shape[0], queues.shape[1],
                rules.temperature, rules.top_k, rules.top_p, rules.argmax, log_scale_min, **constants,
                num_warps=num_warps)
    if spin and int(fail.item()):
        raise RuntimeError("the spread kernel's barrier timed out: its programs were not all resident at once")


# The type of every runtime argument, for compiling a variant ahead of time without a GPU (`fastwavenet doctor`).
ARGUMENT_TYPES = {"codes_ptr": "*i64", "codes_stride": "i32", "u_ptr": "*fp32", "queues_ptr": "*fp32",
                  "inputs_ptr": "*i64", "cond_ptr": "*fp32", "logits_ptr": "*fp32", "out_ptr": "*i64",
                  "act_ptr": "*fp32", "flags_ptr": "*i32", "fail_ptr": "*i32",
                  "embed_ptr": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32", "ow_ptr": "*fp32", "ob_ptr": "*fp32",
                  "h1w_ptr": "*fp32", "h1b_ptr": "*fp32", "h2w_ptr": "*fp32", "h2b_ptr": "*fp32", "dil_ptr": "*i64",
                  "off_ptr": "*i64", "t0": "i32", "steps": "i32", "phase_lo": "i32", "phase_hi": "i32",
                  "first": "i32", "B": "i32", "L": "i32", "Q": "i32", "temperature_ptr": "*fp64",
                  "top_k_ptr": "*i32", "top_p_ptr": "*fp32", "argmax_ptr": "*i8", "log_scale_min": "fp32"}


def argument_types(dist: int = SOFTMAX) -> dict:
    """ARGUMENT_TYPES for a variant: a scalar-input model's codes and drawn values are float32."""
    if dist == SOFTMAX:
        return ARGUMENT_TYPES
    return {**ARGUMENT_TYPES, "codes_ptr": "*fp32", "out_ptr": "*fp32"}


# ---- a probe of the barrier's own cost (benchmarks/gpu_spread_sweep.py times it) ---------------------------------

@triton.jit(do_not_specialize=["rounds"])
def barrier_kernel(flags_ptr, fail_ptr, rounds, P: tl.constexpr, P_P: tl.constexpr):
    """`rounds` barriers of the kind the spread kernel's programs meet at, and nothing else: the grid's (P, n)
    programs, P to a group, as the kernel's streams."""
    flags = flags_ptr + tl.program_id(1) * P_P
    for epoch in range(1, rounds + 1):
        _arrive(flags, epoch)
        _wait(flags, epoch, fail_ptr, P, P_P)
