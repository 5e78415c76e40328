"""Stage 1 - teacher selection (DED): the best teacher is the one the student learns most from.

For every candidate teacher: its own accuracy, its trace lengths in student tokens, truncation rate,
the student's per-token entropy and NLL of its traces, its DMC for the student, and the
**smoke-test gain**: an equal-budget short SFT of the student on the teacher's verified traces,
evaluated on the probe split. The leaderboard is ranked by that gain.
"""

from __future__ import annotations

import pandas as pd

from . import workflow
from .params import Profile
from .progress import track
from .records import Problem
from .runs import Stage


def selection_problems(prof: Profile, splits: workflow.Splits) -> list[Problem]:
    """The problems teachers write traces for: the first ``probe_size`` of the pool."""
    return splits.pool[: prof.teacher_selection.probe_size]


def generate_all(stage: Stage, problems: list[Problem]) -> dict[str, workflow.TeacherRun]:
    """Traces from every candidate teacher on the selection problems (cached, resumable, verified)."""
    return workflow.teacher_traces(stage, problems, stage.params.teacher_selection.samples_per_problem)


def traces_table(runs: dict[str, workflow.TeacherRun]) -> pd.DataFrame:
    rows = [{"teacher": r.name, "problem_id": t.problem_id, "sample": t.sample, "correct": t.correct,
             "truncated": t.truncated, "text": t.text} for r in runs.values() for t in r.traces]
    return pd.DataFrame(rows)


def leaderboard(stage: Stage, student: workflow.StudentModel, runs: dict[str, workflow.TeacherRun],
                problems: list[Problem], eval_problems: list[Problem]) -> pd.DataFrame:
    """One row per teacher: its accuracy, trace statistics under the student, and the smoke-test gain."""
    from .scoring import cached_scores

    prof = stage.params
    by_id = {p.id: p for p in problems}
    fingerprint = student.fingerprint()
    before = workflow.accuracy(student, eval_problems, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)
    rows = []
    for name, run in track(runs.items(), "smoke tests (teachers)"):
        traces = run.traces
        correct = [t for t in traces if t.correct]
        pairs = workflow.sft_examples(student, by_id, traces)
        scores = cached_scores(student.model, student.tokenizer, pairs, cache_dir=stage.run.cache / "scores",
                               batch_size=prof.dmc.score_batch_size, fingerprint=fingerprint)
        row = {
            "teacher": name,
            "traces": len(traces),
            "teacher_accuracy": sum(bool(t.correct) for t in traces) / max(1, len(traces)),
            "mean_tokens": float(scores["n_tokens"].mean()),
            "median_tokens": float(scores["n_tokens"].median()),
            "truncation_rate": sum(t.truncated for t in traces) / max(1, len(traces)),
            "student_nll": float(scores["nll"].mean()),
            "student_entropy": float(scores["entropy"].mean()),
        }
        if correct:
            trained, _ = workflow.distil(student, workflow.sft_examples(student, by_id, correct),
                                         steps=prof.teacher_selection.smoke_sft_steps, stage=stage,
                                         seed=stage.seed, tag=f"smoke-{student.name}-{name}")
            after = workflow.accuracy(trained, eval_problems, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)
        else:
            after = before
        row.update({"accuracy_before": before, "accuracy_after": after, "gain": after - before})
        rows.append(row)
    board = pd.DataFrame(rows).sort_values(["gain", "teacher_accuracy"], ascending=[False, False], kind="mergesort")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)


def choose(board: pd.DataFrame, top: int) -> list[str]:
    """DED's rule: the teacher(s) with the largest smoke-test gain (ties: the more accurate)."""
    return board.sort_values("rank")["teacher"].head(top).tolist()
