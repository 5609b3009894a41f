"""GenerationRequest: one request type, validated once, from every door (Python, HTTP JSON and query, manifest, CLI)."""

import argparse
import dataclasses

import numpy as np
import pytest

from fastwavenet import FastWaveNetError, Sampling, preset
from fastwavenet.audio import WAV_MAX_FRAMES
from fastwavenet.request import GenerationRequest, Limits, parse_json

from helpers import vocoder_config

TINY = preset("tiny")  # 4410 Hz, a softmax over 256 classes


def refused(message, make):
    with pytest.raises(FastWaveNetError, match=message) as caught:
        make()
    assert "\n" not in str(caught.value)  # one line


def test_each_door_reads_the_same_request():
    want = GenerationRequest(seconds=1.5, seed=7, temperature=0.9, top_k=20, top_p=0.95, argmax=False, speaker=2)
    fields = dict(seconds=1.5, seed=7, temperature=0.9, top_k=20, top_p=0.95, argmax=False, speaker=2)
    assert GenerationRequest.from_kwargs(**fields) == want
    assert GenerationRequest.from_json(parse_json(b'{"seconds": 1.5, "seed": 7, "temperature": 0.9, "top_k": 20, '
                                                  b'"top_p": 0.95, "argmax": false, "speaker": 2}')) == want
    assert GenerationRequest.from_manifest(dict(fields)) == want
    assert GenerationRequest.from_query({"seconds": "1.5", "seed": "7", "temperature": "0.9", "top_k": "20",
                                         "top_p": "0.95", "argmax": "false", "speaker": "2"}) == want
    assert GenerationRequest.from_args(argparse.Namespace(**fields, model="m.safetensors")) == \
        dataclasses.replace(want, argmax=None)  # a store_true flag not given is the model's default, not false
    assert GenerationRequest.from_args(argparse.Namespace(seconds=1.0, argmax=True)) == \
        GenerationRequest(seconds=1.0, argmax=True)
    assert GenerationRequest(seconds=2).seconds == 2.0 and isinstance(GenerationRequest(seconds=2).seconds, float)
    assert GenerationRequest(seed=np.int64(3)).seed == 3 and type(GenerationRequest(seed=np.int64(3)).seed) is int


def test_sampling_fields_go_on_top_of_the_default_field_by_field():
    default = Sampling(temperature=1.2, top_p=0.9)
    assert GenerationRequest(top_k=5).sampling(default) == Sampling(temperature=1.2, top_k=5, top_p=0.9)
    assert GenerationRequest().sampling(default) == default
    # A whole Sampling given to the Python API replaces all four fields.
    request = GenerationRequest.from_kwargs(samples=10, sampling=Sampling(top_k=3))
    assert (request.temperature, request.top_k, request.top_p, request.argmax) == (1.0, 3, 1.0, False)
    assert request.sampling(default) == Sampling(top_k=3)
    greedy = GenerationRequest.from_kwargs(samples=10, sampling=Sampling(argmax=True))
    assert greedy.sampling(default) == default.overridden(argmax=True)
    refused("give sampling or top_k, not both", lambda: GenerationRequest.from_kwargs(sampling=Sampling(), top_k=3))
    refused("sampling must be a fastwavenet.Sampling", lambda: GenerationRequest.from_kwargs(sampling={"top_k": 3}))
    refused("unknown argument.*volume", lambda: GenerationRequest.from_kwargs(seconds=1, volume=11))


def test_argmax_with_a_temperature_top_k_or_top_p_is_refused_and_those_sample_where_argmax_is_the_default():
    """argmax ignores the other three fields, so a request giving both had one of its wishes dropped silently (the
    CLI's `--argmax --temperature 0.8`, the same in JSON or a manifest line); and a temperature asked of a model
    whose stored default is argmax was ignored the same way: it samples now."""
    refused("argmax takes the likeliest class, so temperature would not apply: give argmax or temperature, not both",
            lambda: GenerationRequest(argmax=True, temperature=0.8))
    refused("so top_k and top_p would not apply: give argmax or top_k and top_p, not both",
            lambda: GenerationRequest(argmax=True, top_k=5, top_p=0.9))
    refused("argmax takes", lambda: GenerationRequest.from_json({"seconds": 1, "argmax": True, "top_p": 0.5}))
    refused("argmax takes", lambda: GenerationRequest.from_args(argparse.Namespace(argmax=True, top_k=3)))
    assert GenerationRequest(argmax=False, temperature=0.8).sampling(Sampling()) == Sampling(temperature=0.8)
    # the neutral values change nothing, so a model's whole default rule (as `info --json` shows it) is taken back
    assert GenerationRequest(argmax=True, temperature=1.0, top_k=0, top_p=1.0).argmax
    greedy = Sampling(temperature=0.9, argmax=True)  # a model file's stored default
    assert GenerationRequest(top_k=4).sampling(greedy) == Sampling(temperature=0.9, top_k=4)
    assert GenerationRequest(seconds=1).sampling(greedy) == greedy
    assert GenerationRequest(argmax=True).sampling(Sampling(temperature=0.7)) == Sampling(temperature=0.7, argmax=True)


@pytest.mark.parametrize("fields,message", [
    (dict(seconds=1, samples=10), "seconds or samples, not both"),
    (dict(seconds=0), "seconds must be a positive number"), (dict(seconds=float("inf")), "seconds"),
    (dict(seconds=float("nan")), "seconds"), (dict(seconds=10**400), "seconds.*about 400 digits"),
    (dict(seconds=True), "seconds"), (dict(seconds="1"), "seconds"),
    (dict(samples=0), "samples"), (dict(samples=WAV_MAX_FRAMES + 1), "samples"), (dict(samples=2.0), "samples"),
    (dict(seed=-1), "seed must be an integer in 0..2\\*\\*63 - 1"), (dict(seed=2**63), "seed"),
    (dict(seed=10**400), "seed"), (dict(seed=1.0), "seed"), (dict(seed=True), "seed"),
    (dict(temperature=1e-39), r"temperature must be a number in \[0.001, 1000\]"), (dict(temperature=1e4), "temp"),
    (dict(temperature=True), "temperature"), (dict(temperature=10**400), "temperature"),
    (dict(top_k=10**23), "top-k must be 0 .off. or a positive integer up to 2\\*\\*31 - 1"),
    (dict(top_k=True), "top-k"), (dict(top_k=-1), "top-k"), (dict(top_k=2.0), "top-k"),
    (dict(top_p=0), "top-p"), (dict(top_p=True), "top-p"), (dict(top_p=float("nan")), "top-p"),
    (dict(argmax="maybe"), "argmax must be true or false"), (dict(argmax=1), "argmax"),
    (dict(speaker=-1), "speaker"), (dict(speaker=True), "speaker"), (dict(speaker=np.ones((2, 2))), "global"),
    (dict(speaker=np.array([1.0, np.nan])), "global features"),
    (dict(mel=np.zeros(8)), "2-D"), (dict(mel=np.full((8, 2), np.inf)), "NaN or infinite"),
    (dict(mel=np.zeros((8, 2), bool)), "array of numbers"), (dict(mel=[[0.0]]), "array of numbers"),
    (dict(prime=np.zeros(0)), "prime must be a non-empty 1-D"), (dict(prime=np.array([np.nan])), "prime"),
    (dict(stream_mel=1), "stream_mel"), (dict(format="mp3"), "format must be one of wav, pcm, flac, got 'mp3'"),
    (dict(format=["wav"]), "format must be one of wav, pcm, flac, got \\['wav'\\]"),
])
def test_refusals_when_made(fields, message):
    refused(message, lambda: GenerationRequest(**fields))


def test_json_is_parsed_strictly():
    """What json.loads takes or fails on uncleanly (500s before) is a one-line FastWaveNetError."""
    refused("the JSON number 1e400 is out of range", lambda: parse_json(b'{"seconds": 1e400}'))
    refused("Infinity is not a JSON number", lambda: parse_json(b'{"seconds": Infinity}'))
    refused("NaN is not a JSON number", lambda: parse_json(b'{"seconds": NaN}'))
    refused("a JSON integer of 5000 digits", lambda: parse_json(b'{"seed": ' + b"9" * 5000 + b"}"))
    refused("a JSON integer of 401 digits", lambda: parse_json(b'{"seconds": 1' + b"0" * 400 + b"}"))
    refused("nested too deeply", lambda: parse_json(b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"))
    refused("malformed JSON", lambda: parse_json(b"{not json"))
    refused("malformed JSON", lambda: parse_json(b'{"seconds": 1, "x": "\xff"}'))
    assert parse_json(b'{"seed": ' + b"9" * 40 + b"}") == {"seed": int("9" * 40)}  # then refused by its range


@pytest.mark.parametrize("obj,message", [
    ({"seconds": 1, "argmax": "maybe"}, "argmax must be true or false"),
    ({"seconds": 1, "top_k": True}, "top-k"), ({"seconds": 1, "seed": True}, "seed"),
    ({"seconds": 1, "temperature": False}, "temperature"), ({"seconds": True}, "seconds"),
    ({"seconds": 1, "seed": None}, "seed is null"), ({"seconds": 1, "volume": 11}, "unknown field.*volume"),
    ({"seconds": 1, "speaker": [0.5, 0.5]}, "speaker must be an integer id"), ([1, 2], "must be a JSON object"),
    ({"seconds": 1, "samples": 10}, "unknown field.*samples"), ({"seconds": 1, "mel": [[0]]}, "unknown field.*mel"),
])
def test_from_json_refuses_coercions_and_unknown_keys(obj, message):
    refused(message, lambda: GenerationRequest.from_json(obj))


def test_from_manifest_takes_no_format():
    refused("unknown field.*format", lambda: GenerationRequest.from_manifest({"seconds": 1, "format": "wav"}))
    refused("a line must be a JSON object", lambda: GenerationRequest.from_manifest("seconds"))


@pytest.mark.parametrize("query,message", [
    ({"argmax": "maybe"}, "argmax must be true or false, got 'maybe'"), ({"seed": "1.0"}, "seed must be an integer"),
    ({"seed": "1_000"}, "seed must be an integer"), ({"seed": " 1"}, "seed"), ({"top_k": "true"}, "top_k"),
    ({"temperature": "nan"}, "temperature must be a number"), ({"temperature": "inf"}, "temperature"),
    ({"seconds": "1e400"}, "seconds must be a positive number"), ({"seed": "9" * 41}, "seed must be an integer"),
    ({"volume": "11"}, "unknown parameter.*volume"),
])
def test_from_query_parses_strictly(query, message):
    refused(message, lambda: GenerationRequest.from_query(query))


def test_from_query_bools_and_numbers():
    assert GenerationRequest.from_query({"argmax": "TRUE"}).argmax is True
    assert GenerationRequest.from_query({"argmax": "0"}).argmax is False
    assert GenerationRequest.from_query({"temperature": "1", "seconds": "2e-1"}) == \
        GenerationRequest(temperature=1.0, seconds=0.2)


def test_the_http_doors_take_every_format():
    assert GenerationRequest.from_query({"format": "flac"}).format == "flac"
    assert GenerationRequest.from_json({"seconds": 1, "format": "pcm"}).format == "pcm"
    assert GenerationRequest.from_json({"seconds": 1}).format == "wav"


def test_from_args_reads_global_features(tmp_path):
    np.save(tmp_path / "g.npy", np.arange(4, dtype=np.float32))
    request = GenerationRequest.from_args(argparse.Namespace(seconds=1.0, speaker=None,
                                                             global_features=str(tmp_path / "g.npy")))
    assert np.array_equal(request.speaker, np.arange(4))
    refused("--speaker or --global-features, not both", lambda: GenerationRequest.from_args(
        argparse.Namespace(speaker=1, global_features=str(tmp_path / "g.npy"))))
    refused("cannot read global features", lambda: GenerationRequest.from_args(
        argparse.Namespace(global_features=str(tmp_path / "absent.npy"))))


def test_check_against_a_tiny_model():
    GenerationRequest(seconds=1, top_k=256).check(TINY, Limits(max_seconds=1))
    GenerationRequest(samples=WAV_MAX_FRAMES).check(TINY)
    GenerationRequest(samples=5, prime=np.array([0, 255])).check(TINY)
    refused("top-k 257 is more than this model's 256 classes", lambda: GenerationRequest(seconds=1, top_k=257)
            .check(TINY))
    refused("give seconds .or samples.", lambda: GenerationRequest(seed=1).check(TINY))
    refused("less than one sample at 4410 Hz", lambda: GenerationRequest(seconds=1e-5).check(TINY))
    refused("a WAV file holds at most", lambda: GenerationRequest(seconds=1e7).check(TINY))
    refused(r"1\.5 s asked for; the limit is at most 1 s per request",
            lambda: GenerationRequest(seconds=1.5).check(TINY, Limits(max_seconds=1)))
    refused("takes no speaker id", lambda: GenerationRequest(seconds=1, speaker=0).check(TINY))
    refused("takes no mel frames", lambda: GenerationRequest(seconds=1, mel=np.zeros((8, 2))).check(TINY))
    refused("prime codes must lie in 0..255", lambda: GenerationRequest(seconds=1, prime=np.array([256]))
            .check(TINY))
    speakers = dataclasses.replace(TINY, speakers=3)
    GenerationRequest(seconds=1, speaker=2).check(speakers)
    refused(r"needs a speaker id in 0\.\.2, got 3", lambda: GenerationRequest(seconds=1, speaker=3).check(speakers))
    refused("needs a speaker id", lambda: GenerationRequest(seconds=1).check(speakers))
    features = dataclasses.replace(TINY, global_features=True, speaker_channels=4)
    GenerationRequest(seconds=1, speaker=np.zeros(4)).check(features)
    refused("global features: a vector of 4", lambda: GenerationRequest(seconds=1, speaker=np.zeros(3))
            .check(features))


def test_check_against_a_vocoder():
    vocoder = vocoder_config()  # 8 bands, hop 32, 4410 Hz
    GenerationRequest(mel=np.zeros((8, 10))).check(vocoder, Limits(max_seconds=320 / 4410))
    GenerationRequest(stream_mel=True).check(vocoder, Limits(max_seconds=0.01))  # its length is not known yet
    refused("mel frames must be .8 bands, frames., got shape .5, 10.",
            lambda: GenerationRequest(mel=np.zeros((5, 10))).check(vocoder))
    refused("a vocoder: give it mel frames", lambda: GenerationRequest(seconds=1).check(vocoder))
    refused("no mel frames given", lambda: GenerationRequest(mel=np.zeros((8, 0))).check(vocoder))
    refused("the limit is at most", lambda: GenerationRequest(mel=np.zeros((8, 11))).check(
        vocoder, Limits(max_seconds=320 / 4410)))
    r9y9 = dataclasses.replace(vocoder, upsampler="r9y9-transpose", upsample_scales=(4, 8))
    refused(r"mel frames must be \(frames, 8 bands\), got shape \(10, 5\)",  # the shape as it was saved
            lambda: GenerationRequest(mel=np.zeros((5, 10))).check(r9y9))


def test_sampling_refuses_what_a_model_file_could_hold():
    """A model file's default rule is a Sampling: bools, absurd top-k and temperatures out of range are refused."""
    for fields in (dict(top_k=10**23), dict(top_k=True), dict(argmax="yes"), dict(temperature=1e-39),
                   dict(top_p=True), dict(temperature=10**400)):
        refused("must be", lambda: Sampling(**fields))
    assert Sampling(temperature=0.001, top_k=2**31 - 1).top_k == 2**31 - 1
