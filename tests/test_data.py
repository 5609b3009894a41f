import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from fastwavenet import FastWaveNetError, audio
from fastwavenet.data import CropDataset, load_corpus, split_by_file, validation_crops

from helpers import PIANO


def test_reads_mixes_and_resamples(sine_folder):
    x = audio.read(sine_folder / "stereo.flac", 4410)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 4410) <= 2  # one second, resampled from 8 kHz


def test_corpus_skips_unreadable_files_with_a_warning(sine_folder):
    (sine_folder / "broken.wav").write_bytes(b"RIFF not really")
    (sine_folder / "empty.wav").write_bytes(b"")
    with pytest.warns(UserWarning) as record:
        corpus = load_corpus([sine_folder], 4410, 256)
    messages = " ".join(str(w.message) for w in record)
    assert "broken.wav" in messages and "empty.wav" in messages
    assert len(corpus.names) == 4
    assert all(c.dtype == np.int64 and c.min() >= 0 and c.max() < 256 for c in corpus.codes)


def test_a_half_read_wav_leaves_no_unclosed_file_warning(tmp_path):
    """A WAV whose format chunk is cut short gets past the first readers of the fallback path and fails half-way,
    which once left the file open: the user saw "ResourceWarning: unclosed file" beside the real message."""
    import gc
    import struct
    import warnings

    bad = tmp_path / "cut.wav"
    bad.write_bytes(b"RIFF" + struct.pack("<I", 100) + b"WAVEfmt " + struct.pack("<I", 16) + b"\x01\x00\x01\x00")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FastWaveNetError, match="cannot read audio"):
            audio.read(bad, 4410)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_no_usable_audio_is_an_error(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(FastWaveNetError, match="no usable audio"):
        load_corpus([tmp_path], 4410, 256)
    with pytest.raises(FastWaveNetError, match="no such file"):
        load_corpus([tmp_path / "missing"], 4410, 256)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FastWaveNetError, match="no usable audio"):
        load_corpus([empty], 4410, 256)


def test_split_by_file_and_crops(sine_folder):
    corpus = load_corpus([sine_folder], 4410, 256)
    train, val = split_by_file(corpus, ["tone2.wav"])
    assert [n.endswith("tone2.wav") for n in val.names] == [True]
    assert len(train.names) == 3
    with pytest.raises(FastWaveNetError, match="not in the data"):
        split_by_file(corpus, ["nope.wav"])
    dataset = CropDataset(train, length=100, items=10, seed=3)
    codes, mel, speaker = next(iter(DataLoader(dataset, batch_size=5)))
    assert codes.shape == (5, 100) and codes.dtype == torch.int64
    assert mel.numel() == 0 and speaker.tolist() == [-1] * 5
    # The index alone fixes the crop: a dataset that starts later sees the same items.
    later = CropDataset(train, length=100, items=5, seed=3, first=5)
    assert torch.equal(dataset[7][0], later[2][0])
    crops = validation_crops(val, 100, 4)[0]
    assert crops.shape == (4, 100)
    assert torch.equal(crops, validation_crops(val, 100, 4)[0])


def test_conditioned_crops_keep_audio_and_mel_in_step(tmp_path):
    from fastwavenet import WaveNetConfig
    from fastwavenet.data import speaker_names
    from fastwavenet.features import log_mel

    rng = np.random.default_rng(0)
    for name, freq in (("alice", 300.0), ("bob", 700.0)):
        (tmp_path / name).mkdir()
        t = np.arange(3000) / 4000
        x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)  # noise: no repeating crops
        soundfile.write(tmp_path / name / "a.wav", x.astype(np.float32), 4000)
    config = WaveNetConfig(sample_rate=4000, n_mels=10, hop_length=50, n_fft=200, speakers=2)
    speakers = speaker_names([tmp_path])
    assert speakers == ["alice", "bob"]
    corpus = load_corpus([tmp_path], 4000, 256, config=config, speakers=speakers)
    assert corpus.speakers == [0, 1] and corpus.mels[0].shape == (10, 1 + 3000 // 50)
    dataset = CropDataset(corpus, length=500, items=20, seed=1, hop=50)
    for i in range(20):
        codes, mel, speaker = dataset[i]
        assert codes.shape == (500,) and mel.shape == (10, 10)
        # The crop's frames are the whole file's frames at the crop's start: recover the start from the codes.
        full = corpus.codes[speaker]
        starts = [s for s in range(0, len(full) - 499, 50) if np.array_equal(full[s:s + 500], codes.numpy())]
        assert starts and np.array_equal(corpus.mels[speaker][:, starts[0] // 50:starts[0] // 50 + 10], mel.numpy())
    x = audio.read(tmp_path / "bob" / "a.wav", 4000)
    assert np.allclose(log_mel(x, config), corpus.mels[1])


@pytest.mark.skipif(not PIANO.is_dir(), reason="shared piano corpus not present")
def test_piano_corpus_loads():
    corpus = load_corpus([PIANO], 4410, 256)
    assert len(corpus.names) == 6
    assert corpus.samples == 2_883_689
