#!/usr/bin/env bash
# The paper's claims measured in the offline shapes world: `asyrp demo` for 3 seeds × (conv block, a transformer
# block) on one direction, plus the h-swap ceiling (does h carry the attribute at all?), collected into
# $RUNS/shapes_study/table.md. About 4 minutes per run on 2 CPU cores.
set -euo pipefail
RUNS="${RUNS:-runs}"
DIRECTION="${DIRECTION:-color}"
KINDS="${KINDS:-conv pixel_channel}"
SEEDS="${SEEDS:-0 1 2}"
OUT="$RUNS/shapes_study/$DIRECTION"
mkdir -p "$OUT"

for kind in $KINDS; do
  for seed in $SEEDS; do
    dir="$OUT/${kind}_seed$seed"
    if [[ -f "$dir/metrics.json" ]]; then echo "done: $dir"; continue; fi
    asyrp demo --direction "$DIRECTION" --kind "$kind" --seed "$seed" --out "$dir" --no-progress
  done
done

python - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = [json.loads(p.read_text()) for p in sorted(out.glob("*/metrics.json"))]
rows = ["| block | seed | success @1 | preservation @1 | valid @1 | S_dir @1 | S_dir @−1 | success by strength | monotonic | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
for m in runs:
    neg = next((p for p in m["per_strength"] if p["strength"] == -1.0), None)
    rows.append(f"| {m['block']} | {m['seed']} | {m['edit_success']:.2f} | {m['preservation']:.2f} | {m['valid']:.2f} | "
                f"{m['s_dir']:.3f} | {neg['s_dir'] if neg else float('nan'):.3f} | "
                f"{' / '.join(f'{v:.2f}' for v in m['linearity']['edit_success'])} | {m['linearity']['monotonic']} | "
                f"{m['seconds']} |")
for kind in sorted({m["block"] for m in runs}):
    ms = [m for m in runs if m["block"] == kind]
    for key in ("edit_success", "preservation", "s_dir"):
        vals = [m[key] for m in ms]
        rows.append(f"\n{kind} {key}: mean {statistics.mean(vals):.3f}, min {min(vals):.3f}, max {max(vals):.3f} "
                    f"over seeds {[m['seed'] for m in ms]}")
if runs and "h_swap" in runs[0]:
    rows.append(f"\nh-swap ceiling (seed 0 run): {json.dumps(runs[0]['h_swap'])}")
(out / "table.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
