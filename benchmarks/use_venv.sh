# Sourced by the benchmark scripts: use the project's environment (make setup) when the caller has not
# activated one, so that `syllabus` and `python` are the project's.
VENV_BIN="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin"
if ! command -v syllabus >/dev/null && [ -x "$VENV_BIN/syllabus" ]; then export PATH="$VENV_BIN:$PATH"; fi
