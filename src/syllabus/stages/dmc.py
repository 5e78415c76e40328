"""Stage 3 composed: the DMC of every candidate dataset for a student at its current checkpoint.

Every candidate dataset is split once, by a stable hash of the problem id (``dmc_factors.scoring_split``,
``dmc.heldout_fraction``), into a training slice and a scoring slice; nested datasets share the
split. DMC is measured on the scoring slice (``score_student``); SFT in stages 4 and 5 draws only
from the training slice (``training_rows``), so training on D cannot raise DMC(D) merely by making
the very items it is scored on likelier.

For one student: k samples of its own on every problem of the slice at ``dmc.sample_temperature``
(capability: their smoothed pass rate; the per-prompt reference: their mean NLL), the
teacher-forced NLL / entropy / IFD / rank of every trace (batched, cached by model and data), then
``dmc_factors.item_table`` and ``dmc_factors.dataset_table``. Stage 5 calls the same function on each new checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .. import distillation, dmc_factors, generation, stats
from ..progress import track
from ..records import Problem, Trace
from ..runs import Stage, cached_json, hash_obj
from ..scoring import cached_scores
from ..students import StudentModel
from ..verify import verify

SLICES = ("scoring", "training", "training_sample")


def traces_of(rows: pd.DataFrame) -> list[Trace]:
    """Candidate-table rows as traces with their verifier verdict (column ``correct``)."""
    return [Trace(problem_id=r["problem_id"], teacher=r["teacher"], text=r["text"], sample=int(r["sample"]),
                  correct=bool(r["correct"])) for r in rows.to_dict("records")]


def split_salt(prof) -> str:
    """What the scoring split depends on besides the problem id: the run's seed."""
    return str(prof.seed)


def slice_rows(datasets: dict[str, pd.DataFrame], prof, part: str) -> dict[str, pd.DataFrame]:
    """The ``part`` slice of every candidate dataset: 'training' or 'scoring' (``dmc.heldout_fraction``
    decides them), or 'training_sample': problems of the training slice chosen by another stable hash,
    as many as the scoring slice has in expectation (stage 5 scores them in sample, to show lock-in, at
    the cost of scoring the scoring slice again rather than four times over). Datasets whose slice is
    empty are left out."""
    if part not in SLICES:
        raise ValueError(f"slice must be one of {SLICES}, got {part!r}")
    fraction = prof.dmc.heldout_fraction
    out = {}
    for name, rows in datasets.items():
        training, scoring = dmc_factors.scoring_split(rows, fraction, split_salt(prof))
        chosen = scoring if part == "scoring" else training
        if part == "training_sample" and 0 < fraction < 0.5:
            chosen = dmc_factors.scoring_split(training, fraction / (1 - fraction), split_salt(prof) + ":in-sample")[1]
        if len(chosen):
            out[name] = chosen
    return out


def training_rows(datasets: dict[str, pd.DataFrame], prof) -> dict[str, pd.DataFrame]:
    """What SFT on candidate datasets (stage-4 grid cells, stage-5 phases) may draw from: every dataset's
    training slice. A dataset whose every problem falls in the scoring slice is an error naming it."""
    out = slice_rows(datasets, prof, "training")
    empty = sorted(set(datasets) - set(out))
    if empty:
        raise ValueError(f"candidate dataset(s) {empty} have no problem outside the DMC scoring slice; lower "
                         f"dmc.heldout_fraction (now {prof.dmc.heldout_fraction}) or leave them out of the grid")
    return out


def own_samples(stage: Stage, student: StudentModel, problems: list[Problem], *, seed: int) -> pd.DataFrame:
    """The student's own k = ``dmc.capability_samples`` samples per problem at ``dmc.sample_temperature``
    (top_p 1), each verified and scored: problem_id, sample, correct, nll (NaN for an empty sample).
    Generations are cached by (weights, problems, settings, seed); scores by ``cached_scores``."""

    prof = stage.params
    k, temperature = prof.dmc.capability_samples, prof.dmc.sample_temperature

    def compute() -> list[list]:
        outs = generation.student_samples(student, problems, k=max(k, 2), prof=prof, seed=seed,
                                          cache_dir=stage.run.cache, temperature=temperature, top_p=1.0)
        return [[p.id, j, bool(verify(p, g.text)), g.text] for p, gens in zip(problems, outs)
                for j, g in enumerate(gens[:k])]

    key = hash_obj({"student": student.fingerprint(), "problems": [(p.id, p.text) for p in problems], "k": k,
                    "temperature": temperature, "gen": generation.generation_settings(prof, student), "seed": seed})[:24]
    rows = cached_json(Path(stage.run.cache) / "own_samples" / f"{key}.json", compute)
    frame = pd.DataFrame(rows, columns=["problem_id", "sample", "correct", "text"])
    by_id = {p.id: p for p in problems}
    scored = frame[frame["text"].str.strip() != ""]
    pairs = [(student.prompt(by_id[pid]), student.target(text)) for pid, text in zip(scored["problem_id"], scored["text"])]
    frame["nll"] = np.nan
    if pairs:
        scores = cached_scores(student.model, student.tokenizer, pairs, cache_dir=stage.run.cache / "scores",
                               batch_size=prof.dmc.score_batch_size,
                               max_batch_tokens=prof.dmc.score_max_batch_tokens, fingerprint=student.fingerprint())
        note_scoring(stage, scores.attrs)
        frame.loc[scored.index, "nll"] = scores["nll"].to_numpy()
    return frame.drop(columns="text")


def per_prompt_reference(own: pd.DataFrame) -> pd.Series:
    """NLL_ref per problem from the own samples (``dmc_factors.per_prompt_reference``); a problem whose every own
    sample is empty takes the median reference of the others (such problems are counted in ``attrs``)."""
    scored = own.dropna(subset=["nll"])
    if scored.empty:
        raise ValueError("per-prompt reference: every own sample of the student is empty; raise "
                         "student_generation.max_new_tokens or dmc.capability_samples")
    ref = dmc_factors.per_prompt_reference(scored).reindex(sorted(own["problem_id"].unique()))
    n_missing = int(ref.isna().sum())
    ref = ref.fillna(float(ref.median()))
    ref.attrs["n_fallback"] = n_missing
    return ref


def reference_nll(stage: Stage, student: StudentModel, probe: list[Problem]) -> tuple[float, pd.DataFrame]:
    """NLL_ref(M) of ``dmc.reference: sampled_median``: the median NLL of the student's own sampled
    solutions (``student_generation`` temperature) on the probe set."""
    prof = stage.params
    k = prof.dmc.capability_samples
    outs = generation.student_samples(student, probe, k=k, prof=prof, seed=stage.seed + 1, cache_dir=stage.run.cache)
    pairs = [(student.prompt(p), student.target(g.text)) for p, gens in zip(probe, outs) for g in gens if g.text.strip()]
    scores = cached_scores(student.model, student.tokenizer, pairs, cache_dir=stage.run.cache / "scores",
                           batch_size=prof.dmc.score_batch_size,
                           max_batch_tokens=prof.dmc.score_max_batch_tokens, fingerprint=student.fingerprint())
    note_scoring(stage, scores.attrs)
    return dmc_factors.nll_reference(scores["nll"]), scores


def score_student(stage: Stage, student: StudentModel, datasets: dict[str, pd.DataFrame],
                  problems: dict[str, Problem], probe: list[Problem], *, seed: int | None = None,
                  part: str = "scoring") -> pd.DataFrame:
    """Item table (every factor and the item compatibility) of every candidate dataset's ``part`` slice
    ('scoring', out of sample: DMC; 'training': the whole training slice; 'training_sample': a sample of it the
    size of the scoring slice, in sample, what stage 5 records to show lock-in) for one student. Datasets with
    an empty slice have no rows."""
    prof = stage.params
    seed = stage.seed if seed is None else seed
    fingerprint = student.fingerprint()
    parts = slice_rows(datasets, prof, part)
    needed = sorted({pid for rows in parts.values() for pid in rows["problem_id"]})
    own = own_samples(stage, student, [problems[i] for i in needed], seed=seed)
    capability = dmc_factors.smoothed_pass_rates(own, prof.dmc.capability_prior)
    raw_rate = dmc_factors.pass_rates(own)
    if prof.dmc.reference == "per_prompt":
        ref = per_prompt_reference(own)
        nll_ref = None
    else:
        nll_ref, _ = reference_nll(stage, student, probe)
    frames = []
    for name, rows in track(parts.items(), f"DMC scoring of {student.name}", unit="datasets"):
        traces = traces_of(rows)
        pairs = distillation.sft_examples(student, problems, traces)
        scores = cached_scores(student.model, student.tokenizer, pairs, cache_dir=stage.run.cache / "scores",
                               batch_size=prof.dmc.score_batch_size,
                               max_batch_tokens=prof.dmc.score_max_batch_tokens, fingerprint=fingerprint)
        note_scoring(stage, scores.attrs)
        frames.append(dmc_factors.items_frame(name, traces, capability.to_dict(), scores))
    items = pd.concat(frames, ignore_index=True)
    items["raw_pass_rate"] = items["problem_id"].map(raw_rate)
    items["ifd"] = items["nll"] / items["nll_unconditional"].replace(0, np.nan)
    if nll_ref is None:
        items["nll_ref"] = items["problem_id"].map(ref)
    table = dmc_factors.item_table(items, nll_ref, variant=prof.dmc.variant, **prof.dmc.rule_params())
    table.insert(0, "student", student.name)
    if nll_ref is not None:
        table["nll_ref"] = nll_ref
    table["slice"] = part
    return table


def note_scoring(stage: Stage, counts: Mapping[str, int]) -> None:
    """Add scoring counts (``n_scored``, ``n_cached``: a ``cached_scores`` frame's ``attrs``, or another
    process's ``scoring`` note) to the manifest note ``scoring`` (n_scored 0: all from the cache)."""
    note = stage.notes.setdefault("scoring", {"n_scored": 0, "n_cached": 0})
    note["n_scored"] += int(counts.get("n_scored", 0))
    note["n_cached"] += int(counts.get("n_cached", 0))


def dataset_scores(items: pd.DataFrame) -> pd.DataFrame:
    """Per (student, dataset): counts, factor means and DMC."""
    return dmc_factors.dataset_table(items, by=["student", "dataset"])


FIGURE_FACTORS = {"quality": "quality", "capability": "capability", "rel_difficulty": "rel_difficulty",
                  "dmc": "compat"}  # the dataset table's column -> the item column it is the mean of


def factor_intervals(items: pd.DataFrame, factors: Mapping[str, str] = FIGURE_FACTORS, *, n_boot: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """The 95% interval of each factor's mean (and DMC's, the mean compat) per (student, dataset), by a
    bootstrap that draws whole problems (a problem's traces share its capability and prompt), for the
    figures' whiskers: one row per (student, dataset, factor) with ``lo`` and ``hi``. ``factors`` maps a
    dataset-table column to the item column it is the mean of."""
    rows = []
    for (student, dataset), g in items.groupby(["student", "dataset"], sort=True):
        for factor, column in factors.items():
            lo, hi = stats.clustered_mean_interval(g[column].to_numpy(), g["problem_id"].to_numpy(),
                                                   n_boot=n_boot, seed=seed)
            rows.append({"student": student, "dataset": dataset, "factor": factor, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)
