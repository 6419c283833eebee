#!/usr/bin/env bash
# Family "reproduction": Released Asyrp directions (13 attributes) and the same attributes retrained with the reference settings.
# Regenerates the earlier reproduction's Table 2 (S_dir), Table 3 (FID), Table 4 (FID by group: set ASYRP_RACE_GROUPS), Fig. 7, Fig. 8, Fig. 9, Fig. 12.
# Config: configs/experiments/reproduction.yaml (every hyperparameter is there; `asyrp run-experiment ... --dry-run` shows
# what would run). Run from the repository root with the asyrp environment active. Every step skips what is already
# done, so the script can be rerun after an interruption.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # settings: BACKBONE, CELEBA_HQ, RUNS, GPUS

# 1. weights: backbone, CLIPs (training: ViT-B/16; S_dir: ViT-L/14), FID Inception, released directions
#    (cached in $ASYRP_HOME, by default .cache/asyrp in your home folder; offline: ASYRP_WEIGHTS_DIR)
asyrp download ddpm-celeba-hq clip-ViT-B/16 clip-ViT-L/14 inception-fid asyrp-smiling asyrp-sad asyrp-angry asyrp-tanned asyrp-man asyrp-woman asyrp-young asyrp-curly_hair asyrp-nicolas asyrp-pixar asyrp-neanderthal asyrp-modigliani asyrp-frida

# 2. DDIM inversions of the training and test images, computed once and cached
asyrp precompute --backbone "$BACKBONE" --data "$CELEBA_HQ" --split train --n 1000
asyrp precompute --backbone "$BACKBONE" --data "$CELEBA_HQ" --split test --n 100

# 3. train → edit → evaluate every run, collect $RUNS/reproduction/results.json, figures and tables
run_family reproduction
