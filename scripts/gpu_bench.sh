#!/usr/bin/env bash
# The fast path on one GPU (issue 18), in one short session (≤ 8 minutes of work after the machine is up):
#   1. training: the reference preset at batch 1 and at batch 9, the fast preset at batch 9 (compiled, cold cache);
#   2. editing: the reference (fp32, batch 1) and the fast mode (fp16, batch 16, compiled, cold cache);
#   3. the numerical guard (fast vs reference at batch 4, every check);
#   4. the fast training and editing again in a new process: the warm-up with the compile cache on disk;
#   5. the fast preset at batch 32, then at batch 1 with CUDA graphs (compile_mode=reduce-overhead), as time allows.
# Each step is its own process with its own time limit, so a slow compile costs that step only; every step appends
# one JSON line to $OUT/bench.jsonl (see benchmarks/README.md) and its table to $OUT/console.txt.
# Usage, in the repository root of the GPU machine:   OUT=DIR [BUDGET=SECONDS] [PY=python3] bash scripts/gpu_bench.sh
# CPU dry run of the plumbing (tiny models, compile off):  OUT=DIR DEVICE=cpu TINY=1 BUDGET=300 bash scripts/gpu_bench.sh
set -euo pipefail  # each bench step may fail on its own: it says so (|| ...) and the session goes on
OUT=${OUT:?set OUT}; BUDGET=${BUDGET:-480}; PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; TINY=${TINY:-0}
export ASYRP_HOME=${ASYRP_HOME:-/tmp/asyrp_home}   # the compile cache lives in $ASYRP_HOME/compile
export PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
exec > >(tee -a "$OUT/console.txt") 2>&1
EXTRA=(--device "$DEVICE" --out "$OUT/bench.jsonl")
if [ "$TINY" = 1 ]; then EXTRA+=(--tiny --threads 2 --no-compile --train-steps 2 --n-inv-step 6 --n-test-step 6); fi

step() {  # NAME CAP_SECONDS BENCH_ARGS...
  local name=$1 cap=$2; shift 2
  local t; t=$(left); [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 30 ]; then echo "== $name: skipped ($(left) s left)"; return 0; fi
  echo "== $name (limit $t s, $(left) s left, $(date -u +%T))"
  timeout "$t" $PY -m asyrp bench "${EXTRA[@]}" "$@" || echo "== $name: exit $?"
}

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
fi
step train         240 --tasks train --modes reference,reference_batch,fast --train-batch 9 --no-guard
step edit          150 --tasks edit --modes reference,fast --edit-batch 16 --no-guard
step guard          90 --tasks '' --guard
step warm_cache     90 --tasks train,edit --modes fast --train-batch 9 --edit-batch 16 --no-guard
step batch32       100 --tasks train --modes fast --train-batch 32 --no-guard
step batch1_graphs 100 --tasks train --modes fast --train-batch 1 --fast-set compile_mode=reduce-overhead --no-guard
du -sh "$ASYRP_HOME/compile" 2>/dev/null || true
echo "== done ($(left) s left)"
