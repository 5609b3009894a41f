#!/usr/bin/env bash
# The spread kernel's GPU check (issue 35), about four minutes of GPU time: exactness and per-request determinism
# on CUDA, the cost of one hand-over and batch-1 figures against programs per stream, both presets' bench beside
# the other GPU backends (JSON into OUT_DIR), and the wall time of `fastwavenet generate --device cuda --seconds 4`
# run three times (issue 34), the last under cProfile.
#   bash benchmarks/gpu_spread_check.sh OUT_DIR
# Wheels in .whl/ are installed first, as benchmarks/gpu_first_contact.sh does.
set -uo pipefail
out=${1:-gpu-spread}
mkdir -p "$out"
source benchmarks/gpu_wheels.sh
export PYTHONUNBUFFERED=1
t() { local s=$(date +%s); echo "== $1"; shift; "$@"; echo "== rc $? in $(( $(date +%s) - s )) s"; }
t "exactness and determinism on CUDA" timeout 120 bash -c "pytest -q -n 8 -p no:cacheprovider -k spread \
  tests/test_exactness.py tests/test_engine.py > '$out/tests.log' 2>&1; tail -4 '$out/tests.log'"
t "sweep" timeout 100 python3 benchmarks/gpu_spread_sweep.py --json "$out/sweep.json"
t "bench standard" timeout 100 fastwavenet bench --device cuda --preset standard \
  --backend torch,triton,triton-stream,triton-spread --batch 1,8,64 --repeat 3 --min-seconds 0.3 \
  --json "$out/bench-standard.json" > "$out/bench-standard.txt" 2>&1
t "bench r9y9" timeout 100 fastwavenet bench --device cuda --preset r9y9-ljspeech \
  --backend torch,triton-stream,triton-spread --batch 1,8,64 --repeat 3 --min-seconds 0.3 \
  --json "$out/bench-r9y9.json" > "$out/bench-r9y9.txt" 2>&1
tail -22 "$out/bench-standard.txt"; tail -18 "$out/bench-r9y9.txt"
# The image has no bytecode for torch (2.5 s of compiling in every process, cProfile): let Python keep it.
env | grep '^PYTHON' ; unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pycache
for run in 1 2 3; do
  t "generate $run" timeout 60 bash -c "TIMEFORMAT='generate $run: %R s of wall time'; time fastwavenet generate \
    --device cuda --seconds 4 --seed 0 -o '$out/g.wav' 2> >(grep -v '%|' >&2)"
done
t "generate 4 profiled" timeout 30 python3 -m cProfile -o "$out/generate.prof" -m fastwavenet generate --device cuda \
  --seconds 4 --seed 0 -o "$out/g.wav" > /dev/null 2>&1
python3 -c "import pstats; pstats.Stats('$out/generate.prof').sort_stats('cumulative').print_stats(40)" \
  > "$out/generate-profile.txt" 2>&1
rm -f "$out/g.wav"
