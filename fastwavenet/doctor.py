"""`fastwavenet doctor`: one screen for a bug report (versions, CPU and its vector ISA, numba's threads, CUDA devices,
which backends run and why not), and ahead-of-time compiles of the GPU kernel for chosen architectures, without a
GPU, reporting what the interpreter cannot see: registers, spills, shared memory and how many programs fit an SM."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import __version__
from .backends import auto_cache_path, kept_choices, registry
from .config import PRESETS, WaveNetConfig
from .distributions import KERNEL_CODES
from .errors import FastWaveNetError
from .folded import expected_shapes


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> dict:
    """What this machine offers fastwavenet."""
    from .bench import machine

    info = {"fastwavenet": __version__, "python": sys.version.split()[0],
            **{p: _version(p) for p in ("torch", "numpy", "numba", "triton", "safetensors", "soundfile", "librosa")},
            **machine()}
    if importlib.util.find_spec("numba") is not None:
        import numba

        from .backends.numba_cpu import numba_threads

        info["numba_threads"] = numba_threads()
        try:  # the layer in use, once a parallel function has run (bench's limit probes are the only ones)
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:
            info["numba_threading_layer"] = f"{numba.config.THREADING_LAYER} (chosen at the first parallel call)"
        info["numba_cache"] = numba.config.CACHE_DIR or "beside the kernels' source (numba's default)"
    info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["backends"] = {}
    for device in ("cpu", "cuda"):
        for name, cls in registry().items():
            if device == "cuda" and "cuda" not in cls.devices:
                continue
            info["backends"][f"{name} on {device}"] = cls.unavailable_reason(torch.device(device)) or "available"
    # What `auto` chose by its trials, kept for later runs (backends.choose_by_trial)
    info["auto_choices"] = [f"{backend} for {key}" for key, backend in kept_choices().items()]
    info["auto_choices_file"] = str(auto_cache_path())
    return info


def format_report(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if key == "backends":
            lines.append("backends:")
            width = max(map(len, value), default=0)
            lines.extend(f"  {name:<{width}} {status}" for name, status in value.items())
        elif isinstance(value, list):
            lines.append(f"{key}: {', '.join(value) or 'none'}")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


# ---- the GPU kernel, compiled for a target without a GPU ---------------------------------------------------------

@dataclass
class CompileRow:
    target: str          # sm_80, sm_90, ...
    model: str           # preset name (or "custom")
    variant: str         # tiled / stream / spread (kernels/gpu.py with TILE > 1 or 1, kernels/gpu_spread.py), then
                         # teacher / generate / generate-truncated (top-k, top-p compiled in), +cond
    registers: int
    spill_bytes: int     # local memory per thread: registers that did not fit
    shared_bytes: int
    stack_bytes: int
    programs_per_sm: int  # resident programs (a tile of streams, one stream, or a share of one) an SM can hold, by
                          # registers and shared memory


# Per-SM limits of the architectures we compile for (CUDA programming guide, "compute capabilities").
_SM_LIMITS = {80: dict(registers=65536, shared=167936, blocks=32), 86: dict(registers=65536, shared=102400, blocks=16),
              89: dict(registers=65536, shared=102400, blocks=24), 90: dict(registers=65536, shared=232448, blocks=32)}
# SMs of the target's usual data-centre card (A100 108, H100 SXM / H200 132; the spread kernel's programs a stream
# are capped by them) and of a large consumer card for 86 and 89 (RTX 3090 82, RTX 4090 128)
_SMS = {80: 108, 86: 82, 89: 128, 90: 132}


def parse_targets(text: str) -> list[int]:
    targets = []
    for part in text.split(","):
        match = re.fullmatch(r"(?:sm_)?(\d+)", part.strip())
        if not match or int(match.group(1)) not in _SM_LIMITS:
            raise FastWaveNetError(f"unknown GPU target {part!r}; choose from "
                                   f"{', '.join(f'sm_{t}' for t in _SM_LIMITS)}")
        targets.append(int(match.group(1)))
    return targets


@dataclass
class _Shaped:
    shape: tuple


class _Shapes:
    """Stand-ins for the weight tensors, carrying only the shapes that the launcher reads (dilated_w with its taps
    stacked, as the Triton backend passes it)."""

    def __init__(self, config: WaveNetConfig):
        for name, shape in expected_shapes(config).items():
            setattr(self, name, _Shaped(shape))
        layers, taps, residual, gates = self.dilated_w.shape
        self.dilated_w = _Shaped((layers, taps * residual, gates))


def _variants(config: WaveNetConfig, tiles: dict[str, int], only: set[str] | None = None):
    # Each stream's rule (temperature, argmax) is read at run time; top-k / top-p add the sort at compile time.
    modes = [("teacher", True, False), ("generate", False, False)]
    if config.output == "softmax":  # top-k / top-p apply to classes only
        modes.append(("generate-truncated", False, True))
    for kind, tile in tiles.items():
        for label, teacher, truncate in modes:
            for cond in (False, True):
                mode = label + ("+cond" if cond else "")
                if only is None or mode in only:
                    yield f"{kind} {mode}", teacher, truncate, cond, tile


def _cuobjdump(cubin: bytes, flag: str) -> str:
    """The output of the cuobjdump in Triton's wheel on a cubin, with `flag` (--dump-resource-usage, --dump-sass)."""
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), flag, f.name], capture_output=True, text=True, check=True).stdout


def _resources(cubin: bytes) -> dict:
    """Registers, local (spill) memory, shared memory and stack of a cubin."""
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", _cuobjdump(cubin, "--dump-resource-usage")))
    return {k: int(v) for k, v in found.items()}


def _spread_shapes(shapes: _Shapes):
    """The spread kernel's weights (output-major: each weight matrix's last two dimensions swapped) as shapes."""
    from .kernels.gpu_spread import SpreadWeights

    swapped = lambda a: _Shaped(tuple(a.shape[:-2]) + (a.shape[-1], a.shape[-2]))  # noqa: E731
    return SpreadWeights(shapes.embed, swapped(shapes.dilated_w), shapes.dilated_b, swapped(shapes.out_w),
                         shapes.out_b, swapped(shapes.head1_w), shapes.head1_b, swapped(shapes.head2_w),
                         shapes.head2_b, None, None)


def compile_gpu(targets: list[int], models: dict[str, WaveNetConfig] | None = None,
                modes: set[str] | None = None, progress: bool = False) -> list[CompileRow]:
    """Compile every variant of the Triton kernels that the backends can launch, for each target and model shape;
    `modes` (say {"teacher+cond", "generate"}) keeps those modes alone, each for the tiled, the lone-stream and the
    spread kernel. `progress`: a line on stderr as each model's variants are done (all of them take minutes)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise FastWaveNetError("unset TRITON_INTERPRET to compile for a GPU (the interpreter compiles nothing)")
    if importlib.util.find_spec("triton") is None:
        raise FastWaveNetError("compiling for a GPU needs triton: pip install 'fastwavenet[gpu]'")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .kernels import gpu, gpu_layers, gpu_spread

    if models is None:
        models = {name: PRESETS[name] for name in ("small", "standard", "large")}
        models["standard-k3"] = PRESETS["standard"].replace(kernel_size=3)
        models["r9y9-ljspeech"] = PRESETS["r9y9-ljspeech"]
    rows = []
    for target in targets:
        limits = _SM_LIMITS[target]

        def compiled(model_name, label, kernel, signature, constants, options):
            # FP fusion on, as at launch today (Triton 3.9's default; stated, so its warning stays quiet)
            # Pointer arguments 16-byte aligned, as Triton's launcher specializes them for torch's allocations
            # (without it every load and copy compiled one float wide, and a variant took up to 2 KB more stack
            # than the one that runs)
            aligned = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]]
                       for name, kind in signature.items() if kind.startswith("*")}
            binary = triton.compile(ASTSource(kernel, signature, constants, aligned),
                                    target=GPUTarget("cuda", target, 32), options={**options, "enable_fp_fusion": True})
            use = _resources(binary.asm["cubin"])
            # Triton's shared memory is dynamic (its metadata), beside the cubin's static share
            use["SHARED"] = use.get("SHARED", 0) + binary.metadata.shared
            threads = 32 * options["num_warps"]
            by_registers = limits["registers"] // max(1, use.get("REG", 0) * threads)
            by_shared = limits["shared"] // use["SHARED"] if use.get("SHARED") else limits["blocks"]
            rows.append(CompileRow(f"sm_{target}", model_name, label, use.get("REG", 0), use.get("LOCAL", 0),
                                   use.get("SHARED", 0), use.get("STACK", 0),
                                   min(by_registers, by_shared, limits["blocks"])))

        for model_name, config in models.items():
            if gpu.unsupported_reason(config.input_kernel_size):
                continue
            if progress:
                print(f"fastwavenet: compiling for sm_{target}: {model_name} ({len(rows)} variants done)",
                      file=sys.stderr, flush=True)
            dist = KERNEL_CODES[config.output]
            shapes = _Shapes(config)
            tiles = {"tiled": gpu.tile_for(shapes), "stream": 1}
            for label, teacher, truncate, cond, tile in _variants(config, tiles, modes):
                constants = gpu.launch_constants(shapes, teacher, cond, dist, tile, truncate)
                signature = {**gpu.argument_types(dist), **{name: "constexpr" for name in constants}}
                compiled(model_name, label, gpu._wavenet_kernel, signature, constants, gpu.launch_options(tile))
            spread = _spread_shapes(shapes)
            programs = gpu_spread.programs_for(spread, _SMS[target])
            for label, teacher, truncate, cond, _ in _variants(config, {"spread": programs}, modes):
                constants = gpu_spread.launch_constants(spread, programs, teacher, cond, dist, truncate)
                signature = {**gpu_spread.argument_types(dist), **{name: "constexpr" for name in constants}}
                compiled(model_name, label, gpu_spread._spread_kernel, signature, constants, {"num_warps": 4})
            # The layer-phase kernels: each kernel once for each set of its own constants the modes give
            seen = set()
            for label, teacher, truncate, cond, _ in _variants(config, {"layers": 0}, modes):
                for name, kernel, signature, constants, options in gpu_layers.compile_variants(
                        shapes, teacher, cond, dist, truncate):
                    key = (name, tuple(sorted(constants.items())))
                    if key in seen:
                        continue
                    seen.add(key)
                    # what the kernel's constants depend on: the gate on conditioning, the head on the mode
                    mode = {"gate": "+cond" if cond else "", "head": " " + label.split()[1].removesuffix("+cond")}
                    compiled(model_name, f"layers-{name}{mode.get(name, '')}", kernel, signature, constants, options)
    return rows


def format_compile(rows: list[CompileRow]) -> str:
    lines = [f"{'target':<7} {'model':<12} {'variant':<29} {'registers':>9} {'spills':>7} {'shared':>7} "
             f"{'stack':>6} {'programs/SM':>12}"]
    for r in rows:
        lines.append(f"{r.target:<7} {r.model:<12} {r.variant:<29} {r.registers:>9} {r.spill_bytes:>7} "
                     f"{r.shared_bytes:>7} {r.stack_bytes:>6} {r.programs_per_sm:>12}")
    return "\n".join(lines)


def rows_as_json(rows: list[CompileRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def diagnose(compile_targets: str | None = None, json_path: str | os.PathLike | None = None) -> dict:
    """What `fastwavenet doctor` does: print the report (versions, CPU, devices, backends) and, given targets such as
    "sm_80,sm_90", compile the GPU kernel's variants for them and print registers, spills and shared memory; with
    `json_path`, write both as JSON. Returns {"report": ..., "gpu_compile": [...]}."""
    from .files import check_writable, write_json

    if json_path:
        check_writable(json_path)
    targets = parse_targets(compile_targets) if compile_targets else []
    info = report()
    print(format_report(info))
    rows = []
    if targets:
        print()
        rows = compile_gpu(targets, progress=True)
        print(format_compile(rows))
    result = {"report": info, "gpu_compile": rows_as_json(rows)}
    if json_path:
        write_json(json_path, result)
        print(f"wrote {json_path}")
    return result
