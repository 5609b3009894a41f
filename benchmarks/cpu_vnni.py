"""Would VNNI dot products win for a lone stream's int8 products, and what does rounding the activations to 8 bits
cost? (issue 38, item 1). A probe: nothing here is used by the package.

speed: the matrix products of one sample of a preset (default r9y9-ljspeech: 24 dilated (k*R, 2G) = (1536, 512),
24 output (G, R+S) = (256, 768), the head's (256, 256) and (256, 30): 23.6 M weights), random weights and inputs,
one stream, on the calling thread alone, in paired rounds (every round runs each way in turn, so load falls on
all):
- float32: `kernels.cpu._matmul` on float32 weights (the `--precision float32` products);
- int8 widened: `kernels.cpu._matmul` on int8 weights with column scales (the `--precision int8` products: each
  weight widened to float32 in registers, one fma);
- int8 VNNI: `vnni_product`: the input vector quantized to u8 (`kernels.cpu.quantize8`, timed with it), 4 u8 x int8 products
  summed into each int32 lane per `vpdpbusd`, then y = a + bias + (x_scale * w_scale[n]) * (acc[n] - 128 *
  colsum[n]) (colsum: the weights' column sums); the weights in vpdpbusd's plain layout (K/4, N, 4), and in
  panels of 8 vectors' columns (128 with AVX-512; `vnni_layout`);
- the panels' products once more given the quantized inputs (what the quantization costs);
- the int8 weights read and nothing computed (the memory's limit for one core).
Prints each way's best round: Gweights/s and microseconds per sample. The VNNI ways use numba's target's vectors:
512 bits (AVX-512 VNNI), or 256 (NUMBA_CPU_NAME=alderlake NUMBA_CPU_FEATURES="": AVX-VNNI, the other ways AVX2).

    python benchmarks/cpu_vnni.py speed [PRESET] [ROUNDS] [PASSES]     (default r9y9-ljspeech 7 40)

bits: bits per sample of AUDIO under MODEL, teacher-forced (fastwavenet.score's windows and likelihood), at float32,
int8 weights (`folded.rounded(weights, "int8")`, what `fastwavenet score --precision int8` gives), and int8 weights
(and float32 weights) with every product's input fake-quantized to 8 bits per vector as `cpu.quantize8` does (scale
max|x| / 127, round(x / scale) * scale): the dilated products' taps (residual stream values), the output products'
gated values, the head's two inputs. The dilated taps two ways: one scale per residual vector (each tap its own, as
a queue of quantized vectors would hold them) and one scale over the k stacked taps (as `vnni_product` quantizes
its input).

    python benchmarks/cpu_vnni.py bits MODEL AUDIO [SECONDS]             (default: the whole file)
"""

from __future__ import annotations

import sys
import time

import numpy as np
from numba import njit
from numba.typed import List

from fastwavenet.kernels import cpu

_OPTIONS = dict(fastmath=True, error_model="numpy")


# numba's target's vectors (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES apply). 8 chains cover vpdpbusd's latency (5
# cycles, one issued a cycle); half blocks and one-vector pieces for the rest.
_LANES, _NV = {512: 16, 256: 8}[cpu.VECTOR_BITS], 8
# The kernel's own VNNI sums (`kernels.cpu._sums8`, the vpdpbusd form), on this probe's layouts.
_BLOCK, _HALF, _PIECE = (cpu._sums8(nv, _LANES, "vnni") for nv in (_NV, _NV // 2, 1))


@njit(**_OPTIONS)
def vnni_sums(wq, xq, acc):
    """acc (N,) int32 = sum_i xq[i] * w[i, n], xq (K,) uint8, the int8 weights w in panels of P columns (`vnni_layout`):
    wq (N/P, K/4, P, 4), w[4j + r, p * P + c] at wq[p, j, c, r]; P a multiple of _LANES."""
    panels, k4, width = wq.shape[0], wq.shape[1], wq.shape[2]
    xp = xq.ctypes.data
    for p in range(panels):
        wp, ap = wq.ctypes.data + p * k4 * width * 4, acc.ctypes.data + 4 * p * width
        n = 0
        while n + _LANES * _NV <= width:
            _BLOCK(wp + 4 * n, width, xp, ap + 4 * n, k4, 0)
            n += _LANES * _NV
        while n + _LANES * _NV // 2 <= width:
            _HALF(wp + 4 * n, width, xp, ap + 4 * n, k4, 0)
            n += _LANES * _NV // 2
        while n < width:
            _PIECE(wp + 4 * n, width, xp, ap + 4 * n, k4, 0)
            n += _LANES


@njit(**_OPTIONS)
def vnni_product(wq, colsum, wscale, bias, x, xq, acc, start, y, quantized):
    """y (N,) = start + bias + (x_scale * wscale) * (acc - colsum), acc = `vnni_sums` of x quantized by `cpu.quantize8`
    (the 128 added to each input taken back off through colsum). wq (N/P, K/4, P, 4) int8 (`vnni_layout`); colsum
    (N,) int32: 128 * each column's sum of the weights; wscale (N,) float32 column scales; x (K,) float32; xq (K,)
    uint8 and acc (N,) int32 scratch; quantized (2,) float32: [0, -] quantizes x, [1, scale] takes xq as it is and
    x_scale = scale (timing the products alone)."""
    scale = cpu.quantize8(x, xq) if quantized[0] == 0 else quantized[1]
    vnni_sums(wq, xq, acc)
    for n in range(y.shape[0]):
        y[n] = start[n] + bias[n] + (scale * wscale[n]) * np.float32(acc[n] - colsum[n])


def vnni_layout(q: np.ndarray, panel: int) -> np.ndarray:
    """int8 (K, N) -> (N/P, K/4, P, 4): four consecutive inputs of a column in one 32-bit word (vpdpbusd's layout),
    the columns in panels of P = `panel` stored one after another, or P = N where `panel` does not divide N: the
    plain (K/4, N, 4), each row of K/4 a stride of N words (a panel makes a block's weights one sequential stream).
    K a multiple of 4."""
    k, n = q.shape
    p = panel if n % panel == 0 else n
    return np.ascontiguousarray(q.reshape(k // 4, 4, n // p, p).transpose(2, 0, 3, 1))


def int8_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (K, N) -> (q int8 (K, N), scale float32 (N,)), as `folded.int8_parts` quantizes."""
    import torch

    from fastwavenet.folded import int8_parts

    q, scale = int8_parts(torch.from_numpy(w))
    return q.numpy(), scale.numpy()


# ---- speed ------------------------------------------------------------------------------------------------------


@njit(**_OPTIONS)
def _pass_matmul(ws, scales, biases, xs, ys, zeros, passes):
    """`passes` times every product y = bias + x w through kernels.cpu._matmul, one stream."""
    for _ in range(passes):
        for m in range(len(ws)):
            w = ws[m]
            cpu._matmul(w, biases[m], xs[m], 1, ys[m], 0, w.shape[1], zeros[m], scales[m])


@njit(**_OPTIONS)
def _pass_float(ws, biases, xs, ys, zeros, passes):
    """`_pass_matmul` for float32 weights."""
    for _ in range(passes):
        for m in range(len(ws)):
            w = ws[m]
            cpu._matmul(w, biases[m], xs[m], 1, ys[m], 0, w.shape[1], zeros[m])


@njit(**_OPTIONS)
def _pass_vnni(wqs, colsums, wscales, biases, xs, xqs, accs, ys, zeros, passes, quantized):
    """`passes` times every product through `vnni_product`, one stream."""
    for _ in range(passes):
        for m in range(len(wqs)):
            vnni_product(wqs[m], colsums[m], wscales[m], biases[m], xs[m][0], xqs[m], accs[m], zeros[m][0],
                         ys[m][0], quantized[m])


@njit(**_OPTIONS)
def _pass_read(wqs, passes):
    """`passes` times every byte of the int8 weights read (an xor of their 64-bit words): the memory's limit."""
    seen = np.uint64(0)
    for _ in range(passes):
        for m in range(len(wqs)):
            words = wqs[m].reshape(-1).view(np.uint64)
            for i in range(words.shape[0]):
                seen ^= words[i]
    return seen


def shapes(config) -> list[tuple[int, int]]:
    """(K, N) of every product of one sample: the dilated (taps stacked), the output ones, the head's two."""
    r, g, s, h, k = (config.residual_channels, config.gate_channels, config.skip_channels, config.head_channels,
                     config.kernel_size)
    return [(k * r, 2 * g)] * config.layers + [(g, r + s)] * config.layers + [(s, h), (h, config.output_channels)]


def speed(name: str = "r9y9-ljspeech", rounds: int = 7, passes: int = 40):
    import os

    from fastwavenet import preset

    config = preset(name)
    rng = np.random.default_rng(0)
    lists = {key: List() for key in ("f32", "q8", "s8", "plain", "panels", "colsums", "wscales", "biases", "xs",
                                     "ys", "zeros", "xqs", "accs", "quantize", "given")}
    for k, n in shapes(config):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        q, scale = int8_columns(w)
        x = rng.standard_normal((1, k)).astype(np.float32)
        padded = -(-n // 16) * 16  # VNNI columns come in 16s: the head's last product padded with zero columns
        qp = np.pad(q, ((0, 0), (0, padded - n)))
        for key, value in dict(
                f32=w, q8=q, s8=scale, plain=vnni_layout(qp, padded), panels=vnni_layout(qp, _LANES * _NV),
                colsums=128 * qp.astype(np.int32).sum(0, dtype=np.int32), wscales=np.pad(scale, (0, padded - n)),
                biases=np.pad(rng.standard_normal(n).astype(np.float32), (0, padded - n)), xs=x,
                ys=np.zeros((1, padded), np.float32), zeros=np.zeros((1, padded), np.float32),
                xqs=np.zeros(k, np.uint8), accs=np.zeros(padded, np.int32), quantize=np.zeros(2, np.float32),
                # the products alone: x quantized before (by the warm-up pass), its scale given
                given=np.array([1, np.abs(x).max() / np.float32(127)], np.float32)).items():
            lists[key].append(value)
    t = lists
    count = sum(k * n for k, n in shapes(config))

    def vnni(layout, quantized):
        return lambda p: _pass_vnni(t[layout], t["colsums"], t["wscales"], t["biases"], t["xs"], t["xqs"],
                                    t["accs"], t["ys"], t["zeros"], p, t[quantized])

    ways = {
        "float32": lambda p: _pass_float(t["f32"], t["biases"], t["xs"], t["ys"], t["zeros"], p),
        "int8 widened": lambda p: _pass_matmul(t["q8"], t["s8"], t["biases"], t["xs"], t["ys"], t["zeros"], p),
        "int8 VNNI (K/4, N, 4), x quantized": vnni("plain", "quantize"),
        f"int8 VNNI panels of {_LANES * _NV}, x quantized": vnni("panels", "quantize"),
        f"int8 VNNI panels of {_LANES * _NV}, products alone": vnni("panels", "given"),
        "reading the int8 weights, no products": lambda p: _pass_read(t["panels"], p),
    }
    for run in ways.values():  # compile, warm
        run(1)
    best = dict.fromkeys(ways, float("inf"))
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for label, run in ways.items():
            start = time.perf_counter()
            run(passes)
            best[label] = min(best[label], (time.perf_counter() - start) / passes)
    print(f"{name}: {len(t['f32'])} products, {count / 1e6:.2f} M weights a sample, one stream, one thread; best of "
          f"{rounds} paired rounds of {passes} passes; load average (1 min) {min(loads):.2f}-{max(loads):.2f}")
    for label, seconds in best.items():
        print(f"  {label:42s} {count / seconds / 1e9:6.1f} Gweights/s  {1e6 * seconds:8.1f} us a sample  "
              f"({best['float32'] / seconds:.2f}x float32, {best['int8 widened'] / seconds:.2f}x int8 widened)")


# ---- bits -------------------------------------------------------------------------------------------------------


def fake_quantized(v, scale=None):
    """v (B, C, T) rounded per vector (each column t over C) as `cpu.quantize8` does: round(v / s) * s, s = max|v| / 127
    over the column, or the given scale (B, 1, T)."""
    import torch

    s = v.abs().amax(dim=1, keepdim=True) / 127 if scale is None else scale
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(v / safe) * s


def convolve_quantized(weights, config, codes, taps: str):
    """`folded.convolve` (unconditioned) with every product's input fake-quantized (`fake_quantized`): taps "vector"
    (one scale per residual vector) or "stacked" (one scale over the k taps a dilated product reads)."""
    import torch
    import torch.nn.functional as F

    from fastwavenet.folded import embed_input

    w = weights
    k, r, g = config.kernel_size, config.residual_channels, config.gate_channels
    T = codes.shape[1]
    x = embed_input(w, config, codes)
    skips = 0
    for layer, d in enumerate(config.dilations):
        padded = F.pad(x, ((k - 1) * d, 0))
        tap_values = [padded[:, :, j * d:j * d + T] for j in range(k)]  # j = 0 the oldest
        if taps == "vector":
            tap_values = [fake_quantized(v) for v in tap_values]
        else:
            scale = torch.stack([v.abs().amax(dim=1, keepdim=True) for v in tap_values]).amax(dim=0) / 127
            tap_values = [fake_quantized(v, scale) for v in tap_values]
        z = sum(torch.einsum("brt,ro->bot", v, w.dilated_w[layer, j]) for j, v in enumerate(tap_values))
        z = z + w.dilated_b[layer][:, None]
        gated = torch.tanh(z[:, :g]) * torch.sigmoid(z[:, g:])
        out = torch.einsum("bgt,go->bot", fake_quantized(gated), w.out_w[layer]) + w.out_b[layer][:, None]
        x = x + out[:, :r]
        skips = skips + out[:, r:]
    hidden = F.relu(torch.einsum("bst,sh->bht", fake_quantized(F.relu(skips)), w.head1_w) + w.head1_b[:, None])
    return torch.einsum("bht,hc->bct", fake_quantized(hidden), w.head2_w) + w.head2_b[:, None]


def bits(model_path: str, audio_path: str, seconds: float | None = None):
    from fastwavenet import audio, score
    from fastwavenet.folded import rounded
    from fastwavenet.generator import encode
    from fastwavenet.modelfile import ModelFile, load_model

    model = load_model(model_path)
    config = model.config
    samples = audio.read(audio_path, config.sample_rate)
    if seconds is not None:
        samples = samples[:int(seconds * config.sample_rate)]
    codes = encode(samples, config)
    int8 = ModelFile(config, rounded(model.weights, "int8"))
    plain = score.convolve
    results = {"float32": score.score_codes(model, codes), "int8 weights": score.score_codes(int8, codes)}
    try:  # score_codes with its forward swapped for the quantized one: the same windows and likelihood
        for weights, taps in ((model, "vector"), (int8, "vector"), (int8, "stacked")):
            score.convolve = lambda w, c, x, **_: convolve_quantized(w, c, x, taps)
            label = "int8 weights" if weights is int8 else "float32 weights"
            results[f"{label} + 8-bit inputs ({taps} taps)"] = score.score_codes(weights, codes)
    finally:
        score.convolve = plain
    print(f"{model_path} on {audio_path}: {len(codes):,} samples")
    for label, value in results.items():
        print(f"  {label:45s} {value:.4f} bits/sample  ({value - results['float32']:+.4f})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["speed"]:
        speed(*[f(a) for f, a in zip((str, int, int), sys.argv[2:])])
    elif sys.argv[1:2] == ["bits"] and len(sys.argv) >= 4:
        bits(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        sys.exit(__doc__)
