# Shared by the family scripts (source it; it is not a script of its own).
# Settings come from the environment, with these defaults:
BACKBONE="${ASYRP_BACKBONE:-celeba-hq}"   # the CelebA-HQ 256 DDPM (registry name) or a U-Net file
CELEBA_HQ="${CELEBA_HQ:-data/celeba_hq}"   # holds LMDB_train / LMDB_test (asyrp prepare-lmdb SRC OUT)
RUNS="${RUNS:-runs}"                       # results root: $RUNS/<family>/<run>/, $RUNS/<family>/results.json
GPUS="${GPUS:-1}"                          # >1: data-parallel training / sharded editing with torchrun
                                           #     (training needs batch size ≥ GPUs: keep 1 for batch-1 families)
export ASYRP_BACKBONE="$BACKBONE" CELEBA_HQ   # the family files read them as ${ASYRP_BACKBONE} / ${CELEBA_HQ}

# run_family NAME: train → edit → evaluate every run of configs/experiments/NAME.yaml (each step skips what is
# done, so a rerun resumes), collect $RUNS/NAME/results.json, then its figures and Markdown tables.
run_family() {
  local family="$1" config="configs/experiments/$1.yaml"
  if [[ "$GPUS" -gt 1 ]]; then
    torchrun --standalone --nproc_per_node="$GPUS" -m asyrp run-experiment "$config" --out "$RUNS"
  else
    asyrp run-experiment "$config" --out "$RUNS"
  fi
  asyrp figures --results "$RUNS/$family/results.json" --out "$RUNS/$family/figures"
  asyrp report --results "$RUNS/$family/results.json" --out "$RUNS/$family/tables"
}
