"""The `fastwavenet` command: argument parsing and messages only; each command calls a public function."""

from __future__ import annotations

import argparse
import dataclasses
import os
import json
import signal
import sys
import warnings

from . import __version__
from .bench import add_benchmark_arguments, benchmark
from .corpus import add_manifest_arguments, check_manifest_args, generate_corpus
from .demo import demo_vocoder_path
from .doctor import diagnose
from .errors import FastWaveNetError
from .folded import add_precision_argument
from .generator import add_generate_arguments, add_vocode_arguments, generate_files
from .modelfile import describe, model_info
from .request import (GenerationRequest, arg_integer, arg_nonnegative_integer, arg_number, arg_positive_integer,
                      arg_positive_number, arg_type)
from .sampling import Sampling
from .score import score_files
from .serve import ServerOptions, serve_model

# The training side (training, convert, the importers) is imported by its own commands only, so that `serve` and
# `generate` never load it (tests/test_structure.py).


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, exit 2: argparse's default prints the whole usage first.
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


# ---- commands ----------------------------------------------------------------------------------------------------

# train's flags that are TrainOptions fields of the same name. No argparse defaults (TrainOptions has them), so that
# `--resume`, which continues a run as it was set up, can refuse one given instead of ignoring it.
_TRAINING_OPTIONS = ("batch_size", "lr", "seed", "target_length", "validate_every", "checkpoint_every", "ema", "warmup")


def cmd_train(args):
    from .training import TrainOptions, new_run_config, train

    if args.resume and args.init:
        raise FastWaveNetError("--init starts a new run; --resume continues one: pass one of them")
    if args.resume:
        setup = ("out", "preset", "config", "sample_rate", "n_mels", "hop_length", "n_fft", "fmin", "fmax",
                 "speakers_from_folders", *_TRAINING_OPTIONS, "validation_files", "validation_count")
        setup = [f"--{flag.replace('_', '-')}" for flag in setup  # (not given: None, or False for a switch)
                 if getattr(args, flag) is not None and getattr(args, flag) is not False]
        if setup:
            raise FastWaveNetError(f"--resume continues a run as it was set up: drop {', '.join(setup)}")
        options = TrainOptions(steps=args.steps) if args.steps else None
        train(args.data or None, args.resume, options=options, resume=True, progress=not args.quiet)
        return
    if not args.data:
        raise FastWaveNetError("train needs at least one audio file or folder (or --resume RUN_DIR)")
    if not args.out:
        raise FastWaveNetError("train needs --out RUN_DIR")
    if args.preset is not None and args.config:
        raise FastWaveNetError("give --preset or --config, not both")
    changes = {name: getattr(args, name) for name in ("sample_rate", "n_mels", "hop_length", "n_fft", "fmin", "fmax")
               if getattr(args, name) is not None}
    config = new_run_config(args.data, args.preset, args.config, args.init, changes, args.speakers_from_folders)
    given = {name: getattr(args, name) for name in _TRAINING_OPTIONS if getattr(args, name) is not None}
    if args.validation_files:
        given["validation_files"] = args.validation_files.split(",")
    elif args.validation_count is not None:
        given["validation_files"] = args.validation_count
    options = TrainOptions(steps=args.steps or 1000, **given)  # (TrainOptions' defaults for the flags not given)
    train(args.data, args.out, config, options, progress=not args.quiet, init=args.init)


def cmd_export(args):
    from .convert import export_model

    sampling = export_model(args.checkpoint, args.output, GenerationRequest.from_args(args))
    note = "" if sampling is None else " (default sampling: " + ", ".join(
        f"{k} {v}" for k, v in sampling.to_dict().items() if k != "argmax") + ")"
    print(f"wrote {args.output}{note}")


def cmd_info(args):
    info = model_info(args.model)
    print(json.dumps(info, indent=2) if args.json else describe(info))


def _run_manifest(args, vocode: bool):
    """generate / vocode --manifest: this process's share of the items (corpus.generate_corpus)."""
    check_manifest_args(args)
    generate_corpus(args.model, args.manifest, args.out_dir, vocode, backend=args.backend, device=args.device,
                    precision=args.precision, max_active=args.max_active, progress=not args.quiet)


def cmd_generate(args):
    if args.manifest:
        return _run_manifest(args, vocode=False)
    if args.out_dir:
        raise FastWaveNetError("--out-dir goes with --manifest (a folder of items); one set of files is -o OUTPUT")
    args.seconds = 4.0 if args.seconds is None else args.seconds
    args.output = "out.wav" if args.output is None else args.output
    _wrote(generate_files(args.model, args.output, GenerationRequest.from_args(args), batch=args.batch,
                          prime=args.prime, backend=args.backend, device=args.device, precision=args.precision,
                          progress=not args.quiet))


def cmd_vocode(args):
    if args.model is not None and args.input is None and not args.manifest:
        if args.model.endswith(".safetensors"):
            raise FastWaveNetError(f"{args.model} is a model file: give the input to vocode after it (fastwavenet "
                                   f"vocode MODEL INPUT -o OUT)")
        args.model, args.input = None, args.model  # one positional: the input, for the bundled vocoder
    if args.model is None:
        args.model = str(demo_vocoder_path())
    if args.manifest:
        return _run_manifest(args, vocode=True)
    if args.out_dir:
        raise FastWaveNetError("--out-dir goes with --manifest (a folder of items); one file is -o OUTPUT")
    if not args.input or not args.output:
        raise FastWaveNetError("vocode needs INPUT and -o OUTPUT (or --manifest and --out-dir)")
    _wrote(generate_files(args.model, args.output, GenerationRequest.from_args(args), features=args.input,
                          backend=args.backend, device=args.device, precision=args.precision,
                          progress=not args.quiet))


def _wrote(made: dict):
    paths = made["paths"]
    where = paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1]}"
    print(f"wrote {where} ({made['seconds']:g} s at {made['sample_rate']} Hz, backend {made['backend']})")


def cmd_bench(args):
    sampling = GenerationRequest.from_args(args).sampling(Sampling())
    benchmark(args.model, args.preset, args.backend.split(","), args.batch, args.device, args.precision.split(","),
              sampling, min_seconds=args.min_seconds, repeat=args.repeat, r9y9=args.r9y9, json_path=args.json,
              plot_path=args.plot)


def cmd_score(args):
    results = score_files(args.model, args.audio, args.precision)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(f"{r['bits_per_sample']:8.4f} bits/sample  {r['samples']:>9} samples  {r['path']}")
    if len(results) > 1:  # the corpus's own figure: every scored sample counts once, whichever file it is in
        samples, scored = sum(r["samples"] for r in results), sum(r["scored"] for r in results)
        bits = sum(r["bits_per_sample"] * r["scored"] for r in results) / scored
        print(f"{bits:8.4f} bits/sample  {samples:>9} samples  all {len(results)} files ({scored} scored)")


def cmd_doctor(args):
    diagnose(args.compile_gpu, args.json)


def cmd_serve(args):
    serve_model(ServerOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServerOptions)}),
                quiet=args.quiet)


def cmd_import_keras(args):
    from .importers.keras import import_to_file

    model = import_to_file(args.checkpoint, args.config, args.output)
    print(f"wrote {args.output} ({model.config.parameter_count():,} parameters, "
          f"receptive field {model.config.receptive_field} samples)")


def cmd_import_r9y9(args):
    from .importers.r9y9 import import_to_file

    model = import_to_file(args.checkpoint, args.hparams, args.output)
    c = model.config
    kind = c.output.replace("_", " ") + (f" of {c.mixtures}" if c.output == "logistic_mixture" else "")
    print(f"wrote {args.output} ({c.parameter_count():,} parameters, {kind} output, "
          f"receptive field {c.receptive_field} samples)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastwavenet", description="Train WaveNets and generate audio from them, fast.")
    parser.add_argument("--version", action="version", version=f"fastwavenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a WaveNet on audio files or folders")
    p.add_argument("data", nargs="*", help="audio files or folders (wav, flac, ogg, ...)")
    p.add_argument("--preset", help="tiny, small, standard or large (default: small)")
    p.add_argument("--config", help="a JSON config file instead of a preset")
    p.add_argument("--sample-rate", type=arg_positive_integer, help="override the config's sample rate (Hz)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--init", metavar="MODEL", help="start a new run from a model file's weights (fresh optimizer, "
                   "step 0; its shape is the run's; --n-mels or --speakers-from-folders add conditioning to an "
                   "unconditioned model, and --config with more stacks adds layers, all starting at zero)")
    p.add_argument("--steps", type=arg_positive_integer, help="train until this step (default 1000)")
    p.add_argument("--batch-size", type=arg_positive_integer, help="crops a step (default 8)")
    p.add_argument("--lr", type=arg_positive_number, help="Adam's learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, help="of the weights and the crops (default 0)")
    p.add_argument("--target-length", type=arg_positive_integer,
                   help="predicted samples per crop, after the receptive field (default 1024)")
    p.add_argument("--validate-every", type=arg_positive_integer, help="steps (default 200)")
    p.add_argument("--checkpoint-every", type=arg_positive_integer, help="steps (default 200)")
    p.add_argument("--ema", type=arg_type(float, lambda v: 0 <= v < 1, "a decay in [0, 1)"),
                   metavar="DECAY", help="keep an exponential moving average of the weights (e.g. 0.999 per step); "
                   "validation, best.pt and export use it (default 0: none)")
    p.add_argument("--warmup", type=arg_nonnegative_integer, metavar="STEPS",
                   help="raise the learning rate linearly over the run's first STEPS steps (default 0: none)")
    p.add_argument("--validation-files", help="comma-separated file names to hold out")
    p.add_argument("--validation-count", type=arg_nonnegative_integer,
                   help="hold out this many files (default 1; 0: no validation)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("conditioning (override the config)")
    g.add_argument("--n-mels", type=arg_positive_integer, help="train a vocoder on log-mel frames of this many bands")
    g.add_argument("--hop-length", type=arg_positive_integer, help="samples per mel frame")
    g.add_argument("--n-fft", type=arg_positive_integer, help="FFT size of the mel spectrogram")
    g.add_argument("--fmin", type=float, help="lowest mel frequency (Hz)")
    g.add_argument("--fmax", type=float, help="highest mel frequency (Hz; 0 for half the sample rate)")
    g.add_argument("--speakers-from-folders", action="store_true",
                   help="one speaker per folder holding audio, ids in sorted order of the folder names")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="fold a training checkpoint into a model file for generation")
    p.add_argument("checkpoint", help="run directory or checkpoint.pt (or a model file, to set its default sampling)")
    p.add_argument("-o", "--output", required=True,
                   help="model file to write (.safetensors), or .onnx: one step of a model file (docs/ONNX.md)")
    g = p.add_argument_group("default sampling stored in the file (generate, vocode, serve and corpus use it "
                             "where the user names none; recipes/sampling_table.py measures which is best)")
    g.add_argument("--temperature", type=arg_number)
    g.add_argument("--top-k", type=arg_integer)
    g.add_argument("--top-p", type=arg_number)
    p.set_defaults(func=cmd_export, argmax=False)

    p = sub.add_parser("info", help="describe a model file")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate audio into WAV files")
    add_generate_arguments(p)
    add_manifest_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("vocode", help="resynthesize audio from its mel spectrogram (or saved mel frames)")
    add_vocode_arguments(p)
    add_manifest_arguments(p)
    p.set_defaults(func=cmd_vocode)

    p = sub.add_parser("bench", help="samples per second of every backend, beside naive, in one run")
    add_benchmark_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="an HTTP server that streams generated audio (needs fastwavenet[serve])")
    for option in dataclasses.fields(ServerOptions):
        p.add_argument("--" + option.name.replace("_", "-"), default=option.default, **option.metadata)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("score", help="teacher-forced bits per sample of audio files, each and all together")
    p.add_argument("model")
    p.add_argument("audio", nargs="+")
    p.add_argument("--json", action="store_true")
    add_precision_argument(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("doctor", help="versions, CPU, devices and backends on one screen, for bug reports")
    p.add_argument("--compile-gpu", metavar="sm_80,sm_90",
                   help="compile the GPU kernel's variants for these architectures (no GPU needed) and report "
                        "registers, spills, shared memory")
    p.add_argument("--json", help="also write the report as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("import", help="convert a model trained elsewhere")
    kinds = p.add_subparsers(dest="kind", required=True, parser_class=_Parser)
    k = kinds.add_parser("keras", help="basveeling/wavenet Keras 1 HDF5 checkpoint")
    k.add_argument("checkpoint", help="the .hdf5 file")
    k.add_argument("--config", required=True, help="its training config.json")
    k.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    k.set_defaults(func=cmd_import_keras)
    k = kinds.add_parser("r9y9", help="r9y9/wavenet_vocoder 0.1 PyTorch checkpoint")
    k.add_argument("checkpoint", help="the .pth file its train.py saved")
    k.add_argument("--hparams", required=True, help="the run's hparams as JSON (see docs/R9Y9.md for the fields)")
    k.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    k.set_defaults(func=cmd_import_r9y9)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a job scheduler), raised as an interrupt so that it keeps what was finished."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, *a, **k: f"fastwavenet: warning: {message}\n"
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is the BrokenPipeError below, not one at exit
    except FastWaveNetError as exc:
        print(f"fastwavenet: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("fastwavenet: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("fastwavenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`fastwavenet info M | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that flushing at exit cannot fail again
        return 128 + signal.SIGPIPE
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
