"""Stage-4 statistics: does a predictor (DMC, a factor, a baseline) rank distillation gains?

``correlate`` gives Spearman (primary), Pearson and Kendall (tau-b) coefficients with percentile
bootstrap 95% intervals (pairs resampled) and permutation p-values (``scipy.stats.permutation_test``,
exact when the pairings can be enumerated). Degenerate inputs (fewer than 3 complete pairs, a
constant variable) give NaN and a ``note`` saying why, never an exception. ``predictor_table``
runs it for several predictors against one target with the same resamples. ``fit_dmc_params``
grid-searches a DMC rule's parameters (whatever the rule takes, values from ``correlation.fit_grid``)
on a fitting part of the grid, within each student; stage 4 then reports the chosen rule on the rest
(``stages.correlation.held_out_part``; docs/method.md, stage 4).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import dmc_factors

METHODS = ("spearman", "pearson", "kendall")
PAIR_BLOCK = 1 << 22  # resamples x n x n elements held at once by the vectorised Kendall tau


# --------------------------------------------------------------------------- coefficients on rows
def _rows(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=float).reshape(-1, np.shape(a)[-1])


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair (last axis); NaN where a row is constant."""
    x, y = _rows(x), _rows(y)
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (xc * yc).sum(1) / den
    r[~(den > 1e-300)] = np.nan
    return np.clip(r, -1.0, 1.0)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair: Pearson r of the average ranks."""
    return pearson_rows(sps.rankdata(_rows(x), axis=1), sps.rankdata(_rows(y), axis=1))


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row pair (ties corrected, as scipy's default)."""
    x, y = _rows(x), _rows(y)
    n = x.shape[1]
    out = np.empty(len(x))
    step = max(1, PAIR_BLOCK // max(n * n, 1))
    n0 = n * (n - 1) / 2
    for s in range(0, len(x), step):
        dx = np.sign(x[s:s + step, :, None] - x[s:s + step, None, :])
        dy = np.sign(y[s:s + step, :, None] - y[s:s + step, None, :])
        concord = (dx * dy).sum((1, 2)) / 2
        tx = ((dx == 0).sum((1, 2)) - n) / 2  # tied pairs, diagonal removed
        ty = ((dy == 0).sum((1, 2)) - n) / 2
        den = np.sqrt((n0 - tx) * (n0 - ty))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[s:s + step] = np.where(den > 0, concord / den, np.nan)
    return out


COEFFICIENTS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "spearman": spearman_rows, "pearson": pearson_rows, "kendall": kendall_rows,
}


# --------------------------------------------------------------------------- one correlation
def cluster_bootstrap_indices(groups: Sequence[Any], n_boot: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of ``n_boot`` resamples that draw whole groups with replacement (all rows of a drawn
    group come along), so rows that are not independent (one dataset family) stay together."""
    labels = pd.Index(pd.unique(np.asarray(groups, dtype=object)))
    members = [np.flatnonzero(np.asarray(groups, dtype=object) == g) for g in labels]
    picks = rng.integers(0, len(members), size=(n_boot, len(members)))
    return [np.concatenate([members[g] for g in row]) for row in picks]


def bootstrap_indices(n: int, groups: Sequence[Any] | None, n_boot: int, rng: np.random.Generator):
    """Resample indices: an (n_boot, n) array of units, or with ``groups`` a list of whole-group resamples
    (``cluster_bootstrap_indices``)."""
    if groups is None:
        return rng.integers(0, n, size=(n_boot, n))
    return cluster_bootstrap_indices(groups, n_boot, rng)


def percentile_interval(boot: np.ndarray, n_boot: int, confidence: float) -> tuple[float, float, str]:
    """Percentile interval of bootstrap statistics, ignoring undefined (NaN) resamples; the note says how
    many were undefined (empty when none)."""
    boot = boot[np.isfinite(boot)]
    note = f"{n_boot - len(boot)} of {n_boot} resamples undefined" if len(boot) < n_boot else ""
    if not len(boot):
        return np.nan, np.nan, note
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(lo), float(hi), note


def cluster_draw_counts(n_clusters: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How many times each of ``n_clusters`` clusters is drawn in each of ``n_boot`` resamples with replacement:
    an (n_boot, n_clusters) array, so a statistic of cluster sums is a matrix product, not a loop."""
    drawn = rng.integers(0, n_clusters, size=(n_boot, n_clusters)) + n_clusters * np.arange(n_boot)[:, None]
    return np.bincount(drawn.ravel(), minlength=n_boot * n_clusters).reshape(n_boot, n_clusters)


def clustered_mean_interval(values: Sequence[float], clusters: Sequence[Any], *, n_boot: int = 1000, seed: int = 0,
                            confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` whose rows come in clusters (the traces of one
    problem): whole clusters are drawn with replacement, so rows that share a cluster are not counted as
    independent evidence. NaN values are left out; NaNs when none is left."""
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(v)
    if not keep.any():
        return (float("nan"), float("nan"))
    codes = pd.factorize(pd.Series(np.asarray(clusters, dtype=object)[keep]))[0]
    sums = np.bincount(codes, weights=v[keep])
    counts = np.bincount(codes).astype(float)
    weights = cluster_draw_counts(len(sums), n_boot, np.random.default_rng(seed))
    boot = (weights @ sums) / (weights @ counts)
    lo, hi, _ = percentile_interval(boot, n_boot, confidence)
    return lo, hi


def paired_clustered_mean_difference(a: Sequence[float], a_clusters: Sequence[Any], b: Sequence[float],
                                     b_clusters: Sequence[Any], *, n_boot: int = 1000, seed: int = 0,
                                     confidence: float = 0.95) -> dict[str, float]:
    """mean(a) - mean(b) with a percentile bootstrap interval that draws the same clusters (problems) for both
    means, so what the two sets share (a problem's difficulty for the student) cancels, as in a paired test.
    Rows of a cluster that only one set has count for that set alone; a resample in which either set has no
    row is left out. Returns ``diff``, ``lo``, ``hi``."""
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ka, kb = np.isfinite(va), np.isfinite(vb)
    if not ka.any() or not kb.any():
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan")}
    ca, cb = np.asarray(a_clusters, dtype=object)[ka], np.asarray(b_clusters, dtype=object)[kb]
    codes, labels = pd.factorize(pd.Series(np.concatenate([ca, cb])))
    n = len(labels)
    sums = np.stack([np.bincount(codes[:len(ca)], weights=va[ka], minlength=n),
                     np.bincount(codes[len(ca):], weights=vb[kb], minlength=n)])
    counts = np.stack([np.bincount(codes[:len(ca)], minlength=n), np.bincount(codes[len(ca):], minlength=n)])
    weights = cluster_draw_counts(n, n_boot, np.random.default_rng(seed))
    with np.errstate(divide="ignore", invalid="ignore"):
        means = (weights @ sums.T) / (weights @ counts.T)  # (n_boot, 2)
    lo, hi, _ = percentile_interval(means[:, 0] - means[:, 1], n_boot, confidence)
    return {"diff": float(va[ka].mean() - vb[kb].mean()), "lo": lo, "hi": hi}


def correlate(x: Sequence[float], y: Sequence[float], *, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
              confidence: float = 0.95, methods: Sequence[str] = METHODS,
              groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Coefficients, bootstrap CIs and permutation p-values of x against y.

    With ``groups`` (one label per pair, e.g. the dataset family) the bootstrap resamples whole
    groups (a cluster bootstrap), since pairs of one group are not independent; ``n_groups`` says
    how many there were. Keys: ``n`` (complete pairs used), ``n_dropped`` (pairs with a NaN), and per
    method ``<m>``, ``<m>_lo``, ``<m>_hi``, ``<m>_p``; ``note`` is empty or says why values are NaN.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"correlate: x and y must be 1-d of equal length, got shapes {x.shape} and {y.shape}")
    if groups is not None and len(groups) != len(x):
        raise ValueError(f"correlate: {len(groups)} group labels for {len(x)} pairs")
    unknown = sorted(set(methods) - set(COEFFICIENTS))
    if unknown:
        raise ValueError(f"correlate: unknown methods {unknown}; known: {list(COEFFICIENTS)}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out: dict[str, Any] = {"n": int(keep.sum()), "n_dropped": int((~keep).sum()), "note": ""}
    if groups is not None:
        groups = np.asarray(groups, dtype=object)[keep]
        out["n_groups"] = int(len(pd.unique(groups)))
    for m in methods:
        out.update({m: np.nan, f"{m}_lo": np.nan, f"{m}_hi": np.nan, f"{m}_p": np.nan})
    if len(x) < 3:
        out["note"] = f"only {len(x)} complete pair(s); need at least 3"
        return out
    constant = [name for name, v in (("x", x), ("y", y)) if np.ptp(v) == 0]
    if constant:
        out["note"] = f"{' and '.join(constant)} constant: correlation undefined"
        return out
    rng = np.random.default_rng(seed)
    boot_idx = bootstrap_indices(len(x), groups, n_boot, rng)
    degenerate = []
    for m in methods:
        coef = COEFFICIENTS[m]
        out[m] = float(coef(x, y)[0])
        if groups is None:
            boot = coef(x[boot_idx], y[boot_idx])
        else:  # resamples differ in length: one at a time
            boot = np.array([coef(x[i], y[i])[0] for i in boot_idx])
        # a resample that repeats one value has no correlation
        out[f"{m}_lo"], out[f"{m}_hi"], undefined = percentile_interval(boot, n_boot, confidence)
        if undefined:
            degenerate.append(f"{m}: {undefined}")
        out[f"{m}_p"] = _permutation_p(coef, x, y, n_perm, rng)
    if degenerate:
        out["note"] = "; ".join(degenerate)
    return out


def _permutation_p(coef, x: np.ndarray, y: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    def statistic(y_perm: np.ndarray, axis: int = -1) -> np.ndarray:
        y_perm = np.moveaxis(y_perm, axis, -1)
        r = coef(np.broadcast_to(x, y_perm.shape), y_perm)
        return r.reshape(y_perm.shape[:-1])

    res = sps.permutation_test((y,), statistic, permutation_type="pairings", n_resamples=n_perm,
                               vectorized=True, alternative="two-sided", rng=rng)
    return float(res.pvalue)


def predictor_table(df: pd.DataFrame, predictors: Sequence[str], target: str, *, n_boot: int = 1000,
                    n_perm: int = 1000, seed: int = 0, confidence: float = 0.95,
                    group_col: str | None = None) -> pd.DataFrame:
    """One row per predictor: its correlations with ``target``, CIs, p-values and notes (same seed for all).

    ``group_col`` names a column whose groups the bootstrap resamples whole (see ``correlate``).
    """
    missing = [c for c in [*predictors, target, *([group_col] if group_col else [])] if c not in df.columns]
    if missing:
        raise ValueError(f"predictor_table: missing column(s) {missing}; present: {list(df.columns)}")
    groups = df[group_col].tolist() if group_col else None
    rows = [{"predictor": p, **correlate(df[p], df[target], n_boot=n_boot, n_perm=n_perm, seed=seed,
                                         confidence=confidence, groups=groups)} for p in predictors]
    table = pd.DataFrame(rows)
    first = ["predictor", "n", *(["n_groups"] if group_col else []),
             *[f"{m}{s}" for m in METHODS for s in ("", "_lo", "_hi", "_p")], "n_dropped", "note"]
    return table[first]


def spearman_lead(x: Sequence[float], rival: Sequence[float], y: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                  confidence: float = 0.95, groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Does x track y better than ``rival`` does? The lead Spearman(x, y) - |Spearman(rival, y)|, with a
    bootstrap CI from resamples shared by both (paired: the same units in every resample; whole groups
    with ``groups``, as in ``correlate``). x is taken with its sign (a score meant to rise with y);
    the rival with its better direction. Pairs with a NaN in x, rival or y are dropped."""
    x, r, y = (np.asarray(v, dtype=float) for v in (x, rival, y))
    if not x.shape == r.shape == y.shape or x.ndim != 1:
        raise ValueError(f"spearman_lead: x, rival and y must be 1-d of equal length, got {x.shape}, {r.shape}, {y.shape}")
    keep = np.isfinite(x) & np.isfinite(r) & np.isfinite(y)
    x, r, y = x[keep], r[keep], y[keep]
    out: dict[str, Any] = {"n": int(keep.sum()), "spearman": np.nan, "rival_abs_spearman": np.nan, "lead": np.nan,
                           "lead_lo": np.nan, "lead_hi": np.nan, "note": ""}
    if len(x) < 3 or min(np.ptp(v) for v in (x, r, y)) == 0:
        out["note"] = "fewer than 3 complete pairs, or a constant column: no correlation"
        return out
    out["spearman"] = float(spearman_rows(x, y)[0])
    out["rival_abs_spearman"] = float(abs(spearman_rows(r, y)[0]))
    out["lead"] = out["spearman"] - out["rival_abs_spearman"]
    idx = bootstrap_indices(len(x), None if groups is None else np.asarray(groups, dtype=object)[keep], n_boot,
                            np.random.default_rng(seed))
    if groups is None:
        leads = spearman_rows(x[idx], y[idx]) - np.abs(spearman_rows(r[idx], y[idx]))
    else:  # resamples differ in length: one at a time
        leads = np.array([spearman_rows(x[i], y[i])[0] - abs(spearman_rows(r[i], y[i])[0]) for i in idx])
    out["lead_lo"], out["lead_hi"], out["note"] = percentile_interval(leads, n_boot, confidence)
    return out


def _defined_lead(x: np.ndarray, r: np.ndarray, y: np.ndarray) -> float:
    """Spearman(x, y) - |Spearman(r, y)|; NaN with fewer than 3 pairs or a constant column."""
    if len(x) < 3 or min(np.ptp(v) for v in (x, r, y)) == 0:
        return np.nan
    return float(spearman_rows(x, y)[0] - abs(spearman_rows(r, y)[0]))


def pooled_spearman_lead(strata: Sequence[Mapping[str, Any]], *, n_boot: int = 1000, seed: int = 0,
                         confidence: float = 0.95) -> dict[str, Any]:
    """``spearman_lead`` pooled over several strata (e.g. the held-out students of several lab grids): the
    mean of the strata's leads, each weighted by its number of complete pairs, with a bootstrap CI.

    Each stratum is a mapping with ``x``, ``rival``, ``y``, ``groups`` (one label per pair, e.g. the dataset
    family) and ``block``: strata of one block (the students of one grid, trained on the same datasets) are
    not independent, so each resample draws a block's groups once, with replacement, and every stratum of
    the block takes the rows of those groups; blocks are resampled independently. A stratum whose lead is
    undefined (fewer than 3 pairs, a constant column) is left out, and ``note`` names it; one undefined in
    a resample is left out of that resample's mean (``note`` counts those resamples)."""
    prepared, skipped = [], []
    for i, st in enumerate(strata):
        x, r, y = (np.asarray(st[k], dtype=float) for k in ("x", "rival", "y"))
        groups = np.asarray(st["groups"], dtype=object)
        if not x.shape == r.shape == y.shape == groups.shape or x.ndim != 1:
            raise ValueError(f"pooled_spearman_lead: stratum {i} ({st.get('name', '')}): x, rival, y and groups "
                             f"must be 1-d of equal length, got {x.shape}, {r.shape}, {y.shape}, {groups.shape}")
        keep = np.isfinite(x) & np.isfinite(r) & np.isfinite(y)
        x, r, y, groups = x[keep], r[keep], y[keep], groups[keep]
        lead = _defined_lead(x, r, y)
        if np.isnan(lead):
            skipped.append(str(st.get("name", i)))
            continue
        prepared.append({"name": str(st.get("name", i)), "block": st["block"], "x": x, "r": r, "y": y,
                         "groups": groups, "n": len(x), "lead": lead, "column": len(prepared)})
    out: dict[str, Any] = {"n": sum(p["n"] for p in prepared), "strata": len(prepared), "lead": np.nan,
                           "lead_lo": np.nan, "lead_hi": np.nan,
                           "strata_leads": {p["name"]: p["lead"] for p in prepared},
                           "note": f"undefined in {skipped}" if skipped else ""}
    if not prepared:
        return out
    weights = np.array([p["n"] for p in prepared], dtype=float)
    out["lead"] = float(np.dot(weights, [p["lead"] for p in prepared]) / weights.sum())
    rng = np.random.default_rng(seed)
    blocks: dict[Any, list[dict]] = {}
    for p in prepared:
        blocks.setdefault(p["block"], []).append(p)
    boot = np.zeros((n_boot, len(prepared)))
    for members in blocks.values():
        labels = sorted({g for p in members for g in p["groups"]}, key=str)
        rows = [{g: np.flatnonzero(p["groups"] == g) for g in labels} for p in members]
        for b in range(n_boot):
            drawn = rng.integers(0, len(labels), size=len(labels))
            for p, where in zip(members, rows):
                idx = np.concatenate([where[labels[d]] for d in drawn])
                boot[b, p["column"]] = _defined_lead(p["x"][idx], p["r"][idx], p["y"][idx])
    # a stratum undefined in a resample (a constant column among the groups drawn, likelier the fewer it has)
    # leaves that resample's mean to the others, reweighted; dropping the whole resample would keep only
    # the resamples where every small stratum happened to vary
    defined = np.isfinite(boot)
    mass = defined @ weights
    pooled = np.where(mass > 0, np.where(defined, boot, 0.0) @ weights / np.maximum(mass, 1e-300), np.nan)
    partial = int(((~defined).any(axis=1) & (mass > 0)).sum())
    lo, hi, note = percentile_interval(pooled, n_boot, confidence)
    out["lead_lo"], out["lead_hi"] = lo, hi
    notes = [out["note"], note, f"{partial} of {n_boot} resamples left out an undefined stratum" if partial else ""]
    out["note"] = "; ".join(v for v in notes if v)
    return out


# --------------------------------------------------------------------------- noise floor of measured gains
Z95 = 1.959963984540054


def t_quantile(df: float, p: float = 0.975) -> float:
    """The Student t quantile at ``p`` with ``df`` degrees of freedom: 1.96 at 95% for an infinite df (a
    spread known exactly, or a part that is 0), inf for df <= 0 (a spread estimated from one value)."""
    if df != df or df == float("inf"):  # NaN or inf
        return float(sps.norm.ppf(p))
    if df <= 0:
        return float("inf")
    return float(sps.t.ppf(p, df))


def welch_df(parts: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates, given as (variance, its df)
    pairs: (sum v)^2 / sum(v^2 / df). A part with zero variance adds nothing; an infinite df is a part
    known exactly. With 3 seeds and 400 problems the seeds' part alone has 2 df and the problems' 399, so
    the sum's df lies between 2 and ~400 by which part is larger: the interval widens (t up to 4.30
    instead of 1.96) where the seed spread dominates."""
    live = [(float(v), float(d)) for v, d in parts if v == v and v > 0]
    if not live:
        return float("inf")
    if any(d <= 0 for _, d in live):
        return 0.0
    denominator = sum(v * v / d for v, d in live if d != float("inf"))
    return float("inf") if denominator == 0 else float(sum(v for v, _ in live) ** 2 / denominator)


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% by default); NaNs for n = 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at k = 0 (k = n) the bound is exactly 0 (1); float rounding would leave it a hair inside
    return (0.0 if k <= 0 else max(0.0, float(centre - half)), 1.0 if k >= n else min(1.0, float(centre + half)))


def score_interval(row: Mapping, value: str = "value", err: str = "stderr", n: str = "n") -> tuple[float, float]:
    """A benchmark score's 95% interval, as the run's summary gives it: Wilson on the problems scored for a
    share of problems (``n`` known, value in [0, 1]), else value +- 1.96 standard errors (NaNs without one)."""
    count, v = row.get(n), row[value]
    if count is not None and not pd.isna(count) and 0 <= v <= 1:
        return wilson(v * int(count), int(count))
    se = row.get(err)
    if se is None or pd.isna(se):
        return (float("nan"), float("nan"))
    return (v - Z95 * se, v + Z95 * se)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent problems."""
    return float(np.sqrt(max(p * (1 - p), 0.0) / n)) if n > 0 else float("nan")


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of ``a - b`` on the same problems, both (seeds x problems) of 0/1 outcomes (or rates),
    row ``s`` of ``a`` paired with row ``s`` of ``b`` (same seed; ``b`` may have one row for all).

    Returns the difference, its standard error - the problem-sampling part (SD of the per-problem
    differences averaged over seeds, over sqrt(problems)) plus the seed part (SD of the per-seed
    differences over sqrt(seeds)) - the seed SD, and a 95% interval of +- t x SE, t the Student quantile at
    the Welch-Satterthwaite df of the two parts (``ci_df``; ``welch_df``): with 3 seeds a seed spread
    that dominates the SE gets t up to 4.30, not the normal 1.96. For values in [0, 1] the interval is
    cut to [-1, 1], the range of their difference.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison: {a.shape[1]} problems on one side but {b.shape[1]} on the other")
    if len(b) not in (1, len(a)):
        raise ValueError(f"paired comparison: {len(a)} seeds against {len(b)}; pair them seed by seed or give one row")
    n_seeds, n = a.shape
    diff = a - b
    per_seed = diff.mean(1)
    mean = float(per_seed.mean())
    seed_sd = float(per_seed.std(ddof=1)) if n_seeds > 1 else float("nan")
    se_problems = float(diff.mean(0).std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    seed_part = seed_sd ** 2 / n_seeds if n_seeds > 1 else 0.0
    se = float(np.sqrt(se_problems ** 2 + seed_part))
    df = welch_df([(se_problems ** 2, n - 1), (seed_part, n_seeds - 1)])
    q = t_quantile(df)
    lo, hi = mean - q * se, mean + q * se
    if ((a >= 0) & (a <= 1)).all() and ((b >= 0) & (b <= 1)).all():  # outcomes or rates: a difference in [-1, 1]
        lo, hi = max(lo, -1.0), min(hi, 1.0)
    return {"gain": mean, "gain_se": se, "gain_lo": lo, "gain_hi": hi,
            "seed_sd": seed_sd, "se_problems": se_problems, "n_seeds": n_seeds, "n_problems": n, "ci_df": df}


def paired_gain(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Gain of ``after`` (seeds x problems) over ``before`` (one outcome per problem), paired on the same
    problems: ``paired_difference(after, before)``."""
    before = np.asarray(before, dtype=float)
    if np.atleast_2d(after).shape[1] != before.shape[0]:
        raise ValueError(f"paired_gain: {np.atleast_2d(after).shape[1]} problems after but {before.shape[0]} before")
    return paired_difference(after, before[None, :])


def reliability(gains: Sequence[float], ses: Sequence[float]) -> float:
    """Share of the spread of cell gains that is signal: 1 - mean(SE^2) / variance of the gains.

    Near 1: cells differ far more than their noise; near 0 or below: the differences are noise.
    """
    g, se = np.asarray(gains, dtype=float), np.asarray(ses, dtype=float)
    ok = np.isfinite(g) & np.isfinite(se)
    if ok.sum() < 2 or np.var(g[ok], ddof=1) == 0:
        return float("nan")
    return float(1.0 - np.mean(se[ok] ** 2) / np.var(g[ok], ddof=1))


def with_score_ci(table: pd.DataFrame, value: str = "value", se: str = "stderr", n: str = "n") -> pd.DataFrame:
    """``table`` with ``ci_lo``/``ci_hi``: each row's ``score_interval`` (Wilson for a share of ``n`` problems,
    else value +- 1.96 SE; NaN where neither is known)."""
    bounds = [score_interval(r, value, se, n) for r in table.to_dict("records")]
    return table.assign(ci_lo=[lo for lo, _ in bounds], ci_hi=[hi for _, hi in bounds])


def needed_problems(effect: float, sd_diff: float, seed_sd: float = 0.0, n_seeds: int = 1,
                    power_z: float = 0.8416) -> float:
    """Problems a paired comparison needs to show ``effect`` at 95% (two-sided) with 80% power, given the
    SD of the per-problem differences (``sd_diff``) and, with ``seed_sd``, the seed part of its SE kept
    (``n_seeds`` seeds): the smallest n with (t + 0.84) x sqrt(sd_diff^2 / n + seed_sd^2 / n_seeds)
    <= |effect|, t the quantile ``paired_difference`` would use at n (``welch_df``). ``inf`` when the
    seeds' part alone is too large; NaN when there is no difference."""
    if not effect or not np.isfinite(effect) or not np.isfinite(sd_diff):
        return float("nan")
    seed_part = seed_sd ** 2 / n_seeds if np.isfinite(seed_sd) else 0.0
    seed_df = n_seeds - 1 if n_seeds > 1 else float("inf")  # one seed: an SD known from elsewhere, taken as exact

    def enough(n: int) -> bool:
        return _powered(effect, [(sd_diff ** 2 / n, n - 1), (seed_part, seed_df)], power_z)

    room = (abs(effect) / (Z95 + power_z)) ** 2 - seed_part
    if room <= 0 or not enough(1 << 40):
        return float("inf")
    return float(_smallest(enough, max(2, int(np.ceil(sd_diff ** 2 / room)))))


def needed_seeds(effect: float, se_problems: float, seed_sd: float, power_z: float = 0.8416,
                 n_problems: int | None = None) -> float:
    """Seeds a paired comparison (``paired_difference``) needs to show a difference of ``effect`` at 95%
    (two-sided) with 80% power, its problems kept: the smallest n with (t + 0.84) x sqrt(se_problems^2
    + seed_sd^2 / n) <= |effect|, t the quantile ``paired_difference`` would use with n seeds and
    ``n_problems`` problems (``welch_df``; None: the problems' part taken as exact). ``inf`` when the
    problems' part alone is too large (more problems are needed too); NaN when there is no difference or
    no spread to go on."""
    if not effect or not np.isfinite(effect) or not np.isfinite(se_problems) or not np.isfinite(seed_sd):
        return float("nan")
    problems_df = float("inf") if n_problems is None else n_problems - 1

    def enough(k: int) -> bool:
        return _powered(effect, [(se_problems ** 2, problems_df), (seed_sd ** 2 / k, k - 1)], power_z)

    room = (abs(effect) / (Z95 + power_z)) ** 2 - se_problems ** 2
    if room <= 0 or not enough(1 << 40):
        return float("inf")
    return float(_smallest(enough, max(1, int(np.ceil(seed_sd ** 2 / room)))))


def needed_jointly(effect: float, se_problems: float, seed_sd: float, n_seeds: int, n_problems: int,
                   power_z: float = 0.8416) -> tuple[float, float]:
    """Seeds and problems grown together, in proportion to the present ``n_seeds`` and ``n_problems``, that
    would show a paired difference of ``effect`` at 95% (two-sided) with 80% power: the smallest k >= max(2, n_seeds),
    with n = ceil(n_problems x k / n_seeds) problems, for which (t + 0.84) x sqrt(se_problems^2 x n_problems
    / n + seed_sd^2 / k) <= |effect| (t as ``paired_difference`` would use it). Finite where each alone
    (``needed_seeds``, ``needed_problems``) is ``inf``; (NaN, NaN) when there is no difference or no spread."""
    nan = (float("nan"), float("nan"))
    if (not effect or not np.isfinite(effect) or not np.isfinite(se_problems) or not np.isfinite(seed_sd)
            or n_seeds < 1 or n_problems < 1):
        return nan

    def problems(k: int) -> int:
        return int(np.ceil(n_problems * k / n_seeds))

    def enough(k: int) -> bool:
        n = problems(k)
        return _powered(effect, [(se_problems ** 2 * n_problems / n, n - 1), (seed_sd ** 2 / k, k - 1)], power_z)

    k = _smallest(enough, max(2, n_seeds))
    return float(k), float(problems(k))


def _powered(effect: float, parts: Sequence[tuple[float, float]], power_z: float) -> bool:
    """(t + power_z) x SE <= |effect|: SE^2 the sum of the parts' variances, t at their Welch-Satterthwaite df
    (``parts`` as ``welch_df`` takes them), as ``paired_difference`` would compute both."""
    return (t_quantile(welch_df(parts)) + power_z) ** 2 * sum(v for v, _ in parts) <= effect ** 2


def _smallest(enough: Callable[[int], bool], low: int) -> int:
    """The smallest n >= ``low`` with ``enough(n)``, for ``enough`` false below some n and true from it on."""
    if enough(low):
        return low
    high = low * 2
    while not enough(high):
        low, high = high, high * 2
    while high - low > 1:  # enough(high), not enough(low)
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def excludes_zero(lo, hi):
    """Whether an interval [lo, hi] excludes 0, elementwise for arrays and Series (NaN bounds: False)."""
    return (lo > 0) | (hi < 0)


def shown(diff: Mapping[str, float]) -> bool:
    """Whether a paired difference's (or gain's) 95% interval excludes 0."""
    return bool(excludes_zero(diff["gain_lo"], diff["gain_hi"]))


NEEDED_SAMPLE_KEYS = ("seeds_needed", "problems_needed", "joint_seeds_needed", "joint_problems_needed")


def needed_sample(diff: Mapping[str, float]) -> dict[str, float]:
    """For a paired difference (``paired_difference``'s dict) whose 95% interval spans 0: the seeds (the
    problems kept), the problems (the seeds kept), and the seeds and problems grown together (``joint_...``)
    that would show a difference as large as the one measured, at 95% with 80% power (``needed_seeds``,
    ``needed_problems``, ``needed_jointly``). NaN where it is shown."""
    if shown(diff):
        return dict.fromkeys(NEEDED_SAMPLE_KEYS, float("nan"))
    sd_diff = diff["se_problems"] * np.sqrt(diff["n_problems"])
    joint = needed_jointly(diff["gain"], diff["se_problems"], diff["seed_sd"], int(diff["n_seeds"]),
                           int(diff["n_problems"]))
    return {"seeds_needed": needed_seeds(diff["gain"], diff["se_problems"], diff["seed_sd"],
                                         n_problems=diff["n_problems"]),
            "problems_needed": needed_problems(diff["gain"], sd_diff, diff["seed_sd"], diff["n_seeds"]),
            "joint_seeds_needed": joint[0], "joint_problems_needed": joint[1]}


# --------------------------------------------------------------------------- fit on part, report on the rest
def split_grid(grid: pd.DataFrame, fit_fraction: float = 0.5, seed: int = 0, by: str | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split of the (dataset, student) grid into a fitting part and a held-out part.

    With ``by`` (e.g. ``"dataset"``) whole groups go to one side, so the held-out part has unseen ones.
    """
    units = grid[by].drop_duplicates().tolist() if by else list(range(len(grid)))
    if len(units) < 2:
        raise ValueError(f"split_grid: {len(units)} unit(s) to split; need at least 2 rows (or groups of '{by}')")
    if not 0 < fit_fraction < 1:
        raise ValueError(f"split_grid: fit_fraction must be in (0, 1), got {fit_fraction}")
    order = np.random.default_rng(seed).permutation(len(units))
    n_fit = int(np.clip(round(fit_fraction * len(units)), 1, len(units) - 1))
    fit_units = {units[i] for i in order[:n_fit]}
    mask = grid[by].isin(fit_units).to_numpy() if by else np.isin(np.arange(len(grid)), list(fit_units))
    return grid[mask].reset_index(drop=True), grid[~mask].reset_index(drop=True)


def dmc_for_grid(grid: pd.DataFrame, items: pd.DataFrame, keys: Sequence[str], variant: str,
                 params: Mapping[str, float]) -> np.ndarray:
    """DMC of each grid row (matched on ``keys``) under a rule and parameters."""
    scores = dmc_factors.dmc_scores(dmc_factors.recompute(items, variant=variant, **params), by=list(keys))
    idx = pd.MultiIndex.from_frame(grid[list(keys)]) if len(keys) > 1 else pd.Index(grid[keys[0]])
    values = scores.reindex(idx)
    if values.isna().any():
        i = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise ValueError(f"grid row {i} ({dict(grid.iloc[i][list(keys)])}) has no items in the DMC item table; "
                         "score that dataset for that student first")
    return values.to_numpy(float)


def within_spearman(x: np.ndarray, y: np.ndarray, groups: Sequence[Any] | None = None) -> float:
    """Mean over groups (e.g. students) of the Spearman rho of x with y within each group (NaN where a
    group has fewer than 3 complete pairs or a constant variable; NaN when every group is)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    groups = np.zeros(len(x)) if groups is None else np.asarray(groups)
    rhos = []
    for g in pd.unique(groups):
        m = (groups == g) & np.isfinite(x) & np.isfinite(y)
        if m.sum() >= 3 and np.ptp(x[m]) > 0 and np.ptp(y[m]) > 0:
            rhos.append(float(spearman_rows(x[m], y[m])[0]))
    return float(np.mean(rhos)) if rhos else np.nan


def fit_dmc_params(fit_grid: pd.DataFrame, items: pd.DataFrame, *, target: str = "gain",
                   keys: Sequence[str] = ("dataset", "student"), variant: str = "window",
                   param_grid: Mapping[str, Sequence[float]] | None = None,
                   group_col: str | None = "student") -> dict[str, Any]:
    """Grid-search a rule's parameters for the highest Spearman rho of DMC with ``target`` on the fitting
    part (the mean of the within-``group_col`` rhos, e.g. within each student).

    ``param_grid`` maps each parameter to the values to try (unnamed parameters keep the rule's
    defaults; a parameter the rule does not take is an error). Returns ``variant``, ``params`` (the
    chosen values, defaults filled in), ``spearman`` (on the fitting part, optimistic by
    construction), ``n_fit``, ``note`` and ``search`` (every grid point). Ties go to the earlier grid
    point; when the correlation is undefined at every point the first value of each grid list (the rule's
    defaults for parameters not in the grid) is returned with a note.
    """
    defaults = (dmc_factors.check_params(variant, {k: v[0] for k, v in (param_grid or {}).items()},
                                         where=f"fit grid of rule '{variant}'")
                if param_grid else dmc_factors.rule_params(variant))
    names = sorted(param_grid or {})
    y = fit_grid[target].to_numpy(float)
    groups = fit_grid[group_col].to_numpy() if group_col and group_col in fit_grid else None
    rows = []
    for values in itertools.product(*[list(param_grid[n]) for n in names]):
        point = {**defaults, **{n: float(v) for n, v in zip(names, values)}}
        x = dmc_for_grid(fit_grid, items, keys, variant, point)
        rows.append({**point, "spearman": within_spearman(x, y, groups)})
    search = pd.DataFrame(rows)
    base = {"variant": variant, "n_fit": len(fit_grid), "search": search}
    if search["spearman"].notna().any():
        best = search.loc[search["spearman"].idxmax()]
        chosen = {k: float(best[k]) for k in defaults}
        return {**base, "params": chosen, "spearman": float(best["spearman"]), "note": ""}
    return {**base, "params": dict(defaults), "spearman": np.nan,
            "note": "correlation undefined at every grid point; rule defaults kept"}
