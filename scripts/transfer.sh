#!/usr/bin/env bash
# Family "transfer": pixar → modigliani / neanderthal / smiling transfer vs from scratch.
# Regenerates the earlier reproduction's Fig. 19.
# Config: configs/experiments/transfer.yaml (every hyperparameter is there; `asyrp run-experiment ... --dry-run` shows
# what would run). Run from the repository root with the asyrp environment active. Every step skips what is already
# done, so the script can be rerun after an interruption.
set -euo pipefail

# ---- settings (override from the environment) ----
BACKBONE="${ASYRP_BACKBONE:-celeba-hq}"   # the CelebA-HQ 256 DDPM (registry name) or a U-Net file
CELEBA_HQ="${CELEBA_HQ:-data/celeba_hq}"   # holds LMDB_train / LMDB_test (asyrp prepare-lmdb SRC OUT)
RUNS="${RUNS:-runs}"                       # results root: $RUNS/transfer/<run>/, $RUNS/transfer/results.json
GPUS="${GPUS:-1}"                          # >1: data-parallel training / sharded editing with torchrun
export ASYRP_BACKBONE="$BACKBONE" CELEBA_HQ   # the family file reads them as ${ASYRP_BACKBONE} / ${CELEBA_HQ}
CONFIG=configs/experiments/transfer.yaml

# 1. weights: backbone, CLIPs (training: ViT-B/16; S_dir: ViT-L/14), FID Inception
#    (cached in $ASYRP_HOME, by default .cache/asyrp in your home folder; offline: ASYRP_WEIGHTS_DIR)
asyrp download ddpm-celeba-hq clip-ViT-B/16 clip-ViT-L/14 inception-fid

# 2. DDIM inversions of the training and test images, computed once and cached
asyrp precompute --backbone "$BACKBONE" --data "$CELEBA_HQ" --split train --n 1000
asyrp precompute --backbone "$BACKBONE" --data "$CELEBA_HQ" --split test --n 100

# 3. train → edit → evaluate every run, then collect $RUNS/transfer/results.json
if [[ "$GPUS" -gt 1 ]]; then
  torchrun --standalone --nproc_per_node="$GPUS" -m asyrp run-experiment "$CONFIG" --out "$RUNS"
else
  asyrp run-experiment "$CONFIG" --out "$RUNS"
fi

# 4. figures and Markdown tables from the results JSON
asyrp figures --results "$RUNS/transfer/results.json" --out "$RUNS/transfer/figures"
asyrp report --results "$RUNS/transfer/results.json" --out "$RUNS/transfer/tables"
