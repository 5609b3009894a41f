#!/usr/bin/env bash
# The spread kernel's GPU check (issue 35), about four minutes of GPU time: exactness on CUDA, the barrier's cost and
# batch-1 figures against programs per stream, the bench beside the other GPU backends, and where the time of a
# second `fastwavenet generate --device cuda --seconds 4` goes (issue 34), under cProfile.
#   bash benchmarks/gpu_spread_check.sh OUT_DIR
# Wheels in .whl/ are installed first, as benchmarks/gpu_first_contact.sh does.
set -uo pipefail
out=${1:-gpu-spread}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 2
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
  if [ ! -e fastwavenet/kernels ]; then
    ln -s ../kernels fastwavenet/kernels && trap 'rm -f fastwavenet/kernels' EXIT
  fi
fi
export PYTHONUNBUFFERED=1
t() { local s=$(date +%s); echo "== $1"; shift; "$@"; echo "== rc $? in $(( $(date +%s) - s )) s"; }
t "exactness on CUDA" timeout 150 pytest -q -n 8 -p no:cacheprovider -k "spread" tests/test_exactness.py \
  2>&1 | tail -15
t "sweep" timeout 150 python3 benchmarks/gpu_spread_sweep.py --json "$out/sweep.json"
t "bench standard" timeout 90 fastwavenet bench --device cuda --preset standard \
  --backend triton-stream,triton-spread --batch 1,8,64 --repeat 3 --min-seconds 0.3 --json "$out/bench-standard.json"
t "bench r9y9" timeout 90 fastwavenet bench --device cuda --preset r9y9-ljspeech \
  --backend triton-stream,triton-spread --batch 1,8 --repeat 3 --min-seconds 0.3 --json "$out/bench-r9y9.json"
t "import times" timeout 30 bash -c "time python3 -c 'import torch'; time python3 -c 'import torch; torch.zeros(1, device=\"cuda\")'; time python3 -c 'import fastwavenet, triton'"
t "generate 1" timeout 60 bash -c "time fastwavenet generate --device cuda --seconds 4 --seed 0 -o $out/g.wav" 2>&1 | tail -6
t "generate 2" timeout 30 bash -c "time fastwavenet generate --device cuda --seconds 4 --seed 0 -o $out/g.wav" 2>&1 | tail -6
t "generate 3 profiled" timeout 30 python3 -m cProfile -o "$out/generate.prof" -m fastwavenet generate --device cuda \
  --seconds 4 --seed 0 -o "$out/g.wav"
python3 -c "import pstats; pstats.Stats('$out/generate.prof').sort_stats('cumulative').print_stats(45)" \
  > "$out/generate-profile.txt" 2>&1
head -c 9000 "$out/generate-profile.txt" | tail -c 7000
rm -f "$out/g.wav"
