#!/usr/bin/env bash
# Family "best_vs_original": The extension's pc-h8 model vs the released conv directions, one evaluation pipeline.
# Regenerates the earlier reproduction's Table 5.
# Config: configs/experiments/best_vs_original.yaml (every hyperparameter is there; `asyrp run-experiment ... --dry-run` shows
# what would run). Run from the repository root with the asyrp environment active. Every step skips what is already
# done, so the script can be rerun after an interruption.
set -euo pipefail

# ---- settings (override from the environment) ----
BACKBONE="${ASYRP_BACKBONE:-celeba-hq}"   # the CelebA-HQ 256 DDPM (registry name) or a U-Net file
CELEBA_HQ="${CELEBA_HQ:-data/celeba_hq}"   # holds LMDB_train / LMDB_test (asyrp prepare-lmdb SRC OUT)
RUNS="${RUNS:-runs}"                       # results root: $RUNS/best_vs_original/<run>/, $RUNS/best_vs_original/results.json
GPUS="${GPUS:-1}"                          # >1: data-parallel training / sharded editing with torchrun
export ASYRP_BACKBONE="$BACKBONE" CELEBA_HQ   # the family file reads them as ${ASYRP_BACKBONE} / ${CELEBA_HQ}
CONFIG=configs/experiments/best_vs_original.yaml

# 1. weights: backbone, CLIPs (training: ViT-B/16; S_dir: ViT-L/14), FID Inception, released directions
#    (cached in $ASYRP_HOME, by default .cache/asyrp in your home folder; offline: ASYRP_WEIGHTS_DIR)
asyrp download ddpm-celeba-hq clip-ViT-B/16 clip-ViT-L/14 inception-fid asyrp-smiling asyrp-sad asyrp-tanned asyrp-pixar asyrp-neanderthal

# 2. DDIM inversions of the training and test images, computed once and cached
asyrp precompute --backbone "$BACKBONE" --data "$CELEBA_HQ" --split train --n 1000
asyrp precompute --backbone "$BACKBONE" --data "$CELEBA_HQ" --split test --n 100

# 3. train → edit → evaluate every run, then collect $RUNS/best_vs_original/results.json
if [[ "$GPUS" -gt 1 ]]; then
  torchrun --standalone --nproc_per_node="$GPUS" -m asyrp run-experiment "$CONFIG" --out "$RUNS"
else
  asyrp run-experiment "$CONFIG" --out "$RUNS"
fi

# 4. figures and Markdown tables from the results JSON
asyrp figures --results "$RUNS/best_vs_original/results.json" --out "$RUNS/best_vs_original/figures"
asyrp report --results "$RUNS/best_vs_original/results.json" --out "$RUNS/best_vs_original/tables"
