#!/usr/bin/env bash
# Trains a small mel vocoder on the Chopin piano corpus (piece6 held out), exports it, and measures how closely its
# resynthesis follows held-out input (recipes/vocoder_eval.py). Run from the repository root:
#   bash recipes/piano-vocoder.sh [DATA_DIR] [STEPS]
set -euo pipefail
data=${1:-../shared/data/chopin-piano-4410}
steps=${2:-1500}
run=runs/piano-vocoder
if [ -f "$run/checkpoint.pt" ]; then
  OMP_NUM_THREADS=1 fastwavenet train --resume "$run" --steps "$steps" --quiet
else
  OMP_NUM_THREADS=1 fastwavenet train "$data" --config recipes/piano-vocoder.json --out "$run" --steps "$steps" \
    --batch-size 8 --target-length 1024 --lr 1e-3 --seed 0 --validation-files piece6.flac \
    --validate-every 250 --checkpoint-every 250 --quiet
fi
fastwavenet export "$run" -o runs/piano-vocoder.safetensors
python recipes/vocoder_eval.py runs/piano-vocoder.safetensors "$data/piece6.flac"
