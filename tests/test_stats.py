"""Correlation statistics on synthetic data with a known relationship (and with none)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from syllabus import dmc_factors, stats


def test_coefficients_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=25))
    y = np.round(x + rng.normal(size=25))
    assert stats.spearman_rows(x, y)[0] == pytest.approx(sps.spearmanr(x, y).statistic)
    assert stats.pearson_rows(x, y)[0] == pytest.approx(sps.pearsonr(x, y).statistic)
    assert stats.kendall_rows(x, y)[0] == pytest.approx(sps.kendalltau(x, y).statistic)


def test_known_monotone_relationship_is_found():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 3, size=30)
    y = np.exp(x) + rng.normal(scale=0.3, size=30)  # monotone, not linear
    r = stats.correlate(x, y, n_boot=500, n_perm=300, seed=0)
    assert r["spearman"] > 0.9 and r["spearman_lo"] > 0.7
    assert r["spearman_p"] == pytest.approx(2 / 301)  # two-sided, and no permutation reached it
    assert r["spearman"] > r["pearson"]  # ranks see the monotone curve better
    assert r["kendall_lo"] > 0 and r["note"] == ""


def test_no_relationship_is_not_significant():
    rng = np.random.default_rng(2)
    r = stats.correlate(rng.normal(size=40), rng.normal(size=40), n_boot=500, n_perm=500, seed=0)
    for m in stats.METHODS:
        assert r[f"{m}_lo"] < 0 < r[f"{m}_hi"]
        assert r[f"{m}_p"] > 0.05


def test_negative_relationship_and_exact_permutations():
    r = stats.correlate([1, 2, 3, 4, 5], [9, 7, 8, 3, 1], n_boot=200, n_perm=1000, seed=0)
    assert r["spearman"] == pytest.approx(-0.9)
    # exact over the 5! pairings: the reversal (rho = -1) and its 4 adjacent swaps (rho = -0.9) reach it
    assert r["spearman_p"] == pytest.approx(2 * 5 / 120)


def test_degenerate_inputs_give_nan_with_a_reason():
    const = stats.correlate([1, 2, 3, 4], [5, 5, 5, 5])
    assert np.isnan(const["spearman"]) and np.isnan(const["kendall_p"]) and "y constant" in const["note"]
    short = stats.correlate([1, 2, np.nan], [1, 2, 3])
    assert short["n"] == 2 and short["n_dropped"] == 1 and "need at least 3" in short["note"]
    with pytest.raises(ValueError, match="equal length"):
        stats.correlate([1, 2, 3], [1, 2])


def test_predictor_table():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"dmc": np.arange(12.0), "noise": rng.normal(size=12), "flat": 1.0})
    df["gain"] = df["dmc"] * 0.1 + rng.normal(scale=0.05, size=12)
    table = stats.predictor_table(df, ["dmc", "noise", "flat"], "gain", n_boot=200, n_perm=200)
    assert table["predictor"].tolist() == ["dmc", "noise", "flat"]
    assert table.loc[0, "spearman"] > 0.9 and abs(table.loc[1, "spearman"]) < 0.6
    assert np.isnan(table.loc[2, "spearman"]) and "x constant" in table.loc[2, "note"]
    with pytest.raises(ValueError, match="missing column\\(s\\) \\['ifd'\\]"):
        stats.predictor_table(df, ["ifd"], "gain")


def synthetic_grid(seed: int, true_r0: float, true_lam: float, noise: float, related: bool = True):
    """Datasets x students whose gain follows DMC at known (r0, lam) (or is pure noise)."""
    rng = np.random.default_rng(seed)
    rows, grid = [], []
    for d in range(12):
        for s in ("s1", "s2"):
            shift = rng.uniform(0.5, 3.0)  # how foreign this dataset is to this student
            for i in range(20):
                rows.append({"dataset": f"d{d}", "student": s, "problem_id": f"p{i}", "correct": rng.random() < 0.9,
                             "pass_rate": rng.uniform(0, 0.4), "nll": shift * rng.uniform(0.8, 1.2)})
            grid.append({"dataset": f"d{d}", "student": s})
    items = dmc_factors.item_table(pd.DataFrame(rows), nll_ref=1.0)
    grid = pd.DataFrame(grid)
    truth = stats.dmc_for_grid(grid, items, ["dataset", "student"], "excess", {"r0": true_r0, "lam": true_lam})
    grid["gain"] = (truth if related else 0) + rng.normal(scale=noise, size=len(grid))
    return grid, items


def held_out(hold: pd.DataFrame, items: pd.DataFrame, params: dict) -> dict:
    """DMC under the fitted parameters against the gain on the held-out rows (the synthetic grids pool students)."""
    x = stats.dmc_for_grid(hold, items, ["dataset", "student"], "excess", params)
    return stats.correlate(x, hold["gain"].to_numpy(float), n_boot=200, n_perm=200)


def test_fit_on_part_report_on_the_rest():
    grid, items = synthetic_grid(0, true_r0=2.0, true_lam=2.0, noise=0.005)
    fit, hold = stats.split_grid(grid, fit_fraction=0.5, seed=0, by="dataset")
    assert set(fit["dataset"]).isdisjoint(hold["dataset"]) and len(fit) + len(hold) == len(grid)
    best = stats.fit_dmc_params(fit, items, variant="excess", param_grid={"r0": (0.5, 1.0, 2.0), "lam": (0.0, 2.0)})
    assert best["params"] == {"r0": 2.0, "lam": 2.0} and best["spearman"] > 0.9
    assert len(best["search"]) == 6
    result = held_out(hold, items, best["params"])
    assert result["spearman"] > 0.8 and result["spearman_p"] < 0.01


def test_holdout_of_unrelated_gains_is_not_significant():
    grid, items = synthetic_grid(1, true_r0=1.0, true_lam=1.0, noise=1.0, related=False)
    fit, hold = stats.split_grid(grid, fit_fraction=0.5, seed=0)
    best = stats.fit_dmc_params(fit, items, variant="excess", param_grid={"r0": (0.5, 1.0, 2.0), "lam": (0.0, 2.0)})
    result = held_out(hold, items, best["params"])
    assert result["spearman_p"] > 0.05 and result["spearman_lo"] < 0 < result["spearman_hi"]


def test_grid_rows_without_items_are_named():
    grid, items = synthetic_grid(2, 1.0, 1.0, 0.1)
    grid.loc[3, "student"] = "s9"
    with pytest.raises(ValueError, match="grid row 3 .*'s9'.* has no items"):
        stats.dmc_for_grid(grid, items, ["dataset", "student"], "window", {})


# --------------------------------------------------------------------------- cluster bootstrap, noise floor
def test_cluster_bootstrap_keeps_groups_whole():
    groups = ["a", "a", "b", "c", "c", "c"]
    for idx in stats.cluster_bootstrap_indices(groups, 50, np.random.default_rng(0)):
        drawn = [groups[i] for i in idx]
        for g in set(drawn):  # a drawn group brings all its rows, as many times as it was drawn
            assert drawn.count(g) % groups.count(g) == 0


def test_cluster_bootstrap_widens_the_interval_of_duplicated_rows():
    # 6 independent pairs, each copied 5 times: the row bootstrap believes it has 30 pairs
    rng = np.random.default_rng(3)
    x0, y0 = rng.normal(size=6), rng.normal(size=6)
    x, y = np.repeat(x0, 5), np.repeat(y0, 5)
    groups = np.repeat(np.arange(6), 5)
    rows = stats.correlate(x, y, n_boot=400, n_perm=50, seed=0, methods=["pearson"])
    clusters = stats.correlate(x, y, n_boot=400, n_perm=50, seed=0, methods=["pearson"], groups=groups)
    assert clusters["n_groups"] == 6 and clusters["pearson"] == pytest.approx(rows["pearson"])
    assert clusters["pearson_hi"] - clusters["pearson_lo"] > 1.5 * (rows["pearson_hi"] - rows["pearson_lo"])


def test_clustered_mean_interval_counts_a_cluster_once():
    # 8 problems, each with 6 identical traces: the interval must be as wide as for the 8 problems alone
    rng = np.random.default_rng(5)
    per_problem = rng.normal(size=8)
    values, clusters = np.repeat(per_problem, 6), np.repeat(np.arange(8), 6)
    lo, hi = stats.clustered_mean_interval(values, clusters, n_boot=2000, seed=1)
    lo8, hi8 = stats.clustered_mean_interval(per_problem, np.arange(8), n_boot=2000, seed=1)
    assert lo < values.mean() < hi
    assert (lo, hi) == pytest.approx((lo8, hi8))  # the same draws of problems, the same means
    row_lo, row_hi = stats.clustered_mean_interval(values, np.arange(48), n_boot=2000, seed=1)
    assert hi - lo > 2 * (row_hi - row_lo)  # rows taken as independent: far too narrow
    assert stats.clustered_mean_interval([1.0, 1.0, np.nan], ["a", "b", "c"]) == (1.0, 1.0)
    assert all(np.isnan(stats.clustered_mean_interval([np.nan], ["a"])))


def test_paired_clustered_difference_cancels_what_the_problems_share():
    # two datasets' traces of the same 40 problems: a problem effect far larger than a constant lead of 0.02
    rng = np.random.default_rng(2)
    problem = rng.normal(scale=1.0, size=40)
    clusters = np.repeat(np.arange(40), 3)
    a = np.repeat(problem, 3) + 0.02 + rng.normal(scale=0.01, size=120)
    b = np.repeat(problem, 3) + rng.normal(scale=0.01, size=120)
    paired = stats.paired_clustered_mean_difference(a, clusters, b, clusters, n_boot=1000, seed=0)
    assert paired["diff"] == pytest.approx(a.mean() - b.mean())
    assert 0 < paired["lo"] < 0.02 < paired["hi"] < 0.04  # the lead is shown ...
    lo_a, hi_a = stats.clustered_mean_interval(a, clusters, seed=0)
    lo_b, hi_b = stats.clustered_mean_interval(b, clusters, seed=0)
    assert lo_a < hi_b and lo_b < hi_a  # ... though each mean's own interval overlaps the other's
    # a problem only one dataset has counts for that dataset alone
    one = stats.paired_clustered_mean_difference([1.0, 3.0], ["p", "q"], [1.0], ["p"], n_boot=200)
    assert one["diff"] == 1.0 and one["lo"] >= 0.0 and one["hi"] <= 2.0
    assert np.isnan(stats.paired_clustered_mean_difference([np.nan], ["p"], [1.0], ["p"])["diff"])


def test_spearman_lead_is_paired_and_takes_the_rival_in_its_better_direction():
    rng = np.random.default_rng(0)
    y = np.arange(30, dtype=float)
    noise = rng.normal(size=30)
    ahead = stats.spearman_lead(y + 0.1 * noise, noise, y, n_boot=200)
    assert ahead["rival_abs_spearman"] == pytest.approx(abs(sps.spearmanr(noise, y)[0]))
    assert ahead["lead"] == pytest.approx(ahead["spearman"] - ahead["rival_abs_spearman"]) and ahead["lead_lo"] > 0
    # a rival as good as x, in the other direction: no lead, and in every resample exactly none (paired)
    tie = stats.spearman_lead(y, -y, y, n_boot=200)
    assert tie["lead"] == tie["lead_lo"] == tie["lead_hi"] == pytest.approx(0.0)
    grouped = stats.spearman_lead(y, -y, y, n_boot=50, groups=[i // 3 for i in range(30)])
    assert grouped["lead_lo"] == grouped["lead_hi"] == pytest.approx(0.0)
    flat = stats.spearman_lead(y, np.ones(30), y, n_boot=50)
    assert np.isnan(flat["lead"]) and "constant" in flat["note"]
    with pytest.raises(ValueError, match="equal length"):
        stats.spearman_lead(y, y[:5], y)


def test_paired_gain_by_hand():
    before = np.array([0, 0, 1, 1])
    after = np.array([[1, 0, 1, 1], [1, 1, 1, 0]])  # seed gains 0.25 and 0.25
    g = stats.paired_gain(before, after)
    assert g["gain"] == pytest.approx(0.25) and g["seed_sd"] == pytest.approx(0.0)
    d = np.array([1.0, 0.5, 0.0, -0.5])  # per-problem differences averaged over seeds
    assert g["se_problems"] == pytest.approx(d.std(ddof=1) / 2)
    assert g["gain_se"] == pytest.approx(g["se_problems"])
    # no seed spread: the problems' part alone, t with 4 - 1 = 3 df (3.18), not the normal 1.96
    assert g["ci_df"] == pytest.approx(3.0)
    assert g["gain_lo"] == pytest.approx(0.25 - 3.182446305284263 * g["gain_se"])
    with pytest.raises(ValueError, match="3 problems after but 4 before"):
        stats.paired_gain(before, np.ones((2, 3)))


def test_interval_quantile_follows_the_welch_satterthwaite_df():
    assert stats.t_quantile(float("inf")) == pytest.approx(stats.Z95) and stats.t_quantile(2) == pytest.approx(4.302653)
    assert stats.t_quantile(0) == float("inf")
    # one part: its own df; equal parts with 2 and inf df: (2v)^2 / (v^2 / 2) = 8
    assert stats.welch_df([(0.01, 5), (0.0, 2)]) == pytest.approx(5) and stats.welch_df([(1, 2), (1, float("inf"))]) == 8
    assert stats.welch_df([]) == float("inf") and stats.welch_df([(1.0, 0)]) == 0.0
    # 3 seeds whose spread dominates the SE (400 problems): df near 2, the interval about twice the normal one
    rng = np.random.default_rng(0)
    b = (rng.random((1, 400)) < 0.5).astype(float)
    a = np.vstack([np.where(rng.random(400) < shift, 1.0, b[0]) for shift in (0.0, 0.3, 0.6)])
    d = stats.paired_difference(a, b)
    assert 2 < d["ci_df"] < 3
    half = (d["gain_hi"] - d["gain_lo"]) / 2
    assert half == pytest.approx(stats.t_quantile(d["ci_df"]) * d["gain_se"]) and half > 1.9 * stats.Z95 * d["gain_se"]
    # a difference of 0/1 outcomes stays within [-1, 1] however wide its interval
    wide = stats.paired_difference(np.array([[1.0] * 4, [0.0] * 4, [1.0] * 4]), np.zeros((1, 4)))
    assert wide["gain_hi"] == 1.0 and -1.0 <= wide["gain_lo"] < 0


def power_holds(effect: float, se_problems: float, n_problems: float, seed_sd: float, seeds: int) -> bool:
    """(t + 0.84) x SE <= |effect|, t at the Welch-Satterthwaite df as ``paired_difference`` computes it."""
    seed_df = seeds - 1 if seeds > 1 else float("inf")
    df = stats.welch_df([(se_problems ** 2, n_problems - 1), (seed_sd ** 2 / seeds, seed_df)])
    return (stats.t_quantile(df) + 0.8416) * np.sqrt(se_problems ** 2 + seed_sd ** 2 / seeds) <= abs(effect)


def test_needed_seeds_solves_the_power_equation():
    n = stats.needed_seeds(0.1, 0.02, 0.15)
    assert power_holds(0.1, 0.02, float("inf"), 0.15, n) and not power_holds(0.1, 0.02, float("inf"), 0.15, n - 1)
    z = stats.Z95 + 0.8416  # the normal approximation asks for fewer seeds
    assert z * np.sqrt(0.02 ** 2 + 0.15 ** 2 / (n - 1)) <= 0.1
    with_problems = stats.needed_seeds(0.1, 0.02, 0.15, n_problems=50)
    assert with_problems >= n and power_holds(0.1, 0.02, 50, 0.15, with_problems)
    assert stats.needed_seeds(0.1, 0.02, 0.0) == 1  # no seed spread: one seed does
    assert stats.needed_seeds(-0.1, 0.02, 0.15) == n  # the sign does not matter
    assert stats.needed_seeds(0.05, 0.03, 0.1) == float("inf")  # the problems' part alone is too large
    assert np.isnan(stats.needed_seeds(0.0, 0.02, 0.15)) and np.isnan(stats.needed_seeds(0.1, 0.02, float("nan")))


def test_reliability_and_needed_problems():
    assert stats.reliability([0.1, 0.3, 0.5], [0.1, 0.1, 0.1]) == pytest.approx(1 - 0.01 / 0.04)
    assert stats.reliability([0.1, 0.1], [0.1, 0.1]) != stats.reliability([0.1, 0.1], [0.1, 0.1])  # NaN
    # 80% power at 95%: about ((1.96 + 0.84) * sd / effect)^2, a little more for t at n - 1 df
    n = stats.needed_problems(0.05, 0.5)
    assert power_holds(0.05, 0.5 / np.sqrt(n), n, 0.0, 1) and not power_holds(0.05, 0.5 / np.sqrt(n - 1), n - 1, 0.0, 1)
    assert 0 < n - int(np.ceil(((stats.Z95 + 0.8416) * 0.5 / 0.05) ** 2)) <= 3
    # with the seed part of the SE kept: (t + 0.84)^2 (sd^2 / n + seed_sd^2 / seeds) <= effect^2
    n = stats.needed_problems(0.1, 0.5, seed_sd=0.05, n_seeds=10)
    assert power_holds(0.1, 0.5 / np.sqrt(n), n, 0.05, 10) and not power_holds(0.1, 0.5 / np.sqrt(n - 1), n - 1, 0.05, 10)
    # the seeds' part at its 2 df decides: (4.30 + 0.84) x 0.05 / sqrt(3) = 0.148 > 0.1, however many problems
    assert stats.needed_problems(0.12, 0.5, seed_sd=0.05, n_seeds=3) == float("inf")
    assert stats.needed_problems(0.05, 0.5, seed_sd=0.2, n_seeds=1) == float("inf")
    assert np.isnan(stats.needed_problems(0.0, 0.5))
    # both, for a paired difference not shown; nothing for one that is
    a = np.array([[float(i < k) for i in range(40)] for k in (6, 37, 26)])
    b = np.array([[float(i < 10 + s) for i in range(40)] for s in range(3)])
    need = stats.needed_sample(stats.paired_difference(a, b))
    assert need["seeds_needed"] > 3 and need["problems_needed"] == float("inf")  # seeds, not problems, are short
    assert need["joint_seeds_needed"] >= 3 and need["joint_problems_needed"] == np.ceil(40 * need["joint_seeds_needed"] / 3)
    assert all(np.isnan(v) for v in stats.needed_sample(stats.paired_difference(a + 0 * b + 1, b * 0)).values())
    assert stats.binomial_se(0.5, 100) == pytest.approx(0.05)


def test_needed_jointly_grows_seeds_and_problems_together_where_neither_alone_would_do():
    def power_holds(effect, se_problems, seed_sd, k, n, k0=3, n0=200):
        se2 = se_problems ** 2 * n0 / n + seed_sd ** 2 / k
        df = stats.welch_df([(se_problems ** 2 * n0 / n, n - 1), (seed_sd ** 2 / k, k - 1)])
        return (stats.t_quantile(df) + 0.8416) ** 2 * se2 <= effect ** 2

    # a lead of 0.057 with a problems' SE of 0.03 and a seed SD of 0.03, 3 seeds and 200 problems: more
    # seeds alone leave the problems' SE too large, more problems alone leave the seeds' part at 2 df too large
    effect, se, sd = 0.057, 0.03, 0.03
    assert stats.needed_seeds(effect, se, sd, n_problems=200) == float("inf")
    assert stats.needed_problems(effect, se * np.sqrt(200), sd, 3) == float("inf")
    k, n = stats.needed_jointly(effect, se, sd, 3, 200)
    assert n == np.ceil(200 * k / 3) and power_holds(effect, se, sd, int(k), int(n))
    assert not power_holds(effect, se, sd, int(k) - 1, int(np.ceil(200 * (k - 1) / 3)))  # the smallest
    assert stats.needed_jointly(0.5, 0.01, 0.01, 3, 200) == (3.0, 200.0)  # already enough: the present sizes
    assert all(np.isnan(v) for v in stats.needed_jointly(0.0, se, sd, 3, 200))
    assert all(np.isnan(v) for v in stats.needed_jointly(effect, se, float("nan"), 1, 200))


def test_with_score_ci():
    t = stats.with_score_ci(pd.DataFrame({"value": [3.5, 0.2, 0.0], "stderr": [0.05, np.nan, 0.0],
                                          "n": [np.nan, np.nan, 10]}))
    assert t.loc[0, "ci_lo"] == pytest.approx(3.5 - stats.Z95 * 0.05) and np.isnan(t.loc[1, "ci_hi"])
    assert t.loc[2, "ci_lo"] == 0.0 and t.loc[2, "ci_hi"] == pytest.approx(0.2775, abs=1e-3)  # 0 of 10: Wilson


def test_score_interval_is_wilson_for_a_share_of_problems_and_normal_otherwise():
    lo, hi = stats.score_interval({"value": 1 / 8, "stderr": 0.125, "n": 8})
    assert lo == pytest.approx(0.0224, abs=1e-3) and hi == pytest.approx(0.4709, abs=1e-3)
    lo, hi = stats.score_interval({"value": 0.0, "stderr": 0.0, "n": 8})  # 0 of 8 is not [0, 0]
    assert lo == 0.0 and hi == pytest.approx(0.3244, abs=1e-3)
    lo, hi = stats.score_interval({"value": 3.5, "stderr": 0.5, "n": 8})  # not a share: +- 1.96 SE
    assert (lo, hi) == pytest.approx((3.5 - 0.98, 3.5 + 0.98), abs=1e-3)
    assert all(np.isnan(stats.score_interval({"value": 0.5, "stderr": None, "n": None})))
    for n in (8, 4000, 12345):  # none or all: the bound is exactly 0 or 1, not a float hair inside it
        assert stats.wilson(0, n)[0] == 0.0 and stats.wilson(n, n)[1] == 1.0


def test_benchmark_bars_whiskers_are_the_wilson_intervals():
    import matplotlib

    matplotlib.use("Agg")
    from syllabus import plots

    tidy = pd.DataFrame({"model": ["a", "a", "b", "b"], "task": ["t1", "t2", "t1", "t2"],
                         "value": [0.125, 0.0, 0.5, 1.0], "stderr": [0.125, 0.0, 0.19, 0.0], "n": [8, 8, 8, 8]})
    fig = plots.benchmark_bars(tidy)
    ax = fig.axes[0]
    ends = sorted({round(float(x), 3) for line in ax.lines for x in np.atleast_1d(line.get_xdata())})
    assert min(ends) >= 0 and max(ends) <= 1  # caps inside [0, 1]
    assert 0.471 in ends and 0.324 in ends and 0.676 in ends  # Wilson ends: 1/8 and 0/8 (upper), 8/8 (lower)


def test_benchmark_bars_draw_each_students_undistilled_score_across_its_distilled_models():
    import matplotlib
    from matplotlib.collections import LineCollection

    matplotlib.use("Agg")
    from syllabus import plots

    models = ["s (undistilled)", "s + random", "s + dmc", "t (undistilled)", "teacher"]
    tidy = pd.DataFrame({"model": models, "task": "t1", "value": [0.4, 0.3, 0.6, 0.5, 0.9], "stderr": 0.05,
                         "n": 100})
    ax = plots.benchmark_bars(tidy).axes[0]
    lines = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_label().endswith("undistilled")]
    assert [c.get_label() for c in lines] == ["s undistilled"]  # t has no distilled model: no line
    (segment,) = lines[0].get_segments()
    order = [t.get_text() for t in ax.get_yticklabels()]  # the rows' order on the y axis
    rows = sorted(order.index(m) for m in models[:3])
    assert segment[0][0] == segment[1][0] == 0.4  # at s's undistilled score ...
    assert (segment[0][1], segment[1][1]) == pytest.approx((rows[0] - 0.45, rows[-1] + 0.45))  # ... over s's rows
    labels = ax.get_legend_handles_labels()[1]
    assert "s undistilled" in labels and "t1" in labels


def test_pooled_spearman_lead_shows_a_small_lead_that_no_single_stratum_shows():
    rng = np.random.default_rng(3)
    strata, singles = [], []
    for grid in range(4):
        y = rng.normal(size=20)
        families = [f"f{i}" for i in range(20)]
        for student in range(2):  # the students of one grid share its datasets (families)
            gain = y + 0.3 * rng.normal(size=20)
            x, rival = y + 0.3 * rng.normal(size=20), y + 0.8 * rng.normal(size=20)  # x a little closer to the truth
            strata.append({"name": f"g{grid}/s{student}", "block": grid, "x": x, "rival": rival, "y": gain,
                           "groups": families})
            singles.append(stats.spearman_lead(x, rival, gain, n_boot=300, groups=families))
    pooled = stats.pooled_spearman_lead(strata, n_boot=300)
    n = np.array([s["n"] for s in singles])
    assert pooled["n"] == 160 and pooled["strata"] == 8
    assert pooled["lead"] == pytest.approx(np.dot(n, [s["lead"] for s in singles]) / n.sum())
    assert pooled["lead_lo"] > 0  # shown pooled ...
    assert sum(s["lead_lo"] > 0 for s in singles) <= 2  # ... where (almost) no stratum shows it alone
    assert pooled["lead_hi"] - pooled["lead_lo"] < min(s["lead_hi"] - s["lead_lo"] for s in singles)
    # no lead planted: x and the rival equally noisy; the interval covers 0
    null = [{**s, "x": s["y"] + 0.8 * rng.normal(size=20)} for s in strata]
    none = stats.pooled_spearman_lead(null, n_boot=300)
    assert none["lead_lo"] < 0 < none["lead_hi"]
    # a constant rival leaves its stratum out, by name
    flat = stats.pooled_spearman_lead([{**strata[0], "rival": np.ones(20)}, strata[1]], n_boot=50)
    assert flat["strata"] == 1 and "g0/s0" in flat["note"]
    with pytest.raises(ValueError, match="stratum 0"):
        stats.pooled_spearman_lead([{**strata[0], "groups": ["a"]}])


def test_excludes_zero_is_elementwise_and_false_for_a_missing_bound():
    lo = pd.Series([0.1, -0.2, -0.3, np.nan, 0.0])
    hi = pd.Series([0.4, 0.1, -0.1, np.nan, 0.2])
    assert stats.excludes_zero(lo, hi).tolist() == [True, False, True, False, False]
    assert stats.shown({"gain_lo": -0.5, "gain_hi": -0.1}) and not stats.shown({"gain_lo": -0.5, "gain_hi": 0.0})
