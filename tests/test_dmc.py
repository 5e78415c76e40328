"""DMC factors and rules on hand-computed cases, plus a property test of the difficulty discount."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syllabus import dmc_factors
from syllabus.records import Trace


def items(rows):
    return pd.DataFrame(rows, columns=["dataset", "problem_id", "correct", "pass_rate", "nll"])


def test_all_wrong_traces_have_dmc_zero():
    df = items([("wrong", f"p{i}", False, 0.0, 0.5 + i) for i in range(5)])
    table = dmc_factors.dataset_table(dmc_factors.item_table(df, nll_ref=1.0))
    assert table.loc[0, "dmc"] == 0.0 and table.loc[0, "quality"] == 0.0


def test_a_problem_the_student_always_solves_contributes_zero():
    df = items([("d", "solved", True, 1.0, 0.2), ("d", "open", True, 0.0, 0.2)])
    out = dmc_factors.item_table(df, nll_ref=1.0, variant="no_difficulty")
    assert out["compat"].tolist() == [0.0, 1.0]
    assert dmc_factors.dmc_scores(out)["d"] == 0.5


def test_hand_computed_item_and_dataset():
    df = items([
        ("a", "p1", True, 0.25, 3.0),   # r = 1.5 -> 0.75 * exp(-0.5)
        ("a", "p1", True, 0.25, 1.0),   # r = 0.5 -> 0.75 (no discount below r0)
        ("a", "p2", False, 0.0, 1.0),   # wrong -> 0
        ("b", "p3", True, 0.5, 4.0),    # r = 2 -> 0.5 * exp(-1)
    ])
    out = dmc_factors.item_table(df, nll_ref=2.0, variant="excess")
    assert out["rel_difficulty"].tolist() == [1.5, 0.5, 0.5, 2.0]
    np.testing.assert_allclose(out["compat"], [0.75 * math.exp(-0.5), 0.75, 0.0, 0.5 * math.exp(-1)])
    table = dmc_factors.dataset_table(out).set_index("dataset")
    assert table.loc["a", "n_items"] == 3 and table.loc["a", "n_problems"] == 2
    assert table.loc["a", "quality"] == pytest.approx(2 / 3)
    assert table.loc["a", "dmc"] == pytest.approx((0.75 * math.exp(-0.5) + 0.75) / 3)
    assert table.loc["b", "perplexity"] == pytest.approx(math.exp(4.0))
    lam2 = dmc_factors.item_table(df, nll_ref=2.0, variant="excess", r0=1.5, lam=2.0)
    np.testing.assert_allclose(lam2["compat"], [0.75, 0.75, 0.0, 0.5 * math.exp(-1.0)])


def test_truncated_or_malformed_traces_have_no_quality():
    df = items([("d", "p", True, 0.0, 1.0)] * 3)
    df["truncated"] = [False, True, False]
    df["malformed"] = [False, False, True]
    assert dmc_factors.item_table(df, nll_ref=1.0)["quality"].tolist() == [1.0, 0.0, 0.0]


@settings(max_examples=200, deadline=None)
@given(q=st.sampled_from([0.0, 1.0]), c=st.floats(0, 1), r=st.floats(0, 50), dr=st.floats(0, 50),
       r0=st.floats(0, 5), lam=st.floats(0, 10), variant=st.sampled_from(["excess", "partial_capability"]))
def test_larger_relative_difficulty_never_raises_compatibility(q, c, r, dr, r0, lam, variant):
    """The one-sided rules: a harder trace never scores more (the window rules are two-sided on purpose)."""
    m = dmc_factors.compatibility([q, q], [c, c], [r, r + dr], variant, r0=r0, lam=lam)
    assert m[1] <= m[0] + 1e-12
    assert 0.0 <= m[1] <= 1.0


def test_gaussian_zpd_penalises_both_sides():
    m = dmc_factors.compatibility([1, 1, 1], [0, 0, 0], [0.5, 1.0, 1.5], "gaussian_zpd", r0=1.0, lam=2.0)
    assert m[1] == 1.0 and m[0] == pytest.approx(m[2]) and m[0] < 1.0


def test_ablation_rules():
    q, c, r = [1, 1, 0], [0.5, 0.0, 0.0], [3.0, 1.0, 1.0]
    assert dmc_factors.compatibility(q, c, r, "quality_only").tolist() == [1, 1, 0]
    assert dmc_factors.compatibility(q, c, r, "no_difficulty").tolist() == [0.5, 1, 0]
    np.testing.assert_allclose(dmc_factors.compatibility(q, c, r, "no_capability", center=1.0, width=1.0),
                               [math.exp(-math.log(3) ** 2 / 2), 1, 0])
    np.testing.assert_allclose(dmc_factors.compatibility(q, c, r, "partial_capability"), [math.exp(-2), 0, 0])


def test_registry_errors_and_custom_rules():
    with pytest.raises(ValueError, match="unknown DMC variant 'nope'.*window"):
        dmc_factors.compatibility([1], [0], [1], "nope")
    with pytest.raises(ValueError, match="'excess' has no parameter\\(s\\) \\['sigma'\\]; it takes \\['lam', 'r0'\\]"):
        dmc_factors.compatibility([1], [0], [1], "excess", sigma=2.0)
    with pytest.raises(ValueError, match="'no_difficulty' has no parameter\\(s\\) \\['lam', 'r0'\\]"):
        dmc_factors.compatibility([1], [0.5], [9.0], "no_difficulty", r0=1.0, lam=1.0)  # no key outside the rule's own
    assert dmc_factors.rule_params("excess") == {"r0": 1.0, "lam": 1.0}
    assert dmc_factors.rule_params("window") == {"center": 1.25, "width": 0.5}

    @dmc_factors.register("test_square_gap")
    def square_gap(quality, capability, rel_difficulty, *, power: float = 2.0):
        return quality * (1 - capability) ** power

    try:
        assert dmc_factors.compatibility([1], [0.5], [1], "test_square_gap", power=3).tolist() == [0.125]
        with pytest.raises(ValueError, match="already registered"):
            dmc_factors.register("test_square_gap")(square_gap)
    finally:
        dmc_factors.RULES.pop("test_square_gap")


def test_recompute_changes_only_compat():
    out = dmc_factors.item_table(items([("d", "p", True, 0.0, 3.0)]), nll_ref=1.0)
    again = dmc_factors.recompute(out, variant="excess", lam=0.0)
    assert again["compat"].tolist() == [1.0] and again["rel_difficulty"].tolist() == [3.0]


def test_nll_reference_is_the_median_and_checks_input():
    assert dmc_factors.nll_reference([3.0, 1.0, 2.0, 10.0]) == 2.5
    with pytest.raises(ValueError, match="no scores"):
        dmc_factors.nll_reference([])
    with pytest.raises(ValueError, match="not finite"):
        dmc_factors.nll_reference([1.0, float("nan")])


def test_pass_rates_from_samples():
    samples = pd.DataFrame({"problem_id": ["a", "a", "a", "a", "b", "b"], "correct": [1, 0, 1, 1, 0, 0]})
    assert dmc_factors.pass_rates(samples).to_dict() == {"a": 0.75, "b": 0.0}
    samples.loc[2, "correct"] = None
    with pytest.raises(ValueError, match="row 2 has no verdict"):
        dmc_factors.pass_rates(samples)


def test_bad_items_name_row_and_column():
    df = items([("d", "p1", True, 0.0, 1.0), ("d", "p2", True, 1.5, 1.0)])
    with pytest.raises(ValueError, match="row 1 \\(dataset 'd', problem 'p2'\\) has pass_rate=1.5"):
        dmc_factors.item_table(df, nll_ref=1.0)
    with pytest.raises(ValueError, match="missing column\\(s\\) \\['nll'\\]"):
        dmc_factors.item_table(df.drop(columns="nll"), nll_ref=1.0)
    df2 = items([("d", "p1", None, 0.0, 1.0)])
    with pytest.raises(ValueError, match="correct=None"):
        dmc_factors.item_table(df2, nll_ref=1.0)


def test_items_frame_from_traces_and_scores():
    traces = [Trace("p1", "t", "x", correct=True), Trace("p2", "t", "y", correct=False, truncated=True)]
    scores = pd.DataFrame({"nll": [1.0, 2.0], "n_tokens": [5, 7], "entropy": [0.5, 0.6], "truncated": [False, True]})
    frame = dmc_factors.items_frame("teacherA", traces, {"p1": 0.25, "p2": 0.0}, scores)
    table = dmc_factors.dataset_table(dmc_factors.item_table(frame, nll_ref=1.0, variant="no_difficulty"))
    assert table.loc[0, "dmc"] == pytest.approx(0.75 / 2) and table.loc[0, "n_tokens"] == 6.0
    with pytest.raises(ValueError, match="no student pass rate for problem 'p2'"):
        dmc_factors.items_frame("teacherA", traces, {"p1": 0.25}, scores)
    with pytest.raises(ValueError, match="trace 0 .* has no verdict"):
        dmc_factors.items_frame("teacherA", [Trace("p1", "t", "x")], {"p1": 0.0}, scores.iloc[:1])


def test_window_is_two_sided_in_log_r_and_peaks_at_its_center():
    r = [0.25, 0.5, 1.25, 3.125, 6.25]
    m = dmc_factors.compatibility([1] * 5, [0] * 5, r, "window", center=1.25, width=0.5)
    assert m[2] == pytest.approx(1.0) and m.argmax() == 2
    assert m[1] == pytest.approx(m[3])  # 2.5x below and above the center weigh the same
    assert m[0] < m[1] and m[4] < m[3]  # too familiar and too foreign both lose
    info = dmc_factors.compatibility([1, 1, 1], [0.0, 0.5, 1.0], [1.25] * 3, "window_information")
    np.testing.assert_allclose(info, [0.0, 1.0, 0.0])


def test_capability_is_a_smoothed_pass_rate():
    samples = pd.DataFrame({"problem_id": ["a"] * 4 + ["b"] * 2, "correct": [1, 1, 1, 1, 0, 0]})
    c = dmc_factors.smoothed_pass_rates(samples, prior=(1.0, 1.0))
    assert c["a"] == pytest.approx(5 / 6) and c["b"] == pytest.approx(1 / 4)  # never exactly 0 or 1
    assert dmc_factors.smoothed_pass_rates(samples, prior=(0, 0)).to_dict() == {"a": 1.0, "b": 0.0}


def test_per_prompt_reference_makes_the_students_own_writing_score_one():
    own = pd.DataFrame({"problem_id": ["p1", "p1", "p2"], "nll": [1.0, 3.0, 0.5]})
    ref = dmc_factors.per_prompt_reference(own)
    assert ref.to_dict() == {"p1": 2.0, "p2": 0.5}
    df = items([("d", "p1", True, 0.0, 2.0), ("d", "p2", True, 0.0, 1.0)])
    df["nll_ref"] = df["problem_id"].map(ref)
    out = dmc_factors.item_table(df, None, variant="no_difficulty")
    assert out["rel_difficulty"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="row 0 .* nll_ref=0.0"):
        dmc_factors.item_table(df.assign(nll_ref=0.0), None)


def test_scoring_split_is_stable_by_problem_and_shared_by_nested_datasets():
    ids = [f"lab-{i}" for i in range(2000)]
    mask = dmc_factors.in_scoring_slice(ids, 0.2, salt="7")
    assert 0.17 < mask.mean() < 0.23
    assert (dmc_factors.in_scoring_slice(ids[::-1], 0.2, salt="7") == mask[::-1]).all()  # order does not matter
    assert not (dmc_factors.in_scoring_slice(ids, 0.2, salt="8") == mask).all()  # the salt does
    big = pd.DataFrame({"problem_id": ids[:300] * 2, "text": ["x"] * 600})
    small = big.iloc[::3]
    train_big, score_big = dmc_factors.scoring_split(big, 0.2, "7")
    train_small, score_small = dmc_factors.scoring_split(small, 0.2, "7")
    assert set(score_small["problem_id"]) <= set(score_big["problem_id"])
    assert set(train_big["problem_id"]).isdisjoint(score_big["problem_id"])  # a problem sits in one slice only
    with pytest.raises(ValueError, match="heldout_fraction must be in \\(0, 1\\)"):
        dmc_factors.in_scoring_slice(ids, 1.0)


def test_rank_surprisal_ratio_per_dataset():
    df = items([("d", "p1", True, 0.0, 2.0), ("d", "p2", True, 0.0, 1.0)])
    df["rank"] = [3.0, 6.0]
    table = dmc_factors.dataset_table(dmc_factors.item_table(df, nll_ref=1.0))
    assert table.loc[0, "rsr"] == pytest.approx(4.5 / 1.5)  # mean rank over mean NLL, not a mean of ratios


def test_worked_example_and_ranking_recompute_from_the_saved_factors():
    df = items([("a", "p1", True, 0.5, 1.25), ("b", "p2", True, 0.0, 5.0)]).assign(student="s", teacher="t")
    out = dmc_factors.item_table(df, nll_ref=1.0)
    steps = dmc_factors.worked_example(out).set_index("step")["value"]
    assert steps["relative difficulty r"] == 1.25 and steps["m under 'window'"] == pytest.approx(0.5)
    ranked = dmc_factors.ranking(out)
    assert ranked["dataset"].tolist() == ["a", "b"] and ranked["rank"].tolist() == [1, 2]
    wide = dmc_factors.ranking(out, width=10.0, center=5.0)  # a window centred on the foreign trace flips the order
    assert wide["dataset"].tolist() == ["b", "a"]


def test_parameter_ranges_span_the_items_relative_difficulties_and_start_at_the_profiles_values():
    items = pd.DataFrame({"rel_difficulty": np.linspace(2.0, 120.0, 200)})
    ranges = dmc_factors.parameter_ranges(items, {"center": 8.0})
    low, high, start = ranges["center"]
    assert low == 0.5 and high >= 118 and start == 8.0  # r-scale: from 0.5 to the 99th percentile of r
    assert ranges["r0"][:2] == (low, high)
    assert ranges["width"][2] == dmc_factors.rule_params("window")["width"]  # no profile value: the rule's default
    assert set(ranges) == {k for rule in dmc_factors.RULES for k in dmc_factors.rule_params(rule)}
    with pytest.raises(ValueError, match="rel_difficulty"):
        dmc_factors.parameter_ranges(pd.DataFrame({"x": [1.0]}))


def test_factor_intervals_bracket_the_dataset_means_and_are_drawn_as_whiskers():
    import matplotlib

    matplotlib.use("Agg")
    from syllabus import plots
    from syllabus.stages import dmc

    rng = np.random.default_rng(0)
    rows = [(ds, f"p{i}", bool(rng.random() < 0.8), float(rng.random()), float(rng.uniform(0.5, 3)))
            for ds in ("a", "b") for i in range(12) for _ in range(3)]
    out = pd.concat([dmc_factors.item_table(items(rows), nll_ref=1.0).assign(student=s) for s in ("s1", "s2")])
    table = dmc_factors.dataset_table(out, by=["student", "dataset"])
    bounds = dmc.factor_intervals(out, n_boot=300)
    assert len(bounds) == 2 * 2 * 4 and set(bounds["factor"]) == {"quality", "capability", "rel_difficulty", "dmc"}
    joined = bounds.merge(table.melt(id_vars=["student", "dataset"], var_name="factor", value_name="mean"))
    assert (joined["lo"] <= joined["mean"] + 1e-12).all() and (joined["mean"] <= joined["hi"] + 1e-12).all()
    assert (joined.loc[joined["factor"] == "dmc", "hi"] > joined.loc[joined["factor"] == "dmc", "lo"]).all()
    fig = plots.dmc_factors(table, bounds)
    drawn = {round(float(x), 9) for ax in fig.axes for line in ax.lines for x in line.get_xdata()}
    assert {round(float(v), 9) for v in bounds[["lo", "hi"]].to_numpy().ravel()} <= drawn
    assert not [line for ax in plots.dmc_factors(table).axes for line in ax.lines]  # no intervals, no whiskers
