"""The one exactness test: every backend's teacher-forced logits equal the training model's, step by step."""

import numpy as np
import pytest
import torch

from fastwavenet import Sampling, WaveNetConfig, distributions, preset
from fastwavenet.backends import available_backends
from fastwavenet.folded import fold
from fastwavenet.generator import Generator
from fastwavenet.modelfile import ModelFile

from helpers import random_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = available_backends(DEVICE)
if DEVICE == "cpu" and "triton" not in BACKENDS:
    BACKENDS += [pytest.param(name, marks=pytest.mark.skip(reason="triton is not installed"))
                 for name in ("triton", "triton-stream", "triton-spread", "triton-layers")]

CONFIGS = {
    "tiny": preset("tiny"),
    "k3-nobias-gate": WaveNetConfig(sample_rate=8000, classes=64, residual_channels=8, gate_channels=12,
                                    skip_channels=10, head_channels=24, kernel_size=3, input_kernel_size=1,
                                    layers_per_stack=3, stacks=2, bias=False),
    "k4-odd": WaveNetConfig(sample_rate=8000, classes=32, residual_channels=5, gate_channels=7, skip_channels=9,
                            head_channels=11, kernel_size=4, input_kernel_size=2, layers_per_stack=2, stacks=3),
    "mel+speaker": WaveNetConfig(sample_rate=8000, classes=64, residual_channels=6, gate_channels=5,
                                 skip_channels=8, head_channels=12, layers_per_stack=3, stacks=2, speakers=3,
                                 speaker_channels=4, n_mels=7, hop_length=8, n_fft=32),
}


def teacher_steps(config, backend, short=False):
    """Steps for a teacher-forcing comparison: twice the receptive field and more, or, for Triton under its
    interpreter (seconds a step) and where `short`, the receptive field + 17. Both wrap every ring (the longest
    holds (k - 1) * the largest dilation slots, fewer than the receptive field) and end with steps whose whole
    receptive field is real input."""
    if backend == "triton-spread" and DEVICE == "cpu":
        # One interpreter launch a phase, 2 x layers + 2 phases a step: the longest ring and 4 more, wrapping all.
        return (config.kernel_size - 1) * max(config.dilations) + 4
    if short or (backend.startswith("triton") and DEVICE == "cpu"):
        return config.receptive_field + 17
    return 2 * config.receptive_field + 17


def conditioning_inputs(config, batch, steps, seed=0):
    """Random log-mel frames covering `steps` samples and one speaker per stream (None where unused)."""
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, config.n_mels, -(-steps // config.hop_length), generator=g) if config.n_mels else None
    speaker = torch.arange(batch) % config.speakers if config.speakers else None
    return mel, speaker


def model_logits(model, codes, mel, speaker):
    """The training model's logits (B, T, C) for codes with the given conditioning."""
    features = model.upsample_mel(mel)[:, :, :codes.shape[1]] if mel is not None else None
    with torch.no_grad():
        cond = model.conditioning(features, speaker, codes.shape[1])
        return model(codes, cond).transpose(1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_teacher_forced_logits_match_training_model(name, backend, monkeypatch):
    if backend == "torch-compile" and name in ("tiny", "k3-nobias-gate"):  # the other two: a compile is 20-40 s
        pytest.skip("torch-compile is checked on k4-odd and mel+speaker only, for CI's time")
    if backend == "triton-spread":
        # Three programs a stream (these shapes would get one or two): shares that divide no channel count.
        monkeypatch.setenv("FASTWAVENET_SPREAD_PROGRAMS", "3")
    config = CONFIGS[name]
    steps = teacher_steps(config, backend, short=backend == "naive" and name == "tiny")
    model = random_model(config)
    batch = 3
    codes = torch.randint(0, config.classes, (batch, steps), generator=torch.Generator().manual_seed(1))
    mel, speaker = conditioning_inputs(config, batch, steps)
    expected = model_logits(model, codes, mel, speaker)
    gen = Generator(ModelFile(config, fold(model)), backend=backend, device=DEVICE)
    state = gen.new_state(batch)
    conditioning = gen.conditioning(batch, mel, speaker)
    # In two calls, so a chunk boundary is crossed mid-sequence.
    split = steps // 3
    got = torch.cat([gen.forward(state, codes[:, :split], conditioning),
                     gen.forward(state, codes[:, split:], conditioning)], dim=1).cpu()
    assert got.shape == expected.shape
    err = (got - expected).abs().amax(dim=(0, 2))
    assert err.max().item() <= 1e-4, f"worst step {err.argmax().item()}: {err.max().item():.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_priming_equals_stepping(backend):
    config = CONFIGS["mel+speaker"]
    gen = Generator(ModelFile(config, fold(random_model(config, 2))), backend=backend, device=DEVICE)
    codes = torch.randint(0, config.classes, (2, 50))  # past the receptive field (16)
    conditioning = gen.conditioning(2, *conditioning_inputs(config, 2, 50 + 12))
    primed = gen.new_state(2)
    gen.prime(primed, codes, conditioning)
    stepped = gen.new_state(2)
    gen.forward(stepped, codes[:, :-1], conditioning)
    stepped.last = codes[:, -1].to(stepped.last.device)
    assert primed.t == stepped.t == 49
    assert torch.equal(primed.last.cpu(), codes[:, -1])
    for name in ("queues", "inputs", "history", "cond"):
        if hasattr(primed, name):
            assert torch.allclose(getattr(primed, name), getattr(stepped, name), atol=1e-6), name
    # And generation continues identically from either.
    a = gen.generate_codes(primed, 12, rng=np.random.default_rng(5), conditioning=conditioning)
    b = gen.generate_codes(stepped, 12, rng=np.random.default_rng(5), conditioning=conditioning)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend,precision", [("numba", "float32"), ("numba", "w8a8"), ("torch", "float32")])
def test_one_mel_for_every_stream_is_each_streams_own_bit_for_bit(backend, precision):
    """A batch given one mel and speaker shares one conditioning: its terms are made once and expanded over the
    batch (`Conditioning.terms`, stride 0; the numba kernel reads the one row for every stream). Each stream's
    logits and draws equal those of the same mel given to each stream as its own, bit for bit, and the training
    model's logits."""
    if backend not in BACKENDS or DEVICE != "cpu":
        pytest.skip(f"{backend} on the CPU is not available")
    config = CONFIGS["mel+speaker"]
    steps, batch = config.receptive_field + 9, 5
    model = random_model(config, 31)
    gen = Generator(ModelFile(config, fold(model)), backend=backend, device="cpu", precision=precision)
    codes = torch.randint(0, config.classes, (batch, steps), generator=torch.Generator().manual_seed(32))
    mel, _ = conditioning_inputs(config, 1, steps + 20)
    shared = gen.conditioning(batch, mel[0], 2)
    own = gen.conditioning(batch, mel.expand(batch, -1, -1).clone(), [2] * batch)
    assert shared.terms(0, 4).stride(0) == 0 and own.terms(0, 4).stride(0) > 0
    runs = []
    for conditioning in (shared, own):
        state = gen.new_state(batch)
        logits = gen.forward(state, codes, conditioning)
        drawn = gen.generate_codes(state, 20, rng=np.random.default_rng(33), conditioning=conditioning)
        runs.append((logits, drawn))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    if precision == "float32":
        expected = model_logits(model, codes, mel.expand(batch, -1, -1), torch.full((batch,), 2))
        assert (runs[0][0] - expected).abs().max().item() <= 1e-4


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("tile", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("name", ["tiny", "k4-odd"])
def test_numba_tiles_match_training_model(name, tile, monkeypatch):
    """The numba kernel works in tiles of streams and blocks of 4 outputs with remainders; every tile size (tiles
    of one, a short last tile: the batch of 9 leaves one for every tile size above 1) and channel counts that are
    not multiples of 4 give the training model's logits."""
    from fastwavenet.backends import NumbaBackend

    monkeypatch.setattr(NumbaBackend, "_tile", staticmethod(lambda batch: tile))
    config = CONFIGS[name]
    steps = config.receptive_field + 9
    model = random_model(config, 3)
    codes = torch.randint(0, config.classes, (9, steps), generator=torch.Generator().manual_seed(4))
    expected = model_logits(model, codes, None, None)
    gen = Generator(ModelFile(config, fold(model)), backend="numba", device="cpu")
    got = gen.forward(gen.new_state(9), codes)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("name", ["k4-odd", "mel+speaker"])
def test_numba_panel_tiles_equal_natural_tiles_bit_for_bit(name, monkeypatch):
    """Tiles of many streams read the layers' weights in panels (`cpu.panel_layout`, from WIDEN_FROM streams a tile):
    the training model's logits, and each stream's numbers those of the natural layout, bit for bit, teacher-forced
    and generating. These channel counts cut panels short."""
    from fastwavenet.backends import NumbaBackend

    config = CONFIGS[name]
    steps = config.receptive_field + 9
    model = random_model(config, 21)
    gen = Generator(ModelFile(config, fold(model)), backend="numba")
    codes = torch.randint(0, config.classes, (13, steps), generator=torch.Generator().manual_seed(22))
    mel, speaker = conditioning_inputs(config, 13, steps + 20)
    conditioning = gen.conditioning(13, mel, speaker)
    monkeypatch.setattr(NumbaBackend, "_tile", staticmethod(lambda batch: 13))
    runs = {}
    for widen_from in (10 ** 9, 13):
        monkeypatch.setattr(NumbaBackend, "WIDEN_FROM", widen_from)
        state = gen.new_state(13)
        logits = gen.forward(state, codes, conditioning)
        drawn = gen.generate_codes(state, 20, rng=np.random.default_rng(23), conditioning=conditioning)
        runs[widen_from] = (logits, drawn)
    assert gen.backend._kernel_weights(13).dilated_p.shape[1] > 0  # the panels were read
    assert torch.equal(runs[13][0], runs[10 ** 9][0]) and torch.equal(runs[13][1], runs[10 ** 9][1])
    assert (runs[13][0] - model_logits(model, codes, mel, speaker)).abs().max().item() <= 1e-4


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("precision, tile, copy", [("float32", 5, "_panelled"), ("bf16", 5, "_narrow_panelled"),
                                                   ("int8", 3, "_stripped")])
def test_numba_large_layers_small_tiles_equal_natural_layout_bit_for_bit(precision, tile, copy, monkeypatch):
    """Models whose layers are large (`LARGE_TILES_FROM`: one layer of r9y9's shape, 3.9 MB) read another copy of
    them in small tiles: float32 panels from tiles of two streams (`LARGE_PANELS_FROM`), bf16 panels of its own
    16-bit patterns below WIDEN_FROM (whole panels, rows past a panel chunk, the prefetches of the next; with
    512-bit vectors blocks of 4, 2 and 1 streams in tiles of 5 and 3), int8 strips below BLOCK.sb streams (tiles
    of 3 and 2). Each stream gets the natural layout's logits, bit for bit. One stream reads strips, and bf16's tiles
    of WIDEN_FROM float32 panels."""
    import dataclasses

    from fastwavenet import preset
    from fastwavenet.backends import NumbaBackend
    from fastwavenet.bench import random_model_file

    config = dataclasses.replace(preset("r9y9-ljspeech"), layers_per_stack=1, stacks=1)
    weights = random_model_file(config, 31).weights
    B, T = 8, 4
    rng = np.random.default_rng(32)
    codes = torch.from_numpy(rng.random((B, T), dtype=np.float32) * 2 - 1)
    cond = torch.from_numpy(rng.standard_normal((B, T, config.layers, 2 * config.gate_channels)).astype(np.float32))
    monkeypatch.setattr(NumbaBackend, "_tile", staticmethod(lambda batch: min(batch, tile)))
    runs = {}
    for layout in ("natural", copy):
        backend = NumbaBackend(config, weights, torch.device("cpu"), precision)
        if layout == "natural":
            monkeypatch.setattr(backend, "_kernel_weights", lambda tile: backend.weights)
        runs[layout] = backend.forward(backend.new_state(B, 0.0), codes, cond)
        assert (getattr(backend, copy) is not None) == (layout == copy)  # what the tiles read
    assert torch.equal(runs[copy], runs["natural"])
    assert backend._kernel_weights(1).dilated_l.shape[1] > 0  # one stream: strips
    if precision != "int8":
        assert backend._kernel_weights(5).dilated_p.dtype == backend.weights.dilated_w.dtype
        assert backend._kernel_weights(NumbaBackend.WIDEN_FROM).dilated_p.dtype == np.float32
    else:
        assert backend._kernel_weights(4) is backend.weights


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("precision", ["float32", "bf16", "int8"])
def test_numba_lone_stream_strips_equal_natural_layout_bit_for_bit(precision, monkeypatch):
    """A tile of one stream reads the layers' matrices in strips of its block's width (`cpu.strip_layout`): its
    numbers are the natural layout's, bit for bit, teacher-forced and generating, at every precision that has them
    (the same blocks, the same fma chains), and in float32 the training model's logits. 2G = 140 and R + S = 140
    columns leave a whole strip and a short one (128 columns with 512-bit vectors, 64 with 256-bit)."""
    from fastwavenet.backends import NumbaBackend
    from fastwavenet.kernels import cpu

    config = WaveNetConfig(sample_rate=8000, classes=32, residual_channels=20, gate_channels=70, skip_channels=120,
                           head_channels=16, kernel_size=3, layers_per_stack=2, stacks=1)
    model = random_model(config, 31)
    gen = Generator(ModelFile(config, fold(model)), backend="numba", precision=precision)
    monkeypatch.setattr(NumbaBackend, "_tile", staticmethod(lambda batch: 1))
    steps = config.receptive_field + 9
    codes = torch.randint(0, config.classes, (1, steps), generator=torch.Generator().manual_seed(32))
    runs = {}
    for layout in ("strips", "natural"):
        if layout == "natural":
            monkeypatch.setattr(gen.backend, "_kernel_weights", lambda tile: gen.backend.weights)
        state = gen.new_state(1)
        logits = gen.forward(state, codes)
        runs[layout] = (logits, gen.generate_codes(state, 30, rng=np.random.default_rng(33)))
        if layout == "strips":
            assert gen.backend._stripped is not None  # made by the calls above, which read them
            strips = gen.backend._kernel_weights(1)
            whole = -(-140 // cpu.STRIP)
            assert strips.dilated_l.shape[1] == strips.out_l.shape[1] == whole >= 2  # read at tile 1
            assert strips.dilated_l.dtype == gen.backend.weights.dilated_w.dtype
    assert torch.equal(runs["strips"][0], runs["natural"][0]) and torch.equal(runs["strips"][1], runs["natural"][1])
    if precision == "float32":
        assert (runs["strips"][0] - model_logits(model, codes, None, None)).abs().max().item() <= 1e-4


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("name,precision", [("k4-odd", "float32"), ("mel+speaker", "float32"), ("k4-odd", "int8"),
                                            ("mel+speaker", "bf16"), ("k4-odd", "w8a8"), ("mel+speaker", "w8a8")])
def test_numba_split_products_equal_tiles_bit_for_bit(name, precision, monkeypatch):
    """One stream on every core (issue 38): with each layer's outputs split in three parts between the threads,
    each part reading its own weight blocks, the numba kernel gives a stream the numbers its one-thread tile gives,
    bit for bit, teacher-forced and generating (every output is the same fma chain whichever thread computes it).
    Three parts of these odd channel counts leave short and empty parts."""
    from fastwavenet.backends import NumbaBackend

    config = CONFIGS[name]
    steps = config.receptive_field + 9
    gen = Generator(ModelFile(config, fold(random_model(config, 11))), backend="numba", precision=precision)
    codes = torch.randint(0, config.classes, (1, steps), generator=torch.Generator().manual_seed(12))
    conditioning = gen.conditioning(1, *conditioning_inputs(config, 1, steps + 20))
    runs = {}
    for parts in (1, 3):
        monkeypatch.setattr(NumbaBackend, "_split_parts", lambda self, batch, parts=parts: parts)
        state = gen.new_state(1)
        logits = gen.forward(state, codes, conditioning)
        drawn = gen.generate_codes(state, 20, rng=np.random.default_rng(13), conditioning=conditioning)
        runs[parts] = (logits, drawn)
    assert torch.equal(runs[1][0], runs[3][0]) and torch.equal(runs[1][1], runs[3][1])


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("precision", ["float32", "bf16", "int8"])
@pytest.mark.parametrize("batch", [1, 3])
def test_numba_split_blocks_in_strips_equal_tiles_bit_for_bit(precision, batch, monkeypatch):
    """A split part's weight blocks lie in strips of a lone stream's block width (`cpu.split_blocks`): one stream
    (a lone stream's blocks) or three (blocks of several) split in two parts get the numbers of the numba path's
    tiles (strips of their own for a lone stream, the natural layout for more), bit for bit. Widths that give each
    part's gate halves several strips, whole and short (G = 600: 384 and 216 columns with 512-bit vectors, strips
    of 128; 320 and 280 with 256-bit vectors, strips of 64), and its output block two or more (R = 256, S = 200:
    128 residual columns, on which the skip columns start a strip, then 112 and 88 skip columns with 512-bit
    vectors, 128 and 72 with 256-bit)."""
    from fastwavenet.backends import NumbaBackend
    from fastwavenet.kernels import cpu

    config = WaveNetConfig(sample_rate=8000, classes=32, residual_channels=256, gate_channels=600, skip_channels=200,
                           head_channels=16, kernel_size=2, layers_per_stack=2, stacks=1)
    gen = Generator(ModelFile(config, fold(random_model(config, 41))), backend="numba", precision=precision)
    gate, out = cpu.split_blocks(gen.backend.weights, 2)
    assert gate.shape[3] >= 2 and out.shape[2] >= 2  # strips
    steps = config.receptive_field + 9
    codes = torch.randint(0, config.classes, (batch, steps), generator=torch.Generator().manual_seed(42))
    runs = {}
    for parts in (1, 2):
        monkeypatch.setattr(NumbaBackend, "_split_parts", lambda self, batch, parts=parts: parts)
        state = gen.new_state(batch)
        logits = gen.forward(state, codes)
        runs[parts] = (logits, gen.generate_codes(state, 20, rng=np.random.default_rng(43)))
    assert torch.equal(runs[1][0], runs[2][0]) and torch.equal(runs[1][1], runs[2][1])


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba backend unavailable")
@pytest.mark.parametrize("precision", ["float32", "int8", "w8a8"])
def test_numba_split_backend_equals_numba_bit_for_bit(precision):
    """`numba-split` at one stream (each product split between numba's threads) gives `numba`'s numbers bit for
    bit, teacher-forced and generating: `auto` may take either (tests/test_auto_backend.py)."""
    from fastwavenet.backends.numba_cpu import numba_threads

    if numba_threads() < 2:
        pytest.skip("one numba thread: numba-split has nothing to split")
    config = CONFIGS["mel+speaker"]
    model = ModelFile(config, fold(random_model(config, 14)))
    steps = config.receptive_field + 9
    codes = torch.randint(0, config.classes, (1, steps), generator=torch.Generator().manual_seed(15))
    runs = {}
    for backend in ("numba", "numba-split"):
        gen = Generator(model, backend=backend, precision=precision)
        assert gen.backend.name == backend and gen.backend._split_parts(1) == (
            1 if backend == "numba" else numba_threads())
        conditioning = gen.conditioning(1, *conditioning_inputs(config, 1, steps + 20))
        state = gen.new_state(1)
        logits = gen.forward(state, codes, conditioning)
        drawn = gen.generate_codes(state, 20, rng=np.random.default_rng(16), conditioning=conditioning)
        runs[backend] = (logits, drawn)
    assert torch.equal(runs["numba"][0], runs["numba-split"][0])
    assert torch.equal(runs["numba"][1], runs["numba-split"][1])


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
def test_triton_tiles_match_training_model(monkeypatch):
    """The tiled Triton kernel with tiles of 4: a batch of 9 spans three programs, the last with one live stream,
    so every offset that starts from a tile's first stream (queues, scratch, conditioning terms, logits) is used
    past the first tile."""
    from fastwavenet.kernels import gpu

    monkeypatch.setattr(gpu, "tile_for", lambda weights: 4)
    config = CONFIGS["mel+speaker"]
    steps = teacher_steps(config, "triton")
    model = random_model(config, 5)
    codes = torch.randint(0, config.classes, (9, steps), generator=torch.Generator().manual_seed(6))
    mel, speaker = conditioning_inputs(config, 9, steps)
    expected = model_logits(model, codes, mel, speaker)
    gen = Generator(ModelFile(config, fold(model)), backend="triton", device=DEVICE)
    assert gen.backend.tile == 4
    got = gen.forward(gen.new_state(9), codes, gen.conditioning(9, mel, speaker)).cpu()
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
@pytest.mark.parametrize("layers,name", [("split", "k4-odd"), ("split", "mel+speaker"), ("fused", "k4-odd"),
                                         ("fused", "mel+speaker"), ("fused", "k3-nobias-gate")])
def test_spread_kernel_layer_modes_match_training_model(layers, name, monkeypatch):
    """The spread kernel's other layer modes give the training model's logits, as its merged layers do in
    test_teacher_forced_logits_match_training_model (every test configuration is small enough to merge): two
    phases a layer, and fused layers (r9y9's shape), whose gates read x_{l-2} and the gated vectors of the two
    layers before through matrices fused with the residual weights: the sums reassociated, within float32
    rounding. k3-nobias-gate has two queue taps a layer and no biases; mel+speaker conditioning; k4-odd a 2-tap
    input and channel counts no share divides."""
    from fastwavenet.kernels import gpu_spread

    monkeypatch.setenv("FASTWAVENET_SPREAD_LAYERS", layers)
    monkeypatch.setenv("FASTWAVENET_SPREAD_PROGRAMS", "3")
    config = CONFIGS[name]
    steps = teacher_steps(config, "triton-spread")
    model = random_model(config, 7)
    codes = torch.randint(0, config.classes, (2, steps), generator=torch.Generator().manual_seed(8))
    mel, speaker = conditioning_inputs(config, 2, steps)
    expected = model_logits(model, codes, mel, speaker)
    gen = Generator(ModelFile(config, fold(model)), backend="triton-spread", device=DEVICE)
    assert gpu_spread.layer_mode(gen.backend.weights) == layers and gen.backend.programs == 3
    monkeypatch.delenv("FASTWAVENET_SPREAD_LAYERS")  # made weights keep their mode
    assert gpu_spread.layer_mode(gen.backend.weights) == layers
    # In two calls, so the second starts mid-chunk of the queues
    split = steps // 3
    conditioning = gen.conditioning(2, mel, speaker)
    state = gen.new_state(2)
    got = torch.cat([gen.forward(state, codes[:, :split], conditioning),
                     gen.forward(state, codes[:, split:], conditioning)], dim=1).cpu()
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
def test_spread_kernel_fused_layers_draw_as_merged_layers(monkeypatch):
    """Generating, fused layers draw the codes merged layers draw, stream by stream (a draw's arithmetic is shared;
    the logits agree within float32 rounding), with the weights under which a stream's draws depend on its past;
    a 2-tap input carries its previous code across calls."""
    config = CONFIGS["k4-odd"]
    model = ModelFile(config, fold(random_model(config, 13)))
    rules = [Sampling(), Sampling(temperature=0.7), Sampling(argmax=True)]
    u = np.random.default_rng(7).random((5, len(rules)), dtype=np.float32)
    drawn = {}
    monkeypatch.setenv("FASTWAVENET_SPREAD_PROGRAMS", "3")
    for layers in ("merged", "fused"):
        monkeypatch.setenv("FASTWAVENET_SPREAD_LAYERS", layers)
        gen = Generator(model, backend="triton-spread", device=DEVICE)
        state = gen.new_state(len(rules))
        drawn[layers] = torch.cat([gen.backend.generate(state, n, np.ascontiguousarray(u[a:a + n]), rules).cpu()
                                   for a, n in ((0, 2), (2, 3))], dim=1)
    assert torch.equal(drawn["fused"], drawn["merged"])
    assert len({tuple(row.tolist()) for row in drawn["fused"]}) > 1


CONTINUOUS_RULES = [Sampling(), Sampling(temperature=0.5), Sampling(argmax=True)]
MIXED_RULES = {
    "softmax": [Sampling(), Sampling(temperature=0.7), Sampling(argmax=True), Sampling(top_k=5), Sampling(top_p=0.8)],
    # no stream truncates: the tiled kernel draws for the whole tile at once (`_sample_classes`)
    "softmax-plain": [Sampling(temperature=1.3), Sampling(), Sampling(argmax=True), Sampling(temperature=0.7)],
    "logistic_mixture": CONTINUOUS_RULES,
    "gaussian": CONTINUOUS_RULES,
}


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
@pytest.mark.parametrize("backend", ["triton", "triton-spread", "triton-layers"])
@pytest.mark.parametrize("name", list(MIXED_RULES))
def test_triton_mixed_rules_in_one_launch_equal_each_stream_alone(name, backend, monkeypatch):
    """Each stream of one Triton launch samples by its own rule (temperature, top-k, top-p, argmax, read per
    stream in the kernel): a batch of mixed rules gives each stream the codes (or values) it gets alone with its
    rule, bit for bit, and is one launch, not the base class's per-sample loop. The rules with top-k / top-p compile
    the sort into the batch's launch; the streams without them must not use it. A continuous output's values also
    match the numba kernel's (within 1e-4: the head's outputs differ there by float rounding)."""
    from fastwavenet.backends.base import Backend
    from fastwavenet.bench import random_model_file

    if name == "softmax-plain" and backend == "triton-spread":
        pytest.skip("the tile-wide draw is the tiled kernels'")
    config = preset("tiny") if name.startswith("softmax") else WaveNetConfig(
        sample_rate=8000, residual_channels=6, gate_channels=8, skip_channels=8, head_channels=10, layers_per_stack=3,
        stacks=1, scalar_input=True, input_kernel_size=1, output=name, mixtures=3)
    rules = MIXED_RULES[name]
    # random_model's strong weights where it can (softmax), so a stream's draws depend on its own past and a batch
    # that mixed up streams' products would show; random_model_file's for the continuous kinds it cannot train
    model = ModelFile(config, fold(random_model(config, 9))) if name.startswith("softmax") \
        else random_model_file(config, 9)
    gen = Generator(model, backend=backend, device=DEVICE)
    monkeypatch.setattr(Backend, "generate", lambda *args: pytest.fail("fell back to the per-sample loop"))
    # The spread kernel under the interpreter: one launch a phase, and every program sorts (a second a draw).
    steps, batch = (3 if backend == "triton-spread" and DEVICE == "cpu" and name == "softmax" else 6), len(rules)
    u = np.random.default_rng(3).random((steps, batch) + distributions.uniform_shape(config), dtype=np.float32)
    together = gen.backend.generate(gen.new_state(batch), steps, u, rules).cpu()
    for i, rule in enumerate(rules):
        alone = gen.backend.generate(gen.new_state(1), steps, np.ascontiguousarray(u[:, i:i + 1]), rule).cpu()
        assert torch.equal(together[i:i + 1], alone), f"stream {i} ({rule}) differs from its run alone"
    assert len({tuple(row.tolist()) for row in together}) > 1  # the rules did draw differently
    if not name.startswith("softmax") and "numba" in BACKENDS:
        numba = Generator(model, backend="numba")
        assert (numba.backend.generate(numba.new_state(batch), steps, u, rules) - together).abs().max() <= 1e-4


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
def test_triton_tile_of_32_draws_in_chunks_as_each_stream_alone(monkeypatch):
    """A tile of 32 streams draws its classes 16 rows at a time: with 18 streams the second chunk has two live rows
    and fourteen past the batch. Each stream's codes equal its codes generated alone (a tile of its own)."""
    monkeypatch.setenv("FASTWAVENET_TILE", "32")
    config = preset("tiny")
    gen = Generator(ModelFile(config, fold(random_model(config, 11))), backend="triton", device=DEVICE)
    assert gen.backend.tile == 32
    kinds = [Sampling(), Sampling(temperature=0.7), Sampling(argmax=True)]
    rules = [kinds[i % 3] for i in range(18)]
    steps = 5
    u = np.random.default_rng(4).random((steps, len(rules)), dtype=np.float32)
    together = gen.backend.generate(gen.new_state(len(rules)), steps, u, rules).cpu()
    for i in (0, 1, 2, 15, 16, 17):
        alone = gen.backend.generate(gen.new_state(1), steps, np.ascontiguousarray(u[:, i:i + 1]), rules[i]).cpu()
        assert torch.equal(together[i:i + 1], alone), f"stream {i} ({rules[i]}) differs from its run alone"


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
def test_layer_phases_in_chunks_equal_one_call(monkeypatch):
    """`triton-layers` runs a call's steps in chunks of a captured graph's capacity (4 here), the position and the
    live steps read from the device: calls that end mid-chunk, span several chunks or follow a teacher-forced call
    draw what one long call draws; the runners of other batches and modes are kept apart, the oldest dropped past
    `keep`. The short last tile of 18 streams (tiles of 16) draws as each stream alone."""
    from fastwavenet.kernels import gpu_layers

    monkeypatch.setattr(gpu_layers, "CHUNK", 4)
    monkeypatch.setenv("FASTWAVENET_LAYERS_TILE", "16")
    config = preset("tiny")
    # random_model's weights, under which a stream's draws depend on its past (and so on a state carried right)
    gen = Generator(ModelFile(config, fold(random_model(config, 12))), backend="triton-layers", device=DEVICE)
    rules = [[Sampling(), Sampling(temperature=0.7), Sampling(argmax=True)][i % 3] for i in range(18)]
    u = np.random.default_rng(6).random((11, len(rules)), dtype=np.float32)
    whole = gen.backend.generate(gen.new_state(len(rules)), 11, u, rules).cpu()
    state = gen.new_state(len(rules))
    parts = [gen.backend.generate(state, n, np.ascontiguousarray(u[a:a + n]), rules).cpu()
             for a, n in ((0, 3), (3, 6), (9, 2))]
    assert torch.equal(torch.cat(parts, dim=1), whole)
    for i in (0, 1, 2, 16, 17):
        alone = gen.backend.generate(gen.new_state(1), 11, np.ascontiguousarray(u[:, i:i + 1]), rules[i]).cpu()
        assert torch.equal(whole[i:i + 1], alone), f"stream {i} ({rules[i]}) differs from its run alone"
    # Six teacher-forced steps in one call (two chunks) or one at a time, then generation from there: the same.
    codes = whole[:2, :7]
    states = [gen.new_state(2), gen.new_state(2)]
    gen.backend.forward(states[0], codes[:, :6])
    for j in range(6):
        gen.backend.forward(states[1], codes[:, j:j + 1])
    v = np.ascontiguousarray(u[:5, :2])
    drawn = []
    for state in states:
        state.last = codes[:, -1].clone().to(state.last.device)
        drawn.append(gen.backend.generate(state, 5, v, rules[:2]).cpu())
    assert torch.equal(drawn[0], drawn[1])
    state = gen.new_state(2)  # one step fewer consumed: other draws (the test can tell states apart)
    gen.backend.forward(state, codes[:, :5])
    state.last = codes[:, -1].clone().to(state.last.device)
    assert not torch.equal(gen.backend.generate(state, 5, v, rules[:2]).cpu(), drawn[0])
    runners = gen.backend.runners
    assert 1 < len(runners.runners) <= runners.keep
    assert {r.teacher for r in runners.runners.values()} == {True, False}
    assert all(r.capacity == 4 and r.constants["TILE"] == 16 for r in runners.runners.values())


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
def test_layer_runners_share_views_and_let_a_dropped_state_go(monkeypatch):
    """A layer runner holds its state's memory by weak reference (its storage): views of one state made anew for
    each call (the engine's `head(n)`, in inference mode too) share one runner and draw what a state of their own
    draws, and a state the caller drops is freed, its runner dropped at the next launch (a runner used to keep up
    to four states alive: 512 MB each for r9y9's shape at 512 streams)."""
    import gc
    import weakref

    monkeypatch.setattr(gpu_layers_module(), "CHUNK", 4)
    config = preset("tiny")
    gen = Generator(ModelFile(config, fold(random_model(config, 12))), backend="triton-layers", device=DEVICE)
    rules = [Sampling(), Sampling(temperature=0.7), Sampling(argmax=True)]
    u = np.random.default_rng(8).random((6, 3), dtype=np.float32)
    with torch.inference_mode():  # where a view has no `_base`: a user's code may run so
        pool = gen.new_state(5)
        drawn = []
        for a in (0, 3):  # two calls, each on a fresh view of the pool's first three streams
            view = pool.head(3)
            drawn.append(gen.backend.generate(view, 3, np.ascontiguousarray(u[a:a + 3]), rules).cpu())
            pool.store_head(view)
    runners = gen.backend.runners.runners
    assert len(runners) == 1
    assert torch.equal(torch.cat(drawn, dim=1), gen.backend.generate(gen.new_state(3), 6, u, rules).cpu())
    freed = weakref.ref(pool.queues)
    del pool, view
    gc.collect()
    assert freed() is None  # no runner kept the pool's queues
    other = gen.new_state(2)
    gen.backend.generate(other, 2, np.ascontiguousarray(u[:2, :2]), rules[:2])
    assert len(runners) == 1 and all(r.alive() for r in runners.values())  # the dead runner dropped, this one kept


def gpu_layers_module():
    from fastwavenet.kernels import gpu_layers

    return gpu_layers


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
def test_spread_programs_each_own_gate_and_head_channels(monkeypatch):
    """The spread kernel reuses each vector's buffer from layer to layer, which is safe only if every program owns
    at least one gate channel and one head channel (kernels/gpu_spread.py): asked for more programs than that
    allows, it takes the most that do."""
    from types import SimpleNamespace

    from fastwavenet.kernels import gpu_spread

    def shapes(gate, head):
        return SimpleNamespace(embed=SimpleNamespace(shape=(1, 256, 16)),
                               dilated_b=SimpleNamespace(shape=(4, 2 * gate)),
                               head1_w=SimpleNamespace(shape=(head, 32)))

    for gate, head, asked, expected in [(10, 64, 6, 5), (64, 10, 6, 5), (64, 64, 16, 16), (7, 11, 3, 3), (4, 4, 9, 4)]:
        monkeypatch.setenv("FASTWAVENET_SPREAD_PROGRAMS", str(asked))
        got = gpu_spread.programs_for(shapes(gate, head))
        assert got == expected, (gate, head, asked, got)
        assert all((got - 1) * -(-n // got) < n for n in (gate, head))


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
def test_spread_layer_mode_follows_the_shape_and_the_knob(monkeypatch):
    """Merged layers where the residual matrix is small (`standard`), fused where every program reading it would
    cost more (r9y9's R = 512), two programs' worth of gate channels a program for fused layers as for split ones;
    FASTWAVENET_SPREAD_LAYERS overrides the mode, and a value that is no mode is an error that names them."""
    from fastwavenet.doctor import _Shapes, _spread_shapes
    from fastwavenet.kernels import gpu_spread

    monkeypatch.delenv("FASTWAVENET_SPREAD_LAYERS", raising=False)
    monkeypatch.delenv("FASTWAVENET_SPREAD_PROGRAMS", raising=False)
    standard, r9y9 = (_spread_shapes(_Shapes(preset(name))) for name in ("standard", "r9y9-ljspeech"))
    assert gpu_spread.layer_mode(standard) == "merged" and gpu_spread.programs_for(standard) == 16
    assert gpu_spread.layer_mode(r9y9) == "fused" and gpu_spread.programs_for(r9y9) == 128
    assert gpu_spread.launch_constants(r9y9, 128, False, True)["LAYERS"] == gpu_spread.LAYER_MODES["fused"]
    # At most the programs the device runs at once (a stream's programs wait on each other): a power of two below
    assert gpu_spread.programs_for(r9y9, 132) == 128 and gpu_spread.programs_for(r9y9, 108) == 64
    assert gpu_spread.programs_for(standard, 132) == 16 and gpu_spread.programs_for(standard, 12) == 8
    monkeypatch.setenv("FASTWAVENET_SPREAD_PROGRAMS", "200")
    assert gpu_spread.programs_for(r9y9, 132) == 128  # 132 would leave a program no gate channel
    monkeypatch.delenv("FASTWAVENET_SPREAD_PROGRAMS")
    monkeypatch.setenv("FASTWAVENET_SPREAD_LAYERS", "split")
    assert gpu_spread.layer_mode(standard) == "split"
    monkeypatch.setenv("FASTWAVENET_SPREAD_LAYERS", "fast")
    with pytest.raises(ValueError, match="split, merged, fused"):
        gpu_spread.layer_mode(standard)


def spread_sweep():
    """benchmarks/gpu_spread_sweep.py as a module (benchmarks/ is no package): its hand-over probe."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_spread_sweep.py"
    spec = importlib.util.spec_from_file_location("gpu_spread_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep


@pytest.mark.skipif(DEVICE != "cpu" or "triton" not in BACKENDS, reason="the interpreter's check; CUDA runs the sweep")
def test_spread_handover_probe_counts_every_round():
    """The hand-over probe (benchmarks/gpu_spread_sweep.py times it on a GPU) under the interpreter, one program:
    each round's tagged value is taken back whole, so the sum over rounds is exact, and nothing times out."""
    sweep = spread_sweep()
    talk = torch.zeros(3, dtype=torch.int64)
    fail = torch.zeros(1, dtype=torch.int32)
    sweep.handover_kernel[(1,)](talk, fail, 5, P=1, P_P=1)
    assert int(fail) == 0 and int(talk[2]) == sum(range(1, 6))


@pytest.mark.skipif(DEVICE != "cpu" or "triton" not in BACKENDS, reason="the interpreter's check")
def test_spread_wait_stops_once_the_launch_has_failed():
    """A wait for a tag that will not come ends at once when the launch's failure flag is up (a program elsewhere
    gave up), instead of polling SPIN_LIMIT (2^24) times itself, so a failed launch ends and the host raises. Under
    the interpreter two programs of the hand-over probe run one after the other: the first waits for a value the
    second has not given, which never comes; with the flag up both finish their rounds at once."""
    sweep = spread_sweep()
    talk = torch.zeros(6, dtype=torch.int64)
    fail = torch.ones(1, dtype=torch.int32)
    sweep.handover_kernel[(2,)](talk, fail, 3, P=2, P_P=2)
    assert int(fail) == 1 and int(talk[2 + 1]) >> 32 == 3  # program 1 gave its last round (3, buffer 1)


@pytest.mark.skipif("triton" not in BACKENDS or "numba" not in BACKENDS, reason="triton or numba unavailable")
def test_spread_kernel_holds_bf16_weights_in_half_the_bytes():
    """At precision bf16 the spread kernel reads its matrices as bf16 (half the bytes: what lets r9y9's LJSpeech
    shape sit in an H200's L2), widened exactly in registers: its logits are the bf16 model's, as the numba
    kernel's bf16 path gives them, within float32 rounding of the sums."""
    config = CONFIGS["k4-odd"]
    model = ModelFile(config, fold(random_model(config, 3)))
    codes = torch.randint(0, config.classes, (1, 12), generator=torch.Generator().manual_seed(1))
    logits = {}
    for backend in ("numba", "triton-spread"):
        gen = Generator(model, backend=backend, device=DEVICE if backend != "numba" else "cpu", precision="bf16")
        logits[backend] = gen.forward(gen.new_state(1), codes).cpu()
    assert gen.backend.weights.dilated_w.dtype == torch.bfloat16 and gen.backend.weights.head2_w.dtype == torch.bfloat16
    assert (logits["numba"] - logits["triton-spread"]).abs().max().item() <= 1e-4
