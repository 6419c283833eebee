#!/usr/bin/env bash
# Family "mini": two tiny runs (a trained direction with per-epoch evaluation, a transfer run with a strength
# sweep) — a smoke test of the whole pipeline on a CPU in minutes. Not a figure of the study.
# Config: configs/experiments/mini.yaml. Needs a U-Net file and a CLIP file (asyrp.backbones.save_unet / save_clip,
# e.g. the shapes world's: `asyrp train-backbone`, `asyrp train-clip`), and FID Inception weights for FID.
set -euo pipefail

# ---- settings (override from the environment) ----
export ASYRP_MINI_BACKBONE="${ASYRP_MINI_BACKBONE:-shapes}"   # U-Net file (or the shipped `shapes` world)
export ASYRP_MINI_CLIP="${ASYRP_MINI_CLIP:-shapes}"           # CLIP file (or `shapes`)
export ASYRP_MINI_INCEPTION="${ASYRP_MINI_INCEPTION:-}"       # FID Inception weights; empty: FID off
export ASYRP_MINI_DEVICE="${ASYRP_MINI_DEVICE:-cpu}"
RUNS="${RUNS:-runs}"
CONFIG=configs/experiments/mini.yaml

FID=true
if [[ -z "$ASYRP_MINI_INCEPTION" ]]; then FID=false; fi

# what would run, then everything (a second call skips what is done)
asyrp run-experiment "$CONFIG" --out "$RUNS" --set evaluate.fid="$FID" --dry-run
asyrp run-experiment "$CONFIG" --out "$RUNS" --set evaluate.fid="$FID"

# figures and tables
asyrp figures --results "$RUNS/mini/results.json" --out "$RUNS/mini/figures"
asyrp report --results "$RUNS/mini/results.json" --out "$RUNS/mini/tables"
