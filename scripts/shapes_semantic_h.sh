#!/usr/bin/env bash
# Issue 19's experiment of 2026-12-05 (blogpost.md §4, "A supervised h"): fine-tune the shipped tiny DDPM so that its
# decoder draws the predicted x0 from h alone at t >= 400 (--h-only-from-t 400), with the object's pixels weighted
# (--object-weight 4) and a linear read-out of shape / colour / size / background from h trained beside it
# (--h-attribute-weight 0.3, not shipped); then the readiness probe (no block trained) and the colour demo over 3 seeds
# at t_edit 400 and 500. Nothing is shipped: the model stays in $RUNS.
# Measured on the 2-core CPU: 33.5 min of training (2 threads), about 1.5 min for the probe, 2 min per demo run alone.
set -euo pipefail

RUNS="${RUNS:-runs/semantic_h}"
THREADS="${THREADS:-2}"
SHIPPED="$(python -c 'import asyrp, pathlib; print(pathlib.Path(asyrp.__file__).parent / "resources/worlds/shapes")')"
NET=(--batch-size 32 --ch 64 --ch-mult 1,1,2,2 --attn 8 --offset-noise 0.1 --h-only-from-t 400 --object-weight 4
     --h-attribute-weight 0.3 --warmup 100 --ckpt-every 300 --eval-samples 200 --eval-invert 0 --threads "$THREADS")

asyrp train-backbone --out "$RUNS/aux400" --steps 2400 --lr 5e-4 --init-from "$SHIPPED/ddpm.pt" --resume "${NET[@]}"

world="$RUNS/world_aux400"   # asyrp demo --world-dir wants ddpm.pt and clip.pt side by side
mkdir -p "$world"
cp "$RUNS/aux400/ddpm.pt" "$world/ddpm.pt"
cp "$SHIPPED/clip.pt" "$world/clip.pt"
python -m asyrp.worlds.probe_h --ddpm "$world/ddpm.pt" --readiness --t-edit 400 --threads "$THREADS" \
  --out "$RUNS/readiness_aux400.json"
for t_edit in 400 500; do
  asyrp demo --world-dir "$world" --t-edit "$t_edit" --lr 1e-3 --l1-weight 1 --seeds 0,1,2 --no-progress \
    --out "$RUNS/demo_aux400_t$t_edit"
done
