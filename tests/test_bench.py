"""`fastwavenet bench`: a small run end to end, and bad input refused before anything is measured."""

import json

import pytest
import torch

from fastwavenet import preset

from helpers import run_cli


def test_flops_per_sample_counts_every_product():
    from fastwavenet.bench import flops_per_sample

    c = preset("standard")  # 20 layers of (2 x 64 x 128 + 64 x 320) multiply-adds, less the last residual, + head
    assert flops_per_sample(c) == 2 * (20 * (2 * 64 * 128 + 64 * 320) - 64 * 64 + 256 * 256 + 256 * 256)


def test_bench_table_json_and_plot(tmp_path):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    result = run_cli("bench", "--preset", "tiny", "--backend", "torch,numba", "--batch", "1,2", "--min-seconds",
                     "0.05", "--top-k", "5", "--json", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert "machine:" in result.stdout and "numba" in result.stdout and "top_k=5" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["config"] == json.loads(preset("tiny").to_json())
    assert payload["machine"]["cores"] >= 1 and payload["machine"]["cpu"]
    assert payload["machine"]["isa"] in ("avx512f", "avx2", "avx", "sse2", "neon") and "limits:" in result.stdout
    limits = payload["limits"]
    assert limits["sgemm_gflops"] > 0 and limits["weight_passes_per_s"] > 0 and limits["threads"] >= 1
    assert limits["batched_samples_per_s"] == pytest.approx(limits["sgemm_gflops"] * 1e9 / limits["flops_per_sample"])
    assert limits["fma_gflops"] > 0 and limits["fma_threads"] >= 1 and "peak:" in result.stdout
    assert limits["kind"] == "cpu" and "first call" in result.stdout
    assert payload["sampling"] == {"temperature": 1.0, "top_k": 5, "top_p": 1.0, "argmax": False}
    rows = {(r["backend"], r["batch"]): r for r in payload["results"]}
    assert set(rows) == {(b, n) for b in ("naive", "torch", "numba") for n in (1, 2)}
    for (backend, batch), row in rows.items():
        assert row["samples_per_s"] > 0 and row["steps"] >= 2
        assert row["speedup_vs_naive"] > 0  # naive ran at both batches, so every row has a speedup
        assert row["realtime_factor"] == pytest.approx(row["samples_per_s"] / batch / payload["config"]["sample_rate"])
        assert row["first_call_s"] > 0
        if backend == "naive":
            continue  # its share of the limit is near zero; the limits are not measured again for it
        # each row is held against the limits measured just before it, and names the one that binds
        batched = row["limit_sgemm_gflops"] * 1e9 / limits["flops_per_sample"]
        limit = min(batch * row["limit_weight_passes_per_s"], batched)
        assert row["of_limit"] == pytest.approx(row["samples_per_s"] / limit)
        assert row["bound_by"] == ("weights" if batch * row["limit_weight_passes_per_s"] < batched else "flops")
        flops = row["samples_per_s"] * limits["flops_per_sample"]
        assert row["of_peak"] == pytest.approx(flops / (row["limit_fma_gflops"] * 1e9))
    assert "measured again before each row" in result.stdout
    assert rows[("naive", 1)]["speedup_vs_naive"] == pytest.approx(1.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.png"], "temporary files left behind"


def test_rows_printed_as_they_are_measured_line_up_with_the_header():
    """bench prints its header first and each row as it is measured: every line keeps the widest row name's
    columns (`numba-split/int8` pushed its own row's columns out of line)."""
    from fastwavenet import bench

    def row(backend, precision):
        return bench.BenchResult(backend=backend, batch=64, samples_per_s=1234.0, realtime_factor=0.1,
                                 speedup_vs_naive=None, first_call_s=0.5, steps=2, seconds=1.0, precision=precision)

    info = {"cpu": "a CPU", "cores": 2}
    names = [bench.row_name(b, p) for b in ("naive", "numba-split") for p in ("float32", "int8")]
    assert names == ["naive", "naive/int8", "numba-split", "numba-split/int8"]
    header = bench.table([], preset("tiny"), info, names=names).splitlines()[-1]
    end = header.index("batch") + len("batch")
    for backend, precision in (("naive", "float32"), ("numba-split", "int8")):
        line = bench.table([row(backend, precision)], preset("tiny"), info, names=names).splitlines()[-1]
        assert line[:end].endswith(" 64") and len(line) == len(header), (header, line)


def test_bench_repeat_keeps_each_rows_best_against_the_best_limits(monkeypatch):
    """--repeat N: N rounds over the rows (naive once), each row's best kept, held against the best limits
    measured before its own runs; the first call is the first round's."""
    from fastwavenet import bench

    model = bench.random_model_file(preset("tiny"))
    rates = iter([100.0, 300.0, 200.0, 150.0])  # numba batch 1, 2, then the second round
    calls = []

    def fake_measure(model, backend, batch, device, min_seconds, max_steps, sampling, precision):
        calls.append((backend, batch))
        rate = 5.0 if backend == "naive" else next(rates)
        return bench.BenchResult(backend=backend, batch=batch, samples_per_s=rate, realtime_factor=0.0,
                                 speedup_vs_naive=None, first_call_s=float(len(calls)), steps=2, seconds=1.0,
                                 precision=precision)

    sgemm = iter([1.0, 2.0, 4.0, 0.5])  # GFLOP/s measured before each numba run, in order
    limits = lambda g: bench.Limits(sgemm_gflops=g, threads=1, flops_per_sample=1e9,  # noqa: E731
                                    weight_bytes=1, weight_passes_per_s=1e6, fma_gflops=10 / g)
    monkeypatch.setattr(bench, "measure", fake_measure)
    results = bench.measure_rows(model, ["naive", "numba"], [1, 2], remeasure=lambda: limits(next(sgemm)), repeat=2,
                        limits=limits(1.0))
    assert calls == [("naive", 1), ("numba", 1), ("naive", 2), ("numba", 2), ("numba", 1), ("numba", 2)]
    rows = {(r.backend, r.batch): r for r in results}
    one, two = rows[("numba", 1)], rows[("numba", 2)]
    assert (one.samples_per_s, two.samples_per_s) == (200.0, 300.0)
    assert (one.limit_sgemm_gflops, two.limit_sgemm_gflops) == (4.0, 2.0)  # best of 1, 4 and of 2, 0.5
    assert one.of_limit == pytest.approx(200.0 / 4.0) and two.of_limit == pytest.approx(300.0 / 2.0)
    # each limit is its own best: the peak (10 / sgemm here) was highest before the runs with the lowest sgemm
    assert (one.limit_fma_gflops, two.limit_fma_gflops) == (10.0, 20.0)
    assert one.of_peak == pytest.approx(200.0 / 10.0) and two.of_peak == pytest.approx(300.0 / 20.0)
    assert (one.first_call_s, two.first_call_s) == (2.0, 4.0)
    assert one.speedup_vs_naive == pytest.approx(40.0) and rows[("naive", 1)].speedup_vs_naive == 1.0


def test_split_rows_and_narrow_weights_are_held_to_their_own_batch_1_limits():
    """numba-split below its thread count reads a stream's weights on every core: held to all cores' passes (at its
    thread count it runs tiles, one core each); int8 and w8a8 weights are a quarter of the bytes: four times the
    passes, for the share and for which limit binds alike."""
    from fastwavenet import bench

    limits = bench.Limits(sgemm_gflops=1.0, threads=2, flops_per_sample=1e6, weight_bytes=1, weight_passes_per_s=100.0,
                          split_passes_per_s=180.0, split_threads=2)  # batched: 1,000 samples/s

    def held(backend, batch, precision="float32"):
        result = bench.BenchResult(backend=backend, batch=batch, samples_per_s=90.0, realtime_factor=0.0,
                                   speedup_vs_naive=None, first_call_s=0.0, steps=2, seconds=1.0, precision=precision,
                                   split=backend == "numba-split" and batch < limits.split_threads)
        bench._hold(result, limits)
        return result

    assert held("numba", 1).of_limit == pytest.approx(90 / 100)
    split = held("numba-split", 1)
    assert split.of_limit == pytest.approx(90 / 180) and split.limit_split_passes_per_s == 180.0
    assert held("numba-split", 2).of_limit == pytest.approx(90 / 200)
    narrow = held("numba-split", 1, "w8a8")
    assert narrow.of_limit == pytest.approx(90 / 720) and narrow.bound_by == "weights"
    assert (held("numba", 2, "int8").bound_by, held("numba", 2, "int8").of_limit) == ("weights", pytest.approx(90 / 800))
    assert (held("numba", 3, "int8").bound_by, held("numba", 3, "int8").of_limit) == ("flops", pytest.approx(90 / 1000))
    assert (held("numba", 3).bound_by, held("numba", 3).of_limit) == ("weights", pytest.approx(90 / 300))
    # what the bench records as `split` for a row: the backend's own rule
    from fastwavenet.backends.numba_cpu import NumbaBackend, NumbaSplitBackend, numba_threads

    model = bench.random_model_file(preset("tiny"))
    split_backend = NumbaSplitBackend(model.config, model.weights, torch.device("cpu"), "float32")
    assert split_backend.splits(1) == (numba_threads() > 1) and not split_backend.splits(numba_threads())
    assert not NumbaBackend(model.config, model.weights, torch.device("cpu"), "float32").splits(1)


def test_bench_times_the_first_call_apart_from_the_timed_run(monkeypatch):
    """The first call (compiles, cache loads, graph capture) is reported as first_call_s and left out of the timed
    run: a clock that advances 5 s in the first call and 10 ms a step in the others."""
    from fastwavenet import bench

    now = [0.0]
    calls = []

    class FakeClockGenerator(bench.Generator):
        def generate_codes(self, state, steps, *args):
            calls.append(steps)
            now[0] += 5.0 if len(calls) == 1 else 0.01 * steps
            return super().generate_codes(state, steps, *args)

    monkeypatch.setattr(bench, "Generator", FakeClockGenerator)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    result = bench.measure(bench.random_model_file(preset("tiny")), "torch", 3, min_seconds=0.5)
    assert calls == [2, 2, 60]  # the first call, then timed runs grown until one lasts 0.5 s
    assert result.first_call_s == pytest.approx(5.0)
    assert (result.steps, result.seconds) == (60, pytest.approx(0.6))
    assert result.samples_per_s == pytest.approx(60 * 3 / 0.6)


def test_gpu_probe_kernels_compute_what_they_count():
    """The GPU limits' probes (run here by Triton's interpreter where CUDA is absent): the read kernel reads every
    chunk once a pass, the FMA kernel runs its chains (acc = acc * 0.999 + 0.001) UNROLL x iterations times."""
    pytest.importorskip("triton")
    import numpy as np

    from fastwavenet.gpu_limits import fma_chains_kernel, read_passes_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    buf = torch.arange(5 * 16, dtype=torch.float32, device=device)
    partial = torch.zeros(3, dtype=torch.float32, device=device)
    read_passes_kernel[(3,)](buf, 5, 4, partial, BLOCK=16)
    assert partial.sum().item() == 4 * buf.sum().item()
    sums = torch.zeros(2, dtype=torch.float32, device=device)
    fma_chains_kernel[(2,)](sums, 3, BLOCK=8, UNROLL=2)
    acc = np.arange(8, dtype=np.float64)[None, :] * 0.001 + np.arange(2)[:, None]
    for _ in range(3 * 2):
        acc = acc * 0.999 + 0.001
    assert sums.cpu().numpy() == pytest.approx(acc.sum(axis=1), rel=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the interpreter's; CUDA runs the sweep itself")
def test_gpu_tiles_sweep_runs_dry_on_the_cpu(tmp_path, monkeypatch):
    """benchmarks/gpu_tiles_sweep.py, which only a GPU session runs for real, end to end on `tiny` under the
    interpreter: every row measured (baselines and tile shapes), its knobs set and cleared, the JSON written."""
    pytest.importorskip("triton")
    import importlib.util
    import os
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_tiles_sweep.py"
    spec = importlib.util.spec_from_file_location("gpu_tiles_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    knobs = [name for names in sweep.KNOBS.values() for name in names]
    for name in knobs:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "tiles.json"
    sweep.main(["--dry-run", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r.get("tile")) for r in rows] == [("torch", None), ("triton-stream", None),
                                                              ("triton", 16), ("triton", 32), ("triton-layers", 16)]
    assert all(r["value"] > 0 for r in rows)
    assert not any(name in os.environ for name in knobs)  # put back as they were: unset


def test_gpu_rows_are_held_to_the_units_their_products_run_on():
    """On a GPU a backend whose products run on tensor cores (3xTF32: three TF32 products a float32 one) is held to
    a third of the tf32 matmul rate, the others to the float32 FMA rate; bf16 weights, held in 16 bits by the Triton
    backends, are twice the passes of float32 at batch 1."""
    from fastwavenet import bench

    limits = bench.GpuLimits(gpu="test", flops_per_sample=1e6, weight_bytes=1, l2_bytes=2, weight_passes_per_s=100.0,
                             fma_gflops=60.0, copy_gbps=1.0, bf16_tflops=0.8, tf32_tflops=0.45)
    # batched: 60,000 samples/s on CUDA cores, 150,000 on tensor cores

    def held(backend, batch, precision="float32"):
        result = bench.BenchResult(backend=backend, batch=batch, samples_per_s=30_000.0, realtime_factor=0.0,
                                   speedup_vs_naive=None, first_call_s=0.0, steps=2, seconds=1.0, precision=precision)
        bench._hold(result, limits)
        return result

    for backend in ("triton", "triton-layers"):
        row = held(backend, 4096)
        assert (row.bound_by, row.of_limit) == ("tensor", pytest.approx(30_000 / 150_000)), backend
        assert row.of_peak == pytest.approx(0.2) and row.limit_tensor_gflops == pytest.approx(150.0)
    for backend in ("torch", "triton-stream", "triton-spread"):
        row = held(backend, 4096)
        assert (row.bound_by, row.of_limit) == ("flops", pytest.approx(30_000 / 60_000)), backend
        assert row.of_peak == pytest.approx(0.5) and row.limit_tensor_gflops is None
    assert (held("triton", 1).bound_by, held("triton", 1).of_limit) == ("weights", pytest.approx(300.0))
    assert held("triton", 1, "bf16").of_limit == pytest.approx(150.0)
    assert held("triton", 1, "int8").of_limit == pytest.approx(300.0)  # held in float32 on the GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU's limits are measured on CUDA only")
def test_bench_on_cuda_holds_rows_against_the_gpus_limits(tmp_path):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    result = run_cli("bench", "--device", "cuda", "--preset", "tiny", "--backend", "torch,triton-stream", "--batch",
                     "1,64", "--min-seconds", "0.05", "--json", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    limits = payload["limits"]
    assert limits["kind"] == "gpu" and limits["gpu"] == torch.cuda.get_device_name()
    for name in ("weight_passes_per_s", "fma_gflops", "copy_gbps", "bf16_tflops", "tf32_tflops", "l2_bytes"):
        assert limits[name] > 0, name
    batched = limits["fma_gflops"] * 1e9 / limits["flops_per_sample"]
    assert limits["batched_samples_per_s"] == pytest.approx(batched)
    for row in payload["results"]:
        if row["backend"] == "naive":
            continue
        limit = min(row["batch"] * limits["weight_passes_per_s"], batched)  # torch and triton-stream: CUDA cores
        assert row["of_limit"] == pytest.approx(row["samples_per_s"] / limit)
        assert row["bound_by"] in ("weights", "flops") and row["first_call_s"] > 0
    assert "tensor-core" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_measures_each_precision_against_its_own_limit(tmp_path):
    out = tmp_path / "b.json"
    result = run_cli("bench", "--preset", "tiny", "--backend", "numba", "--batch", "1", "--min-seconds", "0.05",
                     "--precision", "float32,bf16", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "numba/bf16" in result.stdout
    payload = json.loads(out.read_text())
    rows = {(r["backend"], r["precision"]): r for r in payload["results"]}
    assert set(rows) == {("naive", "float32"), ("numba", "float32"), ("numba", "bf16")}
    row = rows[("numba", "bf16")]  # bf16 reads half the bytes: twice the streaming rate
    batched = row["limit_sgemm_gflops"] * 1e9 / payload["limits"]["flops_per_sample"]
    limit = min(2 * row["limit_weight_passes_per_s"], batched)
    assert row["of_limit"] == pytest.approx(row["samples_per_s"] / limit)


def test_w8a8_rows_are_held_to_the_int8_products_limit():
    """w8a8's products are integer multiply-adds: its batched rows are held to the kernel's int8 products in
    registers (Limits.int8_gops) and bound by "int8", their peak is that too; other precisions keep sgemm and the
    FMA peak; without an int8 measurement w8a8 falls back to them."""
    from fastwavenet import bench

    limits = bench.Limits(sgemm_gflops=1.0, threads=2, flops_per_sample=1e6, weight_bytes=1, weight_passes_per_s=100.0,
                          fma_gflops=2.0, fma_threads=2, int8_gops=8.0, int8_threads=2)  # 1,000 / 8,000 samples/s

    def held(batch, precision, held_to=limits):
        result = bench.BenchResult(backend="numba", batch=batch, samples_per_s=900.0, realtime_factor=0.0,
                                   speedup_vs_naive=None, first_call_s=0.0, steps=2, seconds=1.0, precision=precision)
        bench._hold(result, held_to)
        return result

    wide = held(256, "w8a8")
    assert (wide.bound_by, wide.of_limit, wide.of_peak) == ("int8", pytest.approx(900 / 8000), pytest.approx(900 / 8000))
    assert wide.limit_int8_gops == 8.0 and wide.limit_fma_gflops is None
    assert (held(8, "w8a8").bound_by, held(8, "w8a8").of_limit) == ("weights", pytest.approx(900 / 3200))
    plain = held(256, "float32")
    assert (plain.bound_by, plain.of_limit, plain.of_peak) == ("flops", pytest.approx(0.9), pytest.approx(900 / 2000))
    unmeasured = held(256, "w8a8", bench.Limits(sgemm_gflops=1.0, threads=2, flops_per_sample=1e6, weight_bytes=1,
                                                weight_passes_per_s=100.0))
    assert (unmeasured.bound_by, unmeasured.of_limit) == ("flops", pytest.approx(0.9))
    assert limits.best(bench.Limits(**{**limits.__dict__, "int8_gops": 9.0})).int8_gops == 9.0


def test_int8_peak_probe_runs_the_kernels_own_products():
    """`limits.int8_peak` runs where the kernel has int8 products of its own (AMX tiles, VNNI or AVX2's byte pairs)
    and counts them; elsewhere it says there are none."""
    from fastwavenet import bench, limits
    from fastwavenet.kernels import cpu

    macs = limits.int8_macs_per_iteration()
    assert macs == (limits.AMX_MACS if cpu.HAS_AMX else limits.INT8_CHAINS * cpu.BLOCK.lanes * 4
                    if cpu.HAS_VNNI or cpu.SUMS8_KIND == "pairs" else 0)
    gops, threads = bench.measure_int8_peak(0.05)
    assert (gops > 0) == (macs > 0) and (threads > 0) == (macs > 0)


BAD = [
    (["--batch", "0"], "positive integers"),
    (["--batch", "one"], "comma-separated integers"),
    (["--min-seconds", "-1"], "positive number"),
    (["--repeat", "0"], "positive integer"),
    (["--top-p", "2"], "top-p"),
    (["--backend", "warp"], "not available"),
    (["--preset", "huge"], "unknown preset"),
    (["--precision", "float32,fp8"], "unknown precision 'fp8'"),
    (["--json", "{tmp}/missing/b.json"], "does not exist"),
    (["--plot", "{tmp}/missing/b.png"], "does not exist"),
    (["--batch", "1,,2"], "comma-separated integers"),  # the empty entry was dropped
    (["--backend", "naive", "--batch", "64"], "nothing to measure"),  # an empty table, exit 0
    (["--model", "{tmp}/m.safetensors"], "not allowed with argument --preset"),  # the model file won, silently
]
if not torch.cuda.is_available():
    BAD.append((["--device", "cuda"], "CUDA"))


@pytest.mark.parametrize("args,words", BAD)
def test_bench_bad_input_is_one_line_and_exit_2(args, words, tmp_path):
    result = run_cli("bench", "--preset", "tiny", "--batch", "1", "--min-seconds", "0.05",
                     *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert "machine:" not in result.stdout, "it started measuring before refusing"
    assert list(tmp_path.iterdir()) == []
