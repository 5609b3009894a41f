#!/usr/bin/env bash
# Trains the demo model that ships inside fastwavenet, on the Chopin piano corpus (4410 Hz), holding piece6 out for
# validation, then exports it. Run from the repository root: bash recipes/piano-demo.sh [DATA_DIR] [STEPS]
set -euo pipefail
data=${1:-../shared/data/chopin-piano-4410}
steps=${2:-4000}
run=runs/piano-demo
if [ -f "$run/checkpoint.pt" ]; then
  OMP_NUM_THREADS=1 fastwavenet train --resume "$run" --steps "$steps"
else
  OMP_NUM_THREADS=1 fastwavenet train "$data" --config recipes/piano-demo.json --out "$run" --steps "$steps" \
    --batch-size 8 --target-length 2048 --lr 1e-3 --seed 0 --validation-files piece6.flac \
    --validate-every 250 --checkpoint-every 250
fi
fastwavenet export "$run" -o fastwavenet/models/piano.safetensors
