#!/usr/bin/env bash
# Submit experiment families to SLURM, each as a chain of jobs:
#
#   precompute.job ─▶ train_array.job (wave 0) ─▶ train_array.job (wave 1) … ─▶ evaluate.job ─▶ figures.job
#
# A wave is an array job with one task per run (`asyrp run-experiment CONFIG --list --wave K`); wave k holds the runs
# that need a run of an earlier wave (transfer learning, edits with another run's checkpoint). Each job waits for
# the previous one to succeed (--dependency=afterok). With GPUS > 1 the waves use train_multigpu.job (torchrun).
#
# Usage (from anywhere; paths are relative to the repository root):
#   src/jobs/submit.sh [--dry-run] [--no-precompute] FAMILY [FAMILY ...]
#   FAMILY: a name from configs/experiments (heads, reproduction, ...) or a YAML path
#   --dry-run: print the sbatch commands (with placeholder job ids) and submit nothing
#   --no-precompute: the inversion cache is already filled
# Example: PARTITION=gpu_a100 ACCOUNT=myproject TIME_TRAIN=12:00:00 src/jobs/submit.sh heads transfer
set -euo pipefail

# ---- settings (override from the environment) ----
PARTITION="${PARTITION:-gpu}"                 # GPU partition (precompute, training, evaluation)
CPU_PARTITION="${CPU_PARTITION:-}"            # partition for figures.job (empty: the cluster's default)
ACCOUNT="${ACCOUNT:-}"                        # --account (empty: your default account)
QOS="${QOS:-}"                                # --qos (empty: none)
GPUS="${GPUS:-1}"                             # GPUs per run (>1: train_multigpu.job; needs batch size ≥ GPUS)
GPU_TYPE="${GPU_TYPE:-}"                      # e.g. a100 → --gres=gpu:a100:N (empty: any GPU)
CPUS_PER_GPU="${CPUS_PER_GPU:-8}"
MEM_PER_GPU="${MEM_PER_GPU:-32G}"
TIME_PRECOMPUTE="${TIME_PRECOMPUTE:-04:00:00}"
TIME_TRAIN="${TIME_TRAIN:-08:00:00}"          # per run (resubmit a timed-out wave: it resumes)
TIME_EVALUATE="${TIME_EVALUATE:-04:00:00}"
TIME_FIGURES="${TIME_FIGURES:-00:30:00}"
MAX_PARALLEL="${MAX_PARALLEL:-8}"             # array tasks running at once (--array=0-N%MAX_PARALLEL)
N_TRAIN="${N_TRAIN:-1000}"                    # images precompute inverts (the families use at most these)
N_TEST="${N_TEST:-100}"
REPO_DIR="${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
CONFIG_DIR="${CONFIG_DIR:-configs/experiments}"  # relative to REPO_DIR unless absolute
RUNS_DIR="${RUNS_DIR:-runs}"                  # results root, relative to REPO_DIR unless absolute
LOG_DIR="${LOG_DIR:-slurm_logs}"              # job logs, relative to REPO_DIR unless absolute
PYTHON="${PYTHON:-python}"                    # the environment's python (lists the runs of a family)
SBATCH="${SBATCH:-sbatch}"

DRY_RUN=0
PRECOMPUTE=1
FAMILIES=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --no-precompute) PRECOMPUTE=0 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "submit.sh: unknown option $arg" >&2; exit 2 ;;
    *) FAMILIES+=("$arg") ;;
  esac
done
if [[ ${#FAMILIES[@]} -eq 0 ]]; then
  echo "usage: src/jobs/submit.sh [--dry-run] [--no-precompute] FAMILY [FAMILY ...]" >&2
  exit 2
fi

cd "$REPO_DIR"
JOBS_DIR=src/jobs
COMMON=(--parsable --partition="$PARTITION")
if [[ -n "$ACCOUNT" ]]; then COMMON+=(--account="$ACCOUNT"); fi
if [[ -n "$QOS" ]]; then COMMON+=(--qos="$QOS"); fi
GRES="gpu:${GPU_TYPE:+$GPU_TYPE:}"
FAKE_ID_START=1000
FAKE_ID=$FAKE_ID_START

if [[ $DRY_RUN -eq 0 ]]; then
  mkdir -p "$LOG_DIR"
else
  echo "# dry run: nothing is submitted; job ids $((FAKE_ID_START + 1)), $((FAKE_ID_START + 2)), ... are placeholders"
fi


# submit NAME ARGS... : run (or print) sbatch and set JOB to the new job's id
submit() {
  local cmd=("$SBATCH" "$@")
  if [[ $DRY_RUN -eq 1 ]]; then
    local arg line=""
    for arg in "${cmd[@]}"; do  # shell-quoted only where needed, so the line can be pasted
      if [[ "$arg" =~ ^[A-Za-z0-9_./:=,%@+-]+$ ]]; then line+="$arg "; else line+="$(printf '%q' "$arg") "; fi
    done
    echo "${line% }"
    FAKE_ID=$((FAKE_ID + 1))
    JOB="$FAKE_ID"
  else
    JOB="$("${cmd[@]}")"
    JOB="${JOB%%;*}"
    echo "submitted $JOB: ${cmd[*]}" >&2
  fi
}

config_of() {
  local family="$1"
  if [[ -f "$family" ]]; then echo "$family"; else echo "$CONFIG_DIR/$family.yaml"; fi
}

EXPORTS="ALL,REPO_DIR=$REPO_DIR,RUNS_DIR=$RUNS_DIR"
PRE_DEP=()
if [[ $PRECOMPUTE -eq 1 ]]; then
  submit "${COMMON[@]}" --job-name=asyrp-precompute --gres="${GRES}1" --cpus-per-task="$CPUS_PER_GPU" \
    --mem="$MEM_PER_GPU" --time="$TIME_PRECOMPUTE" --output="$LOG_DIR/%x_%j.out" \
    --export="$EXPORTS,N_TRAIN=$N_TRAIN,N_TEST=$N_TEST" "$JOBS_DIR/precompute.job"
  PRE_DEP=(--dependency="afterok:$JOB")
fi

for family in "${FAMILIES[@]}"; do
  CONFIG="$(config_of "$family")"
  if [[ ! -f "$CONFIG" ]]; then echo "submit.sh: no family file $CONFIG" >&2; exit 2; fi
  NAME="$(basename "$CONFIG" .yaml)"
  # "WAVE RUN" lines (the same order as `--list --wave WAVE`, which the array tasks read)
  WAVE_LINES="$("$PYTHON" -m asyrp run-experiment "$CONFIG" --out "$RUNS_DIR" --waves)"
  if [[ -z "$WAVE_LINES" ]]; then echo "submit.sh: $CONFIG lists no runs" >&2; exit 2; fi
  LAST_WAVE="$(awk 'END { print $1 }' <<< "$WAVE_LINES")"
  DEP=("${PRE_DEP[@]}")
  for ((wave = 0; wave <= LAST_WAVE; wave++)); do
    N="$(awk -v w="$wave" '$1 == w' <<< "$WAVE_LINES" | wc -l)"
    if [[ "$N" -eq 0 ]]; then continue; fi
    ARGS=("${COMMON[@]}" "${DEP[@]}" --job-name="asyrp-$NAME-w$wave" --array="0-$((N - 1))%$MAX_PARALLEL"
          --time="$TIME_TRAIN" --output="$LOG_DIR/%x_%A_%a.out")
    if [[ "$GPUS" -gt 1 ]]; then
      submit "${ARGS[@]}" --gres="${GRES}$GPUS" --cpus-per-task="$((CPUS_PER_GPU * GPUS))" \
        --mem="$(( ${MEM_PER_GPU%G} * GPUS ))G" --export="$EXPORTS,CONFIG=$CONFIG,WAVE=$wave,GPUS=$GPUS" \
        "$JOBS_DIR/train_multigpu.job"
    else
      submit "${ARGS[@]}" --gres="${GRES}1" --cpus-per-task="$CPUS_PER_GPU" --mem="$MEM_PER_GPU" \
        --export="$EXPORTS,CONFIG=$CONFIG,WAVE=$wave" "$JOBS_DIR/train_array.job"
    fi
    DEP=(--dependency="afterok:$JOB")
  done
  submit "${COMMON[@]}" "${DEP[@]}" --job-name="asyrp-$NAME-evaluate" --gres="${GRES}1" \
    --cpus-per-task="$CPUS_PER_GPU" --mem="$MEM_PER_GPU" --time="$TIME_EVALUATE" --output="$LOG_DIR/%x_%j.out" \
    --export="$EXPORTS,CONFIG=$CONFIG" "$JOBS_DIR/evaluate.job"
  FIG=(--parsable --dependency="afterok:$JOB" --job-name="asyrp-$NAME-figures" --time="$TIME_FIGURES"
       --output="$LOG_DIR/%x_%j.out" --export="$EXPORTS,CONFIG=$CONFIG,FAMILY=$NAME")
  if [[ -n "$CPU_PARTITION" ]]; then FIG+=(--partition="$CPU_PARTITION"); fi
  if [[ -n "$ACCOUNT" ]]; then FIG+=(--account="$ACCOUNT"); fi
  submit "${FIG[@]}" "$JOBS_DIR/figures.job"
done
