"""Training: the loop, validation in bits per sample, atomic versioned checkpoints, resume, and DDP via torchrun.

A run directory holds:
    config.json       the model config
    train.json        the training options and data paths (what --resume reuses)
    checkpoint.pt     the latest checkpoint (model, optimizer, step, RNG state), replaced atomically
    best.pt           the weights of the lowest validation loss so far (model, step, val_bits; no optimizer), replaced
                      atomically whenever validation improves; `fastwavenet export RUN/best.pt -o M` folds it
    log.jsonl         one JSON line per step ({"step", "loss_bits"}) and per validation ({"step", "val_bits"})

With `ema` (--ema DECAY), the run also keeps an exponential moving average of the weights (Polyak averaging), stored
in checkpoint.pt beside the raw weights: validation, best.pt and export use the average, and the log adds the raw
weights' validation ({"raw_val_bits"}). Averaging removes the step-to-step noise of the weights: on the piano demo,
the mean of two checkpoints 1,250 steps apart scored 0.011-0.015 bits below either. Adam's first steps from a fresh
state move every weight by about the learning rate whatever its gradient, and an average begun there keeps them for
a while (on the piano demo, a new run from trained weights averaged at decay 0.999 scored 0.017 bits worse than its
raw weights after 250 steps, and caught up after about 1,000); `warmup` (--warmup N: the learning rate rising
linearly over a run's first N steps) keeps those first steps small.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .config import WaveNetConfig, check_memory, preset
from .data import CropDataset, load_corpus, speaker_names, split_by_file, validation_crops
from .errors import FastWaveNetError
from .files import atomic_path, write_failed, write_json
from .model import WaveNet, check_trainable, loss_bits

CHECKPOINT_FORMAT = "fastwavenet-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainOptions:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    target_length: int = 1024
    validate_every: int = 200
    checkpoint_every: int = 200
    validation_files: list[str] | int = 1
    validation_crops: int = 16
    grad_clip: float = 1.0
    ema: float = 0.0  # decay of an exponential moving average of the weights per step; 0: none
    warmup: int = 0  # steps over which the learning rate rises linearly to lr at the start of a run

    def __post_init__(self):
        for name in ("steps", "batch_size", "target_length", "validate_every", "checkpoint_every",
                     "validation_crops"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FastWaveNetError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise FastWaveNetError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise FastWaveNetError(f"grad_clip must be positive, got {self.grad_clip}")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise FastWaveNetError(f"--warmup must be an integer >= 0, got {self.warmup}")
        if not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            raise FastWaveNetError(f"--ema must be a decay in [0, 1) (0: no average), got {self.ema}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise FastWaveNetError(f"--seed must be an integer in 0..2**63 - 1, got {self.seed}")


# ---- checkpoints -------------------------------------------------------------------------------------------------

def _save(path: Path, model: WaveNet, step: int, **extra):
    """A checkpoint-format file (what load_checkpoint, export and --init read), written atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "config": model.config.to_json(),
               "step": step, "model": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as exc:  # torch's writer fails so on a full disk
            raise write_failed(path, exc) from None


def save_checkpoint(path: Path, model: WaveNet, optimizer, step: int, averaged=None):
    extra = {} if averaged is None else {"ema": averaged.module.state_dict(),
                                         "ema_updates": int(averaged.n_averaged.item())}
    _save(path, model, step, optimizer=optimizer.state_dict(), rng=torch.get_rng_state(), **extra)


def save_best(path: Path, model: WaveNet, step: int, val_bits: float):
    """The weights of the best validation so far: the checkpoint format without optimizer state."""
    _save(path, model, step, val_bits=val_bits)


def _best_so_far(run_dir: Path) -> float:
    """best.pt's validation loss (inf if there is none): a run stopped between a validation and the next checkpoint
    resumes from the checkpoint, and its best.pt may come from after it."""
    try:
        return float(torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)["val_bits"])
    except Exception:  # missing or unreadable: the next validation writes it again
        return math.inf


def load_checkpoint(path: str | os.PathLike, config: WaveNetConfig | None = None) -> dict:
    """Load and check a checkpoint file or run directory. Refuses other formats, versions and configs."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FastWaveNetError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise FastWaveNetError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise FastWaveNetError(f"{path} is not a fastwavenet checkpoint")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise FastWaveNetError(f"{path} has checkpoint format version {payload.get('format_version')}; "
                               f"this fastwavenet reads version {CHECKPOINT_VERSION}")
    saved = WaveNetConfig.from_json(payload["config"])
    if config is not None and saved != config:
        raise FastWaveNetError(f"{path} was trained with a different config than the one given")
    payload["config"] = saved
    return payload


def model_from_checkpoint(path) -> WaveNet:
    """The weights a checkpoint ships: its moving average where the run kept one (--ema), else its weights."""
    payload = load_checkpoint(path)
    model = WaveNet(payload["config"])
    try:
        model.load_state_dict(payload.get("ema", payload["model"]))
    except RuntimeError:
        raise FastWaveNetError(f"{path}: the weights do not match the config stored with them") from None
    return model.eval()


# ---- the loop ----------------------------------------------------------------------------------------------------

def _world():
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _read_log(run_dir: Path, up_to_step: int) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


def train(data: list[str] | None, run_dir: str | os.PathLike, config: WaveNetConfig | None = None,
          options: TrainOptions | None = None, resume: bool = False, progress: bool = True,
          init: str | os.PathLike | None = None) -> WaveNet:
    """Train (or, with resume=True, continue training) a WaveNet on the audio in `data`, into `run_dir`.

    `init`: a model file (its config must be `config`, see `init_config`) whose weights a new run starts from, with
    a fresh optimizer and step 0: fine-tuning, or continuing a model whose run directory is gone.

    Under torchrun (WORLD_SIZE > 1) each rank trains on its shard of the crops with DistributedDataParallel
    (NCCL on CUDA, gloo on CPU); rank 0 writes the run directory. Returns the trained (unwrapped) model.
    """
    run_dir = Path(run_dir)
    run = _start_or_resume(run_dir, data, config, options, resume, init)
    train_set, val_batch = _load_data(run)
    model, optimizer, step = _model_and_optimizer(run)
    if step >= run.options.steps:
        raise FastWaveNetError(f"{run_dir} is already at step {step}; pass --steps above it to train further")
    placed = _place(model, optimizer)
    try:
        _loop(run, run_dir, train_set, val_batch, model, optimizer, step, placed, resume, progress)
    finally:
        if placed.owns_group:
            # Gloo's worker threads must stop before the interpreter does, or the process aborts at exit
            # ("terminate called without an active exception", seen in CI).
            dist.destroy_process_group()
    return model.cpu().eval()


@dataclass
class _Run:
    """What a run trains: from the arguments for a new run, from the run directory for a resumed one."""

    config: WaveNetConfig
    options: TrainOptions
    data: list[str]
    speakers: list[str] | None
    checkpoint: dict | None  # the checkpoint resumed from
    init: str | None = None  # a model file whose weights a new run starts from

    @property
    def hop(self) -> int:
        return self.config.hop_length if self.config.n_mels else 1

    @property
    def crop(self) -> int:
        """Samples per training crop: a receptive field of context plus the targets, in whole mel frames."""
        return -(-(self.config.receptive_field + self.options.target_length) // self.hop) * self.hop


def _start_or_resume(run_dir: Path, data, config, options, resume: bool, init=None) -> _Run:
    if resume:
        if not (run_dir / "train.json").is_file():
            raise FastWaveNetError(f"--resume takes a run folder (what --out named); {run_dir} holds no train.json")
        try:
            saved = json.loads((run_dir / "train.json").read_text())
        except (OSError, ValueError) as exc:
            raise FastWaveNetError(f"cannot read {run_dir / 'train.json'}: {exc}") from None
        base = dict(saved["options"])
        if options is not None:
            base["steps"] = options.steps
        if (run_dir / "checkpoint.pt").exists():
            checkpoint = load_checkpoint(run_dir)
            config = checkpoint["config"]
        else:  # stopped before its first checkpoint: it starts again from its beginning, as it was set up
            checkpoint, config = None, WaveNetConfig.from_file(run_dir / "config.json")
        speakers = saved.get("speakers") if config.speakers else None
        return _Run(config, TrainOptions(**base), data or saved["data"], speakers, checkpoint, saved.get("init"))
    if config is None or options is None or not data:
        raise FastWaveNetError("train needs data, a config and options")
    if run_dir.exists() and not run_dir.is_dir():
        raise FastWaveNetError(f"--out names a run folder; {run_dir} is a file")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FastWaveNetError(f"{run_dir} already holds files; pass --resume {run_dir} to continue it")
    above = run_dir  # (made once the data is loaded: a run refused before then leaves nothing behind)
    while not above.exists():
        above = above.parent
    if not above.is_dir() or not os.access(above, os.W_OK):
        raise FastWaveNetError(f"cannot make the run folder {run_dir}: {above} is not a folder this user can write")
    return _Run(config, options, data, speaker_names(data) if config.speakers else None, None,
                None if init is None else str(init))


def _load_data(run: _Run):
    """The training files and the fixed validation crops (None without validation files)."""
    config, options = run.config, run.options
    # Activations kept for the backward pass: the one-hot input, and per layer its input, gate and skip outputs.
    per_sample = config.classes + config.layers * (config.residual_channels + 4 * config.gate_channels
                                                   + config.skip_channels)
    check_memory(4.0 * 2 * options.batch_size * run.crop * per_sample, f"training with batch {options.batch_size}")
    if run.speakers is not None and len(run.speakers) != config.speakers:
        raise FastWaveNetError(f"the data has {len(run.speakers)} speaker folders ({', '.join(run.speakers[:5])}...); "
                               f"the config says {config.speakers}")
    corpus = load_corpus(run.data, config.sample_rate, config.classes, min_samples=run.crop, config=config,
                         speakers=run.speakers)
    train_set, val_set = split_by_file(corpus, options.validation_files)
    val_batch = validation_crops(val_set, run.crop, options.validation_crops, run.hop) if val_set else None
    return train_set, val_batch


def _model_and_optimizer(run: _Run):
    torch.manual_seed(run.options.seed)
    model = WaveNet(run.config)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.options.lr)
    step = 0
    if run.checkpoint is not None:
        model.load_state_dict(run.checkpoint["model"])
        optimizer.load_state_dict(run.checkpoint["optimizer"])
        torch.set_rng_state(run.checkpoint["rng"])
        step = run.checkpoint["step"]
    elif run.init is not None:
        model.load_state_dict(_init_weights(run.init, run.config).state_dict())
    return model, optimizer, step


_CONDITIONING_FIELDS = ("speakers", "speaker_channels", "n_mels", "hop_length", "n_fft", "fmin", "fmax")


def init_config(path: str | os.PathLike, adds_conditioning: bool = False) -> WaveNetConfig:
    """The config of a model file a new run starts from (`train --init`); refuses what training cannot continue.

    adds_conditioning: the caller will add mel or speaker conditioning to it (a vocoder started from an
    unconditioned model), which needs a model file without any."""
    from .modelfile import load_model

    config = load_model(path).config
    check_trainable(config, str(path))
    if adds_conditioning and config.conditioned:
        raise FastWaveNetError(f"{path} is already conditioned; --init keeps its conditioning as it is (drop the "
                               f"conditioning options), conditioning can only be added to an unconditioned model")
    return config


def check_growth(file_config: WaveNetConfig, config: WaveNetConfig, path) -> None:
    """Refuse, in one line, a config that `--init` with `--config` cannot grow the model file into: the same shape
    with more stacks (and, for an unconditioned file, any conditioning the options add)."""
    same = file_config.replace(stacks=config.stacks, **{name: getattr(config, name) for name in _CONDITIONING_FIELDS})
    if same != config or config.stacks < file_config.stacks:
        raise FastWaveNetError(f"--config with --init grows {path}: the config must be the file's shape with more "
                               f"stacks ({file_config.stacks} now), nothing else changed")
    if config.stacks > file_config.stacks and file_config.conditioned:
        raise FastWaveNetError(f"{path} is conditioned: adding stacks covers unconditioned models")


def new_run_config(data, preset_name: str | None = None, config_path=None, init=None, changes: dict | None = None,
                   speakers_from_folders: bool = False) -> WaveNetConfig:
    """The config a new run starts with, as `fastwavenet train` builds it: a preset (default small) or a config
    file; or, with `init`, the model file's own (a config file then only adds stacks to it). Then `changes` (sample
    rate, mel fields) and, with `speakers_from_folders`, one speaker per folder of `data` that holds audio."""
    changes = dict(changes or {})
    if init:
        if preset_name or "sample_rate" in changes:
            raise FastWaveNetError("--init takes the model's shape and sample rate from the model file (--config "
                                   "may add stacks to it); drop --preset and --sample-rate")
        config = init_config(init, adds_conditioning=bool(changes or speakers_from_folders))
        if config_path:  # grow the file's model: more stacks, the new layers starting as pass-throughs
            grown = WaveNetConfig.from_file(config_path)
            check_growth(config, grown, init)
            config = config.replace(stacks=grown.stacks)
    else:
        config = WaveNetConfig.from_file(config_path) if config_path else preset(
            "small" if preset_name is None else preset_name)
    mel_options = [name for name in ("hop_length", "n_fft", "fmin", "fmax") if name in changes]
    if mel_options and not changes.get("n_mels", config.n_mels):
        raise FastWaveNetError(f"{', '.join('--' + n.replace('_', '-') for n in mel_options)} shape(s) a vocoder's "
                               f"mel frames: add --n-mels, or train from a vocoder's config")
    if speakers_from_folders:
        changes["speakers"] = len(speaker_names(data))
    return config.replace(**changes)


def _init_weights(path: str, config: WaveNetConfig) -> WaveNet:
    """The training model holding a model file's weights (unfolded: the same function, fresh optimizer state).

    Where `config` adds conditioning to an unconditioned file, the new projections start at zero, so the run starts
    from exactly the file's function and learns how far to follow the conditioning; the mel upsampler keeps its
    fresh initialization. Where `config` has more stacks (a larger receptive field, more layers), the new layers'
    residual and skip convolutions, and the old last layer's new residual convolution, start at zero: every new
    layer passes its input through and adds nothing to the skip sum, so again the run starts from exactly the
    file's function (the new layers' dilated convolutions keep their fresh initialization, so they learn)."""
    from .modelfile import load_model
    from .folded import unfold

    loaded = load_model(path)
    if loaded.config == config:
        return unfold(loaded.weights, config)
    adds_conditioning = any(getattr(config, n) != getattr(loaded.config, n) for n in _CONDITIONING_FIELDS)
    if adds_conditioning and loaded.config.conditioned:
        raise FastWaveNetError(f"{path} no longer holds the config this run started from")
    check_growth(loaded.config, config, path)
    base = unfold(loaded.weights, loaded.config)
    model = WaveNet(config)
    model.load_state_dict(base.state_dict(), strict=False)  # all but the new layers and conditioning parameters
    with torch.no_grad():
        for name in ("mel_proj", "speaker_proj"):
            if hasattr(model, name):
                getattr(model, name).weight.zero_()
        old = loaded.config.layers
        if config.layers > old:  # the old last layer's new residual, and the new layers' residual and skip
            new = [model.blocks[old - 1].residual] + [c for b in model.blocks[old:] for c in (b.residual, b.skip)]
            for conv in filter(None, new):  # the new last layer has no residual
                conv.weight.zero_()
                if conv.bias is not None:
                    conv.bias.zero_()
    return model


@dataclass
class _Placement:
    device: torch.device
    ddp_model: torch.nn.Module  # the model wrapped for DDP, or the model itself
    owns_group: bool            # this call created the process group and must destroy it
    world: int
    rank: int


def _place(model: WaveNet, optimizer) -> _Placement:
    """Move the model and optimizer state to this rank's device; under torchrun, join the group and wrap in DDP."""
    world, rank = _world()
    device = torch.device("cpu")
    ddp_model = model
    owns_group = False
    if world > 1:
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise FastWaveNetError(f"rank {rank} would train on GPU {local}, and this machine has "
                                       f"{torch.cuda.device_count()}: start at most that many processes per node, or "
                                       f"hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU ranks")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
            owns_group = True
        model.to(device)
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if use_cuda else None)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        model.to(device)
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)
    return _Placement(device, ddp_model, owns_group, world, rank)


def _loop(run: _Run, run_dir: Path, train_set, val_batch, model, optimizer, step: int, placed: _Placement,
          resume: bool, progress: bool):
    """The steps from `step` to the last: log every step, validate and checkpoint on the main rank."""
    config, options = run.config, run.options
    per_step = options.batch_size * placed.world
    dataset = CropDataset(train_set, run.crop, items=(options.steps - step) * per_step, seed=options.seed,
                          first=step * per_step, hop=run.hop)
    sampler = (DistributedSampler(dataset, num_replicas=placed.world, rank=placed.rank, shuffle=False)
               if placed.world > 1 else None)
    loader = DataLoader(dataset, batch_size=options.batch_size, sampler=sampler, shuffle=False)

    is_main = placed.rank == 0
    if is_main:
        log_rows = _read_log(run_dir, step) if resume else []
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FastWaveNetError(f"cannot make the run folder {run_dir}: {exc.strerror or exc}") from None
        write_json(run_dir / "config.json", json.loads(config.to_json()))
        write_json(run_dir / "train.json", {"data": [str(d) for d in run.data], "speakers": run.speakers,
                                            "init": run.init, "options": dataclasses.asdict(options)},
                   sort_keys=True)
        log = open(run_dir / "log.jsonl", "w")
        for row in log_rows:
            log.write(json.dumps(row) + "\n")
        log.flush()
        best_val = min([r["val_bits"] for r in log_rows if "val_bits" in r] + [_best_so_far(run_dir)],
                       default=math.inf)

    averaged = _moving_average(model, options.ema, run.checkpoint)
    shipped = model if averaged is None else averaged.module  # the weights validation, best.pt and export see
    start = config.receptive_field - 1
    bar = None
    if progress and is_main:
        from .progress import progress_bar

        bar = progress_bar(total=options.steps, initial=step, unit="step", dynamic_ncols=True)
    placed.ddp_model.train()
    # One process: Ctrl-C or SIGTERM stops the run after the step under way, its checkpoint written. (Ranks of a
    # DDP run could stop at different steps and wait for each other: they stop where the signal lands, as before.)
    stack = contextlib.ExitStack()
    requested = stack.enter_context(_stop_between_steps(placed.world == 1))
    try:
        for batch in loader:
            t0 = time.perf_counter()
            codes, mel, speaker = _conditioning_inputs(config, batch, placed.device)
            loss = loss_bits(placed.ddp_model(codes, mel=mel, speaker=speaker), codes, start)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = options.lr * min(1.0, (step + 1) / options.warmup) if options.warmup else options.lr
            for group in optimizer.param_groups:  # a function of the step alone, so a resumed run follows it too
                group["lr"] = lr
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            if not torch.isfinite(norm):  # (the same all-reduced norm on every rank: they all stop here)
                kept = ("its last checkpoint is kept" if (run_dir / "checkpoint.pt").exists()
                        else "no checkpoint was written yet")
                raise FastWaveNetError(f"training diverged at step {step + 1}: its gradients are not finite (loss "
                                       f"{loss.item():g} bits; try a lower --lr); {kept}")
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
            step += 1
            stop = bool(requested)  # read once: a signal landing after this is seen after the next step
            value = loss.item()
            if is_main:
                log.write(json.dumps({"step": step, "loss_bits": value}) + "\n")
                rate = per_step * options.target_length / (time.perf_counter() - t0)
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.3f} bits", samples_s=f"{rate:,.0f}")
                    bar.update(1)
                if val_batch is not None and (step % options.validate_every == 0 or step == options.steps):
                    val = evaluate(shipped, val_batch, start)
                    row = {"step": step, "val_bits": val}
                    if averaged is not None:
                        row["raw_val_bits"] = evaluate(model, val_batch, start)
                    log.write(json.dumps(row) + "\n")
                    improved = val < best_val
                    if improved:
                        best_val = val
                        save_best(run_dir / "best.pt", shipped, step, val)
                    if bar is not None:
                        bar.write(f"step {step}: validation {val:.4f} bits/sample" + (" (best so far: best.pt)"
                                                                                       if improved else ""))
                    model.train()
                if step % options.checkpoint_every == 0 or step == options.steps or stop:
                    log.flush()
                    save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, step, averaged)
            if stop:
                signum, handler = requested.pop()
                handler(signum, None)  # KeyboardInterrupt, the CLI's Terminated; a handler that raises nothing: go on
        if is_main:
            log.close()  # (here, where a failed flush is this run's error, not one hiding another)
        if placed.world > 1:
            dist.barrier()  # no rank leaves before the main rank has written the last checkpoint
    except KeyboardInterrupt:
        # Keep what was finished: the last checkpoint stays, and --resume continues from it.
        if bar is not None:
            bar.write(f"interrupted at step {step}; the last checkpoint is kept in {run_dir}")
        raise
    except BrokenPipeError:  # stdout's reader went away (the CLI stops quietly)
        raise
    except OSError as exc:  # the log's writes (the checkpoints' are FastWaveNetError already): a full disk
        raise FastWaveNetError(f"cannot write in {run_dir}: {exc.strerror or exc}") from None
    finally:
        stack.close()
        if bar is not None:
            bar.close()
        if is_main and not log.closed:
            with contextlib.suppress(OSError):  # what failed is on its way out already
                log.close()
    if requested:  # a signal after the last step's look (the run is complete; its handlers are back in place now)
        signum, handler = requested.pop()
        handler(signum, None)


@contextlib.contextmanager
def _stop_between_steps(enabled: bool = True):
    """While training in the main thread (and `enabled`), the first Ctrl-C or SIGTERM is only noted (as (signal, its
    handler) in the list yielded), so that the loop stops after the step under way with a checkpoint of it: raised
    wherever it landed, an interrupt lost up to a checkpoint interval of steps. The handlers are put back at once, so a
    second signal acts where it lands. Signals whose handler is not a Python function (SIG_DFL, SIG_IGN) are left
    alone."""
    requested, taken = [], []
    if enabled and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if callable(handler):
                taken.append((signum, handler))

        def note(signum, frame):
            requested.append((signum, dict(taken)[signum]))
            for number, original in taken:
                signal.signal(number, original)

        for signum, _ in taken:
            signal.signal(signum, note)
    try:
        yield requested
    finally:
        for signum, handler in taken:
            signal.signal(signum, handler)


def _moving_average(model: WaveNet, decay: float, checkpoint: dict | None):
    """torch's AveragedModel keeping an exponential moving average of `model`'s weights (None for decay 0),
    restored from a checkpoint that has one; a run that starts one starts it at the current weights."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    if checkpoint is not None and "ema" in checkpoint:
        averaged.module.load_state_dict(checkpoint["ema"])
        averaged.n_averaged.fill_(checkpoint["ema_updates"])
    return averaged


def _conditioning_inputs(config: WaveNetConfig, batch, device):
    """A (codes, mel, speaker) batch on `device`, with None for what the model does not take."""
    codes, mel, speaker = batch
    return (codes.to(device), mel.to(device) if config.n_mels else None,
            speaker.to(device) if config.speakers else None)


@torch.no_grad()
def evaluate(model: WaveNet, batch, start: int, batch_size: int = 8) -> float:
    """Mean bits per sample over a (codes (N, T), mel, speakers) batch, counting predictions from `start`."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(batch[0]), batch_size):
        codes, mel, speaker = _conditioning_inputs(model.config, [t[i:i + batch_size] for t in batch], device)
        total += loss_bits(model(codes, mel=mel, speaker=speaker), codes, start).item() * len(codes)
        count += len(codes)
    return total / count
