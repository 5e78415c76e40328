"""Redraw a reference folder's figures of stages 3-6 from its own tables, after a change to `syllabus.plots`.

The folders under `results/reference/` keep tables and figures but no caches, so a plotting change cannot be
rerun into them; this script draws what the notebooks would draw from the same tables (stage 3's factors from
`03_dmc.csv` with their intervals from `03_dmc_intervals.csv`, only where the folder has that table; stage 4's
predictors against the gain from `04_grid_with_predictors.csv`; stage 5's learning and per-module curves
from `05_learning_curves.csv` and `05_module_curves.csv`, with the profile's held-out split for the bands;
stage 6's bars from `06_results.csv` and, where present, `05_final_models.csv`). A figure is redrawn only where
the folder already has it. On a folder whose tables a whole run reproduces, the figures come out
byte-identical to that run's.

    PYTHONPATH=src python benchmarks/redraw_figures.py --profile tiny results/reference/tiny results/reference/tiny-second-cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from syllabus import params, plots, problems, runs  # noqa: E402
from syllabus.stages import benchmark, correlation  # noqa: E402


def save(fig, path: Path) -> None:
    """The PNG `runs.Stage.save_figure` writes (the reference folders keep PNGs only)."""
    runs.atomic_write_bytes(path, runs.figure_bytes(fig, "png"))
    plt.close(fig)


def redraw(folder: Path, heldout_total: int, module_counts: dict[str, int]) -> list[str]:
    drawn = []
    plots.set_theme()
    if (folder / "03_dmc_intervals.csv").is_file() and (folder / "03_dmc_factors.png").is_file():
        save(plots.dmc_factors(pd.read_csv(folder / "03_dmc.csv"), pd.read_csv(folder / "03_dmc_intervals.csv")),
             folder / "03_dmc_factors.png")
        drawn.append("03_dmc_factors.png")
    grid = folder / "04_grid_with_predictors.csv"
    if grid.is_file():
        joined = pd.read_csv(grid)
        save(plots.scatter_with_fit(joined, [p for p in correlation.PREDICTORS if p in joined]),
             folder / "04_predictors_vs_gain.png")
        drawn.append("04_predictors_vs_gain.png")
    curves = folder / "05_learning_curves.csv"
    if curves.is_file() and (folder / "05_learning_curves.png").is_file():
        save(plots.learning_curves(pd.read_csv(curves), n_problems=heldout_total), folder / "05_learning_curves.png")
        drawn.append("05_learning_curves.png")
    modules = folder / "05_module_curves.csv"
    if modules.is_file() and (folder / "05_module_curves.png").is_file():
        save(plots.module_curves(pd.read_csv(modules), n_problems=module_counts), folder / "05_module_curves.png")
        drawn.append("05_module_curves.png")
    results = folder / "06_results.csv"
    if results.is_file() and (folder / "06_results.png").is_file():
        tidy = pd.read_csv(results)
        finals = (pd.read_csv(folder / "05_final_models.csv") if (folder / "05_final_models.csv").is_file()
                  else pd.DataFrame(columns=["student", "policy", "seed"]))  # one seed per policy: a bar per model
        means = benchmark.policy_means(tidy, finals)
        save(plots.benchmark_bars(benchmark.figure_rows(tidy, means, finals)), folder / "06_results.png")
        drawn.append("06_results.png")
    return drawn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, help="the profile the folders' runs used (its held-out split)")
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args()
    splits = problems.problem_splits(params.load_profile(args.profile))
    for folder in args.folders:
        print(folder, redraw(folder, len(splits.heldout), splits.module_counts("heldout")))


if __name__ == "__main__":
    main()
