#!/usr/bin/env bash
# Trains the mel vocoder that ships inside fastwavenet (fastwavenet/models/piano-vocoder.safetensors), on the Chopin
# piano corpus (4410 Hz) with piece6 held out, exports it, and measures how closely its resynthesis follows
# held-out input (recipes/vocoder_eval.py). Run from the repository root:
#   bash recipes/piano-vocoder.sh [DATA_DIR] [STEPS]
# The run (runs/piano-vocoder-2, committed so that training can go on across sessions) has the demo model's shape
# and receptive field (recipes/piano-demo.json) plus 40 log-mel bands from a 256-point FFT every 64 samples, trained
# from scratch; resumed when its run directory exists. (Starting from the demo's weights instead, `train --init
# MODEL --n-mels 40 ...`, was tried: after 500 steps the model still ignored its mel, docs/VOCODER.md.)
set -euo pipefail
data=${1:-../shared/data/chopin-piano-4410}
steps=${2:-20000}
run=runs/piano-vocoder-2
export OMP_NUM_THREADS=1
if [ -f "$run/checkpoint.pt" ]; then
  fastwavenet train --resume "$run" --steps "$steps"
else
  fastwavenet train "$data" --config recipes/piano-demo.json --n-mels 40 --hop-length 64 --n-fft 256 \
    --out "$run" --steps "$steps" --batch-size 8 --target-length 2048 --lr 1e-3 --seed 2 \
    --validation-files piece6.flac --validate-every 250 --checkpoint-every 250
fi
fastwavenet export "$run" -o fastwavenet/models/piano-vocoder.safetensors --temperature "${TEMPERATURE:-1.0}"
python recipes/vocoder_eval.py fastwavenet/models/piano-vocoder.safetensors "$data/piece6.flac"
