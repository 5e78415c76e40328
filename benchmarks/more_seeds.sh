#!/bin/bash
# One stage rerun with more seeds: the sample size its own table asked for, on a copy of a finished run.
# Where a paired comparison's interval spans 0, stages 4 and 5 estimate how many seeds would show a difference
# that large at 80% power (`seeds_needed` in 04_cells.csv / 04_planted_style_check.csv, `*_seeds_needed` in
# 05_final_accuracy.csv). This reruns stage 04 or 05 alone on a copy of RUN_DIR (the stages before it done) with
# SEEDS (default 0-7); every other setting is the profile's. The copy's caches give back the seeds already run,
# so only the new seeds train. Tiny: stage 5 with 8 seeds about 10 minutes on 2 cores, stage 4 with 7 about 15.
# (Stage 1 cannot be rerun this way: the sizes its table asks for change the probe split; see stage1_power.sh.)
# Usage: benchmarks/more_seeds.sh 04|05 RUN_DIR [OUT_DIR] [SEEDS]   e.g. benchmarks/more_seeds.sh 05 results/tiny
set -euo pipefail
source "$(dirname "$0")/use_venv.sh"
USAGE="usage: more_seeds.sh 04|05 RUN_DIR [OUT_DIR] [SEEDS]"
STAGE=${1:?$USAGE}
SRC=${2:?$USAGE; RUN_DIR: a run folder whose stages before STAGE are done}
OUT=${3:-/tmp/more-seeds-$STAGE}
SEEDS=${4:-[0,1,2,3,4,5,6,7]}
case "$STAGE" in
  04) KEY=correlation.seeds; BEFORE=03_dmc; TABLE=04_correlation/tables/planted_style_check.csv ;;
  05) KEY=dynamic.seeds; BEFORE=04_correlation; TABLE=05_dynamic_selection/tables/final_accuracy.csv ;;
  *) echo "more_seeds.sh: STAGE must be 04 or 05, got '$STAGE'; $USAGE" >&2; exit 2 ;;
esac
[ -f "$SRC/$BEFORE/manifest.json" ] || { echo "more_seeds.sh: $SRC has no finished $BEFORE; run 'make run' first" >&2; exit 2; }
rm -rf "$OUT" && cp -a "$SRC" "$OUT"
cp "$OUT/params.yaml" "$OUT.profile.yaml"  # the run's own resolved profile, overrides included
syllabus run --profile "$OUT.profile.yaml" --run-dir "$OUT" --stages "$STAGE" -p "$KEY=$SEEDS" --quiet
python - "$OUT/$TABLE" <<'PY'
import sys
import pandas as pd
pd.set_option("display.width", 250)
pd.set_option("display.max_columns", 40)
print(pd.read_csv(sys.argv[1]).round(3).to_string(index=False))
PY
