#!/bin/bash
# Stage 1 at the sample size its table asked for: does prose teach lab-s more than equations?
# The tiny reference run's leaderboard shows prose's smoke-test lead over equations (+0.057 [-0.027, 0.141],
# 3 seeds, 200 probe problems) but not as shown, and estimates (docs/findings.md, "Reference run", stage 1) that about
# 10 seeds and 630 probe problems together would show a lead that size at 80% power. This runs stage 1 alone
# with those sizes, from an empty run folder, on the two teachers compared; every other setting is the
# profile's. A larger probe split draws the lab's problems anew, so the student and the problems are a new
# draw, not the reference's: a replication with more power, not an extension. About 10 minutes on 2 cores.
# Usage: benchmarks/stage1_power.sh [OUT_DIR] [SEEDS] [N_PROBE]
set -euo pipefail
source "$(dirname "$0")/use_venv.sh"
OUT=${1:-/tmp/stage1-power}
SEEDS=${2:-[0,1,2,3,4,5,6,7,8,9]}
N_PROBE=${3:-630}
TEACHERS="[{name: equations, backend: lab, style: equations, error_rate: 0.05}, {name: prose, backend: lab, style: prose, error_rate: 0.05}]"
syllabus run --profile tiny --run-dir "$OUT" --stages 01 --quiet -p "data.n_probe=$N_PROBE" \
    -p "teacher_selection.seeds=$SEEDS" -p "teachers=$TEACHERS"
python - "$OUT" <<'PY'
import sys
import pandas as pd
pd.set_option("display.width", 250)
folder = f"{sys.argv[1]}/01_teacher_selection/tables"
board = pd.read_csv(f"{folder}/leaderboard.csv")
print(board[["rank", "teacher", "teacher_accuracy", "accuracy_before", "accuracy_after", "gain", "gain_lo", "gain_hi",
             "seed_sd", "seeds"]].round(3).to_string(index=False))
print(pd.read_csv(f"{folder}/leads.csv").round(3).to_string(index=False))
PY
