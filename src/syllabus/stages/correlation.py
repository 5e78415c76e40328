"""Stage 4 composed: does DMC predict the gain from distilling on a dataset?

Every (candidate dataset, student) cell gets the same SFT budget (``correlation.sft_tokens`` training
tokens, a student's own ``sft_tokens_by_student`` entry, or ``sft_steps`` steps; equal within a student)
and the same seeds from the same starting weights; the gain is
held-out accuracy after minus before, paired on the same problems. Two controls sit beside the
candidates: the student re-evaluated with no SFT (``control:none``) and SFT on the reference (gold)
solutions of the pool problems at the same budget (``control:gold``). DMC (from stage 3) and simple
baselines are then correlated with the gain within each student (and pooled, labelled), with a
bootstrap that resamples dataset families whole (``syllabus.stats``). Cells train on each candidate's
*training slice* only (``stages.dmc.training_rows``); DMC was measured on its scoring slice. The
default rule is chosen by a stated protocol (``rule_protocol``): rules and their parameters
(``correlation.fit_grid``) are compared on one part of the grid (half the single-teacher families,
or the first student) and the choice is reported on the other part, beside every other predictor.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import pandas as pd

from .. import distillation, executor, generation, lab, models, sft_cells, stats
from ..progress import Task
from ..records import Problem
from ..runs import Stage
from ..students import StudentModel
from . import dmc
from .trace_curation import matching_datasets

CONTROL_NONE, CONTROL_GOLD = "control:none", "control:gold"
CONTROLS = (CONTROL_NONE, CONTROL_GOLD)
NEEDED_SAMPLE_COLUMNS = stats.NEEDED_SAMPLE_KEYS  # stats.needed_sample's, in the cells table only
MIXED_FAMILY = "mixed"
VARIANT_SUFFIXES = ("+adapted", "+unverified")

# Predictors compared side by side (docs/method.md, stage 4); the expected sign is in the notebook.
# rsr: Rank-Surprisal Ratio (arXiv 2601.14249), mean clipped token rank / mean NLL; lower is better.
PREDICTORS = ("dmc", "quality", "capability", "rel_difficulty", "rsr", "teacher_accuracy", "n_tokens", "perplexity",
              "ifd", "entropy")


def grid_datasets(datasets: dict[str, pd.DataFrame], patterns: list[str] | None) -> dict[str, pd.DataFrame]:
    """The candidate datasets that enter the grid: those matching any of ``correlation.datasets``
    (glob patterns such as ``teacher=*``), or all when no pattern is given."""
    return matching_datasets(datasets, patterns, "correlation.datasets")


def dataset_family(name: str) -> str:
    """The family a candidate dataset belongs to, for resampling: its variants (``+adapted``,
    ``+unverified``) share its traces, and every mixture of teachers (``all``, ``level=k``,
    ``pass_rate=...``) shares traces with the others, so each group is one unit."""
    base = name
    for suffix in VARIANT_SUFFIXES:
        base = base.replace(suffix, "")
    return base if base.startswith("teacher=") else MIXED_FAMILY


def gold_examples(student: StudentModel, pool: list[Problem]) -> list[tuple[str, str]]:
    """The ``control:gold`` data: the reference solution of every pool problem, in the student's format."""
    return [(student.prompt(p), student.target(p.solution)) for p in pool if p.solution]


def cell_tokens(prof, student: str) -> int | None:
    """Training tokens per grid cell for ``student``: its ``correlation.sft_tokens_by_student`` entry, else
    ``correlation.sft_tokens`` (None: ``sft_steps`` steps instead)."""
    return prof.correlation.sft_tokens_by_student.get(student, prof.correlation.sft_tokens)


def grid_cells(student: StudentModel, datasets: dict[str, pd.DataFrame], problems: dict[str, Problem],
               pool: list[Problem], prof) -> dict[str, tuple[list[tuple[str, str]], int]]:
    """A student's trained cells, each (examples, SFT steps for the budget): every candidate dataset's
    training slice (never its DMC scoring slice), then ``control:gold``; ``gain_grid`` and the worker jobs
    both run exactly these."""
    cells = {name: distillation.sft_examples(student, problems, dmc.traces_of(table))
             for name, table in dmc.training_rows(datasets, prof).items()}
    cells[CONTROL_GOLD] = gold_examples(student, pool)
    return {name: (examples, distillation.budget_steps(student, examples, prof.training,
                                                       tokens=cell_tokens(prof, student.name),
                                                       steps=prof.correlation.sft_steps))
            for name, examples in cells.items()}


def gain_grid(stage: Stage, students: list[StudentModel], datasets: dict[str, pd.DataFrame],
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
    if executor.spreads(prof):
        # fill the caches side by side (or as Slurm jobs); the loop below then reads every cell back
        # the largest student's cells first: the longest runs started first leave no worker idle at the end
        by_size = sorted(students, key=lambda s: -models.count_parameters(s.model))
        sft_cells.fill(stage, [job for student in by_size
                               for job in _cell_jobs(stage, student, datasets, problems, heldout, pool)])
    progress = Task("grid cells", len(students) * (len(datasets) + 1) * len(prof.correlation.seeds))
    for student in students:
        before = generation.pass_rates(student, heldout, k=1, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)
        # control:none - the untouched student evaluated again, without the cache: greedy decoding is
        # deterministic, so this measures that the evaluation itself adds no noise.
        again = generation.pass_rates(student, heldout, k=1, prof=prof, seed=stage.seed)
        results = [(CONTROL_NONE, None, again, None)]
        for name, (examples, steps) in grid_cells(student, datasets, problems, pool, prof).items():
            for seed in prof.correlation.seeds:
                trained, result = distillation.distil(student, examples, steps=steps, stage=stage, seed=seed,
                                                      tag=f"grid-{student.name}-{name}-s{seed}")
                after = generation.pass_rates(trained, heldout, k=1, prof=prof, seed=stage.seed,
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


def _cell_jobs(stage: Stage, student: StudentModel, datasets: dict[str, pd.DataFrame],
               problems: dict[str, Problem], heldout: list[Problem], pool: list[Problem]) -> list[dict]:
    """One job per (dataset or gold control, seed) of a student, as ``gain_grid``'s loop would run them."""
    prof = stage.params
    return [sft_cells.job(stage, student, examples, steps=steps, seed=seed, tag=f"grid-{student.name}-{name}-s{seed}",
                          eval_problems=heldout)
            for name, (examples, steps) in grid_cells(student, datasets, problems, pool, prof).items()
            for seed in prof.correlation.seeds]


def cell_gains(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per (student, dataset): the paired gain over seeds with its SE, 95% CI and seed SD
    (``stats.paired_gain``), the family, whether the cell is a control, and for a gain whose interval spans
    0 the seeds, the problems, or both grown together that would show it (``stats.needed_sample``; NaN where
    it is shown)."""
    rows = []
    for (student, name), g in outcomes.groupby(["student", "dataset"], sort=True):
        wide = g.pivot(index="seed", columns="problem_id", values="correct_after").sort_index()
        before = g.drop_duplicates("problem_id").set_index("problem_id")["correct_before"].reindex(wide.columns)
        gain = stats.paired_gain(before.to_numpy(), wide.to_numpy())
        rows.append({"student": student, "dataset": name, "family": dataset_family(name),
                     "control": name in CONTROLS, "accuracy_before": float(before.mean()), **gain,
                     **stats.needed_sample(gain)})
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
    from every other teacher's, paired problem by problem and seed by seed, with a 95% CI.

    A teacher's dataset is ``teacher=NAME``, or ``teacher=NAME+unverified`` when the grid has only that. A pair
    that includes an unverified set is compared only at equal error rates: they keep the wrong traces, so a different
    error rate would be a difference of quality, not of style (verified sets keep correct traces only).
    Where the interval spans 0, the seeds, the problems, or both grown together that would show a difference
    that large (``stats.needed_sample``)."""

    rows = []
    teachers = {t.name: t for t in prof.teachers if t.backend == "lab"}
    for spec in prof.students:
        if spec.source != "lab":
            continue
        familiar = [n for n, t in teachers.items() if t.style == lab.FAMILIAR_STYLE[spec.warmup_style]]
        mine = outcomes[outcomes["student"] == spec.name]
        wide = {name: g.pivot(index="seed", columns="problem_id", values="correct_after").sort_index()
                for name, g in mine.groupby("dataset")}

        def dataset(name: str) -> tuple[pd.DataFrame | None, bool]:
            if f"teacher={name}" in wide:
                return wide[f"teacher={name}"], False
            return wide.get(f"teacher={name}+unverified"), True

        for fam in familiar:
            a, a_raw = dataset(fam)
            for other, teacher in teachers.items():
                b, b_raw = dataset(other)
                if teacher.style == teachers[fam].style or a is None or b is None or list(a.index) != list(b.index):
                    continue
                if (a_raw or b_raw) and teacher.error_rate != teachers[fam].error_rate:
                    continue
                d = stats.paired_difference(a.to_numpy(), b[a.columns].to_numpy())
                rows.append({"student": spec.name, "warmup_style": spec.warmup_style, "familiar_teacher": fam,
                             "other_teacher": other, "difference": d["gain"], "lo": d["gain_lo"], "hi": d["gain_hi"],
                             "recovered": bool(d["gain_lo"] > 0), **stats.needed_sample(d)})
    return pd.DataFrame(rows)


def with_predictors(grid: pd.DataFrame, cells: pd.DataFrame, scores: pd.DataFrame,
                    teacher_acc: pd.Series) -> pd.DataFrame:
    """The candidate cells (controls left out) with their paired gain statistics, tokens, DMC, its
    factors and the baselines."""
    tokens = grid.groupby(["student", "dataset"], sort=True)["tokens_seen"].mean().rename("tokens_seen")
    cand = cells[~cells["control"]].drop(columns=list(NEEDED_SAMPLE_COLUMNS), errors="ignore")
    cand = cand.merge(tokens.reset_index(), on=["student", "dataset"], how="left")
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


LEAD_COLUMNS = ["scope", "dmc", "rival", "n", "spearman", "rival_abs_spearman", "lead", "lead_lo", "lead_hi", "note",
                "ahead_shown"]


def dmc_lead_table(table: pd.DataFrame, stage: Stage, dmc_column: str = "dmc") -> pd.DataFrame:
    """Within each student: DMC's Spearman with the gain minus every other predictor's absolute Spearman
    (``stats.spearman_lead``), with a paired family bootstrap CI. ``ahead_shown`` only where the interval
    lies above 0; "DMC predicts better than X" needs that, not a higher point estimate."""
    c = stage.params.correlation
    rivals = [p for p in PREDICTORS if p in table.columns and p != "dmc" and p != dmc_column]
    rows = []
    for student, g in table.groupby("student", sort=True):
        for rival in rivals:
            lead = stats.spearman_lead(g[dmc_column], g[rival], g["gain"], n_boot=c.bootstrap, seed=stage.seed,
                                       groups=g["family"].tolist())
            rows.append({"scope": student, "dmc": dmc_column, "rival": rival, **lead,
                         "ahead_shown": bool(lead["lead_lo"] > 0)})
    return pd.DataFrame(rows, columns=LEAD_COLUMNS)


POOLED_COLUMNS = ["rival", "strata", "n", "lead", "lead_lo", "lead_hi", "ahead_shown", "strata_ahead_shown",
                  "strata_leads", "note"]


def pooled_leads(grids: Mapping[str, pd.DataFrame], students: Mapping[str, Sequence[str]], *, n_boot: int = 2000,
                 seed: int = 0, dmc_column: str = "dmc") -> pd.DataFrame:
    """DMC's lead over every other predictor pooled over several grids (``stats.pooled_spearman_lead``).

    ``grids`` maps a grid's name to its ``grid_with_predictors`` table, ``students`` names the students of each
    grid to pool (the held-out ones: those the rule was not chosen on). A stratum is one (grid, student); the
    students of one grid are resampled together, by dataset family. ``strata_ahead_shown`` counts the strata
    whose own interval lies above 0 (``stats.spearman_lead``)."""
    missing = [name for name in students if name not in grids]
    if missing:
        raise ValueError(f"pooled_leads: no grid table for {missing}; give one per grid named in students")
    tables = {}
    for name, who in students.items():
        g = grids[name]
        need = {"student", "family", "gain", dmc_column} - set(g.columns)
        if need:
            raise ValueError(f"pooled_leads: grid '{name}' lacks columns {sorted(need)}; pass its "
                             "04_grid_with_predictors table")
        if "control" in g.columns:
            g = g[~g["control"].astype(bool)]
        unknown = sorted(set(who) - set(g["student"]))
        if unknown:
            raise ValueError(f"pooled_leads: grid '{name}' has no student {unknown} (it has {sorted(set(g['student']))})")
        tables[name] = {st: g[g["student"] == st] for st in who}
    rivals = [p for p in PREDICTORS if p != "dmc" and p != dmc_column
              and all(p in t.columns for parts in tables.values() for t in parts.values())]
    rows = []
    for rival in rivals:
        strata, alone = [], 0
        for name, parts in tables.items():
            for st, t in parts.items():
                strata.append({"name": f"{name}/{st}", "block": name, "x": t[dmc_column], "rival": t[rival],
                               "y": t["gain"], "groups": t["family"].tolist()})
                single = stats.spearman_lead(t[dmc_column], t[rival], t["gain"], n_boot=n_boot, seed=seed,
                                             groups=t["family"].tolist())
                alone += bool(single["lead_lo"] > 0)
        pooled = stats.pooled_spearman_lead(strata, n_boot=n_boot, seed=seed)
        rows.append({"rival": rival, "strata": pooled["strata"], "n": pooled["n"], "lead": pooled["lead"],
                     "lead_lo": pooled["lead_lo"], "lead_hi": pooled["lead_hi"],
                     "ahead_shown": bool(pooled["lead_lo"] > 0), "strata_ahead_shown": alone,
                     "strata_leads": "; ".join(f"{k} {v:+.3f}" for k, v in pooled["strata_leads"].items()),
                     "note": pooled["note"]})
    return pd.DataFrame(rows, columns=POOLED_COLUMNS)


def family_split(table: pd.DataFrame, fit_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fitting and held-out parts of the grid that share no traces: single-teacher families are split
    whole; the mixed family (which contains every teacher's traces) is left out of both."""
    single = table[table["family"] != MIXED_FAMILY]
    return stats.split_grid(single, fit_fraction, seed=seed, by="family")


def protocol_split(table: pd.DataFrame, prof, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two parts of ``rule_protocol``, of the cells that have a DMC (a dataset without a scoring-slice item
    has none to compare): ``correlation.fit_split: family`` splits the single-teacher families
    (``family_split``); ``student`` fits on the first student by name (sorted) and reports on the others."""
    c = prof.correlation
    table = table[table["dmc"].notna()]
    if c.fit_split == "student":
        names = sorted(table["student"].unique())
        if len(names) < 2:
            raise ValueError(f"correlation.fit_split: student needs at least two students in the grid, found {names}; "
                             "use fit_split: family")
        fit = table["student"] == names[0]
        return table[fit].reset_index(drop=True), table[~fit].reset_index(drop=True)
    return family_split(table, c.fit_fraction, seed)


def dmc_columns(chosen: str, prof) -> tuple[str, str]:
    """The held-out part's two DMC columns: the protocol's choice and the profile's own rule."""
    return f"dmc[{chosen} chosen]", f"dmc[{prof.dmc.variant} profile]"


def held_out_part(hold: pd.DataFrame, items: pd.DataFrame, prof, chosen: str, chosen_params: dict) -> pd.DataFrame:
    """The held-out cells of ``rule_protocol`` with DMC under the chosen rule and under the profile's rule."""
    held = hold.copy()
    rules = ((chosen, chosen_params), (prof.dmc.variant, prof.dmc.rule_params()))
    for label, (rule, params) in zip(dmc_columns(chosen, prof), rules):
        held[label] = stats.dmc_for_grid(held, items, ("dataset", "student"), rule, params) if len(held) else []
    return held


def held_out_leads(table: pd.DataFrame, items: pd.DataFrame, stage: Stage, summary: dict) -> pd.DataFrame:
    """``dmc_lead_table`` on the held-out part of ``rule_protocol`` (its ``summary``): the chosen rule's and
    the profile rule's lead over every other predictor, within each held-out student."""
    prof = stage.params
    _, hold = protocol_split(table, prof, stage.seed)
    held = held_out_part(hold, items, prof, summary["chosen_rule"], summary["chosen_params"])
    frames = [dmc_lead_table(held, stage, column) for column in dmc_columns(summary["chosen_rule"], prof)]
    return pd.concat(frames, ignore_index=True)


def rule_protocol(table: pd.DataFrame, items: pd.DataFrame, stage: Stage) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """How the default rule is chosen, and how the choice fares where it was not chosen.

    Every rule of ``correlation.fit_grid`` is fitted (its parameter grid searched) on the fitting part
    of ``protocol_split``, scored by its mean within-student Spearman with the gain there; the best one
    is the choice. On the other part, the choice, the profile's own rule (``dmc.variant``,
    ``dmc.params``) and every other predictor are correlated with the gain within each student (family
    bootstrap). Nothing is tuned to the held-out part. Returns (the fit table: one row per rule, the
    held-out table: one row per (student, predictor), a summary dict).
    """
    prof = stage.params
    c = prof.correlation
    fit, hold = protocol_split(table, prof, stage.seed)
    rows, fits = [], {}
    for rule, grid in c.fit_grid.items():
        f = stats.fit_dmc_params(fit, items, variant=rule, param_grid=grid)
        fits[rule] = f
        rows.append({"rule": rule, "params": json.dumps(f["params"], sort_keys=True), "spearman_fit": f["spearman"],
                     "n_fit": f["n_fit"], "grid_points": len(f["search"]), "note": f["note"]})
    fit_table = pd.DataFrame(rows)
    ranked = fit_table.dropna(subset=["spearman_fit"])
    chosen = ranked.loc[ranked["spearman_fit"].idxmax(), "rule"] if len(ranked) else prof.dmc.variant
    chosen_params = fits[chosen]["params"] if chosen in fits else prof.dmc.rule_params()
    fit_table["chosen"] = fit_table["rule"] == chosen
    held = held_out_part(hold, items, prof, chosen, chosen_params)
    preds = [*dmc_columns(chosen, prof), *[p for p in PREDICTORS if p in held.columns and p != "dmc"]]
    frames = []
    for student, g in held.groupby("student", sort=True):
        t = stats.predictor_table(g, preds, "gain", n_boot=c.bootstrap, n_perm=c.permutations, seed=stage.seed,
                                  group_col="family")
        t.insert(0, "scope", student)
        frames.append(t)
    held_table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    summary = {"fit_split": c.fit_split, "chosen_rule": chosen, "chosen_params": chosen_params,
               "profile_rule": prof.dmc.variant, "profile_params": prof.dmc.rule_params(),
               "n_fit_cells": len(fit), "n_held_out_cells": len(hold),
               "fit_datasets": sorted(fit["dataset"].unique()), "held_out_datasets": sorted(hold["dataset"].unique())}
    return fit_table, held_table, summary


VERDICT_COLUMNS = ["scope", "dmc", "n", "spearman", "spearman_lo", "spearman_hi", "strong", "rivals_at_or_above",
                   "ahead_shown_of", "not_shown_ahead_of", "undefined_rivals", "ahead_of_every_rival", "verdict"]


def held_out_verdict(held_table: pd.DataFrame, held_leads: pd.DataFrame, min_spearman: float = 0.6) -> pd.DataFrame:
    """The bar DMC is held to, checked on the held-out part, per (student, DMC rule): a Spearman with the
    gain of at least ``min_spearman`` with its interval above 0 (``strong``), and above the absolute Spearman
    of every other predictor (``ahead_of_every_rival``: each paired lead's interval above 0; a higher point
    estimate alone does not count). Rivals that are undefined there (a constant column) are listed apart and
    do not count either way. ``verdict`` says it in words, with the numbers."""
    rows = []
    if held_leads.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    for (scope, column), leads in held_leads.groupby(["scope", "dmc"], sort=True):
        own = held_table[(held_table["scope"] == scope) & (held_table["predictor"] == column)]
        rho, lo, hi = (float(own[c].iloc[0]) if len(own) else float("nan")
                       for c in ("spearman", "spearman_lo", "spearman_hi"))
        defined = leads[leads["lead"].notna()]
        undefined = leads.loc[leads["lead"].isna(), "rival"].tolist()
        at_or_above = defined.loc[defined["rival_abs_spearman"] >= defined["spearman"], "rival"].tolist()
        shown = defined.loc[defined["ahead_shown"].astype(bool), "rival"].tolist()
        not_shown = defined.loc[~defined["ahead_shown"].astype(bool), "rival"].tolist()
        strong = bool(rho >= min_spearman and lo > 0)
        every = bool(len(defined) > 0 and not not_shown)
        words = (f"Spearman {rho:+.2f} [{lo:+.2f}, {hi:+.2f}]: "
                 + (f"at least {min_spearman} with its interval above 0" if strong
                    else f"not at least {min_spearman} with its interval above 0")
                 + "; " + (f"shown ahead of every defined rival ({len(defined)})" if every
                           else f"shown ahead of {len(shown)} of {len(defined)} defined rivals, not of "
                                f"{', '.join(not_shown)}")
                 + (f" (point estimate at or below {', '.join(at_or_above)})" if at_or_above else "")
                 + (f"; undefined here: {', '.join(undefined)}" if undefined else ""))
        rows.append({"scope": scope, "dmc": column, "n": int(leads["n"].max()), "spearman": rho, "spearman_lo": lo,
                     "spearman_hi": hi, "strong": strong, "rivals_at_or_above": ";".join(at_or_above),
                     "ahead_shown_of": ";".join(shown), "not_shown_ahead_of": ";".join(not_shown),
                     "undefined_rivals": ";".join(undefined), "ahead_of_every_rival": every, "verdict": words})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)
