#!/usr/bin/env bash
# Rebuild the offline shapes world shipped in the package (blogpost.md §4, "Shipped (2026-12-06)"):
#   1. the base tiny DDPM, from scratch (2700 steps);
#   2. two fine-tunes of it in which the decoder draws the predicted x0 from h alone at t >= 300 (--h-only-from-t),
#      with the object's pixels weighted and a linear read-out of the attributes from h trained beside it (not
#      shipped): 2400 steps at lr 5e-4, then 2400 at 3e-4;
#   3. three fine-tunes of that in which, at t >= 300, the decoder predicts x0 with skips computed from x_t with its
#      hue turned at random (--x0-from-t --skip-hue-rotation: the skips show outline, size and background, h must
#      give the colour): 1500 steps at lr 5e-4; then 1500 with h taken from another image of the same colour
#      (--h-from-color-partner); then 1500 more at 3e-4 -- the shipped ddpm.pt;
#   4. a tiny CLIP with a ResNet image tower (it sees shape; the ViT one does not), width CLIP_WIDTH;
#   5. copy both with their logs and eval.json files into src/asyrp/resources/worlds/shapes/, measure the DDPM's
#      readiness for an edit in h along the demo's path (inversion to t_0 = 600, h swapped at t >= 300; issue 19; no
#      training) into readiness.json there, write MODEL_CARD.md;
#   6. retrain the direction the app ships (asyrp demo with its defaults, seed 0) and copy its delta block.
# Each run is seeded and resumes from its checkpoint.pt when rerun; on a CPU the weights are not bit-reproducible
# (threads sum in another order), so a rebuild is a model of the same losses, not the same file. Measured on the
# 2-core CPU: about 78 min for the base DDPM, 13-24 min per fine-tune (plus about 9 min for the last one's
# evaluation on 1000 samples and 200 inversions), 2.5 min for the width-16 CLIP, a few minutes for the rest.
set -euo pipefail

RUNS="${RUNS:-runs}"
DEVICE="${DEVICE:-cpu}"
THREADS="${THREADS:-2}"
DEST="${DEST:-src/asyrp/resources/worlds/shapes}"
CLIP_WIDTH="${CLIP_WIDTH:-16}"

BASE_ARGS=(--steps 2700 --batch-size 32 --ch 64 --ch-mult 1,1,2,2 --attn 8 --offset-noise 0.1 --antisym-init
           --ckpt-every 300)
H_ARGS=(--batch-size 32 --ch 64 --ch-mult 1,1,2,2 --attn 8 --offset-noise 0.1 --h-only-from-t 300 --object-weight 4
        --h-attribute-weight 0.3 --warmup 100 --ckpt-every 300)
HUE_ARGS=(--steps 1500 --batch-size 32 --ch 64 --ch-mult 1,1,2,2 --attn 8 --offset-noise 0.1 --x0-from-t 300
          --skip-hue-rotation --object-weight 4 --h-attribute-weight 0.3 --warmup 100 --ckpt-every 300)
CLIP_ARGS=(--vision resnet --resnet-width "$CLIP_WIDTH" --steps 800 --eval-every 400 --ckpt-every 200)
RUN=(--device "$DEVICE" --threads "$THREADS" --resume)

asyrp train-backbone --out "$RUNS/shapes_ddpm" "${RUN[@]}" "${BASE_ARGS[@]}"
asyrp train-backbone --out "$RUNS/shapes_ddpm_h1" --steps 2400 --lr 5e-4 --init-from "$RUNS/shapes_ddpm/ddpm.pt" \
  --eval-samples 200 --eval-invert 0 "${RUN[@]}" "${H_ARGS[@]}"
asyrp train-backbone --out "$RUNS/shapes_ddpm_h2" --steps 2400 --lr 3e-4 --init-from "$RUNS/shapes_ddpm_h1/ddpm.pt" \
  --eval-samples 200 --eval-invert 0 "${RUN[@]}" "${H_ARGS[@]}"
asyrp train-backbone --out "$RUNS/shapes_ddpm_hue" --lr 5e-4 --init-from "$RUNS/shapes_ddpm_h2/ddpm.pt" \
  --eval-samples 200 --eval-invert 0 "${RUN[@]}" "${HUE_ARGS[@]}"
asyrp train-backbone --out "$RUNS/shapes_ddpm_huep" --lr 5e-4 --init-from "$RUNS/shapes_ddpm_hue/ddpm.pt" \
  --h-from-color-partner --eval-samples 200 --eval-invert 0 "${RUN[@]}" "${HUE_ARGS[@]}"
asyrp train-backbone --out "$RUNS/shapes_ddpm_huep2" --lr 3e-4 --init-from "$RUNS/shapes_ddpm_huep/ddpm.pt" \
  --h-from-color-partner --eval-samples 1000 --eval-invert 200 "${RUN[@]}" "${HUE_ARGS[@]}"
asyrp train-clip --out "$RUNS/shapes_clip_rn$CLIP_WIDTH" "${RUN[@]}" "${CLIP_ARGS[@]}"

python -m asyrp.worlds.card --ddpm "$RUNS/shapes_ddpm_huep2" --clip "$RUNS/shapes_clip_rn$CLIP_WIDTH" --dest "$DEST" \
  --command-ddpm "asyrp train-backbone --out $RUNS/shapes_ddpm ${BASE_ARGS[*]}; twice asyrp train-backbone \
--init-from <the previous ddpm.pt> --steps 2400 --lr 5e-4 (then 3e-4) ${H_ARGS[*]}; then three times asyrp \
train-backbone --init-from <the previous ddpm.pt> --lr 5e-4 (then 5e-4 and 3e-4 with --h-from-color-partner) \
${HUE_ARGS[*]} (scripts/shapes_world.sh)" \
  --command-clip "asyrp train-clip --out $RUNS/shapes_clip_rn$CLIP_WIDTH ${CLIP_ARGS[*]}" \
  --machine "${MACHINE:-$DEVICE, $THREADS torch threads}"
python -m asyrp.worlds.probe_h --threads "$THREADS" --readiness --out "$DEST/readiness.json"
python -m asyrp.worlds.card --rerender --dest "$DEST"

asyrp demo --out "$RUNS/shapes_direction" --seed 0 --no-progress
cp "$RUNS/shapes_direction/train/delta.pt" "$DEST/directions/color_red_blue.pt"
