"""Stage 4 composed: does DMC predict the gain from distilling on a dataset?

Every (candidate dataset, student) cell gets the same SFT budget (``correlation.sft_tokens`` training
tokens, or ``sft_steps`` steps) and the same seeds from the same starting weights; the gain is
held-out accuracy after minus before, paired on the same problems. Two controls sit beside the
candidates: the student re-evaluated with no SFT (``control:none``) and SFT on the reference (gold)
solutions of the pool problems at the same budget (``control:gold``). DMC (from stage 3) and simple
baselines are then correlated with the gain within each student (and pooled, labelled), with a
bootstrap that resamples dataset families whole (``syllabus.stats``); DMC's parameters, when fitted,
are fitted on part of the families and judged on the others.
"""

from __future__ import annotations

import fnmatch

import pandas as pd

from . import compatibility, sft_cells, stats, workflow
from .progress import Task
from .records import Problem
from .runs import Stage

CONTROL_NONE, CONTROL_GOLD = "control:none", "control:gold"
CONTROLS = (CONTROL_NONE, CONTROL_GOLD)
MIXED_FAMILY = "mixed"
VARIANT_SUFFIXES = ("+adapted", "+unverified")

# Predictors compared side by side (docs/method.md, stage 4); the expected sign is in the notebook.
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


def dataset_family(name: str) -> str:
    """The family a candidate dataset belongs to, for resampling: its variants (``+adapted``,
    ``+unverified``) share its traces, and every mixture of teachers (``all``, ``level=k``,
    ``pass_rate=...``) shares traces with the others, so each group is one unit."""
    base = name
    for suffix in VARIANT_SUFFIXES:
        base = base.replace(suffix, "")
    return base if base.startswith("teacher=") else MIXED_FAMILY


def gold_examples(student: workflow.StudentModel, pool: list[Problem]) -> list[tuple[str, str]]:
    """The ``control:gold`` data: the reference solution of every pool problem, in the student's format."""
    return [(student.prompt(p), student.target(p.solution)) for p in pool if p.solution]


def grid_cells(student: workflow.StudentModel, datasets: dict[str, pd.DataFrame], problems: dict[str, Problem],
               pool: list[Problem], prof) -> dict[str, tuple[list[tuple[str, str]], int]]:
    """A student's trained cells, each (examples, SFT steps for the budget): every candidate dataset, then
    ``control:gold``; ``gain_grid`` and the worker jobs both run exactly these."""
    cells = {name: workflow.sft_examples(student, problems, compatibility.traces_of(table))
             for name, table in datasets.items()}
    cells[CONTROL_GOLD] = gold_examples(student, pool)
    return {name: (examples, workflow.budget_steps(student, examples, prof.training,
                                                   tokens=prof.correlation.sft_tokens,
                                                   steps=prof.correlation.sft_steps))
            for name, examples in cells.items()}


def gain_grid(stage: Stage, students: list[workflow.StudentModel], datasets: dict[str, pd.DataFrame],
              problems: dict[str, Problem], heldout: list[Problem], pool: list[Problem]
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Equal-budget SFT of every student on every dataset (and the two controls), every seed.

    Returns one row per (student, dataset, seed) - accuracy before and after, the gain, steps and
    tokens - and the per-problem outcomes (``correct_before``, ``correct_after``) that the paired
    statistics need.
    """
    prof = stage.params
    rows, outcomes = [], []
    ids = [p.id for p in heldout]
    if sft_cells.parallel(prof):
        # fill the caches side by side (or as Slurm jobs); the loop below then reads every cell back
        sft_cells.fill(stage, [job for student in students
                               for job in _cell_jobs(stage, student, datasets, problems, heldout, pool)])
    progress = Task("grid cells", len(students) * (len(datasets) + 1) * len(prof.correlation.seeds))
    for student in students:
        before = workflow.pass_rates(student, heldout, k=1, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)
        # control:none - the untouched student evaluated again, without the cache: greedy decoding is
        # deterministic, so this measures that the evaluation itself adds no noise.
        again = workflow.pass_rates(student, heldout, k=1, prof=prof, seed=stage.seed)
        results = [(CONTROL_NONE, None, again, None)]
        for name, (examples, steps) in grid_cells(student, datasets, problems, pool, prof).items():
            for seed in prof.correlation.seeds:
                trained, result = workflow.distil(student, examples, steps=steps, stage=stage, seed=seed,
                                                  tag=f"grid-{student.name}-{name}-s{seed}")
                after = workflow.pass_rates(trained, heldout, k=1, prof=prof, seed=stage.seed,
                                            cache_dir=stage.run.cache)
                results.append((name, seed, after, (len(examples), steps, result.tokens_seen)))
                progress.advance()
        for name, seed, after, sizes in results:
            n_examples, steps, tokens = sizes if sizes else (0, 0, 0)
            rows.append({"student": student.name, "dataset": name, "seed": -1 if seed is None else seed,
                         "n_examples": n_examples, "steps": steps, "tokens_seen": tokens,
                         "accuracy_before": float(before.mean()), "accuracy_after": float(after.mean()),
                         "gain": float(after.mean() - before.mean())})
            outcomes.append(pd.DataFrame({"student": student.name, "dataset": name,
                                          "seed": -1 if seed is None else seed, "problem_id": ids,
                                          "correct_before": before.loc[ids].to_numpy(),
                                          "correct_after": after.loc[ids].to_numpy()}))
    progress.close()
    return pd.DataFrame(rows), pd.concat(outcomes, ignore_index=True)


def _cell_jobs(stage: Stage, student: workflow.StudentModel, datasets: dict[str, pd.DataFrame],
               problems: dict[str, Problem], heldout: list[Problem], pool: list[Problem]) -> list[dict]:
    """One job per (dataset or gold control, seed) of a student, as ``gain_grid``'s loop would run them."""
    prof = stage.params
    return [sft_cells.job(stage, student, examples, steps=steps, seed=seed, tag=f"grid-{student.name}-{name}-s{seed}",
                          eval_problems=heldout)
            for name, (examples, steps) in grid_cells(student, datasets, problems, pool, prof).items()
            for seed in prof.correlation.seeds]


def cell_gains(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per (student, dataset): the paired gain over seeds with its SE, 95% CI and seed SD
    (``stats.paired_gain``), the family, and whether the cell is a control."""
    rows = []
    for (student, name), g in outcomes.groupby(["student", "dataset"], sort=True):
        wide = g.pivot(index="seed", columns="problem_id", values="correct_after").sort_index()
        before = g.drop_duplicates("problem_id").set_index("problem_id")["correct_before"].reindex(wide.columns)
        rows.append({"student": student, "dataset": name, "family": dataset_family(name),
                     "control": name in CONTROLS, "accuracy_before": float(before.mean()),
                     **stats.paired_gain(before.to_numpy(), wide.to_numpy())})
    return pd.DataFrame(rows)


def noise_floor(cells: pd.DataFrame) -> pd.DataFrame:
    """Per student: the binomial SE of one accuracy, the median seed SD and SE of a cell gain, and the
    reliability of the cell gains (``stats.reliability``) over the candidate datasets."""
    rows = []
    for student, g in cells.groupby("student", sort=True):
        cand = g[~g["control"]]
        n = int(g["n_problems"].iloc[0])
        rows.append({"student": student, "n_problems": n, "n_seeds": int(cand["n_seeds"].max()),
                     "accuracy_before": float(g["accuracy_before"].iloc[0]),
                     "binomial_se": stats.binomial_se(float(g["accuracy_before"].iloc[0]), n),
                     "median_seed_sd": float(cand["seed_sd"].median()), "median_gain_se": float(cand["gain_se"].median()),
                     "sd_of_gains": float(cand["gain"].std(ddof=1)),
                     "reliability": stats.reliability(cand["gain"], cand["gain_se"])})
    return pd.DataFrame(rows)


def teacher_accuracy(raw_traces: pd.DataFrame, candidates: pd.DataFrame) -> pd.Series:
    """Per dataset: the mean raw accuracy (before any filter) of the teachers its traces come from."""
    per_teacher = raw_traces.groupby("teacher")["correct"].mean()
    acc = candidates["teacher"].map(per_teacher)
    return acc.groupby(candidates["dataset"]).mean().rename("teacher_accuracy")


def planted_style_check(outcomes: pd.DataFrame, prof) -> pd.DataFrame:
    """Does the grid recover the planted style preference? For each lab student, the gain from its
    familiar teacher's curated dataset (``lab.FAMILIAR_STYLE`` of its warm-up style) minus the gain
    from every other teacher's, paired problem by problem and seed by seed, with a 95% CI."""
    from . import lab

    rows = []
    styles = {t.name: t.style for t in prof.teachers if t.backend == "lab"}
    for spec in prof.students:
        if spec.source != "lab":
            continue
        familiar = [n for n, st in styles.items() if st == lab.FAMILIAR_STYLE[spec.warmup_style]]
        mine = outcomes[outcomes["student"] == spec.name]
        wide = {name: g.pivot(index="seed", columns="problem_id", values="correct_after").sort_index()
                for name, g in mine.groupby("dataset")}
        for fam in familiar:
            for other in styles:
                a, b = wide.get(f"teacher={fam}"), wide.get(f"teacher={other}")
                if other == fam or a is None or b is None or list(a.index) != list(b.index):
                    continue
                d = stats.paired_difference(a.to_numpy(), b[a.columns].to_numpy())
                rows.append({"student": spec.name, "warmup_style": spec.warmup_style, "familiar_teacher": fam,
                             "other_teacher": other, "difference": d["gain"], "lo": d["gain_lo"], "hi": d["gain_hi"],
                             "recovered": bool(d["gain_lo"] > 0)})
    return pd.DataFrame(rows)


def with_predictors(grid: pd.DataFrame, cells: pd.DataFrame, scores: pd.DataFrame,
                    teacher_acc: pd.Series) -> pd.DataFrame:
    """The candidate cells (controls left out) with their paired gain statistics, tokens, DMC, its
    factors and the baselines."""
    tokens = grid.groupby(["student", "dataset"], sort=True)["tokens_seen"].mean().rename("tokens_seen")
    cand = cells[~cells["control"]].merge(tokens.reset_index(), on=["student", "dataset"], how="left")
    keep = ["student", "dataset", "n_items", *[c for c in PREDICTORS if c in scores.columns]]
    out = cand.merge(scores[keep], on=["student", "dataset"], how="left", validate="one_to_one")
    out["teacher_accuracy"] = out["dataset"].map(teacher_acc)
    return out


POOLED = "pooled (students mixed)"


def predictor_table(table: pd.DataFrame, stage: Stage) -> pd.DataFrame:
    """Each predictor's correlation with the gain within each student, then pooled over students
    (labelled: pooling mixes students whose gains differ in level). Bootstraps resample families."""
    c = stage.params.correlation
    preds = [p for p in PREDICTORS if p in table.columns]
    parts = [(student, g) for student, g in table.groupby("student", sort=True)] + [(POOLED, table)]
    frames = []
    for scope, g in parts:
        t = stats.predictor_table(g, preds, "gain", n_boot=c.bootstrap, n_perm=c.permutations, seed=stage.seed,
                                  group_col="family")
        t.insert(0, "scope", scope)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def family_split(table: pd.DataFrame, fit_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fitting and held-out parts of the grid that share no traces: single-teacher families are split
    whole; the mixed family (which contains every teacher's traces) is left out of both."""
    single = table[table["family"] != MIXED_FAMILY]
    return stats.split_grid(single, fit_fraction, seed=seed, by="family")


def fitted_holdout(table: pd.DataFrame, items: pd.DataFrame, stage: Stage) -> tuple[dict, dict]:
    """Fit (r0, lambda) on part of the families, report DMC's correlation on the other families."""
    c = stage.params.correlation
    fit, hold = family_split(table, c.fit_fraction, stage.seed)
    variant = stage.params.dmc.variant
    fitted = stats.fit_dmc_params(fit, items, variant=variant)
    held = stats.holdout_correlation(hold, items, fitted, variant=variant, n_boot=c.bootstrap,
                                     n_perm=c.permutations, seed=stage.seed)
    defaults = stats.holdout_correlation(hold, items, {"r0": stage.params.dmc.r0, "lam": stage.params.dmc.lam},
                                         variant=variant, n_boot=c.bootstrap, n_perm=c.permutations, seed=stage.seed)
    return {k: v for k, v in fitted.items() if k != "search"} | {"held_out": held}, {"defaults_on_held_out": defaults}
