"""One stage-5 policy in two run folders, paired on the same seeds and held-out problems.

When a policy's rule changes and stage 5 is rerun on a copy of a run (every other policy byte-identical),
this prints the policy's final accuracy in each folder and their paired difference with its 95% interval
(``stats.paired_difference``: problems and seeds both sampled). Usage:

    python benchmarks/compare_policy_runs.py RUN_BEFORE RUN_AFTER [--policy ioa]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from syllabus import stats

OUTCOMES = "05_dynamic_selection/tables/final_outcomes.parquet"


def outcomes(run: Path, policy: str) -> pd.DataFrame:
    """The policy's (seed x problem) 0/1 matrix of final held-out outcomes in ``run``."""
    path = run / OUTCOMES
    if not path.is_file():
        sys.exit(f"compare_policy_runs: {path} is missing; run stage 05 in {run} first")
    table = pd.read_parquet(path)
    rows = table[table["policy"] == policy]
    if rows.empty:
        sys.exit(f"compare_policy_runs: no policy '{policy}' in {path} (has {sorted(table['policy'].unique())})")
    return rows.pivot(index="seed", columns="problem_id", values="correct").sort_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--policy", default="ioa")
    args = ap.parse_args()
    a, b = outcomes(args.after, args.policy), outcomes(args.before, args.policy)
    if list(a.index) != list(b.index) or list(a.columns) != list(b.columns):
        sys.exit(f"compare_policy_runs: the folders differ in seeds ({list(b.index)} vs {list(a.index)}) or "
                 f"problems; rerun both with the same dynamic.seeds and held-out split")
    d = stats.paired_difference(a.to_numpy(), b.to_numpy())
    print(f"{args.policy}: {len(a)} seeds x {a.shape[1]} problems")
    print(f"  before {b.to_numpy().mean():.3f}  (per seed {', '.join(f'{v:.3f}' for v in b.mean(axis=1))})")
    print(f"  after  {a.to_numpy().mean():.3f}  (per seed {', '.join(f'{v:.3f}' for v in a.mean(axis=1))})")
    print(f"  after - before {d['gain']:+.3f} [{d['gain_lo']:+.3f}, {d['gain_hi']:+.3f}] (seed SD {d['seed_sd']:.3f}, "
          f"{'shown' if stats.shown(d) else 'no difference shown'})")


if __name__ == "__main__":
    main()
