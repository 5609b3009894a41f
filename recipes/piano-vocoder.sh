#!/usr/bin/env bash
# Trains the mel vocoder that ships inside fastwavenet (fastwavenet/models/piano-vocoder.safetensors), on the Chopin
# piano corpus (4410 Hz) with piece6 held out, exports it, and measures how closely its resynthesis follows
# held-out input (recipes/vocoder_eval.py). Run from the repository root:
#   bash recipes/piano-vocoder.sh [DATA_DIR] [STEPS]
# Stage 1 (runs/piano-vocoder-2, committed): the demo model's shape and receptive field (recipes/piano-demo.json)
# plus 40 log-mel bands from a 256-point FFT every 64 samples, trained from scratch at lr 1e-3 to step 7,000.
# (Starting from the demo's weights instead, `train --init MODEL --n-mels 40 ...`, was tried: after 500 steps the
# model still ignored its mel, docs/VOCODER.md.)
# Stage 2 (runs/piano-vocoder-3, committed): a new run from stage 1's step-7,000 weights at lr 3e-4, to STEPS;
# resumed when its run directory exists, so training can go on across sessions.
set -euo pipefail
data=${1:-../shared/data/chopin-piano-4410}
steps=${2:-20000}
export OMP_NUM_THREADS=1
common=(--batch-size 8 --target-length 2048 --validation-files piece6.flac --validate-every 250
        --checkpoint-every 250)
if [ ! -f runs/piano-vocoder-3/checkpoint.pt ]; then
  if [ -f runs/piano-vocoder-2/checkpoint.pt ]; then
    fastwavenet train --resume runs/piano-vocoder-2 --steps 7000
  else
    fastwavenet train "$data" --config recipes/piano-demo.json --n-mels 40 --hop-length 64 --n-fft 256 \
      --out runs/piano-vocoder-2 --steps 7000 --lr 1e-3 --seed 2 "${common[@]}"
  fi
  fastwavenet export runs/piano-vocoder-2 -o runs/piano-vocoder-2.safetensors
  fastwavenet train "$data" --init runs/piano-vocoder-2.safetensors --out runs/piano-vocoder-3 --steps "$steps" \
    --lr 3e-4 --seed 3 "${common[@]}"
else
  fastwavenet train --resume runs/piano-vocoder-3 --steps "$steps"
fi
fastwavenet export runs/piano-vocoder-3 -o fastwavenet/models/piano-vocoder.safetensors \
  --temperature "${TEMPERATURE:-1.0}" --top-p "${TOP_P:-1.0}"
python recipes/vocoder_eval.py fastwavenet/models/piano-vocoder.safetensors "$data/piece6.flac"
