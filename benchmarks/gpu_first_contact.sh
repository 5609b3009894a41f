#!/usr/bin/env bash
# The GPU check, the first thing to run whenever a GPU is at hand: about five minutes of GPU time, compiles
# included (every step under `timeout`; the caps add up to 7 minutes 40 s). In order: versions and device;
# correctness on CUDA (the Triton and torch-compile exactness and generate-path tests, the engine's determinism tests, the GPU tests of
# bench and doctor); `standard` and `r9y9-ljspeech` at steady state (3 rounds, each row's best, the first call
# reported apart) with the GPU's own limits; then `generate` with the bundled model twice (the second run is what a
# returning user waits for); one summary line per shape, and how long each step took.
#
# Run from the repository root: bash benchmarks/gpu_first_contact.sh [OUT_DIR]   (default OUT_DIR: gpu-first-contact)
# Writes OUT_DIR/doctor.txt, tests.log, bench-standard.json/.png, bench-r9y9-ljspeech.json/.png (and each preset's
# -spread.json), generate.log.
# On a machine that cannot install packages, put the wheels it lacks in .whl/ first (../shared/gpu/README.md): they
# are installed into /tmp/site here, and the tests run with `pytest`, not `python -m pytest` (which would put the
# source folder, without its kernels/, ahead of the installed package).
set -uo pipefail
out=${1:-gpu-first-contact}
mkdir -p "$out"
source benchmarks/gpu_wheels.sh
export PYTHONUNBUFFERED=1
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')" \
  || exit 2

declare -a timings
step() {  # step NAME SECONDS COMMAND...: run under a time cap, say how long it took and how it ended
  local name=$1 cap=$2 start rc
  shift 2
  echo "== $name (at most ${cap} s)"
  start=$(date +%s.%N)
  timeout "$cap" "$@"
  rc=$?
  local took
  took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
  local how="ok"
  [ "$rc" -eq 124 ] && how="TIMED OUT" || { [ "$rc" -ne 0 ] && how="exit $rc"; }
  echo "== $name: ${took} s, $how"
  timings+=("$(printf '%-28s %7s s  %s' "$name" "$took" "$how")")
}

# 1. Versions and device (no compile).
step "versions and device" 20 bash -c "nvidia-smi -L || true; fastwavenet doctor | tee '$out/doctor.txt'"

# 2. Correctness on CUDA (conftest picks cuda when it is there; the interpreter stays off).
step "correctness" 150 bash -c "pytest -q -n 4 -p no:cacheprovider \
  -k 'triton or cuda or probe or compiles_once or compile or layer' \
  tests/test_exactness.py tests/test_generator.py \
  tests/test_engine.py::test_triton_requests_alone_or_together_are_bit_identical tests/test_bench.py \
  tests/test_doctor.py 2>&1 | tee '$out/tests.log' | tail -15"

# 3. Both presets at steady state, against the GPU's limits (measured in the same run), JSON and plots.
bench() {  # bench PRESET BATCHES: the batched kernels at every batch, the spread kernel (a few streams) at 1 and 8
  fastwavenet bench --device cuda --preset "$1" --backend torch,triton,triton-stream,triton-layers --batch "$2" \
    --repeat 3 --min-seconds 0.3 --json "$out/bench-$1.json" --plot "$out/bench-$1.png" \
  && fastwavenet bench --device cuda --preset "$1" --backend triton-spread --batch 1,8 --repeat 3 \
    --min-seconds 0.3 --json "$out/bench-$1-spread.json"
}
export out
export -f bench
step "bench standard" 120 bash -c "bench standard 1,64,1024,4096"
step "bench r9y9-ljspeech" 120 bash -c "bench r9y9-ljspeech 1,64,512"

# 4. `generate` as a user meets it: the bundled model, `auto` choosing by trial (kept per GPU and shape in the
#    cache folder), twice. Issue 34's aim: the second run within 5 s of wall time.
gen() {  # gen RUN
  local start
  start=$(date +%s.%N)
  FASTWAVENET_CACHE_DIR="$out/cache" fastwavenet generate --device cuda --seconds 4 --seed 0 -o "$out/generate.wav"
  python3 -c "import sys; print(f'generate run $1: {float(sys.argv[2]) - float(sys.argv[1]):.1f} s of wall time')" \
    "$start" "$(date +%s.%N)"
}
export -f gen
# Some GPU images set PYTHONDONTWRITEBYTECODE and carry no bytecode for torch: every process then compiles torch's
# source again (2.5 s of a 6.7 s run on the H200 machine, cProfile). A user's install has its bytecode: keep it here.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/fastwavenet-pycache}
step "generate, first run" 35 bash -c "gen 1 2>&1 | tee '$out/generate.log'"
step "generate, second run" 15 bash -c "gen 2 2>&1 | tee -a '$out/generate.log'"
rm -rf "$out/generate.wav" "$out/cache"

# 5. One line per shape: the best backend at each batch, from the JSON.
echo "== summary"
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path

presets = {}  # bench-PRESET.json and bench-PRESET-spread.json: one line per preset
for path in sorted(Path(sys.argv[1]).glob("bench-*.json")):
    preset = path.stem[len("bench-"):].removesuffix("-spread")
    presets.setdefault(preset, []).extend(json.loads(path.read_text())["results"])
for preset, results in presets.items():
    rows = [r for r in results if r["backend"] != "naive"]
    best = {}
    for r in rows:
        if r["batch"] not in best or r["samples_per_s"] > best[r["batch"]]["samples_per_s"]:
            best[r["batch"]] = r
    cells = [f"b{b} {r['backend']} {r['samples_per_s']:,.0f}/s"
             + (f" ({100 * r['of_limit']:.2g} % of the {r['bound_by']} limit)" if r.get("of_limit") else "")
             for b, r in sorted(best.items())]
    first = max((r["first_call_s"] for r in rows), default=0.0)
    print(f"{preset}: " + "; ".join(cells) + f"; slowest first call {first:.1f} s")
EOF
grep -h "generate run" "$out/generate.log" 2>/dev/null
echo "== steps"
printf '%s\n' "${timings[@]}"
