#!/usr/bin/env bash
# Issue 19's experiments of 2026-12-05 (blogpost.md §4, "A supervised h"): fine-tune the base tiny DDPM (BASE: the
# from-scratch model of scripts/shapes_world.sh's first step, shipped until 2026-12-06) so that its
# decoder draws the predicted x0 from h alone at t >= H_ONLY (--h-only-from-t), with the object's pixels weighted
# (--object-weight 4) and a linear read-out of shape / colour / size / background from h trained beside it
# (--h-attribute-weight 0.3, not shipped); then the readiness probe at t_edit = H_ONLY (no block trained) and the
# colour demo over 3 seeds at each t_edit of DEMO_T_EDITS. Nothing is shipped: the models stay in $RUNS.
#   H_ONLY=400 (default): demos at t_edit 400 and 500 with --lr 1e-3 --l1-weight 1.
#   H_ONLY=300 DEMO_T_EDITS=300 DEMO_ARGS="--lr 1e-3 --l1-weight 3 --max-delta-ratio 1" CONTINUE=1: the second
#   experiment; CONTINUE=1 also fine-tunes the result for another 2400 steps (lr 3e-4, model "aux${H_ONLY}b") and
#   probes and demos both models.
#   CLIP_RN=1: the demos use a tiny CLIP with a ResNet image tower that sees shape (asyrp train-clip --vision resnet,
#   800 steps, 4.2 min) instead of the ViT one of the base world (trained here otherwise: 1200 steps, 28 min), which
#   is blind to shape. The best demo measured (success 0.96,
#   preservation 0.50, ‖Δh‖/‖h‖ 0.50 at strength 1 over 3 seeds, model aux300b):
#   CLIP_RN=1 H_ONLY=300 CONTINUE=1 DEMO_T_EDITS=500 DEMO_ARGS="--lr 1e-3 --l1-weight 3 --max-delta-ratio 0.5"
# Measured on the 2-core CPU: 19.8-33.5 min per training run (2 threads), 20 s to 1.5 min for the probe, 1.3-2 min per
# demo run alone.
set -euo pipefail

RUNS="${RUNS:-runs/semantic_h}"
THREADS="${THREADS:-2}"
H_ONLY="${H_ONLY:-400}"
DEMO_T_EDITS="${DEMO_T_EDITS:-$H_ONLY 500}"
DEMO_ARGS="${DEMO_ARGS:---lr 1e-3 --l1-weight 1}"
BASE="${BASE:-runs/shapes_ddpm/ddpm.pt}"
[ -f "$BASE" ] || { echo "no base DDPM at $BASE: train it first (the first command of scripts/shapes_world.sh) or set BASE" >&2; exit 2; }
NET=(--batch-size 32 --ch 64 --ch-mult 1,1,2,2 --attn 8 --offset-noise 0.1 --h-only-from-t "$H_ONLY" --object-weight 4
     --h-attribute-weight 0.3 --warmup 100 --ckpt-every 300 --eval-samples 200 --eval-invert 0 --threads "$THREADS")

asyrp train-backbone --out "$RUNS/aux$H_ONLY" --steps 2400 --lr 5e-4 --init-from "$BASE" --resume "${NET[@]}"
models=("aux$H_ONLY")
if [ "${CONTINUE:-0}" = 1 ]; then
  asyrp train-backbone --out "$RUNS/aux${H_ONLY}b" --steps 2400 --lr 3e-4 --init-from "$RUNS/aux$H_ONLY/ddpm.pt" \
    --resume "${NET[@]}"
  models+=("aux${H_ONLY}b")
fi
if [ "${CLIP_RN:-0}" != 1 ]; then
  asyrp train-clip --out "$RUNS/clip_vit" --steps 1200 --batch-size 128 --threads "$THREADS" --resume
  CLIP="$RUNS/clip_vit/clip.pt"
else
  asyrp train-clip --out "$RUNS/clip_rn32" --vision resnet --resnet-width 32 --steps 800 --eval-every 400 \
    --ckpt-every 200 --threads "$THREADS" --resume
  CLIP="$RUNS/clip_rn32/clip.pt"
fi

for model in "${models[@]}"; do
  world="$RUNS/world_$model"   # asyrp demo --world-dir wants ddpm.pt and clip.pt side by side
  mkdir -p "$world"
  cp "$RUNS/$model/ddpm.pt" "$world/ddpm.pt"
  cp "$CLIP" "$world/clip.pt"
  python -m asyrp.worlds.probe_h --ddpm "$world/ddpm.pt" --readiness --t-edit "$H_ONLY" --threads "$THREADS" \
    --out "$RUNS/readiness_$model.json"
  for t_edit in $DEMO_T_EDITS; do
    # shellcheck disable=SC2086  # DEMO_ARGS is a list of flags
    asyrp demo --world-dir "$world" --t-edit "$t_edit" $DEMO_ARGS --seeds 0,1,2 --no-progress \
      --out "$RUNS/demo_${model}_t$t_edit"
  done
done
