"""DMC's lead over every other predictor, pooled over the held-out students of several lab grids.

    PYTHONPATH=src python benchmarks/pool_dmc_leads.py \
        --grid seed1234=RUN1/04_correlation/tables/grid_with_predictors.csv:lab-s \
        --grid seed99=RUN2/04_correlation/tables/grid_with_predictors.csv:lab-m,lab-s [--out pooled.csv]

One grid has 20 datasets per student: too few to show a lead of ~0.05 in Spearman (docs/findings.md, "A wider lab
grid"). Pooling the (grid, student) strata that the DMC rule was *not* chosen on weighs every dataset
equally and resamples each grid's dataset families once for all its students (they trained on the same
datasets), so the interval is honest about the grids' own dependence (``stats.pooled_spearman_lead``).
Every grid must carry DMC under the same rule; pass only students the rule was not fitted on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from syllabus.stages import correlation


def parse_grid(text: str) -> tuple[str, Path, list[str]]:
    name, sep, rest = text.partition("=")
    path, sep2, students = rest.rpartition(":")
    if not sep or not sep2 or not name or not students:
        raise SystemExit(f"--grid {text!r}: write NAME=PATH:STUDENT[,STUDENT]")
    if not Path(path).is_file():
        raise SystemExit(f"--grid {name}: no file {path} (a run's 04_correlation/tables/grid_with_predictors.csv)")
    return name, Path(path), students.split(",")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", action="append", required=True, help="NAME=PATH:STUDENT[,STUDENT]")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the table here (CSV)")
    args = ap.parse_args()
    grids, students = {}, {}
    for text in args.grid:
        name, path, who = parse_grid(text)
        grids[name], students[name] = pd.read_csv(path), who
    table = correlation.pooled_leads(grids, students, n_boot=args.n_boot, seed=args.seed)
    strata = ", ".join(f"{g}/{s}" for g, who in students.items() for s in who)
    print(f"DMC's Spearman with the gain minus each rival's |Spearman|, pooled over {strata}; "
          f"95% bootstrap CI ({args.n_boot} resamples of each grid's families)\n")
    print(f"| rival | strata | datasets | pooled lead [95% CI] | shown | strata shown alone |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in table.itertuples():
        print(f"| {r.rival} | {r.strata} | {r.n} | {r.lead:+.3f} [{r.lead_lo:+.3f}, {r.lead_hi:+.3f}] | "
              f"{'yes' if r.ahead_shown else 'no'} | {r.strata_ahead_shown} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
