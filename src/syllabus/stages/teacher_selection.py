"""Stage 1 - teacher selection (DED): the best teacher is the one the student learns most from.

For every candidate teacher: its own accuracy, its trace lengths in student tokens, truncation rate,
the student's per-token entropy and NLL of its traces, and the **smoke-test gain**: an equal-budget
short SFT of the student on the teacher's verified traces (``smoke_sft_tokens`` tokens, or
``smoke_sft_steps`` steps), once per seed, evaluated on the probe split and paired with the
student's own answers there (gain, SE, 95% CI, seed SD: ``stats.paired_gain``). The leaderboard is
ranked by that gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import distillation, executor, generation, sft_cells, stats
from ..params import Profile
from ..progress import track
from ..records import Problem, Splits
from ..runs import Stage
from ..scoring import cached_scores
from ..students import StudentModel


def selection_problems(prof: Profile, splits: Splits) -> list[Problem]:
    """The problems teachers write traces for: the first ``probe_size`` of the pool."""
    return splits.pool[: prof.teacher_selection.probe_size]


def generate_all(stage: Stage, problems: list[Problem]) -> dict[str, generation.TeacherRun]:
    """Traces from every candidate teacher on the selection problems (cached, resumable, verified)."""
    return generation.teacher_traces(stage, problems, stage.params.teacher_selection.samples_per_problem)


def traces_table(runs: dict[str, generation.TeacherRun]) -> pd.DataFrame:
    rows = [{"teacher": r.name, "problem_id": t.problem_id, "sample": t.sample, "correct": t.correct,
             "truncated": t.truncated, "text": t.text} for r in runs.values() for t in r.traces]
    return pd.DataFrame(rows)


@dataclass
class SmokeTests:
    """The student's outcomes on the evaluation problems before the smoke tests (one per problem) and after
    each teacher's (seeds x problems, in ``before``'s order; one row, the unchanged student, for a teacher
    without a verified trace)."""

    before: pd.Series
    afters: dict[str, np.ndarray]


def smoke_tests(stage: Stage, student: StudentModel, runs: dict[str, generation.TeacherRun],
                problems: list[Problem], eval_problems: list[Problem]) -> SmokeTests:
    """Every teacher's smoke test, once per seed (cached; side by side when ``parallel.workers`` > 1)."""
    prof = stage.params
    by_id = {p.id: p for p in problems}
    before = generation.pass_rates(student, eval_problems, k=1, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)
    if executor.spreads(prof):  # fill the caches side by side; the loop below reads every smoke test back
        sft_cells.fill(stage, smoke_jobs(stage, student, runs, by_id, eval_problems))
    afters = {}
    for name, run in track(runs.items(), "smoke tests (teachers)"):
        afters[name] = before.to_numpy()[None, :]  # no verified trace: nothing to train on, the student is unchanged
        if any(t.correct for t in run.traces):
            examples, steps = smoke_examples(stage, student, run, by_id)
            rows = []
            for seed in prof.teacher_selection.seeds:
                trained, _ = distillation.distil(student, examples, steps=steps, stage=stage, seed=seed,
                                                 tag=smoke_tag(student, name, seed))
                after = generation.pass_rates(trained, eval_problems, k=1, prof=prof, seed=stage.seed,
                                              cache_dir=stage.run.cache)
                rows.append(after.loc[before.index].to_numpy())
            afters[name] = np.vstack(rows)
    return SmokeTests(before, afters)


def leaderboard(stage: Stage, student: StudentModel, runs: dict[str, generation.TeacherRun],
                problems: list[Problem], eval_problems: list[Problem], smoke: SmokeTests | None = None) -> pd.DataFrame:
    """One row per teacher: its accuracy, trace statistics under the student, and the smoke-test gain
    (``smoke``, or the smoke tests run here)."""
    prof = stage.params
    smoke = smoke or smoke_tests(stage, student, runs, problems, eval_problems)
    by_id = {p.id: p for p in problems}
    fingerprint = student.fingerprint()
    rows = []
    for name, run in runs.items():
        traces = run.traces
        pairs = distillation.sft_examples(student, by_id, traces)
        scores = cached_scores(student.model, student.tokenizer, pairs, cache_dir=stage.run.cache / "scores",
                               batch_size=prof.dmc.score_batch_size,
                               max_batch_tokens=prof.dmc.score_max_batch_tokens, fingerprint=fingerprint)
        afters = smoke.afters[name]
        paired = stats.paired_gain(smoke.before.to_numpy(), afters)
        rows.append({
            "teacher": name,
            "traces": len(traces),
            "teacher_accuracy": sum(bool(t.correct) for t in traces) / max(1, len(traces)),
            "mean_tokens": float(scores["n_tokens"].mean()),
            "median_tokens": float(scores["n_tokens"].median()),
            "truncation_rate": sum(t.truncated for t in traces) / max(1, len(traces)),
            "student_nll": float(scores["nll"].mean()),
            "student_entropy": float(scores["entropy"].mean()),
            "accuracy_before": float(smoke.before.mean()), "accuracy_after": float(np.mean(afters)),
            "gain": paired["gain"], "gain_se": paired["gain_se"], "gain_lo": paired["gain_lo"],
            "gain_hi": paired["gain_hi"], "seed_sd": paired["seed_sd"], "seeds": len(afters)})
    board = pd.DataFrame(rows).sort_values(["gain", "teacher_accuracy"], ascending=[False, False], kind="mergesort")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)


LEAD_COLUMNS = ["selected", "rival", "lead", "lead_lo", "lead_hi", "seed_sd", "shown", *stats.NEEDED_SAMPLE_KEYS]


def leads(smoke: SmokeTests, selected: str) -> pd.DataFrame:
    """Is the selected teacher's gain shown above each rival's? The paired difference of the student's
    outcomes after the two smoke tests (problem by problem, seed by seed; ``stats.paired_difference``)
    with its 95% interval; where it spans 0, the seeds (the problems kept), the problems (the seeds
    kept), and the seeds and problems grown together (``joint_...``) that would show a lead that large
    (``stats.needed_sample``; inf: that alone would not do). A
    rival with one row (no verified trace) is compared with every seed."""
    mine = smoke.afters[selected]
    rows = []
    for rival, theirs in smoke.afters.items():
        if rival == selected:
            continue
        if len(theirs) in (1, len(mine)):
            d = stats.paired_difference(mine, theirs)
            lead, lo, hi = d["gain"], d["gain_lo"], d["gain_hi"]
        else:  # the selected teacher had no verified trace: its one row against the rival's seeds
            d = stats.paired_difference(theirs, mine)
            lead, lo, hi = -d["gain"], -d["gain_hi"], -d["gain_lo"]
        rows.append({"selected": selected, "rival": rival, "lead": lead, "lead_lo": lo, "lead_hi": hi,
                     "seed_sd": d["seed_sd"], "shown": stats.shown(d), **stats.needed_sample(d)})
    return pd.DataFrame(rows, columns=LEAD_COLUMNS)


def smoke_examples(stage: Stage, student: StudentModel, run: generation.TeacherRun,
                   by_id: dict[str, Problem]) -> tuple[list[tuple[str, str]], int]:
    """A teacher's smoke-test SFT: its verified traces as examples, and the steps of the equal budget."""
    ts = stage.params.teacher_selection
    examples = distillation.sft_examples(student, by_id, [t for t in run.traces if t.correct])
    steps = distillation.budget_steps(student, examples, stage.params.training, tokens=ts.smoke_sft_tokens,
                                      steps=ts.smoke_sft_steps)
    return examples, steps


def smoke_tag(student: StudentModel, teacher: str, seed: int) -> str:
    return f"smoke-{student.name}-{teacher}-s{seed}"


def smoke_jobs(stage: Stage, student: StudentModel, runs: dict[str, generation.TeacherRun],
               by_id: dict[str, Problem], eval_problems: list[Problem]) -> list[dict]:
    """One ``sft_cells`` job per (teacher with verified traces, seed), as ``smoke_tests``' loop runs them."""
    jobs = []
    for name, run in runs.items():
        if any(t.correct for t in run.traces):
            examples, steps = smoke_examples(stage, student, run, by_id)
            jobs += [sft_cells.job(stage, student, examples, steps=steps, seed=seed, tag=smoke_tag(student, name, seed),
                                   eval_problems=eval_problems) for seed in stage.params.teacher_selection.seeds]
    return jobs


def noise_floor(board: pd.DataFrame, n_problems: int) -> pd.DataFrame:
    """How big the noise is next to the differences between teachers: the binomial SE of the student's
    probe accuracy, the median seed SD and SE of a gain, and the SD of the gains across teachers."""
    return pd.DataFrame([{
        "probe_problems": n_problems, "accuracy_before": float(board["accuracy_before"].iloc[0]),
        "binomial_se": stats.binomial_se(float(board["accuracy_before"].iloc[0]), n_problems),
        "median_seed_sd": float(board["seed_sd"].median()), "median_gain_se": float(board["gain_se"].median()),
        "sd_of_gains_across_teachers": float(board["gain"].std(ddof=1)),
        "reliability": stats.reliability(board["gain"], board["gain_se"]),
    }])


def choose(board: pd.DataFrame, top: int) -> list[str]:
    """DED's rule: the teacher(s) with the largest smoke-test gain (ties: the more accurate)."""
    return board.sort_values("rank")["teacher"].head(top).tolist()


def selection_caveat(board: pd.DataFrame, selected: list[str]) -> str | None:
    """What the choice does not show, in words, or None: that the selected teacher's gain is not shown above 0
    (its interval reaches 0 or lies below it), so DED's rule ranked harms or noise rather than teaching."""
    rows = board.set_index("teacher").loc[selected]
    if (rows["gain_lo"] > 0).any():
        return None
    best = rows.iloc[0]
    gain = f"{best['gain']:+.3f} [{best['gain_lo']:+.3f}, {best['gain_hi']:+.3f}]"
    fix = "a larger teacher_selection.smoke_sft_tokens (or more seeds) may change it"
    if (board["gain_hi"] < 0).all():
        return (f"every teacher lowered the probe accuracy at this budget: the selected {best.name} gained {gain}, "
                f"so the choice ranks the least harm, not the most teaching; {fix}")
    return f"the gain of the selected {best.name}, {gain}, is not shown above 0 at this budget, so its rank may be noise; {fix}"
