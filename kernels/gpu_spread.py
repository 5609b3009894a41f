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

That is the "split" layer mode (`layer_mode`): two hand-overs a layer, each on the sample's critical path. Two modes
need one:
- "merged" (small R x G, `standard`): every program computes the whole residual output x_{l+1} itself from the
  gated vector, then its gate channels of layer l + 1.
- "fused" (the others: r9y9's R = 512, where every program reading the 512 KB residual matrix a layer would cost
  more than it saves): with Wx_l the layer's weights on its input x_l (the newest tap) and Wr_l, br_l its residual
  weights and biases, x_l = x_{l-2} + br_{l-2} + Wr_{l-2} g_{l-2} + br_{l-1} + Wr_{l-1} g_{l-1}, so
      Wx_l x_l = Wx_l x_{l-2} + Wx_l (br_{l-2} + br_{l-1}) + F2_l g_{l-2} + F_l g_{l-1},
      F_l = Wx_l Wr_{l-1},  F2_l = Wx_l Wr_{l-2}  (2G x G each, computed once in float64: `fused_layers`).
  In phase l a program computes its gate channels of layer l from the queue's taps, x_{l-2} and g_{l-2} (all
  handed over two phases ago, so all there while it waits), then takes g_{l-1} and adds F_l g_{l-1} (its rows of
  F_l read before the wait): one small product between a hand-over and the next. Then it closes layer l - 1 in its
  shares: x_{l-1} into the queue, x_l = x_{l-1} + br + Wr g_{l-1} handed over, its skip sums. Three buffers each for
  x and the gated vector (a vector is read up to two phases after it is written). The weights grow by the two fused
  matrices a layer (r9y9's shape: 94.7 MB to 119.9 MB in float32); the logits stay within float32 rounding of the
  training model's (the sums are reassociated, not rounded more: tests/test_exactness.py).

Each program's share of the weights is the same for every sample, so it stays in that SM's L1 and in L2 when it fits
(3.5 MB of `standard` over 16 programs: 220 KB each). The weights are laid out output-major here (each output
channel's inputs contiguous) so a share is whole rows, read in coalesced loads.

The programs of a stream hand each other the vectors of each phase (x, the gated vector, the skip sum, the head's hidden
and output vectors) with no barrier and no fence: each value travels with a tag in one 8-byte word (the float's bits
below, the number of the phase that wrote it above), written with one store, which the GPU makes visible whole. A reader
polls the words it needs (volatile loads, from L2) until every tag is the one it expects, and then has the values: one
trip through L2 per phase instead of a flag's release, a fence and a second read (the flag barriers of the first version
cost 0.9-1.1 us each on an H200, benchmarks/gpu_spread_sweep.py). A vector's buffer is reused from layer to layer: a
writer can reach the next use of a buffer only after reading a vector from every program (each owns gate and head
channels, `programs_for`), which each wrote after its last read of the buffer (the gated vector has two buffers, layer
by layer, for that; fused layers three). The queues hold plain floats: each program fences once a step, after its last
queue write and before the head's vectors, so a queue entry is in L2 before any reader has seen the head's vectors of
its step; queue and activation reads use `.cg` (L2, never a stale L1 line). A reader that polls for more than SPIN_LIMIT
rounds gives up and raises the launch's failure flag (the host raises an error) rather than hang the GPU. The P x B
programs of a launch must all be resident at once: the host launches at most one program per SM (streams past that go in
further launches).

Under Triton's interpreter, which runs a grid's programs one after another, the host launches one phase at a time
(every tag a reader polls for was written by an earlier launch); on a GPU one launch runs a whole chunk.

A stream's numbers do not depend on the batch: P and the tiles of each product are fixed by the model's shape, and
each output is summed by one program over its inputs in a fixed order. Arrays as in kernels/gpu.py; weights one
`SpreadWeights`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastwavenet.kernels.gpu import SOFTMAX, StreamRules, _sample_class, _sample_continuous, _tanh, plain_rules

# Polls of a vector's tags (each an L2 round trip, about half a microsecond) before a program gives up.
SPIN_LIMIT = tl.constexpr(1 << 24)

# How a stream's layers run (`layer_mode`), as the kernel's LAYERS constant.
SPLIT, MERGED, FUSED = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
LAYER_MODES = {"split": 0, "merged": 1, "fused": 2}


class SpreadWeights(NamedTuple):
    """The folded weights output-major (each output's inputs contiguous), float32 on the device."""

    embed: torch.Tensor      # (k_in, C, R); scalar input (1, 2, R)
    dilated_w: torch.Tensor  # (L, 2G, k*R): row o holds output o's weights for taps oldest first, then x (the
                             # four matrices float32, or bf16 bits of weights rounded to bf16)
    dilated_b: torch.Tensor  # (L, 2G)
    out_w: torch.Tensor      # (L, R+S, G)
    out_b: torch.Tensor      # (L, R+S)
    head1_w: torch.Tensor    # (H, S)
    head1_b: torch.Tensor    # (H,)
    head2_w: torch.Tensor    # (O, H)
    head2_b: torch.Tensor    # (O,)
    dilations: torch.Tensor  # (L,) int64
    offsets: torch.Tensor    # (L,) int64
    fused_w: torch.Tensor | None = None  # fused layers: (L, 2G, 2G) float32, row o holds [F2_l | F_l] row o
    fused_b: torch.Tensor | None = None  # fused layers: (L, 2G) float32, the gate biases with Wx_l's share of the
                                         # residual biases folded in
    layers: str = ""                     # "split", "merged" or "fused" (`layer_mode`), fixed when made


def spread_weights(w, dtype: torch.dtype = torch.float32) -> SpreadWeights:
    """From a kernels.gpu.GpuWeights (input-major): the same numbers, output-major, the matrices in `dtype`
    (torch.bfloat16 holds weights already rounded to bf16 exactly, in half the bytes: r9y9's LJSpeech shape in 47 MB,
    within an H200's L2); with fused layers (`layer_mode`) their matrices and biases, float32 whatever `dtype` (25 MB
    more for r9y9's shape: 72 MB at bf16, past the L2)."""
    t = lambda a: a.transpose(-1, -2).contiguous().to(dtype)  # noqa: E731
    made = SpreadWeights(w.embed.contiguous(), t(w.dilated_w), w.dilated_b.contiguous(), t(w.out_w),
                         w.out_b.contiguous(), t(w.head1_w), w.head1_b.contiguous(), t(w.head2_w),
                         w.head2_b.contiguous(), w.dilations, w.offsets)
    layers = layer_mode(made)
    if layers == "fused":
        return made._replace(**fused_layers(w), layers=layers)
    unused = w.dilated_b.new_zeros(1)  # a pointer the kernel never reads
    return made._replace(fused_w=unused, fused_b=unused, layers=layers)


def fused_layers(w) -> dict:
    """Fused layers' matrices and gate biases from a kernels.gpu.GpuWeights (input-major), computed in float64 and
    rounded once. With Wx_l layer l's input weights (the dilated convolution's newest tap), Wr_l and br_l its
    residual weights and biases:
        F_l = Wx_l Wr_{l-1},  F2_l = Wx_l Wr_{l-2}  (2G x G each; zero where l - 1 or l - 2 is no layer)
        b'_l = b_l + Wx_l (br_{l-1} + br_{l-2})     (the gate bias, each term where its layer is one)."""
    L, G2 = w.dilated_b.shape
    G, R = G2 // 2, w.embed.shape[2]
    x_w = w.dilated_w[:, -R:, :].double().transpose(1, 2)  # (L, 2G, R) output-major
    r_w = w.out_w[:, :, :R].double().transpose(1, 2)       # (L, R, G)
    r_b = w.out_b[:, :R].double()
    f = x_w.new_zeros(L, G2, G2)
    b = w.dilated_b.double().clone()
    for back, cols in ((2, slice(0, G)), (1, slice(G, G2))):
        f[back:, :, cols] = x_w[back:] @ r_w[:L - back]
        b[back:] += (x_w[back:] @ r_b[:L - back, :, None])[..., 0]
    return dict(fused_w=f.float().contiguous(), fused_b=b.float().contiguous())


@triton.jit
def _give(buf, i, ok, value, tag):
    """Write float32 values at buf[i] (mask ok), each tagged with `tag` in one 8-byte word."""
    bits = value.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    tag64 = tag + tl.zeros((), tl.int64)  # an int64 whether `tag` is a tensor or (interpreted) a Python int
    tl.store(buf + i, (tag64 << 32) | bits, mask=ok)


@triton.jit
def _take(buf, i, ok, tag, fail_ptr):
    """The float32 values at buf[i] (mask ok; 0 where not), once every one carries `tag`. Volatile loads (L2, past
    L1): not acquires, which compile to an invalidation of the whole L1 (CCTL.IVALL in sm_90 SASS) and would evict
    the program's weights at every phase. A program that waits SPIN_LIMIT polls raises the launch's failure flag;
    one that waits while the flag is up (read beside each poll after the first) stops waiting, so a failed launch
    ends within a poll a wait instead of SPIN_LIMIT polls a wait."""
    words = tl.load(buf + i, mask=ok, other=0, volatile=True)
    ready = tl.min(tl.where(ok, ((words >> 32) == tag).to(tl.int32), 1), axis=0)
    polls = 0
    while ready == 0:
        words = tl.load(buf + i, mask=ok, other=0, volatile=True)
        failed = tl.load(fail_ptr, volatile=True)
        polls += 1
        ready = tl.min(tl.where(ok, ((words >> 32) == tag).to(tl.int32), 1), axis=0) \
            | (polls >= SPIN_LIMIT).to(tl.int32) | (failed != 0).to(tl.int32)
    if polls >= SPIN_LIMIT:
        tl.atomic_max(fail_ptr, 1, sem="relaxed")
    return tl.where(ok, (words & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True), 0.0)


@triton.jit
def _fence(word_ptr):
    """Order every earlier write of this program's threads before its later ones, at GPU scope: a CTA barrier, then
    a release operation (a MEMBAR.GPU) on a word of the program's own."""
    tl.debug_barrier()
    tl.atomic_xchg(word_ptr, 0, sem="release", scope="gpu")


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
    return acc + tl.sum(w.to(tl.float32) * x[None, :], axis=1)  # bf16 weights widen exactly


@triton.jit
def _taken_product(acc, talk, tag, fail_ptr, w_ptr, rows, row_ok, N: tl.constexpr, IN: tl.constexpr):
    """acc + W[rows, :N] @ v for a vector v of N other programs gave (tagged `tag`), taken in blocks of IN."""
    for i0 in tl.static_range(0, N, IN):
        i = i0 + tl.arange(0, IN)
        acc = _rows(acc, _take(talk, i, i < N, tag, fail_ptr), w_ptr, rows, row_ok, N, i, i < N)
    return acc


@triton.jit
def _gate_start(db_ptr, cond_ptr, layer, gs, g_ok, row, L, G: tl.constexpr, HAS_COND: tl.constexpr):
    """Gate channels gs of a layer before its products: the bias, plus the step's conditioning terms (`row`: the
    stream's step, b * steps + step). Returns the tanh half and the sigmoid half."""
    za = tl.load(db_ptr + layer * 2 * G + gs, mask=g_ok, other=0.0)
    zb = tl.load(db_ptr + layer * 2 * G + G + gs, mask=g_ok, other=0.0)
    if HAS_COND:
        c_at = cond_ptr + (row * L + layer) * 2 * G
        za += tl.load(c_at + gs, mask=g_ok, other=0.0)
        zb += tl.load(c_at + G + gs, mask=g_ok, other=0.0)
    return za, zb


@triton.jit(do_not_specialize=["codes_stride", "t0", "steps", "phase_lo", "phase_hi", "first", "B"])
def _spread_kernel(codes_ptr, codes_stride, u_ptr, queues_ptr, inputs_ptr, cond_ptr, logits_ptr, out_ptr,
                   talk_ptr, skip_ptr, xown_ptr, fence_ptr, fail_ptr,
                   embed_ptr, dw_ptr, db_ptr, ow_ptr, ob_ptr, h1w_ptr, h1b_ptr, h2w_ptr, h2b_ptr, dil_ptr, off_ptr,
                   fw_ptr, fb_ptr, t0, steps, phase_lo, phase_hi, first, B, L, Q,
                   temperature_ptr, top_k_ptr, top_p_ptr, argmax_ptr, log_scale_min,
                   C: tl.constexpr, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr, H: tl.constexpr,
                   K: tl.constexpr, K_IN: tl.constexpr, C_P: tl.constexpr,
                   P: tl.constexpr, GS: tl.constexpr, GS_P: tl.constexpr, OS: tl.constexpr,
                   OS_P: tl.constexpr, HS: tl.constexpr, HS_P: tl.constexpr, CS: tl.constexpr, CS_P: tl.constexpr,
                   IN_R: tl.constexpr, IN_G: tl.constexpr, IN_S: tl.constexpr, IN_H: tl.constexpr,
                   LAYERS: tl.constexpr, XB: tl.constexpr, GB: tl.constexpr, R_P: tl.constexpr, G_P: tl.constexpr,
                   SS: tl.constexpr,
                   SS_P: tl.constexpr, RQ: tl.constexpr, RQ_P: tl.constexpr,
                   TEACHER: tl.constexpr, TRUNCATE: tl.constexpr, HAS_COND: tl.constexpr, SCALAR: tl.constexpr,
                   DIST: tl.constexpr):
    p = tl.program_id(0)
    b = first + tl.program_id(1)  # the stream (a launch may run a slice of the batch: `first` onward)
    G2: tl.constexpr = 2 * G
    RS: tl.constexpr = R + S
    KR: tl.constexpr = K * R
    TALK: tl.constexpr = XB * R + GB * G + S + H + C
    # The stream's tagged vectors (int64 words): x (XB buffers of R) | gated (GB of G) | relu(skip) (S) | head
    # hidden (H) | outputs (C). Split and merged layers: one x, and the gated vector alternating between two buffers
    # (between reading layer l's in phase B and writing layer l + 1's in phase A, a program hears only from the
    # programs that own residual channels). Fused layers: three of each, layer l's in buffer l % 3 (a vector is
    # read up to two phases after it is written).
    x_talk = talk_ptr + b * TALK
    g_talks = x_talk + XB * R
    s_talk = g_talks + GB * G
    h_talk = s_talk + S
    o_talk = h_talk + H
    # Each program's own: its running skip sums (S floats a stream, each program its channels) and a word to fence on.
    skip_own = skip_ptr + b * S
    fence_word = fence_ptr + b * P + p
    queue = queues_ptr + b * Q * R
    # Phases a step: A and B per layer (merged: one per layer and one to close the last), two of the head, and
    # (generating) the draw.
    if LAYERS != SPLIT:
        HEAD = L + 1
    else:
        HEAD = 2 * L
    if TEACHER:
        NPH = HEAD + 2
    else:
        NPH = HEAD + 3
    # Merged: this program's copy of the whole x (R floats), its skip channels and its share of each queue write.
    x_own = xown_ptr + (b * P + p) * R
    r_all = tl.arange(0, R_P)
    g_all = tl.arange(0, G_P)
    ss = p * SS + tl.arange(0, SS_P)
    ss_ok = (ss < p * SS + SS) & (ss < S)
    rq = p * RQ + tl.arange(0, RQ_P)
    rq_ok = (rq < p * RQ + RQ) & (rq < R)

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

    for q in range(phase_lo, phase_hi):
        step = q // NPH
        ph = q - step * NPH
        t = t0 + step
        tag = q + 1  # what this phase writes carries q + 1; it reads what the phase before wrote, tagged q
        if LAYERS == FUSED:
            if ph <= L:
                # Phase l < L: layer l's gate, all of it but its last product before the wait for g_{l-1}, that
                # product alone after it; then layer l - 1 closed from g_{l-1} (this program's share of its queue
                # write, residual and skip channels). Phase L: the last layer closed. (The module docstring has the
                # algebra.)
                layer = tl.minimum(ph, L - 1)
                f_at = fw_ptr + layer * G2 * G2
                za, zb = _gate_start(fb_ptr, cond_ptr, layer, gs, g_ok, b * steps + step, L, G, HAS_COND)
                if ph < L:
                    d = tl.load(dil_ptr + layer)
                    off = tl.load(off_ptr + layer)
                    n = (K - 1) * d
                    w_gate = dw_ptr + layer * G2 * KR
                    for j in tl.static_range(K - 1):
                        slot = off + (t - (K - 1 - j) * d + n) % n
                        x_m = tl.load(queue + slot * R + r_all, mask=r_all < R, other=0.0, cache_modifier=".cg")
                        za = _rows(za, x_m, w_gate + j * R, gs, g_ok, KR, r_all, r_all < R)
                        zb = _rows(zb, x_m, w_gate + j * R, G + gs, g_ok, KR, r_all, r_all < R)
                    # x_{l-2} (for l <= 2 the step's input x_0, computed here) through the layer's input weights
                    if ph <= 2:
                        x_m = _input(embed_ptr, code, prev, r_all, r_all < R, C, R, K_IN, SCALAR)
                    else:
                        x_m = _take(x_talk + ((ph - 2) % 3) * R, r_all, r_all < R, q - 1, fail_ptr)
                    za = _rows(za, x_m, w_gate + (K - 1) * R, gs, g_ok, KR, r_all, r_all < R)
                    zb = _rows(zb, x_m, w_gate + (K - 1) * R, G + gs, g_ok, KR, r_all, r_all < R)
                    if ph >= 2:  # g_{l-2} through F2_l
                        g_m = _take(g_talks + ((ph - 2) % 3) * G, g_all, g_all < G, q - 1, fail_ptr)
                        za = _rows(za, g_m, f_at, gs, g_ok, G2, g_all, g_all < G)
                        zb = _rows(zb, g_m, f_at, G + gs, g_ok, G2, g_all, g_all < G)
                if ph == 0:
                    _give(g_talks, gs, g_ok, _tanh(za) * tl.sigmoid(zb), tag)
                else:
                    # F_l's rows of this program, read before the wait so that only its sums follow it (none in
                    # phase L: the mask, as a vector, for the interpreter)
                    f_ok = (g_ok & ((gs * 0 + ph) < L))[:, None] & (g_all < G)[None, :]
                    f_a = tl.load(f_at + gs[:, None] * G2 + G + g_all[None, :], mask=f_ok, other=0.0)
                    f_b = tl.load(f_at + (G + gs)[:, None] * G2 + G + g_all[None, :], mask=f_ok, other=0.0)
                    gated = _take(g_talks + ((ph - 1) % 3) * G, g_all, g_all < G, q, fail_ptr)
                    if ph < L:
                        za += tl.sum(f_a * gated[None, :], axis=1)
                        zb += tl.sum(f_b * gated[None, :], axis=1)
                        _give(g_talks + (ph % 3) * G, gs, g_ok, _tanh(za) * tl.sigmoid(zb), tag)
                    # Layer l - 1 closed. Its input joins its queue (this program's share), in the slot of its
                    # oldest tap: every program has read that slot, as each has given g_{l-1} since.
                    last = ph - 1
                    d_last = tl.load(dil_ptr + last)
                    slot_last = tl.load(off_ptr + last) + t % ((K - 1) * d_last)
                    if last == 0:
                        x_r = _input(embed_ptr, code, prev, rq, rq_ok, C, R, K_IN, SCALAR)
                    else:  # this program's own share of x_{l-1}, given a phase ago
                        x_r = _take(x_talk + (last % 3) * R, rq, rq_ok, q, fail_ptr)
                    tl.debug_barrier()  # every thread past the wait for g_{l-1} before any writes the oldest tap
                    tl.store(queue + slot_last * R + rq, x_r, mask=rq_ok)
                    w_out = ow_ptr + last * RS * G
                    if ph < L:  # x_l, this program's share; read by its owner next phase, by all two phases on
                        x_r = tl.load(ob_ptr + last * RS + rq, mask=rq_ok, other=0.0) + x_r
                        x_r = _rows(x_r, gated, w_out, rq, rq_ok, G, g_all, g_all < G)
                        _give(x_talk + (ph % 3) * R, rq, rq_ok, x_r, tag)
                    tl.debug_barrier()  # this program's threads wrote its skip sums a phase ago
                    skip_m = tl.zeros((SS_P,), tl.float32)
                    if last > 0:
                        skip_m = tl.load(skip_own + ss, mask=ss_ok, other=0.0)
                    skip_m = _rows(skip_m, gated, w_out, R + ss, ss_ok, G, g_all, g_all < G)
                    skip_m += tl.load(ob_ptr + last * RS + R + ss, mask=ss_ok, other=0.0)
                    tl.debug_barrier()  # every thread has read the skip sums before any overwrites them
                    if ph < L:
                        tl.store(skip_own + ss, skip_m, mask=ss_ok)
                    else:
                        # The step's queue writes are done: fence them before the head's vectors, which every
                        # program reads before its next step's first queue read.
                        _fence(fence_word)
                        _give(s_talk, ss, ss_ok, tl.maximum(skip_m, 0.0), tag)
        elif LAYERS == MERGED:
            if ph <= L:
                # Phase l < L: close layer l - 1 (its queue write, residual and skip channels) from the whole gated
                # vector, then this program's gate channels of layer l. Phase L: close the last layer.
                layer = tl.minimum(ph, L - 1)
                d = tl.load(dil_ptr + layer)
                off = tl.load(off_ptr + layer)
                n = (K - 1) * d
                za, zb = _gate_start(db_ptr, cond_ptr, layer, gs, g_ok, b * steps + step, L, G, HAS_COND)
                w_gate = dw_ptr + layer * G2 * KR
                if ph < L:  # the queue's taps, while the others finish the layer before
                    for j in tl.static_range(K - 1):
                        slot = off + (t - (K - 1 - j) * d + n) % n
                        x_m = tl.load(queue + slot * R + r_all, mask=r_all < R, other=0.0, cache_modifier=".cg")
                        za = _rows(za, x_m, w_gate + j * R, gs, g_ok, KR, r_all, r_all < R)
                        zb = _rows(zb, x_m, w_gate + j * R, G + gs, g_ok, KR, r_all, r_all < R)
                if ph == 0:
                    x_m = _input(embed_ptr, code, prev, r_all, r_all < R, C, R, K_IN, SCALAR)
                else:
                    last = ph - 1
                    d_last = tl.load(dil_ptr + last)
                    n_last = (K - 1) * d_last
                    slot_last = tl.load(off_ptr + last) + t % n_last
                    gated = _take(g_talks + (last % 2) * G, g_all, g_all < G, q, fail_ptr)
                    tl.debug_barrier()  # this program's threads wrote x_own and its skip sums a phase ago
                    # The last layer's input joins its queue (this program's share), in the slot of its oldest tap:
                    # every program has read that slot, as each has given its gated channels since.
                    tl.store(queue + slot_last * R + rq, tl.load(x_own + rq, mask=rq_ok, other=0.0), mask=rq_ok)
                    w_out = ow_ptr + last * RS * G
                    skip_m = tl.zeros((SS_P,), tl.float32)
                    if last > 0:
                        skip_m = tl.load(skip_own + ss, mask=ss_ok, other=0.0)
                    skip_m = _rows(skip_m, gated, w_out, R + ss, ss_ok, G, g_all, g_all < G)
                    skip_m += tl.load(ob_ptr + last * RS + R + ss, mask=ss_ok, other=0.0)
                    x_m = tl.load(x_own + r_all, mask=r_all < R, other=0.0)
                    if ph < L:  # every program computes the whole residual output: no phase to share it
                        x_m = tl.load(ob_ptr + last * RS + r_all, mask=r_all < R, other=0.0) + x_m
                        x_m = _rows(x_m, gated, w_out, r_all, r_all < R, G, g_all, g_all < G)
                    tl.debug_barrier()  # every thread has read x_own and the skip sums before any overwrites them
                    if ph < L:
                        tl.store(skip_own + ss, skip_m, mask=ss_ok)
                    else:
                        # The step's queue writes are done: fence them before the head's vectors, which every
                        # program reads before its next step's first queue read.
                        _fence(fence_word)
                        _give(s_talk, ss, ss_ok, tl.maximum(skip_m, 0.0), tag)
                if ph < L:
                    tl.store(x_own + r_all, x_m, mask=r_all < R)
                    za = _rows(za, x_m, w_gate + (K - 1) * R, gs, g_ok, KR, r_all, r_all < R)
                    zb = _rows(zb, x_m, w_gate + (K - 1) * R, G + gs, g_ok, KR, r_all, r_all < R)
                    _give(g_talks + (layer % 2) * G, gs, g_ok, _tanh(za) * tl.sigmoid(zb), tag)
        else:
            if ph < 2 * L:
                layer = ph // 2
                d = tl.load(dil_ptr + layer)
                off = tl.load(off_ptr + layer)
                n = (K - 1) * d
                if ph % 2 == 0:
                    # Phase A: the gate channels gs, tanh half za and sigmoid half zb.
                    za, zb = _gate_start(db_ptr, cond_ptr, layer, gs, g_ok, b * steps + step, L, G, HAS_COND)
                    w_layer_a = dw_ptr + layer * G2 * KR
                    # The queue's taps first (written steps ago), then the new input, whose wait this work hides.
                    for j in tl.static_range(K - 1):
                        slot = off + (t - (K - 1 - j) * d + n) % n
                        for i0_a in tl.static_range(0, R, IN_R):
                            i_a = i0_a + tl.arange(0, IN_R)
                            i_ok_a = i_a < R
                            x_a = tl.load(queue + slot * R + i_a, mask=i_ok_a, other=0.0, cache_modifier=".cg")
                            za = _rows(za, x_a, w_layer_a + j * R, gs, g_ok, KR, i_a, i_ok_a)
                            zb = _rows(zb, x_a, w_layer_a + j * R, G + gs, g_ok, KR, i_a, i_ok_a)
                    for i0_a in tl.static_range(0, R, IN_R):
                        i_a = i0_a + tl.arange(0, IN_R)
                        i_ok_a = i_a < R
                        if layer == 0:
                            x_a = _input(embed_ptr, code, prev, i_a, i_ok_a, C, R, K_IN, SCALAR)
                        else:
                            x_a = _take(x_talk, i_a, i_ok_a, q, fail_ptr)
                        za = _rows(za, x_a, w_layer_a + (K - 1) * R, gs, g_ok, KR, i_a, i_ok_a)
                        zb = _rows(zb, x_a, w_layer_a + (K - 1) * R, G + gs, g_ok, KR, i_a, i_ok_a)
                    _give(g_talks + (layer % 2) * G, gs, g_ok, _tanh(za) * tl.sigmoid(zb), tag)
                else:
                    # Phase B: outputs oc of the layer's 1x1 (residual channels, then skip channels).
                    if layer == 0:
                        x_b = _input(embed_ptr, code, prev, oc, is_res, C, R, K_IN, SCALAR)
                    else:  # this program's own residual channels, tagged by phase B of the layer before
                        x_b = _take(x_talk, oc, is_res, q - 1, fail_ptr)
                    bias = tl.load(ob_ptr + layer * RS + oc, mask=o_ok, other=0.0)
                    tl.debug_barrier()  # the skip sums this program's threads wrote in the layer before
                    skip = tl.zeros((OS_P,), tl.float32)
                    if layer > 0:
                        skip = tl.load(skip_own + oc - R, mask=is_skip, other=0.0)
                    acc = tl.where(is_res, bias + x_b, skip)
                    # The last layer's residual output feeds nothing. (The layer as a vector: Triton's interpreter
                    # cannot combine a scalar condition with a vector mask.)
                    res_out = is_res & ((oc * 0 + layer) < L - 1)
                    wanted = is_skip | res_out
                    acc = _taken_product(acc, g_talks + (layer % 2) * G, q, fail_ptr, ow_ptr + layer * RS * G, oc,
                                         wanted, G, IN_G)
                    acc = tl.where(is_skip, acc + bias, acc)
                    # The layer's input joins its queue, in the slot of the oldest tap: every program has read that
                    # slot, as each has given its gated channels since.
                    tl.store(queue + (off + t % n) * R + oc, x_b, mask=is_res)
                    tl.debug_barrier()  # every thread has read the skip sums before any overwrites them
                    if layer < L - 1:
                        tl.store(skip_own + oc - R, acc, mask=is_skip)
                        _give(x_talk, oc, res_out, acc, tag)
                    else:
                        # The step's queue writes are done: fence them before the head's vectors, which every program
                        # reads before its next step's first queue read.
                        _fence(fence_word)
                        _give(s_talk, oc - R, is_skip, tl.maximum(acc, 0.0), tag)
        if ph == HEAD:
            # Head 1: hidden channels hs from relu(skip).
            hidden = tl.load(h1b_ptr + hs, mask=h_ok, other=0.0)
            hidden = _taken_product(hidden, s_talk, q, fail_ptr, h1w_ptr, hs, h_ok, S, IN_S)
            _give(h_talk, hs, h_ok, tl.maximum(hidden, 0.0), tag)
        elif ph == HEAD + 1:
            # Head 2: outputs cs (logits, or a continuous distribution's parameters).
            out = tl.load(h2b_ptr + cs, mask=c_ok, other=0.0)
            out = _taken_product(out, h_talk, q, fail_ptr, h2w_ptr, cs, c_ok, H, IN_H)
            if TEACHER:
                tl.store(logits_ptr + (b * steps + step) * C + cs, out, mask=c_ok)
                following = tl.load(codes_ptr + b * codes_stride + tl.minimum(step + 1, steps - 1))
            else:
                _give(o_talk, cs, c_ok, out, tag)
        elif ph > HEAD + 1:
            # The draw, by every program alike.
            row = _take(o_talk, c_all, c_all < C, q, fail_ptr)
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
    if K_IN == 2:
        tl.store(inputs_ptr + b, prev, mask=(p == 0) & (phase_hi == steps * NPH))


def programs_for(w, resident: int | None = None) -> int:
    """Programs per stream for these weights (any objects with `.shape`): a power of two, about four gate channels each
    where layers merge (`layer_mode`) and two where they do not, at most `resident` (the programs the device surely runs
    at once: a stream's programs wait on each other; an A100's 108 SMs take 64 of r9y9's 128), at least 1, and every
    program owning at least one gate channel and one of the head's hidden channels (the kernel's reuse of its vectors'
    buffers rests on that). From benchmarks/gpu_spread_sweep.py on an H200 (docs/BENCHMARKS.md): `standard` (merged)
    18,142 samples/s at 16 programs, 15,740 at 32; r9y9's LJSpeech shape (split layers) 5,670 at 128, 4,967 at 64. Fixed
    by the model's shape (and the device's SMs), never by the batch, so a stream's tiles and sums are the same whatever
    the batch (FASTWAVENET_SPREAD_PROGRAMS overrides it for measuring, within the same bounds)."""
    import os

    G, H = w.dilated_b.shape[1] // 2, w.head1_w.shape[0]
    override = os.environ.get("FASTWAVENET_SPREAD_PROGRAMS")
    if override:
        P = max(1, int(override))
    else:
        share = max(1, G // (4 if layer_mode(w) == "merged" else 2))
        P = 1 << (share.bit_length() - 1)
        if resident:
            P = min(P, 1 << (resident.bit_length() - 1))
    if resident:
        P = min(P, resident)
    owns_all = lambda n, p: (p - 1) * -(-n // p) < n  # noqa: E731
    while P > 1 and not (owns_all(G, P) and owns_all(H, P)):
        P -= 1
    return P


def layer_mode(w) -> str:
    """How a stream's layers run (any weights with `.shape`; made weights keep the mode they were made with):
    - "merged": one phase a layer, every program computing the whole residual output itself; where the residual
      matrix (R x G) is at most 8,192 weights (32 KB, read from L2 by every program in every layer, in flight while
      it waits for the gated vector);
    - "fused": one phase a layer, each program computing its share of x_l and handing it over, the next layers'
      gates reading x_l two phases later through matrices fused with the residual weights (`fused_layers`): the
      others (r9y9's LJSpeech shape, R = 512) in float32; with bf16 weights "split" until measured;
    - "split": two phases a layer (the gate, then the residual and skip outputs), each handing over its vector.
    FASTWAVENET_SPREAD_LAYERS (split, merged or fused) overrides it, for measuring."""
    import os

    if getattr(w, "layers", ""):
        return w.layers
    override = os.environ.get("FASTWAVENET_SPREAD_LAYERS")
    if override:
        if override not in LAYER_MODES:
            raise ValueError(f"FASTWAVENET_SPREAD_LAYERS={override!r}: one of {', '.join(LAYER_MODES)}")
        return override
    R, G = w.embed.shape[2], w.dilated_b.shape[1] // 2
    if triton.next_power_of_2(R) * triton.next_power_of_2(G) <= 8192:
        return "merged"
    # bf16 weights: split, until measured (fused layers' float32 matrices would take r9y9's 47 MB past the L2)
    return "split" if getattr(w.dilated_w, "dtype", None) == torch.bfloat16 else "fused"


def _block(n: int, rows_p: int, budget: int = 2048) -> int:
    """Inputs per tile of a product: the whole input where a tile of `rows_p` rows of it holds about `budget`
    weights, else a power of two that does (at least 16)."""
    return min(triton.next_power_of_2(n), max(16, triton.next_power_of_2(budget // rows_p)))


def launch_constants(w: SpreadWeights, programs: int, teacher: bool, has_cond: bool, dist: int = SOFTMAX,
                     truncate: bool = False) -> dict:
    """The compile-time constants of one variant (weights: any objects with `.shape`)."""
    K_IN, R = w.embed.shape[0], w.embed.shape[2]
    C, H = w.head2_w.shape[0], w.head1_w.shape[0]
    G = w.dilated_b.shape[1] // 2
    S = w.out_w.shape[1] - R
    P = programs
    p2 = triton.next_power_of_2
    share = lambda n: -(-n // P)  # noqa: E731
    GS, OS, HS, CS = share(G), share(R + S), share(H), share(C)
    SS, RQ = share(S), share(R)
    layers = LAYER_MODES[layer_mode(w)]
    return dict(C=C, R=R, G=G, S=S, H=H, K=w.dilated_w.shape[2] // R, K_IN=K_IN, C_P=p2(C), P=P,
                LAYERS=layers, XB=3 if layers == LAYER_MODES["fused"] else 1,
                GB=3 if layers == LAYER_MODES["fused"] else 2, R_P=p2(R), G_P=p2(G), SS=SS, SS_P=p2(SS), RQ=RQ,
                RQ_P=p2(RQ),
                GS=GS, GS_P=p2(GS), OS=OS, OS_P=p2(OS), HS=HS, HS_P=p2(HS), CS=CS, CS_P=p2(CS),
                IN_R=_block(R, p2(GS)), IN_G=_block(G, p2(OS)), IN_S=_block(S, p2(HS)), IN_H=_block(H, p2(CS)),
                TEACHER=bool(teacher), TRUNCATE=bool(truncate) and not teacher and dist == SOFTMAX,
                HAS_COND=bool(has_cond), SCALAR=dist != SOFTMAX, DIST=dist)


def resident_programs(device: torch.device) -> int:
    """Programs that surely run at once on this device: one per SM (a program needs far less than an SM)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch(codes, t0, u, w: SpreadWeights, queues, inputs, cond, logits_out, codes_out, teacher: bool,
           rules: StreamRules | None = None, truncate: bool = False, dist: int = SOFTMAX, log_scale_min: float = -7.0,
           programs: int | None = None, num_warps: int = 4):
    """Launch one chunk, as kernels.gpu.launch, with `programs` per stream (default `programs_for(w)`): on a GPU
    one launch per group of streams that fits the SMs, under Triton's interpreter one launch per phase. Raises
    RuntimeError if a program gave up waiting (its group was not all resident at once)."""
    import os

    B = queues.shape[0]
    steps = codes.shape[1] if teacher else u.shape[0]
    P = programs or programs_for(w)
    num_warps = int(os.environ.get("FASTWAVENET_SPREAD_WARPS", num_warps))  # for measuring
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    constants = launch_constants(w, P, teacher, cond is not None, dist, truncate)
    device = queues.device
    rules = plain_rules(B, device) if rules is None else rules  # teacher forcing draws nothing
    width = sum(constants[name] for name in ("S", "H", "C")) + constants["XB"] * constants["R"] \
        + constants["GB"] * constants["G"]
    talk = torch.zeros(B, width, device=device, dtype=torch.int64)  # tag 0: written by no phase
    skip = torch.empty(B, constants["S"], device=device, dtype=torch.float32)
    x_own = torch.empty(B, P, constants["R"], device=device, dtype=torch.float32)
    fence = torch.zeros(B, P, device=device, dtype=torch.int32)
    if not interpreted and P > resident_programs(device):
        raise RuntimeError(f"{P} programs a stream cannot all run at once on {resident_programs(device)} SMs "
                           f"(programs_for(w, resident_programs(device)) gives a count that can)")
    group = B if interpreted else max(1, resident_programs(device) // P)
    # A failure flag for each launch group, 16 bytes apart (as Triton specializes pointers, so every group's launch
    # is the one compiled variant): a group whose programs gave up stops its own waits, not the next group's
    fail = torch.zeros(4 * -(-B // group), device=device, dtype=torch.int32)
    inputs_arg = inputs if inputs.numel() else torch.empty(B, dtype=torch.int64, device=device)
    layers = w.dilated_b.shape[0]
    split = constants["LAYERS"] == LAYER_MODES["split"]
    phases = steps * ((2 * layers if split else layers + 1) + (2 if teacher else 3))
    spans = [(q, q + 1) for q in range(phases)] if interpreted else [(0, phases)]
    for first in range(0, B, group):
        for lo, hi in spans:
            _spread_kernel[(P, min(group, B - first))](
                codes, codes.stride(0), u, queues, inputs_arg, queues if cond is None else cond,
                logits_out if teacher else queues, codes_out, talk, skip, x_own, fence, fail[4 * (first // group):],
                w.embed, w.dilated_w, w.dilated_b, w.out_w, w.out_b, w.head1_w, w.head1_b, w.head2_w, w.head2_b,
                w.dilations, w.offsets, w.fused_w, w.fused_b, t0, steps, lo, hi, first, B, w.dilated_b.shape[0],
                queues.shape[1],
                rules.temperature, rules.top_k, rules.top_p, rules.argmax, log_scale_min, **constants,
                num_warps=num_warps)
    if int(fail.max().item()):
        raise RuntimeError("the spread kernel gave up waiting: its programs were not all resident at once")


# The type of every runtime argument, for compiling a variant ahead of time without a GPU (`fastwavenet doctor`).
ARGUMENT_TYPES = {"codes_ptr": "*i64", "codes_stride": "i32", "u_ptr": "*fp32", "queues_ptr": "*fp32",
                  "inputs_ptr": "*i64", "cond_ptr": "*fp32", "logits_ptr": "*fp32", "out_ptr": "*i64",
                  "talk_ptr": "*i64", "skip_ptr": "*fp32", "xown_ptr": "*fp32", "fence_ptr": "*i32", "fail_ptr": "*i32",
                  "embed_ptr": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32", "ow_ptr": "*fp32", "ob_ptr": "*fp32",
                  "h1w_ptr": "*fp32", "h1b_ptr": "*fp32", "h2w_ptr": "*fp32", "h2b_ptr": "*fp32", "dil_ptr": "*i64",
                  "off_ptr": "*i64", "fw_ptr": "*fp32", "fb_ptr": "*fp32", "t0": "i32", "steps": "i32",
                  "phase_lo": "i32", "phase_hi": "i32",
                  "first": "i32", "B": "i32", "L": "i32", "Q": "i32", "temperature_ptr": "*fp64",
                  "top_k_ptr": "*i32", "top_p_ptr": "*fp32", "argmax_ptr": "*i8", "log_scale_min": "fp32"}


def argument_types(dist: int = SOFTMAX) -> dict:
    """ARGUMENT_TYPES for a variant: a scalar-input model's codes and drawn values are float32."""
    if dist == SOFTMAX:
        return ARGUMENT_TYPES
    return {**ARGUMENT_TYPES, "codes_ptr": "*fp32", "out_ptr": "*fp32"}
