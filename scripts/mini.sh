#!/usr/bin/env bash
# The mini study: `bash scripts/mini.sh` — offline on the shipped shapes world, a few minutes on a 2-core CPU, no
# download. Two tiny families: mini (a trained direction with per-epoch evaluation, a transfer run with a strength
# sweep; ablation-style) and mini_reproduction (two shapes-world directions with a strength sweep each;
# reproduction-style). Their results files are what the four notebooks in demos/ render (tables and figures):
#   ASYRP_RESULTS="$PWD/runs/mini_reproduction/results.json:$PWD/runs/mini/results.json" jupyter lab demos/
# Not a figure of the study. Configs: configs/experiments/mini.yaml, mini_reproduction.yaml; other model files
# (asyrp.backbones.save_unet / save_clip) and FID through the variables below.
set -euo pipefail

# ---- settings (override from the environment) ----
export ASYRP_MINI_BACKBONE="${ASYRP_MINI_BACKBONE:-shapes}"   # U-Net file (or the shipped `shapes` world)
export ASYRP_MINI_CLIP="${ASYRP_MINI_CLIP:-shapes}"           # CLIP file (or `shapes`)
export ASYRP_MINI_INCEPTION="${ASYRP_MINI_INCEPTION:-}"       # FID Inception weights; empty: FID off
export ASYRP_MINI_DEVICE="${ASYRP_MINI_DEVICE:-cpu}"
RUNS="${RUNS:-runs}"

FID=false
if [[ -n "$ASYRP_MINI_INCEPTION" ]]; then FID=true; fi
export ASYRP_MINI_FID="$FID"

for family in mini_reproduction mini; do
  # what would run, then everything (a second call skips what is done)
  asyrp run-experiment "configs/experiments/$family.yaml" --out "$RUNS" --dry-run
  asyrp run-experiment "configs/experiments/$family.yaml" --out "$RUNS"
  # figures and tables
  asyrp figures --results "$RUNS/$family/results.json" --out "$RUNS/$family/figures"
  asyrp report --results "$RUNS/$family/results.json" --out "$RUNS/$family/tables"
done
ROOT="$(cd "$RUNS" && pwd)"
echo "notebooks: ASYRP_RESULTS=\"$ROOT/mini_reproduction/results.json:$ROOT/mini/results.json\" jupyter lab demos/"
