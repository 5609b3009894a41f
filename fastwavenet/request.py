"""One generation request, validated once, whichever door it came in by: the Python API (`from_kwargs`), an HTTP
JSON body (`from_json`) or query string (`from_query`), a manifest line (`from_manifest`), the command line
(`from_args`, whose flags `add_request_arguments` adds, with the argparse types every command's numbers take).

A request checks what it can alone when it is made (`__post_init__`), and what needs the model (its rate, classes,
speakers, mel bands) in `check(config, limits)`. Every refusal is a FastWaveNetError of one line, and its message
comes from here (or from `Sampling`, for the sampling fields). Numbers are strict: a bool is no number, a float no
integer, a string no bool; only finite values; no JSON null.

Hard bounds, everywhere: audio no longer than a 16-bit WAV file holds at the model's rate (`audio.WAV_MAX_FRAMES`);
seed in 0..2**63 - 1 (what numpy's generators are seeded with; a seed of 400 digits would be taken and hashed, but
it is no one's intent); top_k at most the model's classes; temperature in `sampling.TEMPERATURE_RANGE`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import numbers
import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .audio import WAV_MAX_FRAMES
from .config import WaveNetConfig
from .distributions import check_rules
from .errors import FastWaveNetError, shown
from .features import saved_layout
from .sampling import Sampling

SEED_MAX = 2**63 - 1
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "argmax")
FORMATS = ("wav", "pcm", "flac")  # how the server sends the audio (fastwavenet/serve.py)
# Fields each door takes; the others (samples, mel, prime, stream_mel) are for Python callers, who hold arrays.
JSON_FIELDS = ("seconds", "seed", *SAMPLING_FIELDS, "speaker", "format")
MANIFEST_FIELDS = ("seconds", "seed", *SAMPLING_FIELDS, "speaker")
# A JSON integer longer than this is refused while parsing: no field takes one (a seed has at most 19 digits), and
# Python refuses to parse one of more than 4,300 digits with a ValueError that json does not turn into its own error.
MAX_JSON_INTEGER_DIGITS = 40
# Lists and objects inside each other: no field nests at all, so this is only a bound on what a parser must walk.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """One set of limits for every entry point (the server's options set theirs)."""

    max_seconds: float | None = None   # None: the WAV-file bound only


@dataclass(frozen=True)
class GenerationRequest:
    """What one request asks for, validated once (__post_init__): model-independent checks."""

    seconds: float | None = None
    samples: int | None = None
    seed: int | None = None
    temperature: float | None = None   # None: the model file's default (field by field)
    top_k: int | None = None
    top_p: float | None = None
    argmax: bool | None = None
    speaker: int | np.ndarray | None = None   # a speaker id, or an r9y9 global-features vector (cli --global-features)
    mel: np.ndarray | None = None             # (n_mels, frames) log-mel frames
    stream_mel: bool = False                  # more frames come by Request.feed / close
    prime: np.ndarray | None = None           # float audio at the model's rate, or integer codes
    format: str = "wav"                       # the server's answer: wav, pcm or flac (FORMATS)

    def __post_init__(self):
        if self.seconds is not None and self.samples is not None:
            raise FastWaveNetError("give seconds or samples, not both")
        if self.seconds is not None:
            # WAV_MAX_FRAMES seconds is too long at any rate (a model's rate is at least 1 Hz); comparing before
            # converting keeps float() from overflowing on a huge integer.
            if _is_bool(self.seconds) or not isinstance(self.seconds, numbers.Real) \
                    or not 0 < self.seconds <= WAV_MAX_FRAMES:
                raise FastWaveNetError(f"seconds must be a positive number (a WAV file's length at most), "
                                       f"got {shown(self.seconds)}")
            self._set("seconds", float(self.seconds))
        if self.samples is not None:
            self._set("samples", _integer("samples", self.samples, 1, WAV_MAX_FRAMES,
                                          f"a positive integer up to {WAV_MAX_FRAMES} (a WAV file's most)"))
        if self.seed is not None:
            self._set("seed", _integer("seed", self.seed, 0, SEED_MAX, "an integer in 0..2**63 - 1"))
        Sampling(**self._sampling_fields())  # its checks, field by field
        neutral = Sampling()  # temperature 1, top-k 0, top-p 1 change nothing (`info --json` shows them beside argmax)
        shaping = [k for k in SAMPLING_FIELDS[:3] if getattr(self, k) not in (None, getattr(neutral, k))]
        if self.argmax and shaping:
            shaping = " and ".join(shaping)
            raise FastWaveNetError(f"argmax takes the likeliest class, so {shaping} would not apply: give argmax or "
                                   f"{shaping}, not both")
        if self.speaker is not None:
            if isinstance(self.speaker, np.ndarray):
                if self.speaker.ndim != 1 or not _numeric(self.speaker) or not np.isfinite(self.speaker).all():
                    raise FastWaveNetError(f"global features must be one vector of finite numbers, got shape "
                                           f"{self.speaker.shape} of {self.speaker.dtype}")
            else:
                self._set("speaker", _integer("speaker", self.speaker, 0, SEED_MAX, "a non-negative integer id"))
        if self.mel is not None:
            if not isinstance(self.mel, np.ndarray) or not _numeric(self.mel):
                raise FastWaveNetError(f"mel frames must be an array of numbers, got {_kind(self.mel)}")
            if self.mel.ndim != 2:
                raise FastWaveNetError(f"mel frames must be 2-D (bands, frames), got shape {self.mel.shape}")
            if not np.isfinite(self.mel).all():
                raise FastWaveNetError("mel frames hold NaN or infinite values")
        if not isinstance(self.stream_mel, bool):
            raise FastWaveNetError(f"stream_mel must be true or false, got {shown(self.stream_mel)}")
        if self.prime is not None:
            if not isinstance(self.prime, np.ndarray) or self.prime.ndim != 1 or self.prime.size == 0 \
                    or not _numeric(self.prime):
                raise FastWaveNetError(f"prime must be a non-empty 1-D array of audio or codes, got "
                                       f"{_kind(self.prime)}")
            if not np.isfinite(self.prime).all():
                raise FastWaveNetError("prime audio holds NaN or infinite values")
        if self.format not in FORMATS:
            raise FastWaveNetError(f"format must be one of {', '.join(FORMATS)}, got {shown(self.format)}")

    def _set(self, name: str, value):
        object.__setattr__(self, name, value)  # normalizing a frozen field (numpy scalars to Python numbers)

    def _sampling_fields(self) -> dict:
        return {k: getattr(self, k) for k in SAMPLING_FIELDS if getattr(self, k) is not None}

    def sampling(self, default: Sampling) -> Sampling:
        """`default` (a model's default rule) with this request's sampling fields on top; a temperature, top-k or
        top-p asked of a model whose default is argmax samples with it (argmax would ignore it)."""
        fields = self._sampling_fields()
        if default.argmax and "argmax" not in fields and fields:
            fields["argmax"] = False
        return default.overridden(**fields)

    def length(self, config: WaveNetConfig) -> int | None:
        """Samples asked for: samples, or seconds at the model's rate, or for a vocoder given no length, what its
        mel covers; None for a streaming mel given no length (its end is not known yet)."""
        rate = config.sample_rate
        if self.samples is not None:
            return self.samples
        if self.seconds is not None:
            samples = round(self.seconds * rate)
            if samples < 1:
                raise FastWaveNetError(f"seconds: {self.seconds:g} s is less than one sample at {rate} Hz")
            return samples
        if self.mel is not None and not self.stream_mel:
            return self.mel.shape[1] * config.hop_length  # what a vocoder makes by default
        if config.n_mels:
            return None
        raise FastWaveNetError("give seconds (or samples): how much audio to make")

    def check(self, config: WaveNetConfig, limits: Limits | None = None) -> None:
        """The checks that need the model (and the limits of the entry point): how much audio, mel frames, speaker,
        prime codes, top-k. One-line FastWaveNetError."""
        rate = config.sample_rate
        if not config.n_mels and (self.mel is not None or self.stream_mel):
            raise FastWaveNetError("this model takes no mel frames (it is not a vocoder)")
        if config.n_mels and self.mel is None and not self.stream_mel:
            raise FastWaveNetError("this model is a vocoder: give it mel frames")
        if self.mel is not None and self.mel.shape[0] != config.n_mels:
            shape = self.mel.shape[::-1] if config.r9y9_features else self.mel.shape  # as the caller saved it
            raise FastWaveNetError(f"mel frames must be {saved_layout(config)}, got shape {shape}")
        if self.mel is not None and not self.stream_mel and self.mel.shape[1] == 0:
            raise FastWaveNetError("no mel frames given")
        samples = self.length(config)
        if samples is not None and samples > WAV_MAX_FRAMES:
            raise FastWaveNetError(f"{samples} samples asked for ({samples / rate:g} s at {rate} Hz); a WAV file "
                                   f"holds at most {WAV_MAX_FRAMES}")
        if samples is not None and limits is not None and limits.max_seconds is not None \
                and samples > limits.max_seconds * rate:
            raise FastWaveNetError(f"{samples / rate:g} s asked for; the limit is at most {limits.max_seconds:g} s "
                                   f"per request")
        check_rules(config, [Sampling(**self._sampling_fields())])  # top-k within the classes; softmax only
        self._check_speaker(config)
        if self.prime is not None and np.issubdtype(self.prime.dtype, np.integer):
            if config.scalar_input:
                raise FastWaveNetError("this model reads sample values: prime it with audio, not codes")
            if self.prime.min() < 0 or self.prime.max() >= config.classes:
                raise FastWaveNetError(f"prime codes must lie in 0..{config.classes - 1}")

    def _check_speaker(self, config: WaveNetConfig):
        speaker = self.speaker
        if config.speakers:
            if speaker is None or isinstance(speaker, np.ndarray) or speaker >= config.speakers:
                raise FastWaveNetError(f"this model needs a speaker id in 0..{config.speakers - 1}, "
                                       f"got {shown(speaker)}")
        elif config.global_features:
            if not isinstance(speaker, np.ndarray) or speaker.shape != (config.speaker_channels,):
                got = f"shape {speaker.shape}" if isinstance(speaker, np.ndarray) else shown(speaker)
                raise FastWaveNetError(f"this model takes global features: a vector of {config.speaker_channels} "
                                       f"finite values, got {got}")
        elif speaker is not None:
            raise FastWaveNetError("this model takes no global features" if isinstance(speaker, np.ndarray)
                                   else "this model takes no speaker id")

    # ---- the doors ------------------------------------------------------------------------------------------------
    @classmethod
    def from_kwargs(cls, **kwargs) -> GenerationRequest:
        """The Python API: the fields as keywords, or `sampling=Sampling(...)` in place of its four fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(kwargs) - names - {"sampling"}
        if unknown:
            raise FastWaveNetError(f"unknown argument(s): {', '.join(sorted(unknown))}")
        sampling = kwargs.pop("sampling", None)
        if sampling is not None:
            if not isinstance(sampling, Sampling):
                raise FastWaveNetError(f"sampling must be a fastwavenet.Sampling, got {_kind(sampling)}")
            both = [k for k in SAMPLING_FIELDS if kwargs.get(k) is not None]
            if both:
                raise FastWaveNetError(f"give sampling or {', '.join(both)}, not both")
            kwargs.update({"argmax": True} if sampling.argmax else sampling.to_dict())  # argmax ignores the rest
        return cls(**kwargs)

    @classmethod
    def from_json(cls, obj) -> GenerationRequest:
        """An HTTP JSON object (parsed by `parse_json`): strict types, unknown keys refused."""
        return cls._from_object(obj, JSON_FIELDS, "the body")

    @classmethod
    def from_manifest(cls, obj) -> GenerationRequest:
        """A manifest line's generation fields (the corpus keeps id and paths itself and passes the rest)."""
        return cls._from_object(obj, MANIFEST_FIELDS, "a line")

    @classmethod
    def _from_object(cls, obj, fields: tuple[str, ...], what: str) -> GenerationRequest:
        if not isinstance(obj, dict):
            raise FastWaveNetError(f"{what} must be a JSON object")
        unknown = set(obj) - set(fields)
        if unknown:
            raise FastWaveNetError(f"unknown field(s): {', '.join(sorted(unknown))}")
        for key, value in obj.items():
            if value is None:
                raise FastWaveNetError(f"{key} is null: leave it out for the default")
            if key == "speaker" and not isinstance(value, int):
                raise FastWaveNetError(f"speaker must be an integer id, got {shown(value)}")
        return cls(**obj)

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> GenerationRequest:
        """HTTP query parameters, each parsed strictly: integers as digits, numbers as JSON writes them, bools as
        true/false/1/0 ("maybe" is none of them); unknown names refused."""
        unknown = set(query) - set(JSON_FIELDS)
        if unknown:
            raise FastWaveNetError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        kinds = dict(seconds=_parse_number, seed=_parse_integer, temperature=_parse_number, top_k=_parse_integer,
                     top_p=_parse_number, argmax=_parse_bool, speaker=_parse_integer, format=lambda k, v: v)
        return cls(**{key: kinds[key](key, text) for key, text in query.items()})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerationRequest:
        """The command line: args.seconds, seed, temperature, top_k, top_p, argmax, speaker and global_features,
        those present (a store_true --argmax not given is the model's default, not false)."""
        given = {name: getattr(args, name, None) for name in ("seconds", "seed", *SAMPLING_FIELDS, "speaker")}
        given["argmax"] = given["argmax"] or None
        features = getattr(args, "global_features", None)
        if features is not None:
            if given["speaker"] is not None:
                raise FastWaveNetError("give --speaker or --global-features, not both")
            try:
                given["speaker"] = np.load(features, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise FastWaveNetError(f"cannot read global features {features}: {exc}") from None
        return cls(**given)


# ---- the command line ------------------------------------------------------------------------------------------

def arg_type(kind, accept, wanted: str):
    """An argparse type: `kind` parses the text, `accept` judges the value, `wanted` says what was expected."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value
    return parse


arg_positive_integer = arg_type(int, lambda v: v >= 1, "a positive integer")
arg_nonnegative_integer = arg_type(int, lambda v: v >= 0, "an integer >= 0")
arg_positive_number = arg_type(float, lambda v: 0 < v < float("inf"), "a positive number")
arg_nonnegative_number = arg_type(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
# A request's fields (seconds, seed, sampling, speaker) are only parsed on the command line: GenerationRequest judges
# their ranges, as it does for every other door.
arg_integer = arg_type(int, lambda v: True, "an integer")
arg_number = arg_type(float, lambda v: True, "a number")


def add_sampling_arguments(parser: argparse.ArgumentParser):
    """--temperature, --top-k, --top-p and --argmax: the sampling fields `from_args` reads, each over the model
    file's default where not given."""
    parser.add_argument("--temperature", type=arg_number,
                        help="divides the logits (default: the model file's default sampling, else 1)")
    parser.add_argument("--top-k", type=arg_integer,
                        help="keep the k likeliest classes (0: off; default: the model's, else off)")
    parser.add_argument("--top-p", type=arg_number, help="nucleus sampling mass in (0, 1] (default: the model's, "
                        "else 1)")
    parser.add_argument("--argmax", action="store_true", help="always take the likeliest class")


def add_request_arguments(parser: argparse.ArgumentParser):
    """The sampling flags, --seed, --speaker and --global-features: a request's fields as `from_args` reads them
    (`generate` and `vocode`; --seconds is generate's own, with its default)."""
    add_sampling_arguments(parser)
    parser.add_argument("--seed", type=arg_integer,
                        help="fixes the output, bit for bit on the same backend; with --batch N, file i gets what "
                             "--seed SEED+i makes alone")
    parser.add_argument("--speaker", type=arg_integer, help="speaker id, for models with speakers")
    parser.add_argument("--global-features", metavar="FILE.npy",
                        help="a model's external global features (r9y9 without a speaker embedding): one vector, "
                             ".npy")


def parse_json(text: str | bytes):
    """JSON text -> its value, refusing what json would take or fail on uncleanly: NaN and Infinity, numbers that
    overflow to infinity, integers of more than MAX_JSON_INTEGER_DIGITS digits, nesting deeper than MAX_JSON_DEPTH,
    bytes that are not UTF-8."""
    try:
        value = json.loads(text, parse_int=_json_integer, parse_float=_json_float, parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise FastWaveNetError(f"malformed JSON: {exc.msg} (at character {exc.pos})") from None
    except UnicodeDecodeError as exc:
        raise FastWaveNetError(f"malformed JSON: not UTF-8 (byte {exc.start})") from None
    except RecursionError:  # (deep enough for this Python's parser to give up)
        raise FastWaveNetError("malformed JSON: nested too deeply") from None
    if _nested_deeper_than(value, MAX_JSON_DEPTH):  # (what the parser took: how deep it goes differs by Python)
        raise FastWaveNetError("malformed JSON: nested too deeply")
    return value


def _nested_deeper_than(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _json_integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INTEGER_DIGITS:
        raise FastWaveNetError(f"a JSON integer of {len(text.lstrip('-'))} digits: longer than any field takes")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise FastWaveNetError(f"the JSON number {shown(text)[1:-1]} is out of range (finite numbers only)")
    return value


def _json_constant(text: str):
    raise FastWaveNetError(f"{text} is not a JSON number (finite numbers only)")


_INTEGER = re.compile(r"-?[0-9]{1,40}")
_NUMBER = re.compile(r"-?[0-9]{1,40}(\.[0-9]+)?([eE][-+]?[0-9]{1,4})?")
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _parse_integer(key: str, text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise FastWaveNetError(f"{key} must be an integer, got {shown(text)}")
    return int(text)


def _parse_number(key: str, text: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise FastWaveNetError(f"{key} must be a number, got {shown(text)}")
    return float(text)  # an overflow to inf is refused by the field's range


def _parse_bool(key: str, text: str) -> bool:
    if text.lower() not in _BOOLS:
        raise FastWaveNetError(f"{key} must be true or false, got {shown(text)}")
    return _BOOLS[text.lower()]


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _integer(name: str, value, low: int, high: int, what: str) -> int:
    if _is_bool(value) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise FastWaveNetError(f"{name} must be {what}, got {shown(value)}")
    return int(value)


def _numeric(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)


def _kind(value) -> str:
    return f"shape {value.shape} of {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
