"""Stage 2 composed: the run's teachers write M traces per pool problem, the funnel of ``curate``
keeps what is worth distilling, and the survivors are cut into named candidate datasets.

Besides the curated datasets (per teacher, style, level, pass-rate band, adapted or not), each
teacher also gets an ``+unverified`` dataset: its traces of the same problems, format-checked and thinned to the
same diversity budget per problem, with the correctness filter (and deduplication) left out,
so that stages 3-4 see what verification is worth.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import pandas as pd

from .. import curate, data, generation, lab, stats
from ..params import Profile
from ..records import Problem, Splits, Trace
from ..runs import Stage
from ..students import StudentModel
from ..verify import verify


@dataclass
class Curated:
    result: curate.CurationResult
    candidates: pd.DataFrame
    traces: list[Trace]


def eval_sets(prof: Profile, splits: Splits) -> dict[str, list[Problem]]:
    """Every evaluation set of the profile, for decontamination: the run's probe and held-out
    problems, plus the benchmark sets named in ``data.eval_sets`` (loaded from the data directory).

    The task's own test set is left out only when the pool is drawn from it (``pool_split: test``):
    then it is partitioned into pool, probe and held-out, and the run evaluates on its held-out part.
    """
    sets: dict[str, list[Problem]] = {"heldout": splits.heldout, "probe": splits.probe}
    for name in loaded_eval_sets(prof):
        sets[name] = list(data.load_problems(name, "test", data_dir=prof.data.resolved_data_dir(),
                                             hub_id=prof.data.hub.get(name)))
    return sets


def loaded_eval_sets(prof: Profile) -> list[str]:
    """The names of ``data.eval_sets`` whose test problems ``eval_sets`` loads (all but ``lab`` and, with
    ``pool_split: test``, the task's own)."""
    return [name for name in prof.data.eval_sets
            if not (name == "lab" or (name == prof.data.task and prof.data.pool_split == "test"))]


def curate_pool(stage: Stage, student: StudentModel, splits: Splits,
                pass_rates: pd.Series) -> Curated:
    """Run the funnel on every teacher's traces for the pool and name the candidate datasets."""
    prof = stage.params
    cfg = prof.curation
    runs = generation.teacher_traces(stage, splits.pool, cfg.samples_per_problem)
    traces = [t for run in runs.values() for t in run.traces]
    count_tokens = student.count_tokens
    rates = pass_rates.to_dict()
    result = curate.run_funnel(splits.pool, traces, cfg, verify=verify, eval_sets=eval_sets(prof, splits),
                               pass_rates=rates, count_tokens=count_tokens, seed=stage.seed)
    styles = {t.name: (t.style or t.name) for t in prof.teachers}
    named = curate.build_candidate_datasets(result.problems, result.traces + result.adapted, styles=styles,
                                            pass_rates=rates)
    named["correct"] = True  # every curated trace (and adapted rewrite) passed the verifier
    unverified = unverified_datasets(result.problems, traces, cfg, count_tokens, styles, rates)
    candidates = pd.concat([named, unverified], ignore_index=True)
    return Curated(result, candidates, traces)


def unverified_datasets(problems: list[Problem], traces: list[Trace], cfg, count_tokens, styles, rates) -> pd.DataFrame:
    """Per teacher, the same problems and diversity budget as the curated data, correctness not checked."""
    keep = {p.id for p in problems}
    formatted, _ = curate.filter_format([t for t in traces if t.problem_id in keep], problems,
                                        max_tokens=cfg.max_trace_tokens, count_tokens=count_tokens,
                                        require_think_tags=cfg.require_think_tags)
    diverse, _ = curate.select_diverse(formatted, keep_per_problem=cfg.keep_per_problem, per_teacher=True)
    table = curate.build_candidate_datasets(problems, diverse, styles=styles, pass_rates=rates, unique=False)
    table = table[table["dataset"].str.startswith("teacher=")].copy()
    table["dataset"] = table["dataset"] + "+unverified"
    verdict = {(t.problem_id, t.teacher, t.sample): bool(t.correct) for t in diverse}
    table["correct"] = [verdict[k] for k in zip(table["problem_id"], table["teacher"], table["sample"])]
    return table.reset_index(drop=True)


def raw_traces_table(traces: list[Trace], problems: dict[str, Problem]) -> pd.DataFrame:
    """Every sampled trace with its verdict, before any filter (teacher accuracy per module comes from here)."""
    return pd.DataFrame([{"teacher": t.teacher, "problem_id": t.problem_id, "module": problems[t.problem_id].module,
                          "level": problems[t.problem_id].level, "sample": t.sample, "correct": bool(t.correct),
                          "truncated": bool(t.truncated), "text": t.text} for t in traces])


PLANTED_COLUMNS = ["teacher", "style", "planted_wrong", "traces", "wrong", "measured_wrong", "measured_lo",
                   "measured_hi", "recovered"]


def planted_error_check(raw: pd.DataFrame, prof: Profile) -> pd.DataFrame:
    """Planted truth of stage 2: each lab teacher slips (writes a wrong final answer) with a known
    probability (``lab.slip_probability`` of its style and ``error_rate``). Per lab teacher: that rate beside
    the share of its sampled traces (``raw_traces_table``) the verifier marks wrong, with a 95% Wilson
    interval; ``recovered`` where the planted rate lies inside it. Teachers of other backends (files,
    models) have no planted rate and no row."""
    rows = []
    for t in prof.teachers:
        if t.backend != "lab":
            continue
        mine = raw[raw["teacher"] == t.name]
        n, wrong = len(mine), int((~mine["correct"].astype(bool)).sum())
        planted = lab.slip_probability(t.style, t.error_rate)  # a lab teacher always has a style (params)
        lo, hi = stats.wilson(wrong, n)
        rows.append({"teacher": t.name, "style": t.style, "planted_wrong": planted, "traces": n,
                     "wrong": wrong, "measured_wrong": wrong / n if n else float("nan"), "measured_lo": lo,
                     "measured_hi": hi, "recovered": bool(n and lo <= planted <= hi)})
    return pd.DataFrame(rows, columns=PLANTED_COLUMNS)


def datasets_from_table(candidates: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Candidate datasets by name, in a stable order."""
    return {name: g.reset_index(drop=True) for name, g in candidates.groupby("dataset", sort=True)}


def matching_datasets(datasets: dict[str, pd.DataFrame], patterns: list[str] | None,
                      key: str) -> dict[str, pd.DataFrame]:
    """The candidate datasets whose names match any of ``patterns`` (globs such as ``teacher=*``), or all
    when no pattern is given; a pattern that matches nothing is an error naming the profile ``key``."""
    if patterns is None:
        return datasets
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in datasets)]
    if unmatched:
        raise ValueError(f"{key}: pattern(s) {unmatched} match no candidate dataset; "
                         f"the candidates of stage 2 are {sorted(datasets)}")
    return {name: rows for name, rows in datasets.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
