"""Log-mel features for local conditioning, computed with librosa from the model's config."""

from __future__ import annotations

import zipfile

import numpy as np

from .config import WaveNetConfig
from .errors import FastWaveNetError, shown


def log_mel(samples: np.ndarray, config: WaveNetConfig) -> np.ndarray:
    """Mono float audio at the model's rate -> (n_mels, 1 + len // hop_length) float32: the natural log of the
    magnitude mel spectrogram, floored at 1e-5. Frame i is centred on sample i * hop_length; the model's upsampler
    turns it into samples i * hop .. (i + 1) * hop - 1."""
    import librosa

    if not config.n_mels:
        raise FastWaveNetError("this model takes no mel features")
    if config.r9y9_features:
        raise FastWaveNetError(f"this model was trained on r9y9/wavenet_vocoder's own mel features: give them as "
                               f".npy (frames, {config.n_mels}), as its preprocess.py writes them, not audio")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size == 0:
        raise FastWaveNetError("cannot compute mel features of empty audio")
    mel = librosa.feature.melspectrogram(y=samples, sr=config.sample_rate, n_fft=config.n_fft,
                                         hop_length=config.hop_length, n_mels=config.n_mels, fmin=config.fmin,
                                         fmax=config.fmax or config.sample_rate / 2, power=1.0, center=True,
                                         pad_mode="constant")
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


def saved_layout(config: WaveNetConfig) -> str:
    """How saved mel frames are laid out for this model: r9y9's preprocessing writes (frames, bands); fastwavenet's
    own are (bands, frames)."""
    return f"(frames, {config.n_mels} bands)" if config.r9y9_features else f"({config.n_mels} bands, frames)"


def bands_first(mel: np.ndarray, config: WaveNetConfig) -> np.ndarray:
    """Saved frames in the model's saved layout -> (bands, frames), as everything past loading takes them."""
    return mel.T if config.r9y9_features and mel.ndim == 2 else mel


def load_features(path, config: WaveNetConfig) -> np.ndarray:
    """Saved log-mel frames, checked against the model: a (n_mels, frames) float array in .npy, or an .npz with
    `mel` and, if known, the `hop_length` and `sample_rate` it was made with (no pickles either way). A model
    imported from r9y9/wavenet_vocoder reads its features as r9y9's preprocessing writes them: (frames, n_mels).
    Returns (n_mels, frames) float32."""
    try:
        with open(path, "rb") as f:  # (np.load given a path left it open when a zip was truncated)
            magic = f.read(6)  # (anything else np.load reads as a pickle, and names allow_pickle in its refusal)
            if not (magic == b"\x93NUMPY" or magic.startswith(b"PK\x03\x04")):
                raise FastWaveNetError(f"features {path} are neither .npy nor .npz data")
            f.seek(0)
            data = np.load(f, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                if "mel" not in data:
                    raise FastWaveNetError(f"features {path} hold no 'mel' array")
                for key in ("hop_length", "sample_rate"):
                    if key in data:
                        value = data[key]
                        whole = value.ndim == 0 and (np.issubdtype(value.dtype, np.integer) or (
                            np.issubdtype(value.dtype, np.floating) and np.isfinite(value) and value == int(value)))
                        if not whole:
                            raise FastWaveNetError(f"features {path}: {key} must be one whole number, got "
                                                   f"{shown(value)}")
                        if int(value) != getattr(config, key):
                            raise FastWaveNetError(f"features {path} were made with {key} {int(value)}; the "
                                                   f"model uses {getattr(config, key)}")
                mel = data["mel"]
            else:
                mel = data
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FastWaveNetError(f"cannot read features {path}: {exc}") from None
    if not isinstance(mel, np.ndarray) or mel.dtype == bool or not (np.issubdtype(mel.dtype, np.floating)
                                                                     or np.issubdtype(mel.dtype, np.integer)):
        raise FastWaveNetError(f"features {path} must be real numbers, got dtype {getattr(mel, 'dtype', None)}")
    shape = mel.shape
    mel = bands_first(mel, config)
    if mel.ndim != 2 or mel.shape[0] != config.n_mels:
        raise FastWaveNetError(f"features {path} have shape {shape}; the model wants {saved_layout(config)}")
    if mel.shape[1] == 0:
        raise FastWaveNetError(f"features {path} hold no frames")
    if not np.isfinite(mel).all():
        raise FastWaveNetError(f"features {path} hold NaN or infinite values")
    return mel.astype(np.float32)


def features_from_file(path, config: WaveNetConfig) -> tuple[np.ndarray, int]:
    """Mel frames to vocode and how many samples to make: from saved features (.npy / .npz: every frame's hop), or
    from audio, resampled to the model's rate (as many samples as the audio has)."""
    from pathlib import Path

    from . import audio

    if not config.n_mels:
        raise FastWaveNetError("this model is not a vocoder (it takes no mel features)")
    if Path(path).suffix.lower() in (".npy", ".npz"):
        mel = load_features(path, config)
        return mel, mel.shape[1] * config.hop_length
    samples = audio.read(path, config.sample_rate)
    if len(samples) < config.hop_length:
        raise FastWaveNetError(f"{path} is too short to vocode: {len(samples)} samples, less than one mel frame "
                               f"({config.hop_length} samples)")
    return log_mel(samples, config), len(samples)
