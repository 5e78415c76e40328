"""End-to-end wall time and peak memory per stage of `syllabus run`, then a fully cached re-run.

    python benchmarks/bench_end_to_end.py [--profile tiny] [--run-dir /tmp/syllabus-bench]

Prints one row per stage (wall seconds of the notebook, peak RSS of its kernel) for a first run
into an empty run folder, then the wall time of a second run with unchanged inputs and its ratio to
the first. Targets on the 2-core machine (tiny): under 15 minutes in all, under 6 GiB peak, re-run
under 5 % of the first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(profile: str, run_dir: Path) -> tuple[float, str]:
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "syllabus.cli", "run", "--profile", profile, "--run-dir", str(run_dir)],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"syllabus run failed:\n{out.stdout}\n{out.stderr}")
    return time.time() - start, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--run-dir", default="/tmp/syllabus-bench-e2e")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    first, _ = run(args.profile, run_dir)
    print(f"profile {args.profile}: first run {first:.1f} s (whole command, kernel starts included)")
    print(f"{'stage':<24}{'wall s':>10}{'peak RSS MiB':>15}")
    peak = 0.0
    for manifest in sorted(run_dir.glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        peak = max(peak, m.get("peak_rss_mb", 0.0))
        print(f"{m['stage']:<24}{m.get('wall_seconds', float('nan')):>10.1f}{m.get('peak_rss_mb', float('nan')):>15.0f}")
    print(f"{'all stages':<24}{first:>10.1f}{peak:>15.0f}")
    second, out = run(args.profile, run_dir)
    reused = out.count("up to date")
    print(f"cached re-run: {second:.1f} s = {100 * second / first:.2f} % of the first run; {reused} stage(s) reused")


if __name__ == "__main__":
    main()
