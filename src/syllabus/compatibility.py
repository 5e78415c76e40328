"""Stage 3 composed: the DMC of every candidate dataset for a student at its current checkpoint.

For one student: its pass rate on every problem of the candidates (capability, k samples), its
reference NLL (median NLL of its own samples on the probe set), the teacher-forced NLL / entropy /
IFD of every trace (batched, cached by model and data), then ``dmc.item_table`` and
``dmc.dataset_table``. Stage 5 calls the same function on each new checkpoint.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import dmc, workflow
from .records import Problem, Trace
from .progress import track
from .runs import Stage
from .scoring import cached_scores


def traces_of(rows: pd.DataFrame) -> list[Trace]:
    """Candidate-table rows as traces with their verifier verdict (column ``correct``)."""
    return [Trace(problem_id=r["problem_id"], teacher=r["teacher"], text=r["text"], sample=int(r["sample"]),
                  correct=bool(r["correct"])) for r in rows.to_dict("records")]


def reference_nll(stage: Stage, student: workflow.StudentModel, probe: list[Problem]) -> tuple[float, pd.DataFrame]:
    """NLL_ref(M): the median NLL of the student's own sampled solutions on the probe set."""
    prof = stage.params
    k = prof.dmc.capability_samples
    outs = workflow.student_samples(student, probe, k=k, prof=prof, seed=stage.seed + 1, cache_dir=stage.run.cache)
    pairs = [(student.prompt(p), student.target(g.text)) for p, gens in zip(probe, outs) for g in gens if g.text.strip()]
    scores = cached_scores(student.model, student.tokenizer, pairs, cache_dir=stage.run.cache / "scores",
                           batch_size=prof.dmc.score_batch_size,
                           max_batch_tokens=prof.dmc.score_max_batch_tokens, fingerprint=student.fingerprint())
    note_scoring(stage, scores)
    return dmc.nll_reference(scores["nll"]), scores


def score_student(stage: Stage, student: workflow.StudentModel, datasets: dict[str, pd.DataFrame],
                  problems: dict[str, Problem], probe: list[Problem], *, seed: int | None = None) -> pd.DataFrame:
    """Item table (every factor and the item compatibility) of every candidate dataset for one student."""
    prof = stage.params
    seed = stage.seed if seed is None else seed
    fingerprint = student.fingerprint()
    needed = sorted({pid for rows in datasets.values() for pid in rows["problem_id"]})
    rates = workflow.pass_rates(student, [problems[i] for i in needed], k=prof.dmc.capability_samples, prof=prof,
                                seed=seed, cache_dir=stage.run.cache)
    nll_ref, _ = reference_nll(stage, student, probe)
    frames = []
    for name, rows in track(datasets.items(), f"DMC scoring of {student.name}", unit="datasets"):
        traces = traces_of(rows)
        pairs = workflow.sft_examples(student, problems, traces)
        scores = cached_scores(student.model, student.tokenizer, pairs, cache_dir=stage.run.cache / "scores",
                               batch_size=prof.dmc.score_batch_size,
                               max_batch_tokens=prof.dmc.score_max_batch_tokens, fingerprint=fingerprint)
        note_scoring(stage, scores)
        frames.append(dmc.items_frame(name, traces, rates.to_dict(), scores))
    items = pd.concat(frames, ignore_index=True)
    items["ifd"] = items["nll"] / items["nll_unconditional"].replace(0, np.nan)
    table = dmc.item_table(items, nll_ref, variant=prof.dmc.variant, **_rule_params(prof))
    table.insert(0, "student", student.name)
    table["nll_ref"] = nll_ref
    return table


def note_scoring(stage: Stage, scores: pd.DataFrame) -> None:
    """Add a ``cached_scores`` call's counts to the manifest note ``scoring`` (n_scored 0: all from the cache)."""
    counts = stage.notes.setdefault("scoring", {"n_scored": 0, "n_cached": 0})
    counts["n_scored"] += int(scores.attrs.get("n_scored", 0))
    counts["n_cached"] += int(scores.attrs.get("n_cached", 0))


def _rule_params(prof) -> dict[str, float]:
    wanted = dmc.rule_params(prof.dmc.variant)
    values = {"r0": prof.dmc.r0, "lam": prof.dmc.lam}
    return {k: values[k] for k in wanted if k in values}


def dataset_scores(items: pd.DataFrame) -> pd.DataFrame:
    """Per (student, dataset): counts, factor means and DMC."""
    return dmc.dataset_table(items, by=["student", "dataset"])
