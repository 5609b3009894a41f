#!/usr/bin/env bash
# Trains the mel vocoder that ships inside fastwavenet (fastwavenet/models/piano-vocoder.safetensors), on the Chopin
# piano corpus (4410 Hz) with piece6 held out, exports it, and measures how closely its resynthesis follows
# held-out input (recipes/vocoder_eval.py). Run from the repository root:
#   bash recipes/piano-vocoder.sh [DATA_DIR] [STEPS]     train (or resume) to STEPS, export and measure a candidate
#   bash recipes/piano-vocoder.sh [DATA_DIR] bundled     rebuild the bundled file
# The runs live in runs/, which the repository does not carry: the recipe trains every stage whose run directory is
# missing and resumes one that stopped short. (Both were in the tree until commit 66976d8, the last to hold them:
# `git restore --source 66976d8 runs/piano-vocoder-3` brings one back, Adam state included, docs/VOCODER.md.)
# Stage 1 (runs/piano-vocoder-2): the demo model's shape and receptive field (recipes/piano-demo.json)
# plus 40 log-mel bands from a 256-point FFT every 64 samples, trained from scratch at lr 1e-3 to step 7,000.
# (Starting from the demo's weights instead, `train --init MODEL --n-mels 40 ...`, was tried: after 500 steps the
# model still ignored its mel, docs/VOCODER.md.)
# Stage 2 (runs/piano-vocoder-3): a new run from stage 1's step-7,000 weights at lr 3e-4, to STEPS;
# resumed when its run directory exists, so training can go on across sessions. Its best validation's weights
# (best.pt) are exported to runs/piano-vocoder-candidate.safetensors and measured.
# The bundled file is stage 2 at step 1,000 with plain sampling (docs/VOCODER.md); `bundled` retrains stage 2 to
# that step in a directory of its own (training is deterministic on one machine) and writes it.
set -euo pipefail
data=${1:-../shared/data/chopin-piano-4410}
steps=${2:-20000}
export OMP_NUM_THREADS=1
# the step a run directory's checkpoint is at (resuming a run that is already there is an error)
step_of() { python -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$1/checkpoint.pt"; }
common=(--batch-size 8 --target-length 2048 --validation-files piece6.flac --validate-every 250
        --checkpoint-every 250)
# stage 1's weights at step 7,000 in runs/piano-vocoder-2.safetensors (its run trained, or resumed to that step, where
# it is missing or short)
stage1_weights() {
  if [ -f runs/piano-vocoder-2.safetensors ]; then return; fi
  if [ -f runs/piano-vocoder-2/checkpoint.pt ]; then
    [ "$(step_of runs/piano-vocoder-2)" -ge 7000 ] || fastwavenet train --resume runs/piano-vocoder-2 --steps 7000
  else
    fastwavenet train "$data" --config recipes/piano-demo.json --n-mels 40 --hop-length 64 --n-fft 256 \
      --out runs/piano-vocoder-2 --steps 7000 --lr 1e-3 --seed 2 "${common[@]}"
  fi
  fastwavenet export runs/piano-vocoder-2 -o runs/piano-vocoder-2.safetensors
}
if [ "$steps" = bundled ]; then
  stage1_weights
  if [ -f runs/piano-vocoder-3-at-1000/checkpoint.pt ]; then
    [ "$(step_of runs/piano-vocoder-3-at-1000)" -ge 1000 ] || fastwavenet train --resume runs/piano-vocoder-3-at-1000 --steps 1000
  else
    fastwavenet train "$data" --init runs/piano-vocoder-2.safetensors --out runs/piano-vocoder-3-at-1000 \
      --steps 1000 --lr 3e-4 --seed 3 "${common[@]}"
  fi
  fastwavenet export runs/piano-vocoder-3-at-1000 -o fastwavenet/models/piano-vocoder.safetensors \
    --temperature 1.0 --top-p 1.0
  exit 0
fi
if [ ! -f runs/piano-vocoder-3/checkpoint.pt ]; then
  stage1_weights
  fastwavenet train "$data" --init runs/piano-vocoder-2.safetensors --out runs/piano-vocoder-3 --steps "$steps" \
    --lr 3e-4 --seed 3 "${common[@]}"
else
  fastwavenet train --resume runs/piano-vocoder-3 --steps "$steps"
fi
fastwavenet export runs/piano-vocoder-3/best.pt -o runs/piano-vocoder-candidate.safetensors
python recipes/vocoder_eval.py runs/piano-vocoder-candidate.safetensors "$data/piece6.flac"
