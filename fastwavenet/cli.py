"""The `fastwavenet` command: argument parsing and messages only; each command calls a public function."""

from __future__ import annotations

import argparse
import sys
import warnings

from . import __version__
from .errors import FastWaveNetError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, exit 2: argparse's default prints the whole usage first.
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# ---- commands ----------------------------------------------------------------------------------------------------

def cmd_train(args):
    from .config import WaveNetConfig, preset
    from .train import TrainOptions, train

    if args.resume:
        options = TrainOptions(steps=args.steps) if args.steps else None
        train(args.data or None, args.resume, options=options, resume=True, progress=not args.quiet)
        return
    if not args.data:
        raise FastWaveNetError("train needs at least one audio file or folder (or --resume RUN_DIR)")
    if not args.out:
        raise FastWaveNetError("train needs --out RUN_DIR")
    config = WaveNetConfig.from_file(args.config) if args.config else preset(args.preset)
    if args.sample_rate:
        config = config.replace(sample_rate=args.sample_rate)
    validation = args.validation_files.split(",") if args.validation_files else args.validation_count
    options = TrainOptions(steps=args.steps or 1000, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           target_length=args.target_length, validate_every=args.validate_every,
                           checkpoint_every=args.checkpoint_every, validation_files=validation)
    train(args.data, args.out, config, options, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastwavenet", description="Train WaveNets and generate audio from them, fast.")
    parser.add_argument("--version", action="version", version=f"fastwavenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a WaveNet on audio files or folders")
    p.add_argument("data", nargs="*", help="audio files or folders (wav, flac, ogg, ...)")
    p.add_argument("--preset", default="small", help="tiny, small, standard or large (default: small)")
    p.add_argument("--config", help="a JSON config file instead of a preset")
    p.add_argument("--sample-rate", type=_positive_int, help="override the config's sample rate (Hz)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--steps", type=_positive_int, help="train until this step (default 1000)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--lr", type=_positive_float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-length", type=_positive_int, default=1024,
                   help="predicted samples per crop, after the receptive field (default 1024)")
    p.add_argument("--validate-every", type=_positive_int, default=200)
    p.add_argument("--checkpoint-every", type=_positive_int, default=200)
    p.add_argument("--validation-files", help="comma-separated file names to hold out")
    p.add_argument("--validation-count", type=int, default=1, help="hold out this many files (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, *a, **k: f"fastwavenet: warning: {message}\n"
    try:
        args.func(args)
    except FastWaveNetError as exc:
        print(f"fastwavenet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastwavenet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
