#!/usr/bin/env bash
# Run the lab-gpu profile (all six stages) on this machine's GPU and print what it cost: each stage's
# wall time and GPU memory peak, and the tokens/s of training, scoring and generation.
#
#   benchmarks/gpu_check.sh [RUN_DIR] [extra syllabus run options, e.g. -p student_generation.backend=vllm]
#
# Needs a CUDA build of torch and the package (pip install -e .; add ".[vllm]" for the vllm backends);
# nothing beyond the package registries (lab students are built from a config, lab teachers are rules).
# It has not been run by its authors: no GPU was available to them (see README, "Running on GPUs").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
RUN_DIR="${1:-results/lab-gpu-check}"
shift || true
"$PY" - <<'PYEOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: torch sees no GPU (torch %s, CUDA build %s); install a CUDA build of torch"
                     % (torch.__version__, torch.version.cuda))
print("gpu_check: %s, torch %s" % (torch.cuda.get_device_name(0), torch.__version__))
PYEOF
start=$(date +%s)
"$PY" -m syllabus.cli run --profile lab-gpu --run-dir "$RUN_DIR" --force "$@"
echo "gpu_check: all six stages in $(( $(date +%s) - start )) s (target: under 600 s)"
"$PY" benchmarks/gpu_report.py "$RUN_DIR"
