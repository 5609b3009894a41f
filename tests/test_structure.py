"""The shape of the house: no import cycles, and an inference path that does not stand on the training stack."""

import ast
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fastwavenet import preset
from fastwavenet.folded import fold
from fastwavenet.modelfile import save_model

from helpers import random_model, wait_until

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("fastwavenet.training", "fastwavenet.data", "fastwavenet.model", "fastwavenet.convert")
# What the importers must not load: they build the training model (fastwavenet.model) and fold it, no more.
TRAINING_LOOP = ("fastwavenet.training", "fastwavenet.data", "fastwavenet.convert")


def package_modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name; kernels/ installs as fastwavenet.kernels."""
    modules = {}
    for folder, package in ((ROOT / "fastwavenet", "fastwavenet"), (ROOT / "kernels", "fastwavenet.kernels")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module `name` imports anywhere in its text (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import module` imports the module; `from pkg import name`, pkg
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen - {start}


def test_no_import_cycles_in_the_package():
    modules = package_modules()
    assert "fastwavenet.backends.base" in modules and "fastwavenet.kernels.cpu" in modules
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert "fastwavenet.backends.base" in graph["fastwavenet.backends.numba_cpu"]  # the parser sees relative imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_kernels_import_nothing_of_the_package():
    modules = package_modules()
    for name, path in modules.items():
        if name.startswith("fastwavenet.kernels"):
            outside = {m for m in imports_of(name, path, modules) if not m.startswith("fastwavenet.kernels")}
            assert not outside, f"{name} imports {outside}"


def test_generating_and_scoring_never_load_the_training_stack(tmp_path):
    """Load a model, generate with every backend available here, score audio: none of the training modules may be
    imported along the way."""
    model = tmp_path / "tiny.safetensors"
    save_model(model, preset("tiny"), fold(random_model(preset("tiny"), 1)))
    wav = tmp_path / "a.wav"
    soundfile.write(wav, (0.3 * np.sin(np.arange(400) / 5.0)).astype(np.float32), 4410)
    script = f"""
import sys
import fastwavenet
from fastwavenet.backends import available_backends
from fastwavenet.score import score_files

for backend in available_backends("cpu"):
    audio = fastwavenet.load({str(model)!r}, backend=backend).generate(samples=5, seed=0)
    assert audio.shape == (1, 5), audio.shape
print(sorted(available_backends("cpu")))
assert score_files({str(model)!r}, [{str(wav)!r}])[0]["bits_per_sample"] > 0
loaded = sorted(m for m in {TRAINING!r} if m in sys.modules)
print("training modules loaded:", loaded)
sys.exit(1 if loaded else 0)
"""
    # Triton's backends on the CPU through its interpreter, as the other tests run them where there is no GPU (where
    # there is one, the interpreter of Triton 3.6 fails under numpy 2.5, and its GPU tests cover those backends).
    env = dict(os.environ) if torch.cuda.is_available() else {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'naive'" in result.stdout and "'numba'" in result.stdout and "'torch'" in result.stdout


def test_the_importers_never_load_the_training_loop():
    """Importing the Keras and r9y9 importers loads neither the training loop, its data, nor the checkpoint export
    (issue 32: the Keras importer once reached training through convert.py). In a fresh process, and in the import
    graph, which also sees the imports inside functions."""
    script = f"""
import sys
import fastwavenet.importers.keras
import fastwavenet.importers.r9y9
print(sorted(m for m in {TRAINING_LOOP!r} if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
    modules = package_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    for importer in ("fastwavenet.importers.keras", "fastwavenet.importers.r9y9"):
        assert not reachable(graph, importer) & set(TRAINING_LOOP), importer


def test_serving_never_loads_the_training_stack(tmp_path):
    """`fastwavenet serve` with its default backend choice, through one /generate request and a SIGTERM: none of
    the training modules may be imported along the way."""
    pytest.importorskip("aiohttp")
    pytest.importorskip("prometheus_client")
    model = tmp_path / "tiny.safetensors"
    save_model(model, preset("tiny"), fold(random_model(preset("tiny"), 1)))
    script = f"""
import sys
from fastwavenet.cli import main

code = main(["serve", "--model", {str(model)!r}, "--port", "0", "--drain-seconds", "1"])
print("training modules loaded:", sorted(m for m in {TRAINING!r} if m in sys.modules), flush=True)
sys.exit(code)
"""
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:  # a file, not a pipe: a pipe nobody reads fills and stops the server
        process = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TRITON_INTERPRET": "1"})
    try:
        assert wait_until(lambda: "serving on http://" in log_path.read_text() or process.poll() is not None,
                          300), log_path.read_text()
        url = log_path.read_text().split("serving on ")[1].split()[0]
        request = urllib.request.Request(url + "/generate", data=json.dumps({"seconds": 0.01, "seed": 0}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            samples = round(0.01 * preset("tiny").sample_rate)
            assert len(response.read()) == 44 + 2 * samples  # the WAV header, then 16-bit samples
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert "training modules loaded: []" in log_path.read_text(), log_path.read_text()


def test_the_training_side_is_still_reachable_from_the_package():
    import fastwavenet

    assert callable(fastwavenet.train) and callable(fastwavenet.export)
    assert fastwavenet.TrainOptions().steps > 0


def test_importing_the_package_costs_nothing_and_every_public_name_is_there():
    """`import fastwavenet` imports neither torch nor numba (names load on first use), and every name of __all__
    is reachable."""
    script = """
import sys
import fastwavenet
print(sorted(m for m in ("torch", "numba", "fastwavenet.generator") if m in sys.modules))
missing = [n for n in fastwavenet.__all__ if getattr(fastwavenet, n, None) is None]
print(missing, set(fastwavenet.__all__) <= set(dir(fastwavenet)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "[] True"], out.stdout


def test_ctrl_c_while_the_command_imports_torch_is_one_line():
    """A Ctrl-C in the first second of any command lands while torch is being imported: one line and exit 130,
    not a traceback. The child sends itself SIGINT at the moment the import of torch begins."""
    script = """
import os, signal, sys

class InterruptAtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptAtTorch())
sys.argv = ["fastwavenet", "doctor"]
from fastwavenet.__main__ import run
sys.exit(run())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (out.returncode, out.stderr) == (130, "fastwavenet: interrupted\n")


def test_the_command_is_the_guarded_entry_point():
    """setup.py's console script starts at __main__.run, which holds the CLI's imports inside its Ctrl-C
    handling."""
    from fastwavenet.__main__ import run

    assert '"fastwavenet=fastwavenet.__main__:run"' in (ROOT / "setup.py").read_text()
    assert callable(run)


def test_every_package_folder_is_installed():
    """setup.py finds packages by their __init__.py: a folder of modules without one would be left out of a
    non-editable install (as fastwavenet.importers once was; editable installs hide it)."""
    from setuptools import find_packages

    found = set(find_packages(str(ROOT), include=["fastwavenet", "fastwavenet.*"]))
    for folder in (ROOT / "fastwavenet").rglob("*.py"):
        package = ".".join(folder.parent.relative_to(ROOT).parts)
        if "__pycache__" not in package:
            assert package in found, f"{package} has modules but would not be installed"
    assert "find_packages" in (ROOT / "setup.py").read_text()
