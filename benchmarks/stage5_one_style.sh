#!/bin/bash
# Stage 5: is it the style the DMC policies chose, or staying on one style, that makes them end highest?
# On the tiny reference, dmc_static and dmc_dynamic train on prose in every phase. This reruns stage 5 alone on
# a copy of a finished run folder once per STYLE, with `dynamic.datasets` narrowed to that teacher's dataset and
# the policies dmc_static and random, so that every run stays on that one style for all its phases (same seeds,
# same tokens, same draws as the source run). It then prints the source run's dmc_static minus each style's,
# paired on the same held-out problems and seeds (`stats.paired_difference`). About 80 s per style on 2 cores.
# Usage: benchmarks/stage5_one_style.sh RUN_DIR [OUT_PREFIX] [STYLES...]   e.g. ... results/tiny /tmp/one-style equations selfcheck
set -euo pipefail
source "$(dirname "$0")/use_venv.sh"
SRC=${1:?usage: stage5_one_style.sh RUN_DIR [OUT_PREFIX] [STYLES...]; RUN_DIR: a run folder with stage 05 done}
PREFIX=${2:-/tmp/stage5-one-style}
if [ $# -gt 2 ]; then STYLES=("${@:3}"); else STYLES=(equations selfcheck); fi
[ -f "$SRC/05_dynamic_selection/manifest.json" ] || { echo "stage5_one_style.sh: $SRC has no finished stage 05; run 'make run' first" >&2; exit 2; }
for style in "${STYLES[@]}"; do
  OUT="$PREFIX-$style"
  rm -rf "$OUT" && cp -a "$SRC" "$OUT"
  cp "$OUT/params.yaml" "$OUT.profile.yaml"  # the run's own resolved profile
  syllabus run --profile "$OUT.profile.yaml" --run-dir "$OUT" --stages 05 --quiet \
      -p "dynamic.datasets=[teacher=$style]" -p "dynamic.policies=[dmc_static,random]"
done
python - "$SRC" "$PREFIX" "${STYLES[@]}" <<'PY'
import sys
import pandas as pd
from syllabus import stats

src, prefix, styles = sys.argv[1], sys.argv[2], sys.argv[3:]


def outcomes(folder):
    o = pd.read_csv(f"{folder}/05_dynamic_selection/tables/final_outcomes.csv")
    return o[o["policy"] == "dmc_static"].pivot(index="seed", columns="problem_id", values="correct").sort_index()


def chosen(folder):
    c = pd.read_csv(f"{folder}/05_dynamic_selection/tables/choices.csv")
    return ", ".join(sorted(c.loc[c["policy"] == "dmc_static", "chosen"].unique()))


base = outcomes(src)
print(f"source run: dmc_static on {chosen(src)}, final accuracy {base.to_numpy().mean():.3f}")
for style in styles:
    other = outcomes(f"{prefix}-{style}")[base.columns]
    d = stats.paired_difference(base.to_numpy(float), other.loc[base.index].to_numpy(float))
    print(f"staying on {style}: final {other.to_numpy().mean():.3f}; source minus it {d['gain']:+.3f} "
          f"[{d['gain_lo']:.3f}, {d['gain_hi']:.3f}] (seed SD {d['seed_sd']:.3f}, shown {stats.shown(d)})")
PY
