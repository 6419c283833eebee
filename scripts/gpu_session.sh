#!/usr/bin/env bash
# One short GPU session, as run on a lent H100/H200 (15 minutes of device time in all):
#   1. the GPU benchmarks (benchmarks/bench.py with its numerical guard, benchmarks/bench_eval.py on 1000 pairs),
#      alone on the GPU so that their timings are clean;
#   2. for the rest of the budget, four shapes-world DDPMs with the h-only decoder (issue 5) trained side by side:
#      a calibration of each run's speed (CALIB steps, 100 by default), then each run resumed with as many steps as
#      fit before the deadline;
#   3. with what is left, bench.py --compile.
# Usage, in the repository root of the GPU machine:
#   OUT=DIR INIT=ddpm.pt [BUDGET=SECONDS] bash scripts/gpu_session.sh
# A CPU dry run of the plumbing: DEVICE=cpu BENCH=0 BATCH=2 CALIB=4 EVAL=4 BUDGET=120 OUT=... INIT=... bash scripts/gpu_session.sh
# INIT is the h-only T = 400 model the fine-tunes start from (runs/s5/honly400_ft2/ddpm.pt, blogpost.md §4).
# Writes into OUT: console.txt, bench.jsonl, one <run>.pt (the exported ddpm.pt) per training, runs.tar (their logs,
# eval.json and samples.png).
set -euo pipefail  # each step that may fail on its own says so (|| ...), so that the session goes on
OUT=${OUT:?set OUT}; INIT=${INIT:?set INIT}; BUDGET=${BUDGET:-520}
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; BENCH=${BENCH:-1}; BATCH=${BATCH:-128}; CALIB=${CALIB:-100}; EVAL=${EVAL:-200}
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
exec > >(tee -a "$OUT/console.txt") 2>&1
if [ "$BENCH" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  echo "== benchmarks ($(left) s left)"
  timeout 170 $PY benchmarks/bench.py --out "$OUT/bench.jsonl" || echo "bench.py exit $?"
  timeout 100 $PY benchmarks/bench_eval.py --n 1000 --device cuda --out "$OUT/bench.jsonl" || echo "bench_eval exit $?"
fi

echo "== shapes-world trainings ($(left) s left)"
W=${W:-/tmp/world_runs}; rm -rf "$W"; mkdir -p "$W"; pids=()
COMMON=(--batch-size "$BATCH" --ch 64 --attn 8 --offset-noise 0.1 --h-only-from-t 400 --device "$DEVICE" --threads 2
        --warmup "$CALIB" --log-every $(( CALIB / 2 )) --ckpt-every 1000 --eval-samples "$EVAL" --eval-invert 0
        --no-progress)
declare -A ARGS=(
  [ft3]="--ch-mult 1,1,2,2 --init-from $INIT --lr 3e-4"
  [ft3_obj4]="--ch-mult 1,1,2,2 --init-from $INIT --lr 3e-4 --object-weight 4"
  [scratch_obj4]="--ch-mult 1,1,2,2 --antisym-init --lr 1e-3 --object-weight 4"
  [b8_obj4]="--ch-mult 1,2,2 --antisym-init --lr 1e-3 --object-weight 4"
)
# (Explicit pids: a bare `wait` would also wait for the tee above.)
# Calibration: CALIB steps, all inside the warm-up (whose learning rate does not depend on --steps), then a stop.
for r in "${!ARGS[@]}"; do
  $PY -m asyrp train-backbone --out "$W/$r" "${COMMON[@]}" ${ARGS[$r]} --steps 1000000 --stop-at "$CALIB" \
      > "$W/$r.out" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}" || echo "a calibration run failed (see its .out)"; pids=()
reserve=50  # export, 200 evaluation samples, copying
for r in "${!ARGS[@]}"; do
  rate=$($PY -c "import json,sys; L=[json.loads(l) for l in open(sys.argv[1])]; print((L[-1]['seconds']-L[0]['seconds'])/(L[-1]['step']-L[0]['step']))" "$W/$r/ddpm_train_log.jsonl") || { echo "$r: no calibration log"; continue; }
  steps=$($PY -c "import sys; print(int(sys.argv[4]) + int(0.88 * (int(sys.argv[1]) - int(sys.argv[3])) / float(sys.argv[2])))" "$(left)" "$rate" "$reserve" "$CALIB")
  echo "$r: $rate s/step while calibrating; --steps $steps"
  $PY -m asyrp train-backbone --out "$W/$r" "${COMMON[@]}" ${ARGS[$r]} --steps "$steps" --resume >> "$W/$r.out" 2>&1 &
  pids+=($!)
done
running() { for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && echo "$pid"; done; return 0; }
while [ -n "$(running)" ] && [ "$(left)" -gt 25 ]; do sleep 2; done
for pid in $(running); do echo "killing $pid at the deadline"; kill "$pid" || true; done
wait "${pids[@]}" || echo "a training run failed or was stopped (see its .out)"
for r in "${!ARGS[@]}"; do
  if [ ! -f "$W/$r/ddpm.pt" ]; then  # interrupted: export the EMA of its last checkpoint, marked as such
    echo "$r: not finished; exporting its last checkpoint"
    $PY -c "
import sys, torch; from pathlib import Path; from asyrp.worlds.train_backbone import export
ck = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
export(ck['ema'], ck['config'], {'steps': ck['step'], 'interrupted': True, 'args': ck['args']}, Path(sys.argv[2]))
print('exported step', ck['step'])" "$W/$r/checkpoint.pt" "$W/$r/ddpm.pt" || echo "$r: no checkpoint to export"
  fi
  cp "$W/$r/ddpm.pt" "$OUT/$r.pt" || true
  tail -3 "$W/$r.out" || true
done
(cd "$W" && tar cf "$OUT/runs.tar" --exclude=checkpoint.pt --exclude=ddpm.pt .)

echo "== compiled benchmark ($(left) s left)"
if [ "$(left)" -gt 90 ]; then
  timeout $(( $(left) - 5 )) $PY benchmarks/bench.py --compile --out "$OUT/bench.jsonl" || echo "bench.py --compile exit $?"
fi
echo "== done ($(left) s left)"
