#!/usr/bin/env bash
# The first run on a GPU, in about ten minutes: correctness first, then what the compiler made, then speed.
# Run from the repository root after installing with the test extras: bash benchmarks/gpu_first_contact.sh [OUT_DIR]
# Writes OUT_DIR/tests.log, doctor.json, bench-*.json, bench-*.png, auto.log and auto-backend.json (default OUT_DIR:
# gpu-first-contact).
set -uo pipefail
out=${1:-gpu-first-contact}
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to measure')" || exit 2
arch=$(python -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'sm_{m}{n}')")
# 1. Exactness and generation on CUDA (conftest picks cuda when it is there; the interpreter stays off).
timeout 300 python -m pytest -q tests/test_exactness.py tests/test_generator.py tests/test_doctor.py tests/test_auto_backend.py \
  "tests/test_engine.py::test_triton_requests_alone_or_together_are_bit_identical" 2>&1 \
  | tee "$out/tests.log" | tail -5
# 2. Registers, spills and occupancy of every kernel variant for this GPU's own architecture.
timeout 180 fastwavenet doctor --compile-gpu "$arch" --json "$out/doctor.json" | tail -30
# 3. The benchmark matrix: every backend, presets small / standard / large.
for preset in small standard large; do
  timeout 120 fastwavenet bench --device cuda --preset "$preset" --backend torch,triton,triton-stream \
    --batch 1,8,64,256,1024,4096 --min-seconds 0.5 --json "$out/bench-$preset.json" --plot "$out/bench-$preset.png"
done
# 4. What `auto` picks on this GPU at batch 1 and 1024, by its own trial (its figures, then the choice, on stderr).
for batch in 1 1024; do
  FASTWAVENET_CACHE_DIR="$out" timeout 120 fastwavenet generate --device cuda --batch "$batch" --seconds 0.5 --seed 0 \
    -o "$out/auto-batch$batch.wav" 2>&1 | grep 'auto:' | tee -a "$out/auto.log"
done
rm -f "$out"/auto-batch*.wav
