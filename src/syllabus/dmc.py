"""Data-Model Compatibility (docs/method.md, stage 3): every factor per item and per dataset.

For a student M and a candidate dataset D of (problem, trace) items:

- quality        q_i = verifier verdict, times 0 when the trace is truncated or malformed;
- capability     c_i = the student's pass rate on the problem (k samples);
- rel_difficulty r_i = NLL_M(trace | problem) / NLL_ref(M), with NLL_ref the median NLL of the
  student's own sampled solutions on the probe set (``nll_reference``);
- compat         m_i = a combination rule over (q, c, r); the default is
  q * (1 - c) * exp(-lam * max(0, r - r0));
- DMC(D, M)      = mean_i m_i.

Rules live in a small registry (``@register("name")``); each is a function of the factor arrays and
its keyword parameters. ``item_table`` adds the factors and m_i to a table of items,
``dataset_table`` sums them up per dataset (or per any grouping, e.g. dataset x student).
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .records import Trace

Rule = Callable[..., np.ndarray]
RULES: dict[str, Rule] = {}
FACTORS = ("quality", "capability", "rel_difficulty")


def register(name: str) -> Callable[[Rule], Rule]:
    """Add a combination rule ``f(quality, capability, rel_difficulty, **params) -> m``."""
    def deco(fn: Rule) -> Rule:
        if name in RULES:
            raise ValueError(f"DMC rule '{name}' is already registered")
        RULES[name] = fn
        return fn
    return deco


def _excess(r: np.ndarray, r0: float) -> np.ndarray:
    return np.maximum(0.0, r - r0)


@register("default")
def default_rule(quality, capability, rel_difficulty, *, r0: float = 1.0, lam: float = 1.0):
    """docs/method.md: correct traces, of problems the student fails, not far harder than its own text."""
    return quality * (1 - capability) * np.exp(-lam * _excess(rel_difficulty, r0))


@register("no_difficulty")
def no_difficulty_rule(quality, capability, rel_difficulty):
    """Ablation: quality and capability only."""
    return quality * (1 - capability)


@register("no_capability")
def no_capability_rule(quality, capability, rel_difficulty, *, r0: float = 1.0, lam: float = 1.0):
    """Ablation: quality and relative difficulty only."""
    return quality * np.exp(-lam * _excess(rel_difficulty, r0))


@register("quality_only")
def quality_only_rule(quality, capability, rel_difficulty):
    """Ablation: the share of verified traces."""
    return quality * np.ones_like(capability)


@register("gaussian_zpd")
def gaussian_zpd_rule(quality, capability, rel_difficulty, *, r0: float = 1.0, lam: float = 1.0):
    """Penalise relative difficulty on both sides of r0 (too familiar and too foreign)."""
    return quality * (1 - capability) * np.exp(-lam * (rel_difficulty - r0) ** 2)


@register("partial_capability")
def partial_capability_rule(quality, capability, rel_difficulty, *, r0: float = 1.0, lam: float = 1.0):
    """ZPD read on capability: problems the student sometimes solves (4c(1-c), 1 at c = 0.5)."""
    return quality * 4 * capability * (1 - capability) * np.exp(-lam * _excess(rel_difficulty, r0))


def rule_params(variant: str) -> dict[str, float]:
    """The keyword parameters of a rule with their defaults."""
    fn = _rule(variant)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


def _rule(variant: str) -> Rule:
    if variant not in RULES:
        raise ValueError(f"unknown DMC variant '{variant}'; known: {sorted(RULES)} (profile key dmc.variant)")
    return RULES[variant]


def compatibility(quality, capability, rel_difficulty, variant: str = "default", **params: float) -> np.ndarray:
    """Item compatibility m_i under a registered rule; unused parameters are ignored, unknown ones rejected."""
    fn, accepted = _rule(variant), rule_params(variant)
    unknown = sorted(set(params) - set(accepted) - {"r0", "lam"})
    if unknown:
        raise ValueError(f"DMC variant '{variant}' has no parameters {unknown}; it takes {sorted(accepted)}")
    kwargs = {k: float(v) for k, v in params.items() if k in accepted}
    q, c, r = (np.asarray(x, dtype=float) for x in (quality, capability, rel_difficulty))
    return np.asarray(fn(q, c, r, **kwargs), dtype=float)


# --------------------------------------------------------------------------- factors
def pass_rates(samples: pd.DataFrame, problem_col: str = "problem_id", correct_col: str = "correct") -> pd.Series:
    """The student's pass rate per problem from k verified samples (one row per sample)."""
    _require(samples, [problem_col, correct_col], "student samples")
    if samples[correct_col].isna().any():
        row = int(np.flatnonzero(samples[correct_col].isna().to_numpy())[0])
        raise ValueError(f"student samples: row {row} has no verdict in '{correct_col}'; verify every sample first")
    return samples.groupby(problem_col, sort=True)[correct_col].mean().astype(float).rename("pass_rate")


def nll_reference(own_nll: Iterable[float]) -> float:
    """NLL_ref(M): the median per-token NLL of the student's own sampled solutions on the probe set."""
    values = np.asarray(list(own_nll), dtype=float)
    if values.size == 0:
        raise ValueError("nll_reference: no scores of the student's own solutions; "
                         "sample and score the probe set first")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"nll_reference: {int((~np.isfinite(values)).sum())} own-solution NLLs are not finite")
    ref = float(np.median(values))
    if ref <= 0:
        raise ValueError(f"nll_reference: median NLL is {ref}; a reference must be > 0 to divide by")
    return ref


ITEM_COLUMNS = ("dataset", "problem_id", "correct", "pass_rate", "nll")


def items_frame(dataset: str, traces: Sequence[Trace], pass_rate: Mapping[str, float],
                scores: pd.DataFrame) -> pd.DataFrame:
    """The input of ``item_table`` for one candidate dataset: its traces, the student's pass rates
    per problem and the student's scores of the traces (``syllabus.scoring``, same order)."""
    if len(scores) != len(traces):
        raise ValueError(f"dataset '{dataset}': {len(traces)} traces but {len(scores)} score rows; "
                         "score exactly the dataset's traces, in order")
    rows = []
    for i, t in enumerate(traces):
        if t.correct is None:
            raise ValueError(f"dataset '{dataset}': trace {i} (problem {t.problem_id!r}) has no verdict; "
                             "verify it first")
        if t.problem_id not in pass_rate:
            raise ValueError(f"dataset '{dataset}': no student pass rate for problem {t.problem_id!r}; "
                             "estimate pass rates on every problem of the dataset (dmc.pass_rates)")
        rows.append({"dataset": dataset, "problem_id": t.problem_id, "teacher": t.teacher, "sample": t.sample,
                     "correct": bool(t.correct), "truncated": bool(t.truncated),
                     "pass_rate": float(pass_rate[t.problem_id])})
    scores = scores.reset_index(drop=True).rename(columns={"truncated": "score_truncated"})
    return pd.concat([pd.DataFrame(rows), scores], axis=1)


def item_table(items: pd.DataFrame, nll_ref: float, *, variant: str = "default", **params: float) -> pd.DataFrame:
    """Add every DMC factor and the item compatibility to a table of items.

    ``items`` needs one row per (problem, trace) with columns ``dataset``, ``problem_id``,
    ``correct`` (verifier verdict), ``pass_rate`` (student, in [0, 1]) and ``nll`` (student's mean
    per-token NLL of the trace); ``truncated`` and ``malformed`` are optional (False when absent).
    Returns a copy with ``quality``, ``capability``, ``rel_difficulty`` and ``compat`` added.
    """
    _require(items, ITEM_COLUMNS, "DMC items")
    if not (np.isfinite(nll_ref) and nll_ref > 0):
        raise ValueError(f"DMC items: nll_ref must be a positive number, got {nll_ref}")
    df = items.copy()
    _check_values(df, "correct", lambda s: s.isin([True, False, 0, 1]), "True/False (verify the traces first)")
    _check_values(df, "pass_rate", lambda s: s.between(0, 1), "a pass rate in [0, 1]")
    _check_values(df, "nll", lambda s: np.isfinite(s.astype(float)) & (s.astype(float) >= 0), "a finite NLL >= 0")
    bad = np.zeros(len(df), dtype=bool)
    for flag in ("truncated", "malformed"):
        if flag in df:
            bad |= df[flag].fillna(False).astype(bool).to_numpy()
    df["quality"] = df["correct"].astype(bool).to_numpy() * ~bad * 1.0
    df["capability"] = df["pass_rate"].astype(float)
    df["rel_difficulty"] = df["nll"].astype(float) / float(nll_ref)
    df["compat"] = compatibility(df["quality"], df["capability"], df["rel_difficulty"], variant, **params)
    return df


def recompute(items: pd.DataFrame, *, variant: str = "default", **params: float) -> pd.DataFrame:
    """An item table with ``compat`` recomputed under another rule or parameters (factors unchanged)."""
    _require(items, FACTORS, "DMC item table (from item_table)")
    df = items.copy()
    df["compat"] = compatibility(df["quality"], df["capability"], df["rel_difficulty"], variant, **params)
    return df


def dataset_table(items: pd.DataFrame, by: str | Sequence[str] = "dataset") -> pd.DataFrame:
    """Per dataset (or grouping): item and problem counts, the factor means and DMC = mean compat.

    Columns: n_items, n_problems, quality (Q), capability (C), rel_difficulty (mean r),
    rel_difficulty_median, nll, dmc; plus the means of ``n_tokens``, ``entropy`` and ``ifd`` when the
    items carry them (scores from ``syllabus.scoring``), and ``perplexity`` = exp(mean nll).
    """
    keys = [by] if isinstance(by, str) else list(by)
    _require(items, [*keys, "problem_id", "nll", *FACTORS, "compat"], "DMC item table (from item_table)")
    g = items.groupby(keys, sort=True)
    out = pd.DataFrame({
        "n_items": g.size(),
        "n_problems": g["problem_id"].nunique(),
        "quality": g["quality"].mean(),
        "capability": g["capability"].mean(),
        "rel_difficulty": g["rel_difficulty"].mean(),
        "rel_difficulty_median": g["rel_difficulty"].median(),
        "nll": g["nll"].mean(),
    })
    out["perplexity"] = np.exp(out["nll"])
    for extra in ("n_tokens", "entropy", "ifd"):
        if extra in items:
            out[extra] = g[extra].mean()
    out["dmc"] = g["compat"].mean()
    return out.reset_index()


def dmc_scores(items: pd.DataFrame, by: str | Sequence[str] = "dataset") -> pd.Series:
    """DMC per dataset (or grouping) from an item table."""
    keys = [by] if isinstance(by, str) else list(by)
    _require(items, [*keys, "compat"], "DMC item table (from item_table)")
    return items.groupby(keys, sort=True)["compat"].mean().rename("dmc")


# --------------------------------------------------------------------------- input checks
def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; present: {list(df.columns)}")


def _check_values(df: pd.DataFrame, column: str, ok: Callable[[pd.Series], pd.Series], expected: str) -> None:
    valid = ok(df[column]).fillna(False).to_numpy(dtype=bool) & df[column].notna().to_numpy()
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        row = df.iloc[i]
        who = f"dataset {row.get('dataset')!r}, problem {row.get('problem_id')!r}"
        value = row[column].item() if hasattr(row[column], "item") else row[column]
        raise ValueError(f"DMC items: row {i} ({who}) has {column}={value!r}; expected {expected}")

