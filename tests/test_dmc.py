"""DMC factors and rules on hand-computed cases, plus a property test of the difficulty discount."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syllabus import dmc
from syllabus.records import Trace


def items(rows):
    return pd.DataFrame(rows, columns=["dataset", "problem_id", "correct", "pass_rate", "nll"])


def test_all_wrong_traces_have_dmc_zero():
    df = items([("wrong", f"p{i}", False, 0.0, 0.5 + i) for i in range(5)])
    table = dmc.dataset_table(dmc.item_table(df, nll_ref=1.0))
    assert table.loc[0, "dmc"] == 0.0 and table.loc[0, "quality"] == 0.0


def test_a_problem_the_student_always_solves_contributes_zero():
    df = items([("d", "solved", True, 1.0, 0.2), ("d", "open", True, 0.0, 0.2)])
    out = dmc.item_table(df, nll_ref=1.0)
    assert out["compat"].tolist() == [0.0, 1.0]
    assert dmc.dmc_scores(out)["d"] == 0.5


def test_hand_computed_item_and_dataset():
    df = items([
        ("a", "p1", True, 0.25, 3.0),   # r = 1.5 -> 0.75 * exp(-0.5)
        ("a", "p1", True, 0.25, 1.0),   # r = 0.5 -> 0.75 (no discount below r0)
        ("a", "p2", False, 0.0, 1.0),   # wrong -> 0
        ("b", "p3", True, 0.5, 4.0),    # r = 2 -> 0.5 * exp(-1)
    ])
    out = dmc.item_table(df, nll_ref=2.0)
    assert out["rel_difficulty"].tolist() == [1.5, 0.5, 0.5, 2.0]
    np.testing.assert_allclose(out["compat"], [0.75 * math.exp(-0.5), 0.75, 0.0, 0.5 * math.exp(-1)])
    table = dmc.dataset_table(out).set_index("dataset")
    assert table.loc["a", "n_items"] == 3 and table.loc["a", "n_problems"] == 2
    assert table.loc["a", "quality"] == pytest.approx(2 / 3)
    assert table.loc["a", "dmc"] == pytest.approx((0.75 * math.exp(-0.5) + 0.75) / 3)
    assert table.loc["b", "perplexity"] == pytest.approx(math.exp(4.0))
    lam2 = dmc.item_table(df, nll_ref=2.0, r0=1.5, lam=2.0)
    np.testing.assert_allclose(lam2["compat"], [0.75, 0.75, 0.0, 0.5 * math.exp(-1.0)])


def test_truncated_or_malformed_traces_have_no_quality():
    df = items([("d", "p", True, 0.0, 1.0)] * 3)
    df["truncated"] = [False, True, False]
    df["malformed"] = [False, False, True]
    assert dmc.item_table(df, nll_ref=1.0)["quality"].tolist() == [1.0, 0.0, 0.0]


@settings(max_examples=200, deadline=None)
@given(q=st.sampled_from([0.0, 1.0]), c=st.floats(0, 1), r=st.floats(0, 50), dr=st.floats(0, 50),
       r0=st.floats(0, 5), lam=st.floats(0, 10), variant=st.sampled_from(["default", "no_capability",
                                                                         "partial_capability", "no_difficulty"]))
def test_larger_relative_difficulty_never_raises_compatibility(q, c, r, dr, r0, lam, variant):
    m = dmc.compatibility([q, q], [c, c], [r, r + dr], variant, r0=r0, lam=lam)
    assert m[1] <= m[0] + 1e-12
    assert 0.0 <= m[1] <= 1.0


def test_gaussian_zpd_penalises_both_sides():
    m = dmc.compatibility([1, 1, 1], [0, 0, 0], [0.5, 1.0, 1.5], "gaussian_zpd", r0=1.0, lam=2.0)
    assert m[1] == 1.0 and m[0] == pytest.approx(m[2]) and m[0] < 1.0


def test_ablation_rules():
    q, c, r = [1, 1, 0], [0.5, 0.0, 0.0], [3.0, 1.0, 1.0]
    assert dmc.compatibility(q, c, r, "quality_only").tolist() == [1, 1, 0]
    assert dmc.compatibility(q, c, r, "no_difficulty").tolist() == [0.5, 1, 0]
    np.testing.assert_allclose(dmc.compatibility(q, c, r, "no_capability"), [math.exp(-2), 1, 0])
    np.testing.assert_allclose(dmc.compatibility(q, c, r, "partial_capability"), [math.exp(-2), 0, 0])


def test_registry_errors_and_custom_rules():
    with pytest.raises(ValueError, match="unknown DMC variant 'nope'.*default"):
        dmc.compatibility([1], [0], [1], "nope")
    with pytest.raises(ValueError, match="no parameters \\['sigma'\\]"):
        dmc.compatibility([1], [0], [1], "default", sigma=2.0)
    assert dmc.compatibility([1], [0.5], [9.0], "no_difficulty", r0=1.0, lam=1.0).tolist() == [0.5]  # profile keys ok
    assert dmc.rule_params("default") == {"r0": 1.0, "lam": 1.0}

    @dmc.register("test_square_gap")
    def square_gap(quality, capability, rel_difficulty, *, power: float = 2.0):
        return quality * (1 - capability) ** power

    try:
        assert dmc.compatibility([1], [0.5], [1], "test_square_gap", power=3).tolist() == [0.125]
        with pytest.raises(ValueError, match="already registered"):
            dmc.register("test_square_gap")(square_gap)
    finally:
        dmc.RULES.pop("test_square_gap")


def test_recompute_changes_only_compat():
    out = dmc.item_table(items([("d", "p", True, 0.0, 3.0)]), nll_ref=1.0)
    again = dmc.recompute(out, lam=0.0)
    assert again["compat"].tolist() == [1.0] and again["rel_difficulty"].tolist() == [3.0]


def test_nll_reference_is_the_median_and_checks_input():
    assert dmc.nll_reference([3.0, 1.0, 2.0, 10.0]) == 2.5
    with pytest.raises(ValueError, match="no scores"):
        dmc.nll_reference([])
    with pytest.raises(ValueError, match="not finite"):
        dmc.nll_reference([1.0, float("nan")])


def test_pass_rates_from_samples():
    samples = pd.DataFrame({"problem_id": ["a", "a", "a", "a", "b", "b"], "correct": [1, 0, 1, 1, 0, 0]})
    assert dmc.pass_rates(samples).to_dict() == {"a": 0.75, "b": 0.0}
    samples.loc[2, "correct"] = None
    with pytest.raises(ValueError, match="row 2 has no verdict"):
        dmc.pass_rates(samples)


def test_bad_items_name_row_and_column():
    df = items([("d", "p1", True, 0.0, 1.0), ("d", "p2", True, 1.5, 1.0)])
    with pytest.raises(ValueError, match="row 1 \\(dataset 'd', problem 'p2'\\) has pass_rate=1.5"):
        dmc.item_table(df, nll_ref=1.0)
    with pytest.raises(ValueError, match="missing column\\(s\\) \\['nll'\\]"):
        dmc.item_table(df.drop(columns="nll"), nll_ref=1.0)
    df2 = items([("d", "p1", None, 0.0, 1.0)])
    with pytest.raises(ValueError, match="correct=None"):
        dmc.item_table(df2, nll_ref=1.0)


def test_items_frame_from_traces_and_scores():
    traces = [Trace("p1", "t", "x", correct=True), Trace("p2", "t", "y", correct=False, truncated=True)]
    scores = pd.DataFrame({"nll": [1.0, 2.0], "n_tokens": [5, 7], "entropy": [0.5, 0.6], "truncated": [False, True]})
    frame = dmc.items_frame("teacherA", traces, {"p1": 0.25, "p2": 0.0}, scores)
    table = dmc.dataset_table(dmc.item_table(frame, nll_ref=1.0))
    assert table.loc[0, "dmc"] == pytest.approx(0.75 / 2) and table.loc[0, "n_tokens"] == 6.0
    with pytest.raises(ValueError, match="no student pass rate for problem 'p2'"):
        dmc.items_frame("teacherA", traces, {"p1": 0.25}, scores)
    with pytest.raises(ValueError, match="trace 0 .* has no verdict"):
        dmc.items_frame("teacherA", [Trace("p1", "t", "x")], {"p1": 0.0}, scores.iloc[:1])
