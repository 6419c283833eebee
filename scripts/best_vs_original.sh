#!/usr/bin/env bash
# Family "best_vs_original": The extension's pc-h8 model vs the released conv directions, one evaluation pipeline.
# Regenerates the earlier reproduction's Table 5.
# Config: configs/experiments/best_vs_original.yaml (every hyperparameter is there; `asyrp run-experiment ... --dry-run` shows
# what would run). Run from the repository root with the asyrp environment active. Every step skips what is already
# done, so the script can be rerun after an interruption.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # settings: BACKBONE, CELEBA_HQ, RUNS, GPUS

# 1. weights: backbone, CLIPs (training: ViT-B/16; S_dir: ViT-L/14), FID Inception, released directions
#    (cached in $ASYRP_HOME, by default .cache/asyrp in your home folder; offline: ASYRP_WEIGHTS_DIR)
asyrp download ddpm-celeba-hq clip-ViT-B/16 clip-ViT-L/14 inception-fid asyrp-smiling asyrp-sad asyrp-tanned asyrp-pixar asyrp-neanderthal

# 2. DDIM inversions of the training and test images, computed once and cached
asyrp precompute --backbone "$BACKBONE" --data "$CELEBA_HQ" --split train --n 1000
asyrp precompute --backbone "$BACKBONE" --data "$CELEBA_HQ" --split test --n 100

# 3. train → edit → evaluate every run, collect $RUNS/best_vs_original/results.json, figures and tables
run_family best_vs_original
