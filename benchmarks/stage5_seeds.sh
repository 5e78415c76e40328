#!/bin/bash
# Stage 5 with more seeds: the tiny run's policy comparison, powered by the seed counts its own table asked for.
# With the profile's 3 seeds, `05_final_accuracy.csv` showed no difference between the DMC policies and `random`
# or `all` (random's 3 seeds spread with SD 0.28) and estimated that about 8 and 4 seeds would show leads that large
# (`vs_dmc_static_seeds_needed`). This reruns stage 5 alone on a copy of a finished tiny run folder (stages 01-04
# done; nothing else changes, every other setting is the profile's) with seeds 0-7 by default: seeds 0-2's phases
# are read back from the copy's caches, seeds 3-7 train. About 10 minutes on 2 cores.
# Usage: benchmarks/stage5_seeds.sh RUN_DIR [OUT_DIR] [SEEDS]   e.g. benchmarks/stage5_seeds.sh results/tiny
set -euo pipefail
SRC=${1:?usage: stage5_seeds.sh RUN_DIR [OUT_DIR] [SEEDS]; RUN_DIR: a tiny run folder with stages 01-04 done}
OUT=${2:-/tmp/stage5-seeds}
SEEDS=${3:-[0,1,2,3,4,5,6,7]}
PROFILE=${PROFILE:-tiny}
[ -f "$SRC/04_correlation/manifest.json" ] || { echo "stage5_seeds.sh: $SRC has no finished stage 04; run 'make run' first" >&2; exit 2; }
rm -rf "$OUT" && cp -a "$SRC" "$OUT"
syllabus run --profile "$PROFILE" --run-dir "$OUT" --stages 05 -p "dynamic.seeds=$SEEDS" --quiet
python - "$OUT" <<'PY'
import sys
import pandas as pd
t = pd.read_csv(f"{sys.argv[1]}/05_dynamic_selection/tables/final_accuracy.csv")
cols = ["policy", "seeds", "final_accuracy", "gain", "gain_lo", "gain_hi", "seed_sd"]
for ref in ("random", "dmc_static"):
    cols += [f"vs_{ref}", f"vs_{ref}_lo", f"vs_{ref}_hi", f"vs_{ref}_shown"]
pd.set_option("display.width", 250)
print(t[cols].round(3).to_string(index=False))
PY
