"""Data-Model Compatibility (docs/method.md, stage 3): every factor per item and per dataset.

For a student M and a candidate dataset D of (problem, trace) items, measured on D's *scoring
slice* (``scoring_split``: problems the student is never trained on in stages 4 and 5):

- quality        q_i = verifier verdict, times 0 when the trace is truncated or malformed;
- capability     c_i = the student's smoothed pass rate on the problem, (s + a) / (k + a + b) from s
  correct of k samples under a Beta(a, b) prior (``smoothed_pass_rates``; ``dmc.capability_prior``);
- rel_difficulty r_i = NLL_M(trace_i | problem) / NLL_ref, with NLL_ref either the student's own
  expected per-token NLL on that prompt at temperature 1 (``per_prompt``, the mean NLL of its own
  T = 1 samples of that problem: a trace as natural to the student as its own writing scores 1), or
  the median NLL of its own tempered samples on the probe set (``sampled_median``, the first version);
- compat         m_i = a combination rule over (q, c, r) with parameters ``dmc.params``;
- DMC(D, M)      = mean_i m_i.

Rules live in a small registry (``@register("name")``); each is a function of the factor arrays and
its keyword parameters, which are data (``dmc.params``, checked by ``check_params``). ``item_table``
adds the factors and m_i to a table of items, ``dataset_table`` sums them up per dataset (or per any
grouping, e.g. dataset x student).
"""

from __future__ import annotations

import hashlib
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


def _log_window(r: np.ndarray, center: float, width: float) -> np.ndarray:
    """exp(-(ln r - ln center)^2 / (2 width^2)): 1 at r = center, falling on both sides in log r."""
    if center <= 0 or width <= 0:
        raise ValueError(f"DMC window: center and width must be > 0, got center={center}, width={width}")
    return np.exp(-(np.log(np.maximum(r, 1e-12)) - np.log(center)) ** 2 / (2 * width ** 2))


@register("window")
def window_rule(quality, capability, rel_difficulty, *, center: float = 1.25, width: float = 0.5):
    """Correct traces of problems the student fails, near its own writing: a two-sided window on log r
    (too familiar teaches little, too foreign cannot be absorbed)."""
    return quality * (1 - capability) * _log_window(rel_difficulty, center, width)


@register("window_information")
def window_information_rule(quality, capability, rel_difficulty, *, center: float = 1.25, width: float = 0.5):
    """As ``window`` with the item-information form of capability, 4 c (1 - c) (1 at c = 0.5)."""
    return quality * 4 * capability * (1 - capability) * _log_window(rel_difficulty, center, width)


@register("excess")
def excess_rule(quality, capability, rel_difficulty, *, r0: float = 1.0, lam: float = 1.0):
    """The first rule (kept as a named variant): q (1 - c) exp(-lam max(0, r - r0)); one-sided, so
    anything at or below r0 scores the maximum."""
    return quality * (1 - capability) * np.exp(-lam * _excess(rel_difficulty, r0))


@register("no_difficulty")
def no_difficulty_rule(quality, capability, rel_difficulty):
    """Ablation: quality and capability only."""
    return quality * (1 - capability)


@register("no_capability")
def no_capability_rule(quality, capability, rel_difficulty, *, center: float = 1.25, width: float = 0.5):
    """Ablation: quality and the relative-difficulty window only."""
    return quality * _log_window(rel_difficulty, center, width)


@register("quality_only")
def quality_only_rule(quality, capability, rel_difficulty):
    """Ablation: the share of verified traces."""
    return quality * np.ones_like(capability)


@register("gaussian_zpd")
def gaussian_zpd_rule(quality, capability, rel_difficulty, *, r0: float = 1.0, lam: float = 1.0):
    """Penalise relative difficulty on both sides of r0, on the linear scale."""
    return quality * (1 - capability) * np.exp(-lam * (rel_difficulty - r0) ** 2)


@register("partial_capability")
def partial_capability_rule(quality, capability, rel_difficulty, *, r0: float = 1.0, lam: float = 1.0):
    """ZPD read on capability with the one-sided discount: 4c(1-c) exp(-lam max(0, r - r0))."""
    return quality * 4 * capability * (1 - capability) * np.exp(-lam * _excess(rel_difficulty, r0))


def rule_params(variant: str) -> dict[str, float]:
    """The keyword parameters of a rule with their defaults."""
    fn = _rule(variant)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


def check_params(variant: str, params: Mapping[str, float], where: str = "dmc.params") -> dict[str, float]:
    """``params`` checked against the rule's keyword parameters, over its defaults; an unknown key is
    an error naming it, the rule and the parameters it takes."""
    accepted = rule_params(variant)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{where}: DMC rule '{variant}' has no parameter(s) {unknown}; it takes "
                         f"{sorted(accepted) or 'none'} (defaults {accepted})")
    return {**accepted, **{k: float(v) for k, v in params.items()}}


def _rule(variant: str) -> Rule:
    if variant not in RULES:
        raise ValueError(f"unknown DMC variant '{variant}'; known: {sorted(RULES)} (profile key dmc.variant)")
    return RULES[variant]


def compatibility(quality, capability, rel_difficulty, variant: str = "window", **params: float) -> np.ndarray:
    """Item compatibility m_i under a registered rule; parameters the rule does not take are rejected."""
    fn, kwargs = _rule(variant), check_params(variant, params, where=f"DMC rule '{variant}'")
    q, c, r = (np.asarray(x, dtype=float) for x in (quality, capability, rel_difficulty))
    return np.asarray(fn(q, c, r, **kwargs), dtype=float)


# --------------------------------------------------------------------------- the scoring slice
def scoring_fraction_of(problem_id: str, salt: str = "") -> float:
    """A stable number in [0, 1) for a problem id (SHA-256; the same on every machine and run)."""
    digest = hashlib.sha256(f"dmc-scoring|{salt}|{problem_id}".encode()).hexdigest()
    return int(digest[:13], 16) / 16 ** 13


def in_scoring_slice(problem_ids: Iterable[str], fraction: float, salt: str = "") -> np.ndarray:
    """True for the problems of the scoring slice: those whose stable hash falls below ``fraction``.

    The split is by problem, not by dataset, so nested datasets (``all``, ``teacher=X``,
    ``teacher=X+adapted``) share it: no trace of a scoring problem is ever trained on in stages 4 and 5.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"dmc.heldout_fraction must be in (0, 1), got {fraction}")
    return np.array([scoring_fraction_of(str(p), salt) < fraction for p in problem_ids], dtype=bool)


def scoring_split(rows: pd.DataFrame, fraction: float, salt: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, scoring rows) of a candidate dataset's table (column ``problem_id``)."""
    _require(rows, ["problem_id"], "candidate dataset")
    mask = in_scoring_slice(rows["problem_id"], fraction, salt)
    return rows[~mask].reset_index(drop=True), rows[mask].reset_index(drop=True)


# --------------------------------------------------------------------------- factors
def pass_rates(samples: pd.DataFrame, problem_col: str = "problem_id", correct_col: str = "correct") -> pd.Series:
    """The student's pass rate per problem from k verified samples (one row per sample)."""
    _require(samples, [problem_col, correct_col], "student samples")
    if samples[correct_col].isna().any():
        row = int(np.flatnonzero(samples[correct_col].isna().to_numpy())[0])
        raise ValueError(f"student samples: row {row} has no verdict in '{correct_col}'; verify every sample first")
    return samples.groupby(problem_col, sort=True)[correct_col].mean().astype(float).rename("pass_rate")


def smoothed_pass_rates(samples: pd.DataFrame, prior: Sequence[float] = (1.0, 1.0),
                        problem_col: str = "problem_id", correct_col: str = "correct") -> pd.Series:
    """Capability per problem: the posterior mean (s + a) / (k + a + b) of s correct in k samples under a
    Beta(a, b) prior (``dmc.capability_prior``; (0, 0) gives the raw pass rate)."""
    a, b = (float(x) for x in prior)
    if a < 0 or b < 0:
        raise ValueError(f"dmc.capability_prior: a and b must be >= 0, got {list(prior)}")
    raw = pass_rates(samples, problem_col, correct_col)
    k = samples.groupby(problem_col, sort=True)[correct_col].size().astype(float)
    if a + b == 0:
        return raw.rename("capability")
    return ((raw * k + a) / (k + a + b)).rename("capability")


def per_prompt_reference(own: pd.DataFrame, problem_col: str = "problem_id") -> pd.Series:
    """NLL_ref per problem: the mean per-token NLL of the student's own T = 1 samples of that problem
    (an estimate of its entropy rate on the prompt)."""
    _require(own, [problem_col, "nll"], "the student's own samples")
    ref = own.groupby(problem_col, sort=True)["nll"].mean().rename("nll_ref")
    bad = ref[~(np.isfinite(ref) & (ref > 0))]
    if len(bad):
        raise ValueError(f"per-prompt reference: problem {bad.index[0]!r} has NLL_ref={bad.iloc[0]}; "
                         "it needs at least one non-empty own sample with a positive NLL")
    return ref


def nll_reference(own_nll: Iterable[float]) -> float:
    """NLL_ref(M) of ``sampled_median``: the median per-token NLL of the student's own sampled solutions
    on the probe set."""
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


def item_table(items: pd.DataFrame, nll_ref: float | None = None, *, variant: str = "window",
               **params: float) -> pd.DataFrame:
    """Add every DMC factor and the item compatibility to a table of items.

    ``items`` needs one row per (problem, trace) with columns ``dataset``, ``problem_id``,
    ``correct`` (verifier verdict), ``pass_rate`` (the student's capability on the problem, in [0, 1])
    and ``nll`` (student's mean per-token NLL of the trace); ``truncated`` and ``malformed`` are
    optional (False when absent). ``nll_ref``: one reference for every item (``sampled_median``), or
    None to divide by each row's own ``nll_ref`` column (``per_prompt``).
    Returns a copy with ``quality``, ``capability``, ``rel_difficulty`` and ``compat`` added.
    """
    _require(items, ITEM_COLUMNS, "DMC items")
    df = items.copy()
    if nll_ref is None:
        _require(items, ["nll_ref"], "DMC items (per-prompt reference)")
        _check_values(df, "nll_ref", lambda s: np.isfinite(s.astype(float)) & (s.astype(float) > 0),
                      "a positive per-prompt NLL_ref (the student's own samples of that problem)")
        ref = df["nll_ref"].astype(float).to_numpy()
    else:
        if not (np.isfinite(nll_ref) and nll_ref > 0):
            raise ValueError(f"DMC items: nll_ref must be a positive number, got {nll_ref}")
        ref = float(nll_ref)
    _check_values(df, "correct", lambda s: s.isin([True, False, 0, 1]), "True/False (verify the traces first)")
    _check_values(df, "pass_rate", lambda s: s.between(0, 1), "a pass rate in [0, 1]")
    _check_values(df, "nll", lambda s: np.isfinite(s.astype(float)) & (s.astype(float) >= 0), "a finite NLL >= 0")
    bad = np.zeros(len(df), dtype=bool)
    for flag in ("truncated", "malformed"):
        if flag in df:
            bad |= df[flag].fillna(False).astype(bool).to_numpy()
    df["quality"] = df["correct"].astype(bool).to_numpy() * ~bad * 1.0
    df["capability"] = df["pass_rate"].astype(float)
    df["rel_difficulty"] = df["nll"].astype(float).to_numpy() / ref
    df["compat"] = compatibility(df["quality"], df["capability"], df["rel_difficulty"], variant, **params)
    return df


def recompute(items: pd.DataFrame, *, variant: str = "window", **params: float) -> pd.DataFrame:
    """An item table with ``compat`` recomputed under another rule or parameters (factors unchanged)."""
    _require(items, FACTORS, "DMC item table (from item_table)")
    df = items.copy()
    df["compat"] = compatibility(df["quality"], df["capability"], df["rel_difficulty"], variant, **params)
    return df


def dataset_table(items: pd.DataFrame, by: str | Sequence[str] = "dataset") -> pd.DataFrame:
    """Per dataset (or grouping): item and problem counts, the factor means and DMC = mean compat.

    Columns: n_items, n_problems, quality (Q), capability (C), rel_difficulty (mean r),
    rel_difficulty_median, nll, dmc; plus the means of ``n_tokens``, ``entropy``, ``ifd`` and ``rank``
    when the items carry them (scores from ``syllabus.scoring``), ``perplexity`` = exp(mean nll) and
    the Rank-Surprisal Ratio ``rsr`` = mean clipped token rank / mean NLL (arXiv 2601.14249, lower is
    better).
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
    for extra in ("n_tokens", "entropy", "ifd", "rank"):
        if extra in items:
            out[extra] = g[extra].mean()
    if "rank" in items:
        out["rsr"] = out["rank"] / out["nll"].where(out["nll"] > 0)
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



# --------------------------------------------------------------------------- reading a table
def worked_example(items: pd.DataFrame, *, variant: str = "window", **params: float) -> pd.DataFrame:
    """One item's DMC in numbers, step by step: its factors (q, c, r with the NLLs r divides) and m under
    ``variant``. ``items`` is an item table (``item_table``); the first row is explained."""
    _require(items, [*FACTORS, "nll"], "DMC item table (from item_table)")
    row = items.iloc[0]
    chosen = check_params(variant, params, where=f"rule '{variant}'")
    m = float(compatibility([row["quality"]], [row["capability"]], [row["rel_difficulty"]], variant, **chosen)[0])
    ref = float(row["nll"]) / float(row["rel_difficulty"]) if row["rel_difficulty"] > 0 else float("nan")
    steps = [
        ("item", f"{row.get('dataset')} / problem {row.get('problem_id')} / teacher {row.get('teacher')}", ""),
        ("quality q", row["quality"], "verifier verdict, 0 if truncated or malformed"),
        ("capability c", row["capability"], "smoothed pass rate of the student's own samples"
         + (f" (raw {row['raw_pass_rate']:.3f})" if "raw_pass_rate" in row and pd.notna(row["raw_pass_rate"]) else "")),
        ("NLL of the trace", row["nll"], "student's mean per-token NLL of the teacher's trace (nats)"),
        ("NLL_ref", ref, "the student's own expected NLL (per prompt, or the probe median)"),
        ("relative difficulty r", row["rel_difficulty"], "NLL / NLL_ref; 1 = as natural as its own writing"),
        (f"m under '{variant}'", m, f"parameters {chosen}"),
    ]
    return pd.DataFrame(steps, columns=["step", "value", "meaning"])


ON_THE_SCALE_OF_R = ("center", "r0")  # rule parameters measured in units of the relative difficulty r


def parameter_ranges(items: pd.DataFrame, current: Mapping[str, float] | None = None
                     ) -> dict[str, tuple[float, float, float]]:
    """(low, high, start) of every registered rule's parameters, for sliders over the saved factors: the
    parameters on the scale of r span the items' relative difficulties (1st to 99th percentile, with 0.5
    and 4 inside), the others two decades around their default; ``start`` is ``current``'s value (the
    profile's) or the rule's default."""
    _require(items, ["rel_difficulty"], "DMC item table (from item_table)")
    r = items["rel_difficulty"].astype(float)
    r_low, r_high = min(0.5, float(r.quantile(0.01))), max(4.0, float(r.quantile(0.99)))
    current = dict(current or {})
    out = {}
    for variant in sorted(RULES):
        for name, default in rule_params(variant).items():
            if name in out:
                continue
            start = float(current.get(name, default))
            low, high = (r_low, r_high) if name in ON_THE_SCALE_OF_R else (default / 10, default * 10)
            out[name] = (min(low, start), max(high, start), start)
    return out


def ranking(items: pd.DataFrame, *, variant: str = "window", by: Sequence[str] = ("student", "dataset"),
            **params: float) -> pd.DataFrame:
    """DMC per (student, dataset) under a rule and parameters, recomputed from the saved factors (no
    re-scoring), with each dataset's rank within its student (1 = highest DMC)."""
    keys = list(by)
    out = dmc_scores(recompute(items, variant=variant, **params), by=keys).reset_index()
    if len(keys) > 1:
        out["rank"] = out.groupby(keys[0])["dmc"].rank(ascending=False, method="min").astype(int)
        return out.sort_values([keys[0], "rank", keys[1]], kind="mergesort").reset_index(drop=True)
    out["rank"] = out["dmc"].rank(ascending=False, method="min").astype(int)
    return out.sort_values(["rank", keys[0]], kind="mergesort").reset_index(drop=True)
