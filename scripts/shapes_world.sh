#!/usr/bin/env bash
# Rebuild the offline shapes world shipped in the package: train the tiny DDPM and the tiny CLIP from scratch
# (seeded; each run resumes from its checkpoint.pt when rerun), then copy ddpm.pt, clip.pt, the two training logs,
# the sample grid and their eval.json files into src/asyrp/resources/worlds/shapes/, measure the new DDPM's readiness
# for an edit in h (issue 19; no training) into readiness.json there, and write MODEL_CARD.md.
# About an hour each on 2 CPU cores; a few minutes on a GPU (DEVICE=cuda).
set -euo pipefail

RUNS="${RUNS:-runs}"
DEVICE="${DEVICE:-cpu}"
THREADS="${THREADS:-2}"
DEST="${DEST:-src/asyrp/resources/worlds/shapes}"

DDPM_ARGS=(--steps 2700 --batch-size 32 --ch 64 --ch-mult 1,1,2,2 --attn 8 --offset-noise 0.1 --antisym-init
           --ckpt-every 300)
CLIP_ARGS=(--steps 1200 --batch-size 128)

asyrp train-backbone --out "$RUNS/shapes_ddpm" --device "$DEVICE" --threads "$THREADS" --resume "${DDPM_ARGS[@]}"
asyrp train-clip --out "$RUNS/shapes_clip" --device "$DEVICE" --threads "$THREADS" --resume "${CLIP_ARGS[@]}"

python -m asyrp.worlds.probe_h --ddpm "$RUNS/shapes_ddpm/ddpm.pt" --threads "$THREADS" --readiness \
  --out "$DEST/readiness.json"
python -m asyrp.worlds.card --ddpm "$RUNS/shapes_ddpm" --clip "$RUNS/shapes_clip" --dest "$DEST" \
  --command-ddpm "asyrp train-backbone --out $RUNS/shapes_ddpm ${DDPM_ARGS[*]}" \
  --command-clip "asyrp train-clip --out $RUNS/shapes_clip ${CLIP_ARGS[*]}" \
  --machine "${MACHINE:-$DEVICE, $THREADS torch threads}"
