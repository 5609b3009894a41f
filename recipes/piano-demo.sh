#!/usr/bin/env bash
# Trains the demo model that ships inside fastwavenet, on the Chopin piano corpus (4410 Hz), holding piece6 out for
# validation. Run from the repository root:
#   bash recipes/piano-demo.sh [DATA_DIR] [STEPS]      train (or resume) to STEPS, export a candidate
#   bash recipes/piano-demo.sh [DATA_DIR] bundled      rebuild the bundled file
# The runs live in runs/, which the repository does not carry: the recipe trains every stage whose run directory is
# missing and resumes one that stopped short. (Stages 2-5 were in the tree until commit 66976d8, the last to hold
# them: `git restore --source 66976d8 runs/piano-demo-5` brings one back, Adam state included, docs/DEMO_MODEL.md.)
# Stage 1 (runs/piano-demo): 6,000 steps from scratch, lr 1e-3, seed 0.
# Stage 2 (runs/piano-demo-2): a new run from stage 1's weights (`train --init`: fresh Adam, step 0), lr 5e-4,
# seed 1, to step 3,250 (flat at 3.65-3.67 bits from step 1,750).
# Stage 3 (runs/piano-demo-3): a new run from stage 2's step-3,250 weights, lr 2e-4, seed 2, to step 5,000
# (3.555-3.574 from step 4,000).
# Stage 4 (runs/piano-demo-4): a new run from stage 3's step-5,000 weights, lr 1e-4, seed 3, to step 6,750
# (best 3.525).
# Stage 5 (runs/piano-demo-5): a new run from stage 4's step-6,750 weights, lr 1e-4, seed 4, with a moving average
# of the weights (--ema 0.999), to STEPS; resumed when its run directory exists, so training can go on across
# sessions. Its best validation's weights (runs/piano-demo-5/best.pt, the average) are exported to
# runs/piano-demo-candidate.safetensors and measured.
# The bundled file is stage 5's best.pt at step 5750 with the default sampling recipes/sampling_table.py
# chose for it (docs/DEMO_MODEL.md). `bundled` retrains stage 5 to that step in a directory of its own (training is
# deterministic on one machine) and writes it. A candidate replaces it once it is better on validation and its
# output statistics at its own measured default stay within the issue's bounds (docs/DEMO_MODEL.md).
set -euo pipefail
data=${1:-../shared/data/chopin-piano-4410}
steps=${2:-20000}
common=(--batch-size 8 --target-length 2048 --validation-files piece6.flac --validate-every 250
        --checkpoint-every 250)
export OMP_NUM_THREADS=1
# the step a run directory's checkpoint is at (resuming a run that is already there is an error)
step_of() { python -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$1/checkpoint.pt"; }
stage5=(--lr 1e-4 --ema 0.999 --seed 4 "${common[@]}")
# stage 4's weights at step 6,750 in runs/piano-demo-4.safetensors, from stages 1-4 (each trained, or resumed to its
# step, where its run is missing or short)
stage4_weights() {
  if [ -f runs/piano-demo-4.safetensors ]; then return; fi
  if [ ! -f runs/piano-demo-4/checkpoint.pt ]; then
    if [ ! -f runs/piano-demo-3/checkpoint.pt ]; then
      if [ ! -f runs/piano-demo-2/checkpoint.pt ]; then
        if [ ! -f runs/piano-demo-1.safetensors ]; then
          if [ -f runs/piano-demo/checkpoint.pt ]; then
            [ "$(step_of runs/piano-demo)" -ge 6000 ] || fastwavenet train --resume runs/piano-demo --steps 6000
          else
            fastwavenet train "$data" --config recipes/piano-demo.json --out runs/piano-demo --steps 6000 --lr 1e-3 \
              --seed 0 "${common[@]}"
          fi
          fastwavenet export runs/piano-demo -o runs/piano-demo-1.safetensors
        fi
        fastwavenet train "$data" --init runs/piano-demo-1.safetensors --out runs/piano-demo-2 --steps 3250 \
          --lr 5e-4 --seed 1 "${common[@]}"
      else
        [ "$(step_of runs/piano-demo-2)" -ge 3250 ] || fastwavenet train --resume runs/piano-demo-2 --steps 3250
      fi
      fastwavenet export runs/piano-demo-2 -o runs/piano-demo-2.safetensors
      fastwavenet train "$data" --init runs/piano-demo-2.safetensors --out runs/piano-demo-3 --steps 5000 \
        --lr 2e-4 --seed 2 "${common[@]}"
    else
      [ "$(step_of runs/piano-demo-3)" -ge 5000 ] || fastwavenet train --resume runs/piano-demo-3 --steps 5000
    fi
    fastwavenet export runs/piano-demo-3 -o runs/piano-demo-3.safetensors
    fastwavenet train "$data" --init runs/piano-demo-3.safetensors --out runs/piano-demo-4 --steps 6750 \
      --lr 1e-4 --seed 3 "${common[@]}"
  else
    [ "$(step_of runs/piano-demo-4)" -ge 6750 ] || fastwavenet train --resume runs/piano-demo-4 --steps 6750
  fi
  fastwavenet export runs/piano-demo-4 -o runs/piano-demo-4.safetensors
}
if [ "$steps" = bundled ]; then
  stage4_weights
  dir=runs/piano-demo-5-at-5750
  if [ -f "$dir/checkpoint.pt" ]; then
    [ "$(step_of "$dir")" -ge 5750 ] || fastwavenet train --resume "$dir" --steps 5750
  else
    fastwavenet train "$data" --init runs/piano-demo-4.safetensors --out "$dir" --steps 5750 "${stage5[@]}"
  fi
  fastwavenet export "$dir/best.pt" -o fastwavenet/models/piano.safetensors --temperature 1.18 --top-p 1.0
  exit 0
fi
if [ ! -f runs/piano-demo-5/checkpoint.pt ]; then
  stage4_weights
  fastwavenet train "$data" --init runs/piano-demo-4.safetensors --out runs/piano-demo-5 --steps "$steps" "${stage5[@]}"
else
  fastwavenet train --resume runs/piano-demo-5 --steps "$steps"
fi
fastwavenet export runs/piano-demo-5/best.pt -o runs/piano-demo-candidate.safetensors
python recipes/sampling_table.py runs/piano-demo-candidate.safetensors "$data" --streams 16 \
  --temperatures 1.1,1.15,1.2,1.25 --top-p 1.0,0.99
