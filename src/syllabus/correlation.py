"""Stage 4 composed: does DMC predict the gain from distilling on a dataset?

Every (candidate dataset, student) pair gets the same SFT budget and seeds from the same starting
weights; the gain is held-out accuracy after minus before. DMC (from stage 3) and simple baselines
are then correlated with the gain (``syllabus.stats``), and DMC's parameters, when fitted, are fitted
on part of the grid and judged on the rest.
"""

from __future__ import annotations

import fnmatch

import pandas as pd

from . import compatibility, stats, workflow
from .progress import Task
from .records import Problem
from .runs import Stage

# Predictors compared side by side (method.md stage 4.4); the expected sign is in the notebook.
PREDICTORS = ("dmc", "quality", "capability", "rel_difficulty", "teacher_accuracy", "n_tokens", "perplexity",
              "ifd", "entropy")


def grid_datasets(datasets: dict[str, pd.DataFrame], patterns: list[str] | None) -> dict[str, pd.DataFrame]:
    """The candidate datasets that enter the grid: those matching any of ``correlation.datasets``
    (glob patterns such as ``teacher=*``), or all when no pattern is given."""
    if patterns is None:
        return datasets
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in datasets)]
    if unmatched:
        raise ValueError(f"correlation.datasets: pattern(s) {unmatched} match no candidate dataset; "
                         f"the candidates of stage 2 are {sorted(datasets)}")
    return {name: rows for name, rows in datasets.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)}


def gain_grid(stage: Stage, students: list[workflow.StudentModel], datasets: dict[str, pd.DataFrame],
              problems: dict[str, Problem], heldout: list[Problem]) -> pd.DataFrame:
    """One row per (student, dataset, seed): accuracy before and after an equal-budget SFT, and the gain."""
    prof = stage.params
    rows = []
    cells = Task("grid cells", len(students) * len(datasets) * len(prof.correlation.seeds))
    for student in students:
        before = workflow.accuracy(student, heldout, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)
        for name, table in datasets.items():
            examples = workflow.sft_examples(student, problems, compatibility.traces_of(table))
            for seed in prof.correlation.seeds:
                trained, result = workflow.distil(student, examples, steps=prof.correlation.sft_steps, stage=stage,
                                                  seed=seed, tag=f"grid-{student.name}-{name}-s{seed}")
                after = workflow.accuracy(trained, heldout, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)
                rows.append({"student": student.name, "dataset": name, "seed": seed, "n_examples": len(examples),
                             "tokens_seen": result.tokens_seen, "accuracy_before": before,
                             "accuracy_after": after, "gain": after - before})
                cells.advance()
    cells.close()
    return pd.DataFrame(rows)


def teacher_accuracy(raw_traces: pd.DataFrame, candidates: pd.DataFrame) -> pd.Series:
    """Per dataset: the mean raw accuracy (before any filter) of the teachers its traces come from."""
    per_teacher = raw_traces.groupby("teacher")["correct"].mean()
    acc = candidates["teacher"].map(per_teacher)
    return acc.groupby(candidates["dataset"]).mean().rename("teacher_accuracy")


def with_predictors(grid: pd.DataFrame, scores: pd.DataFrame, teacher_acc: pd.Series) -> pd.DataFrame:
    """Mean gain over seeds per (student, dataset), joined with DMC, its factors and the baselines."""
    mean = (grid.groupby(["student", "dataset"], sort=True)
            .agg(gain=("gain", "mean"), gain_sd=("gain", "std"), seeds=("seed", "nunique"),
                 accuracy_before=("accuracy_before", "first"), tokens_seen=("tokens_seen", "mean"))
            .reset_index())
    keep = ["student", "dataset", "n_items", *[c for c in PREDICTORS if c in scores.columns]]
    out = mean.merge(scores[keep], on=["student", "dataset"], how="left", validate="one_to_one")
    out["teacher_accuracy"] = out["dataset"].map(teacher_acc)
    return out


def predictor_table(table: pd.DataFrame, stage: Stage) -> pd.DataFrame:
    c = stage.params.correlation
    return stats.predictor_table(table, [p for p in PREDICTORS if p in table.columns], "gain",
                                 n_boot=c.bootstrap, n_perm=c.permutations, seed=stage.seed)


def fitted_holdout(table: pd.DataFrame, items: pd.DataFrame, stage: Stage) -> tuple[dict, dict]:
    """Fit (r0, lambda) on part of the grid (whole datasets), report DMC's correlation on the rest."""
    c = stage.params.correlation
    fit, hold = stats.split_grid(table, c.fit_fraction, seed=stage.seed, by="dataset")
    variant = stage.params.dmc.variant
    fitted = stats.fit_dmc_params(fit, items, variant=variant)
    held = stats.holdout_correlation(hold, items, fitted, variant=variant, n_boot=c.bootstrap,
                                     n_perm=c.permutations, seed=stage.seed)
    defaults = stats.holdout_correlation(hold, items, {"r0": stage.params.dmc.r0, "lam": stage.params.dmc.lam},
                                         variant=variant, n_boot=c.bootstrap, n_perm=c.permutations, seed=stage.seed)
    return {k: v for k, v in fitted.items() if k != "search"} | {"held_out": held}, {"defaults_on_held_out": defaults}
