"""`fastwavenet doctor`: the report, and the GPU kernel compiled for a real architecture without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli


def test_doctor_report(tmp_path):
    out = tmp_path / "doctor.json"
    result = run_cli("doctor", "--json", out)
    assert result.returncode == 0, result.stderr
    assert "backends:" in result.stdout and "numba on cpu" in result.stdout
    report = json.loads(out.read_text())["report"]
    assert report["isa"] and report["torch"] and report["backends"]["naive on cpu"] == "available"
    if not report["cuda_devices"]:
        assert report["backends"]["triton on cuda"] != "available"


def test_doctor_refuses_an_unknown_target():
    result = run_cli("doctor", "--compile-gpu", "sm_12")
    assert result.returncode == 2 and "unknown GPU target" in result.stderr and "Traceback" not in result.stderr


def test_gpu_kernel_compiles_for_sm90_without_spills():
    """What Triton's interpreter cannot check: the kernel compiles for a real GPU (dtypes, constexprs, layouts), spills
    no registers and fits an SM's shared memory (227 KB a block on sm_90; Triton opts in above 48 KB), tiled (tensor
    cores), per stream, spread and in layer phases, on the `standard` shape and on r9y9's LJSpeech shape (scalar
    input, a mixture of logistics sampled in float64, mel conditioning). Four modes of the six, the conditioned ones
    being the largest (`fastwavenet doctor --compile-gpu sm_90` compiles them all); top-k / top-p (truncated) for class
    outputs only. Each stream's sampling rule is read at run time, so every generating variant holds the argmax and
    the sampled draw."""
    pytest.importorskip("triton")
    script = """
import json
from fastwavenet import preset
from fastwavenet.doctor import compile_gpu, rows_as_json
models = {"standard": preset("standard"), "r9y9-ljspeech": preset("r9y9-ljspeech")}
modes = {"teacher+cond", "generate+cond", "generate", "generate-truncated"}
print(json.dumps(rows_as_json(compile_gpu([90], models, modes))))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    # three kernels in every mode (r9y9's continuous output has no truncated mode), and the layer-phase kernels in
    # every set of their own constants: start, out, gate with and without conditioning, head in every mode
    assert len(rows) == 21 + 7 + 6
    for row in rows:
        # The variants as they run (pointers 16-byte aligned, which the compile report has asked for since the
        # tiled kernel went to tensor cores) keep small stack frames under Triton 3.9, none under 3.6 (the H200
        # machine's): the lone stream 8-40 bytes for `standard` at 128 registers (also with 192 allowed), the tile's
        # class draw 8 bytes at 205-212 registers. Frames, not spills of registers at their ceiling.
        stack = 0 if row["variant"].startswith("spread") else 64
        assert row["spill_bytes"] == 0 and row["stack_bytes"] <= stack, row
        assert row["shared_bytes"] <= 227 * 1024 and 0 < row["registers"] <= 255, row
        assert row["programs_per_sm"] >= 1, row


def test_limit_probes_compile_for_sm90_to_fused_multiply_adds():
    """The GPU limits' probes (fastwavenet/gpu_limits.py) compile for a real GPU without one; the FMA probe's chains
    are fused multiply-adds in registers (16 chains a thread x 8 per loop iteration, and one each to start), nothing spilled."""
    pytest.importorskip("triton")
    script = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastwavenet.doctor import _cuobjdump, _resources
from fastwavenet import gpu_limits as gpu
target, options = GPUTarget("cuda", 90, 32), {"num_warps": 4, "enable_fp_fusion": True}
read = triton.compile(ASTSource(gpu.read_passes_kernel, {"buf_ptr": "*fp32", "chunks": "i32", "passes": "i32",
                      "out_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 1024}), target=target, options=options)
fma = triton.compile(ASTSource(gpu.fma_chains_kernel, {"out_ptr": "*fp32", "iterations": "i32", "BLOCK": "constexpr",
                     "UNROLL": "constexpr"}, {"BLOCK": 2048, "UNROLL": 8}), target=target, options=options)
ffma = _cuobjdump(fma.asm["cubin"], "--dump-sass").count("FFMA")
print(json.dumps([_resources(read.asm["cubin"]), _resources(fma.asm["cubin"]), ffma]))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    read, fma, ffma = json.loads(result.stdout.strip().splitlines()[-1])
    assert read.get("LOCAL", 0) == 0 and fma.get("LOCAL", 0) == 0
    assert ffma == 16 * 8 + 16


# Triton's launcher's first step for sm_90 in place of a kernel: `keys` collects (kernel, the key of the variant it
# would compile or take from its cache) for every launch.
KEYED_LAUNCHES = """
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import create_function_from_signature

keys = set()

class Launch:
    def __init__(self, name, kernel):
        self.name, self.arg_names = name, kernel.arg_names
        self.bind = create_function_from_signature(kernel.signature, kernel.params,
                                                   make_backend(GPUTarget("cuda", 90, 32)))
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            _, specialization, options = self.bind(*args, **kwargs)
            keys.add((self.name, repr((specialization, sorted(options.items())))))
        return launch
"""

SPECIALIZATION_SCRIPT = KEYED_LAUNCHES + """
import numpy as np, torch
from fastwavenet import Sampling, preset
from fastwavenet.backends.triton_gpu import TritonStreamBackend
from fastwavenet.bench import random_model_file
from fastwavenet.kernels import gpu

gpu._wavenet_kernel = Launch("_wavenet_kernel", gpu._wavenet_kernel)
model = random_model_file(preset("tiny"))
backend = TritonStreamBackend(model.config, model.weights, torch.device("cpu"))
for batch in (1, 5, 16):
    state = backend.new_state(batch, 0)
    for steps in (1, 7, 16, 32):
        backend.generate(state, steps, np.full((steps, batch), 0.5, np.float32), Sampling())
print(len(keys))
"""


def test_gpu_kernel_is_one_variant_for_every_batch_and_position():
    """Issue 34, without a GPU: Triton's own launcher (its argument binder, for sm_90) keys batches 1, 5 and 16 at
    positions 0, 1, 8 and 24 with chunks of 1, 7, 16 and 32 steps to one variant. With the batch, position and chunk
    length specialized (1 and multiples of 16 compiled apart), these launches were 9 variants: 9 compiles, some in
    the middle of a stream."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", SPECIALIZATION_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "1"


def test_gpu_kernel_compiles_once_for_every_batch_and_position():
    """Issue 34: Triton specialized the batch, the position and the chunk's length (1 and multiples of 16 each
    compiled apart), so a stream paused for a compile when they first took such a value. One variant (generating,
    plain sampling) now serves batches 1, 16 and 5 at positions 0, 1, 17 and 33 with chunks of 1, 16 and 7 steps."""
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        pytest.skip("counts the kernels Triton compiled for a GPU: needs CUDA")
    from fastwavenet import preset
    from fastwavenet.bench import random_model_file
    from fastwavenet.generator import Generator
    from fastwavenet.kernels import gpu

    generator = Generator(random_model_file(preset("tiny")), backend="triton-stream", device="cuda")
    compiled = gpu._wavenet_kernel.device_caches[torch.cuda.current_device()][0]
    compiled.clear()  # this process's table of compiled variants (Triton's file cache makes refilling it quick)
    rng = np.random.default_rng(0)
    for batch, chunks in ((1, [1, 16]), (16, [1, 16, 16]), (5, [7, 16])):
        state = generator.new_state(batch)
        for steps in chunks:
            generator.generate_codes(state, steps, rng=rng)
    assert len(compiled) == 1, list(compiled)


LAYERS_SPECIALIZATION_SCRIPT = KEYED_LAUNCHES + """
import numpy as np, torch
from fastwavenet import Sampling, preset
from fastwavenet.backends.triton_gpu import TritonLayersBackend
from fastwavenet.bench import random_model_file
from fastwavenet.kernels import gpu_layers

for name, kernel in gpu_layers.KERNELS.items():
    setattr(gpu_layers, name, Launch(name, kernel))
model = random_model_file(preset("tiny"))
backend = TritonLayersBackend(model.config, model.weights, torch.device("cpu"))
for batch in (1, 5, 40):
    state = backend.new_state(batch, 0)
    for steps in (1, 7, 33):
        backend.generate(state, steps, np.full((steps, batch), 0.5, np.float32), Sampling())
        backend.forward(state, torch.zeros(batch, steps, dtype=torch.int64))
print(sorted((name, sum(1 for n, _ in keys if n == name)) for name in {n for n, _ in keys}))
"""


def test_layer_kernels_are_one_variant_for_every_batch_position_step_and_layer():
    """A CUDA graph is captured after a chunk's first run, which must have compiled every variant the capture
    launches: Triton's launcher (its argument binder, for sm_90) keys batches 1, 5 and 40, chunks of 1, 7 and 33
    steps (a graph's capacity is 32), generating and teacher-forced, every step of a chunk (the first code from the
    state, later ones from the draws) and every layer (the last keeps no residual) to one variant of each layer-phase
    kernel, and two of the head (teacher-forced or drawing)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", LAYERS_SPECIALIZATION_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(
        [("_gate_kernel", 1), ("_head_kernel", 2), ("_out_kernel", 1), ("_start_kernel", 1)])


ENGINE_WARM_UP_SCRIPT = KEYED_LAUNCHES + """
import numpy as np, torch
from fastwavenet import Sampling, preset
from fastwavenet.backends import registry
from fastwavenet.bench import random_model_file
from fastwavenet.kernels import gpu, gpu_layers, gpu_spread

for module, name in [(gpu, "_wavenet_kernel"), (gpu_spread, "_spread_kernel")] + [(gpu_layers, n)
                                                                                   for n in gpu_layers.KERNELS]:
    setattr(module, name, Launch(name, getattr(module, name)))
gpu_spread.resident_programs = lambda device: 132  # an H100's SMs
model = random_model_file(preset("tiny"))
rules = [Sampling(), Sampling(top_k=3), Sampling(top_p=0.5), Sampling(argmax=True), Sampling(temperature=0.7)]
for name in ("triton", "triton-stream", "triton-spread", "triton-layers"):
    for default in (Sampling(), Sampling(top_p=0.9)):
        for every_rule in (False, True):
            backend = registry()[name](model.config, model.weights, torch.device("cpu"))
            keys.clear()
            backend.warm_up(default, teacher=True, every_rule=every_rule)
            warm = set(keys)
            for batch in (1, 3, 17):
                state = backend.new_state(batch, 0)
                for i, rule in enumerate(rules * 2):
                    mixed = [rules[(i + b) % len(rules)] for b in range(batch)] if i >= len(rules) else rule
                    backend.generate(state, 5, np.full((5, batch), 0.5, np.float32), mixed)
                backend.forward(state, torch.zeros(batch, 7, dtype=torch.int64))
            print(name, default.truncates, every_rule, len(warm), len(keys - warm))
"""


def test_a_server_warm_up_compiles_every_triton_variant_its_requests_reach():
    """Issue 34 item 1 for the server: a Triton kernel is compiled apart for launches where some stream truncates
    (top-k, top-p) and for those where none does. The engine warmed up with the model's default rule only, so the
    first request with another compiled its variant in the middle of every stream's round. Without a GPU, Triton's
    launcher (its argument binder, for sm_90) keys every launch of each Triton backend: after a warm-up for every
    rule, requests of five rules, alone and mixed in batches of 1, 3 and 17, generating and teacher-forced, reach no
    variant it did not make; a warm-up for the default rule alone misses one."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", ENGINE_WARM_UP_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert len(rows) == 16, result.stdout
    for name, truncates, every_rule, warm, missed in rows:
        assert int(warm) > 0
        assert int(missed) == (0 if every_rule == "True" else 1), (name, truncates, every_rule, missed)


def test_full_fp32_turns_tf32_off_on_cuda_and_restores_the_users_settings():
    """Runs without a GPU: the settings are process-wide flags that can be read and set anywhere."""
    import torch

    from fastwavenet.backends import full_fp32

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        with full_fp32(torch.device("cuda")):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
        with full_fp32(torch.device("cpu")):  # the CPU has no TF32: nothing changes
            assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


CACHE_SCRIPT = """
import numpy as np
from fastwavenet.kernels import cpu
p, order = np.empty(4, np.float32), np.empty(4, np.int64)
print(cpu.sample_one(np.zeros(4, np.float32), np.float32(0.5), np.float32(1), 0, np.float32(1), False, p, order))
"""


def numba_cache_files(folder):
    return {path for path in folder.rglob("*") if path.suffix in (".nbi", ".nbc")}


@pytest.mark.parametrize("own", [False, True], ids=["default", "users-own"])
def test_numba_keeps_its_compiled_kernels_in_the_user_cache_folder(tmp_path, own):
    """numba's cache of the kernels goes to fastwavenet's user cache folder ($XDG_CACHE_HOME/fastwavenet/numba), or
    to the user's own NUMBA_CACHE_DIR, never beside the kernels in the installed package (where `pip uninstall` left
    it, and a later editable install imported an empty `fastwavenet`). `fastwavenet doctor` names the folder."""
    pytest.importorskip("numba")
    import fastwavenet.kernels

    kernels = Path(fastwavenet.kernels.__file__).resolve().parent
    before = numba_cache_files(kernels)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "FASTWAVENET_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    expected = tmp_path / "xdg" / "fastwavenet" / "numba"
    if own:
        expected = env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    result = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2"]  # four equal classes, u = 0.5: the running sum 3 is the first past 2
    cached = {path.name for path in numba_cache_files(Path(expected))}
    assert any(name.startswith("cpu.sample_one") and name.endswith(".nbi") for name in cached), cached
    assert numba_cache_files(kernels) == before, "numba wrote into the package's kernels folder"
    if not own:
        assert not (tmp_path / "mine").exists()
    doctor = subprocess.run([sys.executable, "-m", "fastwavenet", "doctor"], capture_output=True, text=True, env=env,
                            timeout=600)
    assert f"numba_cache: {expected}" in doctor.stdout, doctor.stdout + doctor.stderr
