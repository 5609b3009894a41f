"""What the tiled GPU kernel's products would cost in bits per sample on real audio, emulated on the CPU: the model
scored teacher-forced (fastwavenet/score.py) with every matrix product and convolution computed as float32 (as
written), as 3xTF32 (the kernel's `tl.dot(..., input_precision="tf32x3")`) or as plain TF32 (one product of the
operands rounded to TF32: what `allow_tf32` gives, 3x less tensor-core work).

Run: python recipes/tf32_cost.py MODEL.safetensors AUDIO... [--seconds 60] [--json OUT]

TF32 rounding is the GPU's cvt.rna.tf32.f32: 10 mantissa bits, to nearest, ties away from zero. 3xTF32 splits each
float32 operand into its TF32 rounding and the TF32 rounding of the rest and adds three products (small x big,
big x small, big x big); the emulation sums each product in the CPU's float32 order, where tensor cores have their
own, so it measures the operands' rounding, not the GPU's bits. tests/test_tf32.py holds the same emulation
against the training model's logits."""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

MODES = ("float32", "3xtf32", "tf32")


def tf32(x: torch.Tensor) -> torch.Tensor:
    """x (float32) rounded to TF32's 10 mantissa bits, to nearest, ties away from zero."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def split(product, mode: str):
    """product(a, b) (bilinear in a and b) computed as `mode` computes it."""
    if mode == "float32":
        return product

    def emulated(a, b):
        a_big, b_big = tf32(a), tf32(b)
        if mode == "tf32":
            return product(a_big, b_big)
        return product(tf32(a - a_big), b_big) + product(a_big, tf32(b - b_big)) + product(a_big, b_big)

    return emulated


@contextlib.contextmanager
def emulated(mode: str):
    """Within: torch.addmm, torch.einsum (two operands) and torch.nn.functional.conv1d computed as `mode` computes
    its products (their bias added after), which covers the torch backend's step and the whole-sequence forward."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {MODES}")
    F = torch.nn.functional
    addmm, einsum, conv1d = torch.addmm, torch.einsum, F.conv1d

    def addmm_as(bias, a, w):
        return bias + split(torch.mm, mode)(a, w)

    def einsum_as(equation, a, b):
        return split(lambda x, y: einsum(equation, x, y), mode)(a, b)

    def conv1d_as(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        out = split(lambda u, v: conv1d(u, v, None, stride, padding, dilation, groups), mode)(x, w)
        return out if bias is None else out + bias[None, :, None]

    torch.addmm, torch.einsum, F.conv1d = addmm_as, einsum_as, conv1d_as
    try:
        yield
    finally:
        torch.addmm, torch.einsum, F.conv1d = addmm, einsum, conv1d


def main(argv=None):
    from fastwavenet import audio
    from fastwavenet.modelfile import load_model
    from fastwavenet.score import score_audio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("audio", nargs="+")
    parser.add_argument("--seconds", type=float, default=60.0, help="the first SECONDS of each file")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    rate = model.config.sample_rate
    rows = []
    for path in args.audio:
        samples = audio.read(path, rate)[:int(args.seconds * rate)]
        row = {"path": path, "samples": len(samples)}
        for mode in MODES:
            with emulated(mode):
                row[mode] = score_audio(model, samples)
        rows.append(row)
        print(f"{path}: {len(samples)} samples, bits per sample: float32 {row['float32']:.6f}, 3xTF32 "
              f"{row['3xtf32']:.6f} ({row['3xtf32'] - row['float32']:+.2e}), TF32 {row['tf32']:.6f} "
              f"({row['tf32'] - row['float32']:+.2e})", flush=True)
    total = sum(r["samples"] for r in rows)
    mean = {mode: sum(r[mode] * r["samples"] for r in rows) / total for mode in MODES}
    print(f"all {total} samples: float32 {mean['float32']:.6f}, 3xTF32 {mean['3xtf32']:.6f} "
          f"({mean['3xtf32'] - mean['float32']:+.2e}), TF32 {mean['tf32']:.6f} ({mean['tf32'] - mean['float32']:+.2e})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "rows": rows, "mean": mean}, f, indent=1)


if __name__ == "__main__":
    main()
