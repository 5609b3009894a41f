import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastwavenet import FastWaveNetError, preset
from fastwavenet.training import TrainOptions, load_checkpoint, model_from_checkpoint, train

from helpers import interruptible_cli, run_cli, wait_until

OPTIONS = dict(batch_size=2, target_length=64, validate_every=2, checkpoint_every=2, seed=7, validation_files=1)


def _losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss_bits"), r.get("val_bits")) for r in rows]


def assert_same_curve(a, b):
    """Bit for bit on the CPU. Training picks CUDA where it is, and cuDNN's backward passes sum in no fixed order:
    there, within float32 rounding."""
    if not torch.cuda.is_available():
        assert a == b
        return
    assert [(s, v is None, w is None) for s, v, w in a] == [(s, v is None, w is None) for s, v, w in b]
    flat = lambda rows: [x for _, v, w in rows for x in (v, w) if x is not None]  # noqa: E731
    assert flat(a) == pytest.approx(flat(b), rel=1e-5)


def test_resume_gives_the_same_loss_curve(sine_folder, tmp_path):
    straight = tmp_path / "straight"
    train([sine_folder], straight, preset("tiny"), TrainOptions(steps=6, **OPTIONS), progress=False)
    stopped = tmp_path / "stopped"
    train([sine_folder], stopped, preset("tiny"), TrainOptions(steps=4, **OPTIONS), progress=False)
    assert load_checkpoint(stopped)["step"] == 4
    train(None, stopped, options=TrainOptions(steps=6), resume=True, progress=False)
    assert_same_curve(_losses(straight), _losses(stopped))
    assert len([r for r in _losses(straight) if r[2] is not None]) == 3  # validation at steps 2, 4, 6
    a, b = model_from_checkpoint(straight), model_from_checkpoint(stopped)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb) or (torch.cuda.is_available() and torch.allclose(pa, pb, rtol=1e-4, atol=1e-6)), name


def test_best_validation_weights_are_kept_and_export(sine_folder, tmp_path):
    """best.pt holds the weights of the lowest validation so far (also across a resume), and export folds it. (At
    this learning rate the loss rises again after step 6 here, so best.pt is not simply the last weights.)"""
    run = tmp_path / "run"
    train([sine_folder], run, preset("tiny"), TrainOptions(steps=4, lr=1e-1, **OPTIONS), progress=False)
    train(None, run, options=TrainOptions(steps=8), resume=True, progress=False)
    vals = [(step, val) for step, _, val in _losses(run) if val is not None]
    best_step, best_val = min(vals, key=lambda sv: sv[1])
    best = load_checkpoint(run / "best.pt")
    assert (best["step"], best["val_bits"]) == (best_step, best_val) and "optimizer" not in best
    again = tmp_path / "again"  # training is deterministic: a run stopped at the best step has best.pt's weights
    train([sine_folder], again, preset("tiny"), TrainOptions(steps=best_step, lr=1e-1, **OPTIONS), progress=False)
    for (name, a), b in zip(model_from_checkpoint(again).state_dict().items(), best["model"].values()):
        assert torch.equal(a, b), name
    result = run_cli("export", run / "best.pt", "-o", tmp_path / "best.safetensors")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "best.safetensors").is_file()
    # A best.pt better than anything in the log (a run stopped after a validation, before its checkpoint) stays.
    payload = torch.load(run / "best.pt", weights_only=True)
    payload["val_bits"] = 0.0
    torch.save(payload, run / "best.pt")
    train(None, run, options=TrainOptions(steps=10), resume=True, progress=False)
    assert load_checkpoint(run / "best.pt")["step"] == best_step


def test_moving_average_is_what_validation_best_and_export_use(sine_folder, tmp_path):
    """--ema: the average follows w <- d w + (1 - d) w_step from the first step's weights, survives a resume bit for
    bit, and is what validation scores, best.pt keeps and export folds; the log adds the raw weights' validation."""
    from fastwavenet.convert import export

    decay = 0.5
    options = dict(OPTIONS, checkpoint_every=1, validate_every=3)
    runs = []
    for steps in range(1, 4):  # the raw weights after each step: runs are deterministic, so stop at each
        runs.append(tmp_path / f"plain{steps}")
        train([sine_folder], runs[-1], preset("tiny"), TrainOptions(steps=steps, **options), progress=False)
    raw = [load_checkpoint(r)["model"] for r in runs]
    expected = {k: (decay * (decay * raw[0][k] + (1 - decay) * raw[1][k]) + (1 - decay) * raw[2][k]) for k in raw[0]}
    run = tmp_path / "ema"
    train([sine_folder], run, preset("tiny"), TrainOptions(steps=2, ema=decay, **options), progress=False)
    train(None, run, options=TrainOptions(steps=3), resume=True, progress=False)
    checkpoint = load_checkpoint(run)
    for name, value in checkpoint["model"].items():  # the average changes nothing about the raw weights
        assert torch.equal(value, raw[2][name]), name
    for name, value in checkpoint["ema"].items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    assert checkpoint["ema_updates"] == 3
    shipped = model_from_checkpoint(run)
    for name, value in shipped.state_dict().items():
        assert torch.equal(value, checkpoint["ema"][name]), name
    row = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][-1]
    assert row["step"] == 3 and row["raw_val_bits"] != row["val_bits"]
    assert row["raw_val_bits"] == [json.loads(line) for line in
                                   (runs[2] / "log.jsonl").read_text().splitlines()][-1]["val_bits"]
    best = load_checkpoint(run / "best.pt")  # the only validation: best.pt is the average at step 3
    for name, value in best["model"].items():
        assert torch.equal(value, checkpoint["ema"][name]), name
    assert best["val_bits"] == row["val_bits"]
    from fastwavenet.folded import fold

    folded = fold(shipped).tensors()
    for name, value in export(run, tmp_path / "ema.safetensors").weights.tensors().items():
        assert torch.equal(value, folded[name]), name
    with pytest.raises(FastWaveNetError, match="--ema must be"):
        TrainOptions(ema=1.0)


def test_warmup_raises_the_learning_rate_over_the_first_steps_also_across_a_resume(sine_folder, tmp_path):
    """--warmup N: step s (1-based) runs at lr * s / N up to N. Adam's first step moves every weight with a gradient
    by its learning rate (m / sqrt(v) is +-1 there), which shows the rate; a run stopped inside the warmup and
    resumed follows the same curve."""
    from fastwavenet.model import WaveNet

    torch.manual_seed(OPTIONS["seed"])
    initial = WaveNet(preset("tiny")).state_dict()  # the run's step-0 weights (same seed, same construction)
    first = tmp_path / "first"
    train([sine_folder], first, preset("tiny"), TrainOptions(steps=1, lr=1e-2, warmup=4, **OPTIONS), progress=False)
    moved = max((load_checkpoint(first)["model"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved == pytest.approx(1e-2 / 4, rel=1e-3)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train([sine_folder], straight, preset("tiny"), TrainOptions(steps=6, lr=1e-2, warmup=4, **OPTIONS), progress=False)
    train([sine_folder], stopped, preset("tiny"), TrainOptions(steps=2, lr=1e-2, warmup=4, **OPTIONS), progress=False)
    train(None, stopped, options=TrainOptions(steps=6), resume=True, progress=False)
    assert_same_curve(_losses(straight), _losses(stopped))
    plain = tmp_path / "plain"
    train([sine_folder], plain, preset("tiny"), TrainOptions(steps=6, lr=1e-2, **OPTIONS), progress=False)
    assert _losses(plain)[1:] != _losses(straight)[1:]  # the first loss is before any step
    with pytest.raises(FastWaveNetError, match="--warmup must be"):
        TrainOptions(warmup=-1)


def test_checkpoint_refuses_wrong_version_and_config(sine_folder, tmp_path):
    run = tmp_path / "run"
    train([sine_folder], run, preset("tiny"), TrainOptions(steps=1, **OPTIONS), progress=False)
    with pytest.raises(FastWaveNetError, match="different config"):
        load_checkpoint(run, preset("tiny").replace(residual_channels=4))
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(FastWaveNetError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(FastWaveNetError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FastWaveNetError, match="already holds files"):
        train([sine_folder], run, preset("tiny"), TrainOptions(steps=1, **OPTIONS), progress=False)


def test_cli_train_and_resume(sine_folder, tmp_path):
    run = tmp_path / "cli-run"
    result = run_cli("train", sine_folder, "--preset", "tiny", "--out", run, "--steps", "2", "--batch-size", "2",
                     "--target-length", "32", "--quiet")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(run)["step"] == 2
    result = run_cli("train", "--resume", run, "--steps", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(run)["step"] == 3


def test_init_starts_a_new_run_from_a_model_file(sine_folder, tmp_path):
    """--init: a new run whose step-0 model is the model file's function (unfolded weights), config from the file;
    the run resumes like any other, and its export differs from the file it started from."""
    from fastwavenet.convert import export
    from fastwavenet.folded import fold
    from fastwavenet.training import _init_weights

    first = tmp_path / "first"
    train([sine_folder], first, preset("tiny"), TrainOptions(steps=2, **OPTIONS), progress=False)
    source = export(first, tmp_path / "first.safetensors")
    start = _init_weights(str(tmp_path / "first.safetensors"), source.config)
    for name, tensor in fold(start).tensors().items():
        assert torch.allclose(tensor, source.weights.tensors()[name], atol=1e-6), name

    result = run_cli("train", sine_folder, "--init", tmp_path / "first.safetensors", "--out", tmp_path / "second",
                     "--steps", "2", "--batch-size", "2", "--target-length", "32", "--quiet")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "second" / "train.json").read_text())
    assert saved["init"] == str(tmp_path / "first.safetensors")
    assert load_checkpoint(tmp_path / "second", source.config)["step"] == 2
    trained = fold(model_from_checkpoint(tmp_path / "second"))
    assert not torch.equal(trained.dilated_w, source.weights.dilated_w), "two steps of training changed nothing"
    result = run_cli("train", "--resume", tmp_path / "second", "--steps", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "second")["step"] == 3


def test_init_adds_mel_conditioning_starting_from_the_unconditioned_function(sine_folder, tmp_path):
    """--init with --n-mels: a vocoder started from an unconditioned model; its mel projections start at zero, so at
    step 0 it gives the unconditioned model's logits whatever the mel says, and training then moves them."""
    from fastwavenet.convert import export
    from fastwavenet.features import log_mel
    from fastwavenet.training import _init_weights

    train([sine_folder], tmp_path / "first", preset("tiny"), TrainOptions(steps=2, **OPTIONS), progress=False)
    source = export(tmp_path / "first", tmp_path / "first.safetensors")
    config = source.config.replace(n_mels=8, hop_length=16, n_fft=64)
    start = _init_weights(str(tmp_path / "first.safetensors"), config)
    plain = model_from_checkpoint(tmp_path / "first")
    codes = torch.randint(0, config.classes, (1, 64))
    mel = torch.from_numpy(log_mel(np.random.default_rng(0).standard_normal(64).astype(np.float32), config))[None]
    with torch.no_grad():
        assert torch.allclose(start(codes, mel=mel[:, :, :4]), plain(codes), atol=1e-5)

    result = run_cli("train", sine_folder, "--init", tmp_path / "first.safetensors", "--n-mels", "8", "--hop-length",
                     "16", "--n-fft", "64", "--out", tmp_path / "voc", "--steps", "2", "--batch-size", "2",
                     "--target-length", "32", "--quiet")
    assert result.returncode == 0, result.stderr
    trained = model_from_checkpoint(tmp_path / "voc")
    assert trained.config == config
    assert trained.mel_proj.weight.abs().max() > 0, "two steps of training left the mel projection at zero"
    result = run_cli("train", "--resume", tmp_path / "voc", "--steps", "3", "--quiet")
    assert result.returncode == 0, result.stderr

    export(tmp_path / "voc", tmp_path / "voc.safetensors")
    result = run_cli("train", sine_folder, "--init", tmp_path / "voc.safetensors", "--n-mels", "16",
                     "--out", tmp_path / "r", "--steps", "2")
    assert result.returncode == 2 and "already conditioned" in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()


def test_init_with_more_stacks_starts_from_the_smaller_models_function(sine_folder, tmp_path):
    """--init with --config holding more stacks: the new layers start as pass-throughs (zero residual and skip
    convolutions), so at step 0 the grown model gives the file's logits (to rounding: its skip sum has more, zero,
    terms) with its longer receptive field;
    training then moves the new layers. Any other change of shape is refused in one line."""
    from fastwavenet.convert import export
    from fastwavenet.training import _init_weights

    train([sine_folder], tmp_path / "first", preset("tiny"), TrainOptions(steps=2, **OPTIONS), progress=False)
    source = export(tmp_path / "first", tmp_path / "first.safetensors")
    grown = source.config.replace(stacks=source.config.stacks + 1)
    start = _init_weights(str(tmp_path / "first.safetensors"), grown)
    plain = model_from_checkpoint(tmp_path / "first")
    codes = torch.randint(0, grown.classes, (2, grown.receptive_field + 50))
    with torch.no_grad():
        assert torch.allclose(start(codes), plain(codes), atol=1e-5)  # the skip sum has more (zero) terms

    (tmp_path / "grown.json").write_text(grown.to_json())
    result = run_cli("train", sine_folder, "--init", tmp_path / "first.safetensors", "--config",
                     tmp_path / "grown.json", "--out", tmp_path / "big", "--steps", "2", "--batch-size", "2",
                     "--target-length", "32", "--quiet")
    assert result.returncode == 0, result.stderr
    trained = model_from_checkpoint(tmp_path / "big")
    assert trained.config == grown
    assert trained.blocks[-1].skip.weight.abs().max() > 0, "two steps of training left the new layers at zero"

    (tmp_path / "wider.json").write_text(grown.replace(residual_channels=grown.residual_channels * 2).to_json())
    result = run_cli("train", sine_folder, "--init", tmp_path / "first.safetensors", "--config",
                     tmp_path / "wider.json", "--out", tmp_path / "w", "--steps", "2")
    assert result.returncode == 2 and "more stacks" in result.stderr, result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, words", [
    (["train", "{audio}", "--init", "{tmp}/missing.safetensors", "--out", "{tmp}/r"], "no model file"),
    (["train", "{audio}", "--init", "{badconfig}", "--out", "{tmp}/r"], "not a readable safetensors"),
    (["train", "{audio}", "--init", "{badconfig}", "--preset", "tiny", "--out", "{tmp}/r"], "drop --preset"),
    (["train", "{audio}", "--init", "{badconfig}", "--sample-rate", "8000", "--out", "{tmp}/r"], "--sample-rate"),
    (["train", "--init", "{badconfig}", "--resume", "{tmp}/r"], "pass one of them"),
    (["train", "/nonexistent/folder", "--preset", "tiny", "--out", "{tmp}/r"], "no such file or folder"),
    (["train", "{empty}", "--preset", "tiny", "--out", "{tmp}/r"], "no usable audio"),
    (["train", "{audio}", "--preset", "tiny", "--out", "{tmp}/r", "--steps", "0"], "positive integer"),
    (["train", "{audio}", "--preset", "tiny", "--out", "{tmp}/r", "--steps", "-3"], "positive integer"),
    (["train", "{audio}", "--preset", "tiny", "--out", "{tmp}/r", "--lr", "0"], "positive number"),
    (["train", "{audio}", "--preset", "tiny", "--out", "{tmp}/r", "--lr", "nan"], "positive number"),
    (["train", "{audio}", "--config", "{badconfig}", "--out", "{tmp}/r"], "kernel_size"),
    (["train", "{audio}", "--preset", "huge", "--out", "{tmp}/r"], "unknown preset"),
    (["train", "--resume", "{tmp}/nothing"], "--resume takes a run folder"),
    (["train", "--resume", "{audio}"], "holds no train.json"),  # a folder, not a run's: was a FileNotFoundError
    (["train", "{audio}", "--preset", "tiny", "--out", "{tmp}/r", "--seed", "-1"], "--seed must be"),  # was a
    # ValueError from the data loader, after the run folder was made
    (["train", "{audio}", "--config", "{binary}", "--out", "{tmp}/r"], "not UTF-8 text"),  # UnicodeDecodeError
    (["train", "{audio}", "--preset", "tiny", "--out", "{binary}"], "is a file"),  # was a NotADirectoryError
    # options that were dropped without a word
    (["train", "{audio}", "--preset", "tiny", "--config", "{badconfig}", "--out", "{tmp}/r"], "not both"),
    (["train", "{audio}", "--preset", "tiny", "--hop-length", "64", "--out", "{tmp}/r"], "add --n-mels"),
    (["train", "--resume", "{tmp}/nothing", "--preset", "large", "--out", "{tmp}/r"], "drop --out, --preset"),
    (["train", "--resume", "{tmp}/nothing", "--lr", "1e-5", "--batch-size", "4"], "drop --batch-size, --lr"),
    (["train", "{audio}", "--preset", "tiny", "--out", "{tmp}/r", "--batch-size", "100000000"], "GiB"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, words, sine_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kernel_size": 1}))
    binary = tmp_path / "binary.wav"
    binary.write_bytes(bytes(range(256)))
    filled = [a.format(tmp=tmp_path, empty=empty, audio=sine_folder, badconfig=bad, binary=binary) for a in args]
    result = run_cli(*filled)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists(), "a failed run left files behind"


def test_a_diverging_run_stops_in_one_line(sine_folder, tmp_path):
    """--lr 1e30 trained on NaN weights to the end (exit 0), and export then wrote a model file load refused (save_model
    now refuses such weights: test_modelfile)."""
    result = run_cli("train", sine_folder, "--preset", "tiny", "--steps", "3", "--lr", "1e30", "--out",
                     tmp_path / "r", "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "training diverged at step" in lines[0], result.stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_keeps_its_last_step_and_resumes_from_it(sine_folder, tmp_path, sig, code):
    """Ctrl-C or SIGTERM stops the run after the step under way, with a checkpoint of it: the steps since the last
    checkpoint (up to --checkpoint-every) were lost, and a run stopped before its first could not be resumed."""
    run = tmp_path / "run"
    with interruptible_cli("train", sine_folder, "--preset", "tiny", "--steps", "100000", "--checkpoint-every",
                           "100000", "--validate-every", "100000", "--batch-size", "2", "--target-length", "64",
                           "--out", run, "--quiet") as proc:
        assert wait_until(lambda: (run / "log.jsonl").exists() and len((run / "log.jsonl").read_text().splitlines())
                          >= 3, seconds=120)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert load_checkpoint(run)["step"] == steps[-1] >= 3
    result = run_cli("train", "--resume", run, "--steps", str(steps[-1] + 2), "--quiet")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(run)["step"] == steps[-1] + 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_ranks_end_with_identical_weights(sine_folder, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    # Two CPU ranks, also where a GPU is (one GPU cannot hold two ranks).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), str(worker), str(sine_folder), str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3
