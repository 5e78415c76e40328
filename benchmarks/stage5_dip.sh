#!/bin/bash
# Stage 5's per-phase dip: the same runs with one optimizer and LR schedule across the phases
# (dynamic.carry_optimizer=true) and with a fresh optimizer and warm-up per phase (false).
# The ci profile with a tiny-like student (lab-s architecture, 1,500 warm-up steps on the four
# known modules, operands <= 10), tiny's curation (easy_pass_rate 1.0) and 200 held-out problems;
# 3 phases x 100 steps' worth of tokens,
# policies all / random / ioa, seeds 0 and 1. About 10 minutes on 2 cores. Usage: benchmarks/stage5_dip.sh [DIR]
set -euo pipefail
source "$(dirname "$0")/use_venv.sh"
DIR=${1:-/tmp/stage5-dip}
ARGS=(-p "students.lab-xs.arch={hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 256}"
      -p students.lab-xs.warmup_steps=1500 -p "students.lab-xs.warmup_modules=[add,subtract,multiply,divide]"
      -p data.lab.max_operand=10 -p data.lab.max_value=50 -p data.lab.n_pretrain=3000
      -p data.n_heldout=200 -p data.n_pool=200 -p data.n_probe=40 -p curation.easy_pass_rate=1.0
      -p training.warmup_ratio=0.1 -p training.batch_size=16 -p student_generation.max_new_tokens=128
      -p dynamic.phases=3 -p dynamic.steps_per_phase=100 -p "dynamic.seeds=[0,1]" -p "dynamic.policies=[all,random,ioa]")
syllabus run --profile ci --stages 01,02 --run-dir "$DIR/carry" "${ARGS[@]}"
rm -rf "$DIR/restart" && cp -r "$DIR/carry" "$DIR/restart"
syllabus run --profile ci --stages 05 --run-dir "$DIR/carry" "${ARGS[@]}"
syllabus run --profile ci --stages 05 --run-dir "$DIR/restart" "${ARGS[@]}" -p dynamic.carry_optimizer=false
python - "$DIR" <<'PY'
import sys
import pandas as pd
for mode in ("carry", "restart"):
    c = pd.read_csv(f"{sys.argv[1]}/{mode}/05_dynamic_selection/tables/learning_curves.csv")
    print(mode, c.groupby("phase")["accuracy"].mean().round(3).to_dict())
PY
