"""`Generator`: folded weights + a backend + sampling; the per-stream state it advances; priming and streaming.

Stepping, for every backend: consuming code x[t] of each stream yields the logits of x[t + 1]. `forward` consumes a
given sequence (teacher forcing) and returns all its logits. Generation starts from `state.last`, the newest code
not yet consumed (silence for a new state; the final code of a prime; the final generated code afterwards), so
priming and generating can alternate freely.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import audio, distributions, mulaw
from .backends import backend_choices, full_fp32, make_backend, resolve_device
from .conditioning import Conditioning
from .config import WaveNetConfig, check_memory
from .errors import FastWaveNetError, shown
from .folded import add_precision_argument, rounded
from .modelfile import ModelFile, load_model
from .request import GenerationRequest, add_request_arguments, arg_number, arg_positive_integer
from .sampling import Sampling
from .state import input_dtype


# Bytes of per-layer gate terms one chunk of a conditioned model may hold.
COND_TERMS_BUDGET = 256 << 20


def check_seed(seed) -> int | None:
    """None (fresh entropy) or a non-negative integer, else a one-line error."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise FastWaveNetError(f"seed must be a non-negative integer, got {seed!r}")
    return None if seed is None else int(seed)


def stream_rngs(seed: int | None, batch: int) -> list[np.random.Generator]:
    """Stream i of a batch seeded with S draws its uniforms from numpy's default generator seeded with S + i: it
    makes what a batch of one seeded with S + i makes (given the same model, options and conditioning, on the same
    backend). Without a seed, each stream gets fresh entropy."""
    seed = check_seed(seed)
    return [np.random.default_rng(None if seed is None else seed + i) for i in range(batch)]


def check_count(name: str, value) -> int:
    """A number of steps or samples: an integer >= 0 (numpy's too), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise FastWaveNetError(f"{name} must be an integer >= 0, got {shown(value)}")
    return int(value)


def silence_code(config: WaveNetConfig):
    """What a new stream consumes first: the code of silence, or 0.0 for scalar input."""
    return 0.0 if config.scalar_input else int(mulaw.encode(np.zeros(1), config.classes)[0])


def encode(samples: np.ndarray, config: WaveNetConfig) -> np.ndarray:
    """Float audio -> what the model consumes: mu-law codes (int64), or the clipped values (float32) for scalar
    input."""
    samples = np.asarray(samples, dtype=np.float64)
    if config.scalar_input:
        return np.clip(samples, -1.0, 1.0).astype(np.float32)
    return mulaw.encode(samples, config.classes)


def decode(codes: np.ndarray, config: WaveNetConfig) -> np.ndarray:
    """What the model generates -> float32 audio in [-1, 1]."""
    if config.scalar_input:
        return np.asarray(codes, dtype=np.float32)
    return mulaw.decode(codes, config.classes).astype(np.float32)


class Generator:
    """Generates audio from a model file with a chosen backend on a chosen device.

    >>> gen = Generator("model.safetensors", backend="auto", device="cpu")
    >>> audio = gen.generate(seconds=2.0, seed=0)            # (1, samples) float32 in [-1, 1]
    >>> for chunk in gen.stream(seconds=10.0, chunk=4096):   # (1, <= 4096) arrays, as they are made
    ...     play(chunk)
    """

    def __init__(self, model: str | os.PathLike | ModelFile | None = None, backend: str = "auto",
                 device: str = "cpu", precision: str = "float32", expected_batch: int = 1):
        """precision "bf16" rounds the weight matrices to bf16, "int8" to int8 per output column (every backend then
        computes with those; the numba kernel also reads them as 16 or 8 bits, a half or a quarter of the bytes);
        tables, biases and conditioning stay float32. "w8a8" takes int8's weights and rounds every product's input
        vector to 8 bits as well (numba backends only; kernels/cpu.py).
        expected_batch: the batch `auto` times its candidates at (`backends.choose_by_trial`: on CUDA, and on the
        CPU below numba's thread count); the generator takes any batch, with the backend chosen once."""
        if model is None:
            from .demo import demo_model_path

            model = demo_model_path()
        self.model = model if isinstance(model, ModelFile) else load_model(model)
        self.config = self.model.config
        # The rule used where a call names none: the model file's measured default, or plain sampling.
        self.sampling = self.model.sampling or Sampling()
        self.device = resolve_device(device)
        self.precision = precision
        self.backend = make_backend(backend, self.config, rounded(self.model.weights, precision), self.device,
                                    precision, batch=expected_batch)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def check_batch(self, batch: int) -> int:
        """batch as an int; refused if it is not a positive integer or its state would not fit in memory."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise FastWaveNetError(f"batch must be a positive integer, got {shown(batch)}")
        batch = int(batch)
        c = self.config
        check_memory(4.0 * batch * max(c.queue_length * c.residual_channels, c.receptive_field * c.input_channels),
                     f"the state of {batch:,} streams")
        return batch

    def new_state(self, batch: int = 1):
        return self.backend.new_state(self.check_batch(batch), silence_code(self.config))

    def _check_state(self, state):
        """A one-line error unless `state` is one this Generator's backend runs: made by its new_state (or a copy or
        head of one), its arrays of this model's shapes, its codes in range. The kernels index the arrays by the
        model's shape, so another model's state would be read and written out of bounds."""
        kind = self.backend.state_type
        if not isinstance(state, kind):
            raise FastWaveNetError(f"state must be a {kind.__name__}, as this Generator's new_state makes (backend "
                                   f"{self.backend.name!r}), got {type(state).__name__}")
        state.check(self.config, self.device)

    def warm_up(self, sampling: Sampling = Sampling(), prime: bool = False, every_rule: bool = False):
        """Compile (or load from the cache) what generating, and priming if `prime`, will run, so that the first
        chunk does not pay for it; with `every_rule`, also what batches of other sampling rules will (a server)."""
        with full_fp32(self.device):
            self.backend.warm_up(sampling, teacher=prime, every_rule=every_rule)

    def conditioning(self, batch: int = 1, mel=None, speaker=None) -> Conditioning | None:
        """Conditioning for `batch` streams: mel (n_mels, frames) or (B, n_mels, frames) log-mel frames as
        `fastwavenet.features.log_mel` makes them; speaker: an id, or one per stream. None for a plain model."""
        if not self.config.conditioned and mel is None and speaker is None:
            return None
        return Conditioning.build(self.config, self.model.weights, self.device, batch, mel, speaker)

    def _terms(self, state, n: int, conditioning: Conditioning | None):
        if conditioning is None:
            if self.config.conditioned:
                raise FastWaveNetError("this model is conditioned: pass conditioning (mel and/or speaker)")
            return None
        if not isinstance(conditioning, Conditioning):
            raise FastWaveNetError(f"conditioning must be what Generator.conditioning makes, got "
                                   f"{type(conditioning).__name__}")
        if conditioning.streams[0].config != self.config:
            raise FastWaveNetError("this conditioning was made for another model (Generator.conditioning of this one "
                                   "makes its own)")
        if conditioning.batch != state.batch:
            raise FastWaveNetError(f"conditioning is for {conditioning.batch} streams, the state has {state.batch}")
        return conditioning.terms(state.t, n, reuse=True)

    def forward(self, state, codes, conditioning: Conditioning | None = None) -> torch.Tensor:
        """Teacher forcing: consume codes (B, T) (sample values for scalar input) and return the head's outputs after
        each, (B, T, O) float32: logits over classes, or a continuous distribution's parameters."""
        self._check_state(state)
        return self._forward(state, self.check_codes(codes, state.batch), conditioning)

    def _forward(self, state, codes: torch.Tensor, conditioning: Conditioning | None) -> torch.Tensor:
        """`forward` on a checked state and checked codes."""
        if codes.shape[1] == 0:
            return torch.empty(state.batch, 0, self.config.output_channels)
        terms = self._terms(state, codes.shape[1], conditioning)
        with full_fp32(self.device):
            return self.backend.forward(state, codes, terms)

    def prime(self, state, codes, conditioning: Conditioning | None = None):
        """Continue from codes (B, P) or (P,): consume all but the last, which generation consumes first.

        Afterwards the state equals that of stepping through codes[:, :-1] with `forward`. Only the last receptive
        field of them is stepped through: what a state holds at time t (each layer's inputs over its queue, the
        input taps) depends on the codes of t - (receptive_field - 1) .. t - 1 alone, so older codes are skipped by
        advancing the clock, and the rings end up in the same slots with the same values."""
        self._check_state(state)
        codes = self.check_codes(codes, state.batch)
        if codes.shape[1] == 0:
            raise FastWaveNetError("cannot prime with an empty sequence")
        consume = codes[:, :-1]
        skip = consume.shape[1] - self.config.receptive_field
        if skip > 0:
            state.t += skip
            consume = consume[:, skip:]
        if consume.shape[1] > 0:
            self._forward(state, consume, conditioning)
        state.last = codes[:, -1].to(state.last.device).clone()

    def prime_audio(self, state, audio: np.ndarray, conditioning: Conditioning | None = None):
        """Prime every stream with the same mono audio (float, at the model's rate)."""
        try:
            audio = np.asarray(audio, dtype=np.float64)
        except (TypeError, ValueError):
            raise FastWaveNetError(f"prime audio must be an array of samples, got {shown(audio)}") from None
        if audio.ndim != 1:
            raise FastWaveNetError(f"prime audio must be mono, one dimension (samples,), got shape {audio.shape}")
        codes = encode(audio, self.config)
        self.prime(state, np.broadcast_to(codes, (state.batch, len(codes))), conditioning)

    def generate_codes(self, state, steps: int, sampling: Sampling | None = None,
                       rng: np.random.Generator | list[np.random.Generator] | None = None,
                       conditioning: Conditioning | None = None) -> torch.Tensor:
        """Generate `steps` codes for every stream: (B, steps) int64 on the CPU (sample values, float32, for scalar
        input).

        rng: one generator per stream (each stream's uniforms come from its own, so its codes do not depend on the
        others), or one for all (drawn step by step across streams), or None (fresh entropy). A continuous output
        takes two uniforms per sample, u (steps, B, 2). sampling None: the model's default (`self.sampling`)."""
        sampling = self.sampling if sampling is None else sampling
        rng = rng if rng is not None else np.random.default_rng()
        self._check_state(state)
        steps = check_count("steps", steps)
        terms = self._terms(state, steps, conditioning)
        per_sample = distributions.uniform_shape(self.config)
        if isinstance(rng, np.random.Generator):
            u = rng.random((steps, state.batch) + per_sample, dtype=np.float32)
        else:
            if not isinstance(rng, (list, tuple)) or not all(isinstance(r, np.random.Generator) for r in rng):
                raise FastWaveNetError(f"rng must be a numpy Generator, or a list of one per stream, got {shown(rng)}")
            if len(rng) != state.batch:
                raise FastWaveNetError(f"{len(rng)} random generators for {state.batch} streams")
            u = np.stack([r.random((steps,) + per_sample, dtype=np.float32) for r in rng], axis=1)
        return self._step(state, steps, u, sampling, terms)

    def step(self, state, n: int, uniforms: np.ndarray, sampling: Sampling | list[Sampling],
             terms: torch.Tensor | None = None) -> torch.Tensor:
        """The batched step every caller shares: n codes for each of the B streams of `state`, consuming
        `state.last` first, from given uniforms (n, B) float32 in [0, 1) ((n, B, 2) for a continuous output) and, for a
        conditioned model, given gate terms (B, n, L, 2G) float32 (None for a plain model). sampling: one rule, or one
        per stream. Returns (B, n) on the CPU (int64 codes, or float32 sample values for scalar input). Each argument
        is checked first (a one-line error): the kernels read them by the shapes they are told."""
        self._check_state(state)
        n = check_count("n", n)
        shape = (n, state.batch) + distributions.uniform_shape(self.config)
        u = uniforms
        if not isinstance(u, np.ndarray) or u.dtype != np.float32 or u.shape != shape:
            raise FastWaveNetError(f"uniforms must be a float32 numpy array of shape {shape}, got "
                                   f"{getattr(u, 'dtype', type(u).__name__)} {getattr(u, 'shape', '')}")
        if u.size and not (u.min() >= 0 and u.max() < 1):  # (NaN fails both)
            raise FastWaveNetError("uniforms must lie in [0, 1)")
        c = self.config
        if c.conditioned:
            want = (state.batch, n, c.layers, 2 * c.gate_channels)
            if (not isinstance(terms, torch.Tensor) or tuple(terms.shape) != want or terms.dtype != torch.float32
                    or terms.device.type != self.device.type):
                raise FastWaveNetError(f"this model is conditioned: terms must be a float32 tensor {want} on "
                                       f"{self.device.type} (Conditioning.terms makes them), got "
                                       f"{getattr(terms, 'shape', terms)}")
        elif terms is not None:
            raise FastWaveNetError("this model has no conditioning: terms must be None")
        return self._step(state, n, np.ascontiguousarray(u), sampling, terms)

    def _step(self, state, n: int, uniforms: np.ndarray, sampling, terms) -> torch.Tensor:
        if n == 0:
            return torch.empty(state.batch, 0, dtype=input_dtype(self.config))
        with full_fp32(self.device):
            return self.backend.generate(state, n, uniforms, sampling, terms).cpu()

    def stream(self, seconds: float | None = None, samples: int | None = None, batch: int = 1, chunk: int = 4096,
               sampling: Sampling | None = None, seed: int | None = None, prime: np.ndarray | None = None,
               state=None, mel=None, speaker=None) -> Iterator[np.ndarray]:
        """Yield audio chunks (B, <= chunk) float32 as they are generated, `seconds` or `samples` in total.

        A vocoder takes `mel` (see `conditioning`) and, unless told fewer, makes as many samples as it covers after
        the prime (`vocoded_length`)."""
        if not isinstance(chunk, int) or chunk < 1:
            raise FastWaveNetError(f"chunk must be a positive integer, got {chunk}")
        if state is not None:
            self._check_state(state)
        state = state if state is not None else self.new_state(batch)
        rngs = stream_rngs(seed, state.batch)
        conditioning = self.conditioning(state.batch, mel, speaker)
        to_mel_end = seconds is None and samples is None and conditioning is not None and conditioning.length
        total = None if to_mel_end else self._length(seconds, samples)  # bad lengths refused before priming
        if prime is not None:
            self.prime_audio(state, prime, conditioning)
        if to_mel_end:
            total = self.vocoded_length(conditioning.length, state.t)
        frames = 0  # where > 0, chunks end on boundaries of frames this long
        if conditioning is not None:
            # A chunk's gate terms are B x chunk x L x 2G floats (10.7 GB for 64 streams of a `standard` vocoder at
            # 16,384 steps; one stream's where all share one mel): cap the chunk so they stay within a memory budget.
            # Capped chunks are whole mel frames where one frame's terms fit four budgets, and end on frame
            # boundaries: each frame's terms are then made straight into the chunk's, none kept from call to call.
            streams = 1 if conditioning.shared else state.batch
            per_step = 4 * streams * self.config.layers * 2 * self.config.gate_channels
            frame = self.config.hop_length if self.config.n_mels else 0
            cap = max(1, COND_TERMS_BUDGET // per_step)
            if cap < chunk:
                if frame and frame * per_step <= 4 * COND_TERMS_BUDGET and chunk >= frame:
                    chunk, frames = max(cap // frame, 1) * frame, frame
                else:
                    chunk = cap
        done = 0
        while done < total:
            n = min(chunk, total - done)
            over = (state.t + n) % frames if frames else 0
            if n > over > 0:  # end on a frame boundary (the first chunk after a prime, then every one)
                n -= over
            codes = self.generate_codes(state, n, sampling, rngs, conditioning)
            done += n
            yield decode(codes.numpy(), self.config)

    def generate(self, seconds: float | None = None, samples: int | None = None, batch: int = 1,
                 sampling: Sampling | None = None, seed: int | None = None, prime: np.ndarray | None = None,
                 mel=None, speaker=None) -> np.ndarray:
        """Generate audio: (batch, samples) float32 in [-1, 1] at `sample_rate`; sampling None: the model's
        default (`self.sampling`)."""
        chunks = list(self.stream(seconds, samples, batch, chunk=1 << 14, sampling=sampling, seed=seed,
                                  prime=prime, mel=mel, speaker=speaker))
        return np.concatenate(chunks, axis=1) if chunks else np.zeros((batch, 0), np.float32)

    def vocoded_length(self, covered: int, t: int) -> int:
        """Samples left to generate when the mel covers `covered` samples and a state has consumed `t` steps
        (t = prime length - 1 after a prime)."""
        if covered - t < 1:
            raise FastWaveNetError(f"the prime ({t + 1} samples) is as long as the mel spectrogram ({covered} "
                                   f"samples): nothing is left to vocode")
        return covered - t

    def _length(self, seconds, samples) -> int:
        """Samples for `seconds` or `samples` (one of them), judged as every request's length is."""
        if seconds is None and samples is None:
            raise FastWaveNetError("give seconds or samples")
        return GenerationRequest(seconds=seconds, samples=samples).length(self.config)

    def check_codes(self, codes, batch: int) -> torch.Tensor:
        """codes (B, T) or (T,) as a contiguous tensor of the input's dtype, or a one-line error: shape, range."""
        codes = codes if isinstance(codes, torch.Tensor) else torch.from_numpy(np.array(codes))
        if codes.ndim == 1:
            codes = codes.unsqueeze(0).expand(batch, -1)
        if codes.ndim != 2 or codes.shape[0] != batch:
            raise FastWaveNetError(f"codes must be (batch={batch}, T), got shape {tuple(codes.shape)}")
        if self.config.scalar_input:
            codes = codes.to(torch.float32)
            if codes.numel() and not (torch.isfinite(codes).all() and codes.abs().max() <= 1):
                raise FastWaveNetError("sample values must lie in [-1, 1]")
            return codes.contiguous()
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise FastWaveNetError(f"codes must be integers (class indices), got {codes.dtype}; to continue audio, "
                                   f"prime_audio encodes it")
        codes = codes.to(torch.int64)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.classes):
            raise FastWaveNetError(f"codes must lie in [0, {self.config.classes - 1}]")
        return codes.contiguous()


def output_paths(path: str | os.PathLike, batch: int) -> list[Path]:
    """out.wav for one stream; out-0.wav, out-1.wav, ... for several."""
    path = Path(path)
    if batch == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix or '.wav'}") for i in range(batch)]


def default_chunk(sample_rate: int, batch: int) -> int:
    """Steps per chunk when writing files: a tenth of a second of audio, but at most about 64k samples over all
    streams, so that with many streams the progress bar still moves and Ctrl-C (seen between chunks, since a
    compiled chunk runs to its end) answers within about a second."""
    return max(16, min(sample_rate // 10, (1 << 16) // batch))


def generate_to_wav(generator: Generator, out: str | os.PathLike, seconds: float | None, batch: int = 1,
                    sampling: Sampling | None = None, seed: int | None = None, prime: np.ndarray | None = None,
                    chunk: int | None = None, progress: bool = False, mel=None, speaker=None) -> list[Path]:
    """Generate `batch` streams of `seconds` each into WAV files, written as they are generated.

    Files are written under temporary names and renamed when done; on Ctrl-C (KeyboardInterrupt) each file keeps
    what was generated so far and is renamed into place, then the interrupt propagates. Returns the paths.
    """
    if seconds is None:
        if mel is None:
            raise FastWaveNetError("give the length in seconds")
        # All that the mel frames cover, less what the prime already is (it primes t = len(prime) - 1 steps).
        primed = 0 if prime is None else max(len(prime) - 1, 0)
        total = generator.vocoded_length(np.shape(mel)[-1] * generator.config.hop_length, primed)
    else:
        total = generator._length(seconds, None)
    if total > audio.WAV_MAX_FRAMES:
        rate = generator.sample_rate
        raise FastWaveNetError(f"{total / rate:g} s at {rate} Hz does not fit in a WAV file (at most "
                               f"{audio.WAV_MAX_FRAMES / rate:,.0f} s at this rate, 16-bit)")
    paths = output_paths(out, batch)
    chunk = chunk or default_chunk(generator.sample_rate, batch)
    with contextlib.ExitStack() as stack:
        bar = None
        if progress:
            from .progress import progress_bar

            # closed however the block ends, so that a message after it (an error, Ctrl-C) has a line of its own
            bar = stack.enter_context(progress_bar(total=total, unit="sample", unit_scale=True, dynamic_ncols=True))
        streams = [stack.enter_context(audio.WavStream(p, generator.sample_rate)) for p in paths]
        start = time.perf_counter()
        done = 0
        for block in generator.stream(samples=total, batch=batch, chunk=chunk, sampling=sampling, seed=seed,
                                      prime=prime, mel=mel, speaker=speaker):
            for stream, samples in zip(streams, block):
                stream.write(samples)
            done += block.shape[1]
            if bar is not None:
                rate = done / (time.perf_counter() - start)
                bar.set_postfix(samples_s=f"{rate * batch:,.0f}", rtf=f"{rate / generator.sample_rate:.2f}x")
                bar.update(block.shape[1])
    return paths


def generate_files(model, output: str | os.PathLike, request, batch: int = 1, prime: str | os.PathLike | None = None,
                   features: str | os.PathLike | None = None, backend: str = "auto", device: str = "cpu",
                   precision: str = "float32", progress: bool = False) -> dict:
    """What `fastwavenet generate` does (`prime`: an audio file to continue) or, given `features` (an audio file, or
    saved mel frames: .npy (n_mels, frames), .npz), what `fastwavenet vocode` does: generate into WAV files, all
    checked before the first sample. `model`: a model file (None: the bundled demo); `request`: a GenerationRequest
    (seconds, seed, sampling over the model's default, speaker); `output`: a WAV path, with batch N the files
    NAME-i.wav. Ctrl-C keeps what was made (generate_to_wav).

    Returns {"paths": [Path], "seconds": of each file, "sample_rate": Hz, "backend": its name}."""
    import sys

    from .features import features_from_file
    from .files import check_writable

    check_writable(output)
    if str(output).endswith(("/", os.sep)) or Path(output).suffix.lower() not in ("", ".wav"):
        raise FastWaveNetError(f"the output is WAV: name a .wav file, got {output}")
    if isinstance(model, (str, os.PathLike)) and Path(output).resolve() == Path(model).resolve():
        raise FastWaveNetError(f"the output {output} is the model file")
    if not isinstance(model, ModelFile):  # read first: what it is decides before `auto` times backends for it
        from .demo import demo_model_path

        model = load_model(model if model is not None else demo_model_path())
    if features is None and model.config.n_mels:
        raise FastWaveNetError("this model is a vocoder: use fastwavenet vocode MODEL INPUT")
    generator = Generator(model, backend=backend, device=device, precision=precision, expected_batch=batch)
    sampling = request.sampling(generator.sampling)
    generator.check_batch(batch)
    for path in output_paths(output, batch):
        check_writable(path)
    seconds, mel, prime_audio = request.seconds, None, None
    if features is not None:
        mel, samples = features_from_file(features, generator.config)
        seconds = samples / generator.sample_rate
    if prime is not None:
        rate = audio.source_rate(prime)
        prime_audio = audio.read(prime, generator.sample_rate)
        if rate is not None and rate != generator.sample_rate:
            print(f"fastwavenet: resampled the prime from {rate} Hz to the model's {generator.sample_rate} Hz",
                  file=sys.stderr)
    _warm_up(generator, sampling, prime_audio is not None, say_so=progress)
    paths = generate_to_wav(generator, output, seconds, batch=batch, sampling=sampling, seed=request.seed,
                            prime=prime_audio, progress=progress, mel=mel, speaker=request.speaker)
    return dict(paths=paths, seconds=seconds, sample_rate=generator.sample_rate, backend=generator.backend.name)


def add_generate_arguments(parser):
    """`fastwavenet generate`'s flags for one set of files: `generate_files`'s arguments and a request's fields."""
    parser.add_argument("--model", help="model file (default: the bundled piano demo)")
    # (no argparse defaults: with --manifest, a given --seconds or -o is refused, not ignored; cmd_generate's are 4
    # and out.wav)
    parser.add_argument("--seconds", type=arg_number, help="length of each file (default 4)")
    parser.add_argument("-o", "--output", help="WAV path (default out.wav); with --batch N, N files NAME-i.wav")
    parser.add_argument("--batch", type=arg_positive_integer, default=1, help="independent streams (files) at once")
    parser.add_argument("--prime", help="audio to continue (resampled to the model's rate)")
    _add_shared_arguments(parser)


def add_vocode_arguments(parser):
    """`fastwavenet vocode`'s flags for one file: `generate_files`'s arguments with `features`, a request's fields."""
    parser.add_argument("model", nargs="?", help="a model trained with --n-mels (default: the bundled piano "
                        "vocoder, when only INPUT is given)")
    parser.add_argument("input", nargs="?",
                        help="audio file, or log-mel frames as .npy (n_mels, frames) / .npz (mel, hop_length); a "
                             "model imported from r9y9 takes its features as .npy (frames, n_mels)")
    parser.add_argument("-o", "--output")
    _add_shared_arguments(parser)


def _add_shared_arguments(parser):
    add_request_arguments(parser)
    parser.add_argument("--backend", default="auto", help=backend_choices())
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _warm_up(generator: Generator, sampling: Sampling, prime: bool, say_so: bool):
    """Compile or load the kernels before the progress bar starts; if that takes over a second (a first run),
    say what is happening instead of showing a bar frozen at a few samples/s."""
    import sys
    import threading

    notice = generator.backend.first_call
    timer = None
    if notice and say_so:
        timer = threading.Timer(1.0, lambda: print(f"fastwavenet: {notice}", file=sys.stderr, flush=True))
        timer.daemon = True
        timer.start()
    try:
        generator.warm_up(sampling, prime)
    finally:
        if timer is not None:
            timer.cancel()
