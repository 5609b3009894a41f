#!/usr/bin/env bash
# Trains the mel vocoder that ships inside fastwavenet (fastwavenet/models/piano-vocoder.safetensors), on the Chopin
# piano corpus (4410 Hz) with piece6 held out, exports it, and measures how closely its resynthesis follows
# held-out input (recipes/vocoder_eval.py). Run from the repository root:
#   bash recipes/piano-vocoder.sh [DATA_DIR] [STEPS]
# The run (runs/piano-vocoder-2, committed so that training can go on across sessions) starts from the bundled demo
# model's weights (`train --init` with --n-mels: the demo's shape and receptive field, mel projections starting at
# zero), 40 log-mel bands from a 256-point FFT every 64 samples; resumed when its run directory exists.
set -euo pipefail
data=${1:-../shared/data/chopin-piano-4410}
steps=${2:-20000}
run=runs/piano-vocoder-2
export OMP_NUM_THREADS=1
if [ -f "$run/checkpoint.pt" ]; then
  fastwavenet train --resume "$run" --steps "$steps"
else
  fastwavenet train "$data" --init "${INIT:-fastwavenet/models/piano.safetensors}" --n-mels 40 --hop-length 64 \
    --n-fft 256 --out "$run" --steps "$steps" --batch-size 8 --target-length 2048 --lr 5e-4 --seed 2 \
    --validation-files piece6.flac --validate-every 250 --checkpoint-every 250
fi
fastwavenet export "$run" -o fastwavenet/models/piano-vocoder.safetensors --temperature "${TEMPERATURE:-1.0}"
python recipes/vocoder_eval.py fastwavenet/models/piano-vocoder.safetensors "$data/piece6.flac"
