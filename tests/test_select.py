"""Each stage-5 policy's choice on hand-made scores, and the IOA identifier/organizer pieces."""

from __future__ import annotations

import json
import math

import pytest

from syllabus import select
from syllabus.select import SelectionState, make_policy

DATASETS = ["prose", "equations", "selfcheck"]


def state(**kw):
    return SelectionState(datasets=DATASETS, **kw)


def test_dmc_dynamic_follows_the_current_checkpoint():
    policy = make_policy("dmc_dynamic")
    first = policy.choose(0, state(dmc={"prose": 0.2, "equations": 0.5, "selfcheck": 0.1}))
    later = policy.choose(1, state(dmc={"prose": 0.6, "equations": 0.5, "selfcheck": 0.1}))
    assert first.weights == {"prose": 0.0, "equations": 1.0, "selfcheck": 0.0}
    assert later.weights["prose"] == 1.0 and "prose" in later.reason


def test_dmc_softmax_mixture():
    scores = {"prose": 0.2, "equations": 0.3, "selfcheck": 0.1}
    w = make_policy("dmc_dynamic", mixture="softmax", temperature=0.1).choose(0, state(dmc=scores)).weights
    z = {d: math.exp(v / 0.1) for d, v in scores.items()}
    for d in DATASETS:
        assert w[d] == pytest.approx(z[d] / sum(z.values()))
    assert w["equations"] > w["prose"] > w["selfcheck"]


def test_dmc_needs_every_candidate():
    with pytest.raises(ValueError, match="no finite DMC for candidate dataset\\(s\\) \\['selfcheck'\\]"):
        make_policy("dmc_dynamic").choose(0, state(dmc={"prose": 0.2, "equations": 0.5}))


def test_dmc_static_keeps_the_first_ranking_and_resumes():
    policy = make_policy("dmc_static")
    policy.choose(0, state(dmc={"prose": 0.2, "equations": 0.5, "selfcheck": 0.1}))
    kept = policy.choose(1, state(dmc={"prose": 0.9, "equations": 0.0, "selfcheck": 0.0}))
    assert kept.weights["equations"] == 1.0
    resumed = make_policy("dmc_static")
    resumed.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert resumed.choose(2, state(dmc={"prose": 0.9, "equations": 0.0, "selfcheck": 0.0})).weights == kept.weights


def test_random_is_seeded_per_phase_and_one_hot():
    a = [make_policy("random", seed=7).choose(p, state()).weights for p in range(20)]
    b = [make_policy("random", seed=7).choose(p, state()).weights for p in range(20)]
    c = [make_policy("random", seed=8).choose(p, state()).weights for p in range(20)]
    assert a == b and a != c
    assert all(sorted(w.values()) == [0.0, 0.0, 1.0] for w in a)
    assert len({max(w, key=w.get) for w in a}) == 3


def test_all_is_uniform():
    assert make_policy("all").choose(3, state()).weights == {d: 1 / 3 for d in DATASETS}


@pytest.mark.parametrize("levels, phases, expected", [
    ([1, 2, 3, 4, 5], 5, [[1], [2], [3], [4], [5]]),
    ([1, 2, 3, 4, 5, 6], 3, [[1, 2], [3, 4], [5, 6]]),
    ([1, 2, 3, 4, 5], 2, [[1, 2, 3], [4, 5]]),
    ([1, 3], 4, [[1], [1], [3], [3]]),
])
def test_easy_to_hard_bands(levels, phases, expected):
    policy = make_policy("easy_to_hard")
    got = [list(policy.choose(p, state(levels=levels, n_phases=phases)).levels) for p in range(phases)]
    assert got == expected


def test_easy_to_hard_cumulative_and_errors():
    policy = make_policy("easy_to_hard", cumulative=True)
    got = [policy.choose(p, state(levels=[3, 1, 2], n_phases=3)).levels for p in range(3)]
    assert got == [(1,), (1, 2), (1, 2, 3)]
    with pytest.raises(ValueError, match="no levels"):
        policy.choose(0, state(n_phases=3))


def test_unknown_policy_and_parameters():
    with pytest.raises(ValueError, match="unknown selection policy 'best'"):
        make_policy("best")
    with pytest.raises(ValueError, match="bad parameters"):
        make_policy("all", seed=1)


# --------------------------------------------------------------------------- IOA pieces
def test_module_gaps():
    gaps = select.module_gaps({"add": 0.9, "rate": 0.2, "odd": 0.0}, {"add": 1.0, "rate": 0.8, "odd": 0.0})
    assert gaps["add"]["gap"] == pytest.approx(0.1) and not gaps["add"]["deficient"]
    assert gaps["rate"]["gap"] == pytest.approx(0.75) and gaps["rate"]["deficient"]
    assert gaps["odd"]["gap"] == 0.0  # the teacher cannot do it either


def test_thresholds_hold_at_their_value_despite_float_rounding():
    # 14 of 20 items against a perfect teacher: the gap is 1.0 - 0.7 = 0.30000000000000004, exactly tau_gap
    gaps = select.module_gaps({"add": 0.7, "rate": 0.65}, {"add": 1.0, "rate": 1.0}, tau_gap=0.3)
    assert not gaps["add"]["deficient"] and gaps["rate"]["deficient"]
    # P_S 0.9 and 0.6 are exactly max_range = 0.3 apart: one group
    assert select.split_by_score(["add", "rate"], {"add": 0.9, "rate": 0.6}, max_range=0.3) == [["rate", "add"]]


def test_topological_layers():
    graph = {"multiply": ["add"], "divide": ["multiply"], "percent": ["multiply", "divide"], "rate": ["divide"]}
    assert select.topological_layers(["add", "multiply", "divide", "percent", "rate"], graph) == [
        ["add"], ["multiply"], ["divide"], ["percent", "rate"]]
    # prerequisites outside the targets count as met
    assert select.topological_layers(["percent", "rate"], graph) == [["percent", "rate"]]
    # ... but a target another depends on through them comes first: rate needs divide needs multiply needs add
    assert select.topological_layers(["add", "rate"], graph) == [["add"], ["rate"]]
    with pytest.raises(ValueError, match="cycle among \\['a', 'b'\\]"):
        select.topological_layers(["a", "b", "c"], {"a": ["b"], "b": ["a"]})


def test_zpd_bound_splits_a_layer_by_score():
    student = {"add": 0.2, "x": 0.22, "y": 0.7, "z": 0.75}
    assert select.zpd_ok(["add"], ["x"], student, 0.15)  # 0.02 <= 0.03
    assert not select.zpd_ok(["add"], ["x", "y", "z"], student, 0.15)
    stages, violations = select.organize(["add", "x", "y", "z"], {"x": ["add"], "y": ["add"], "z": ["add"]},
                                         student, tau_zpd=0.15, max_range=0.3)
    assert stages == [["add"], ["x"], ["y", "z"]]
    assert violations == ["stage 1 -> 2: mean P_S 0.220 -> 0.725"]  # reported, not hidden


def test_severity_and_top_m_targets():
    gaps = select.module_gaps({"add": 0.95, "multiply": 0.3, "divide": 0.2, "rate": 0.1, "lone": 0.1},
                              {k: 1.0 for k in ("add", "multiply", "divide", "rate", "lone")})
    sev = select.severity(gaps, {"multiply": ["add"], "divide": ["multiply"], "rate": ["divide"]}, alpha=0.7)
    assert sev["rate"] == pytest.approx(0.7 * 0.9 + 0.3 * 0.5) and sev["lone"] == pytest.approx(0.7 * 0.9)
    assert select.top_targets(gaps, sev, 0.25) == ["rate"]  # m = ceil(0.25 x 4 deficient) = 1, the most severe
    # connectivity counts: divide (gap 0.8, in the graph) before lone (gap 0.9, no neighbours)
    assert select.top_targets(gaps, sev, 0.5) == ["rate", "divide"]
    assert select.top_targets(gaps, sev, 0.5, exclude=["rate"]) == ["divide", "multiply"]


def test_mastery_gate_bound_and_ceiling():
    teacher, items = {"a": 1.0, "b": 0.5}, {"a": 20, "b": 20}
    # 17/20 against a target of 0.9: not shown below it (upper bound), not shown at it (lower bound)
    up = select.mastery_gate({"a": 0.85, "b": 0.5}, teacher, items, ["a", "b"], tau_mastery=0.9, ceiling=1.0,
                             confidence=0.9, bound="upper")
    low = select.mastery_gate({"a": 0.85, "b": 0.5}, teacher, items, ["a", "b"], tau_mastery=0.9, ceiling=1.0,
                              confidence=0.9, bound="lower")
    assert up["passed"] and not low["passed"] and up["modules"]["b"]["target"] == pytest.approx(0.45)
    assert not select.mastery_gate({"a": 0.5, "b": 0.5}, teacher, items, ["a"], tau_mastery=0.9, ceiling=1.0,
                                   confidence=0.9)["passed"]
    capped = select.mastery_gate({"a": 0.6, "b": 0.5}, teacher, items, ["a"], tau_mastery=0.9, ceiling=0.6,
                                 confidence=0.9, bound="lower")
    assert capped["modules"]["a"]["target"] == 0.6 and not capped["passed"]  # the ceiling caps the target
    assert select.wilson_bound(0, 0, 0.9, "upper") == 1.0 and select.wilson_bound(20, 20, 0.9, "lower") < 1.0
    # without item counts the point estimate meets the target
    assert not select.mastery_gate({"a": 0.85}, teacher, {}, ["a"], tau_mastery=0.9, ceiling=1.0, confidence=0.9)["passed"]


TEACHER = {"add": 1.0, "multiply": 1.0, "divide": 1.0, "rate": 1.0}
GRAPH = {"multiply": ["add"], "divide": ["multiply"], "rate": ["divide"]}


def at(ps, phases=10):
    return state(student_scores=ps, teacher_scores=TEACHER, prerequisites=GRAPH, n_phases=phases,
                 module_items={k: 20 for k in TEACHER})


def test_ioa_walks_stages_with_gate_remediation_plateau_and_resumes():
    params = dict(tau_zpd=10.0, target_share=1.0, max_remedial_rounds=2, plateau_rounds=1, remedial_budget_share=1.0)
    policy = make_policy("ioa", **params)
    c0 = policy.choose(0, at({"add": 0.95, "multiply": 0.3, "divide": 0.2, "rate": 0.1}))
    assert c0.modules == ("multiply",) and c0.stage == 0 and c0.remedial is None  # add has no gap
    c1 = policy.choose(1, at({"add": 0.95, "multiply": 0.5, "divide": 0.2, "rate": 0.1}))
    assert "remedial round 1" in c1.reason and c1.remedial == ("multiply", "add")  # weak module, then prerequisites
    c2 = policy.choose(2, at({"add": 0.95, "multiply": 0.5, "divide": 0.2, "rate": 0.1}))  # no progress
    assert c2.modules == ("divide",) and "plateau" in c2.reason and policy.plan["not_mastered"] == ["multiply"]
    saved = json.loads(json.dumps(policy.state_dict()))
    c3 = policy.choose(3, at({"add": 0.95, "multiply": 0.5, "divide": 0.8, "rate": 0.1}))
    assert c3.modules == ("rate",) and "mastered" in c3.reason  # 16/20: not shown below the 0.9 target
    assert "re-diagnosis; targets ['rate']" in c3.reason  # the Identifier runs again between stages
    resumed = make_policy("ioa", **params)
    resumed.load_state_dict(saved)
    assert resumed.choose(3, at({"add": 0.95, "multiply": 0.5, "divide": 0.8, "rate": 0.1})) == c3
    c4 = policy.choose(4, at({"add": 0.95, "multiply": 0.5, "divide": 0.9, "rate": 0.95}))
    # the re-diagnosis leaves out modules mastered or flagged not mastered, so only consolidation is left
    assert "re-diagnosis" in c4.reason and "consolidation" in c4.reason and set(c4.modules) == set(TEACHER)
    assert [e["outcome"] for e in policy.plan["log"]] == ["remedial round 1", "not mastered (plateau: no progress "
                                                          ">= 0.05 in 1 round(s))", "mastered", "mastered"]


def test_ioa_targets_the_most_severe_and_caps_remediation_at_a_share_of_the_budget():
    # prerequisites outside the targets count as met here (see the next test for the default)
    policy = make_policy("ioa", target_share=0.25, remedial_budget_share=0.5, prerequisites_first=False)
    c0 = policy.choose(0, at({"add": 0.95, "multiply": 0.3, "divide": 0.2, "rate": 0.1}, phases=3))
    assert c0.modules == ("rate",)  # top-1 of three deficient modules by severity
    c1 = policy.choose(1, at({"add": 0.95, "multiply": 0.3, "divide": 0.2, "rate": 0.3}, phases=3))
    assert c1.remedial == ("rate", "divide")  # 1 remedial phase <= 0.5 x 2 phases left
    c2 = policy.choose(2, at({"add": 0.95, "multiply": 0.3, "divide": 0.2, "rate": 0.6}, phases=3))
    assert c2.remedial is None and "remediation budget" in c2.reason and "rate" in policy.plan["not_mastered"]
    assert c2.modules == ("divide",)  # re-diagnosis: the next most severe module


def test_deficient_prerequisites_join_the_targets_and_are_taught_first():
    gaps = select.module_gaps({"add": 0.95, "multiply": 0.3, "divide": 0.2, "rate": 0.1},
                              {k: 1.0 for k in ("add", "multiply", "divide", "rate")})
    # rate needs divide needs multiply needs add: the deficient ones along the chain, not add (no gap)
    assert select.deficient_prerequisites(["rate"], gaps, GRAPH) == ["divide", "multiply"]
    assert select.deficient_prerequisites(["rate"], gaps, GRAPH, exclude=["multiply"]) == ["divide"]
    assert select.deficient_prerequisites(["multiply"], gaps, GRAPH) == []
    policy = make_policy("ioa", target_share=0.25, remedial_budget_share=0.5)
    c0 = policy.choose(0, at({"add": 0.95, "multiply": 0.3, "divide": 0.2, "rate": 0.1}, phases=6))
    # Eq. 5 picks rate; its deficient prerequisites come before it, one layer each
    assert c0.modules == ("multiply",) and policy.plan["stages"] == [["multiply"], ["divide"], ["rate"]]
    assert "deficient prerequisites among them: ['divide', 'multiply']" in c0.reason
    assert policy.plan["diagnosis"]["targets"] == ["rate", "divide", "multiply"]
    c1 = policy.choose(1, at({"add": 0.95, "multiply": 0.95, "divide": 0.2, "rate": 0.1}, phases=6))
    # multiply mastered: the Identifier runs again; rate is the target again, divide its one deficient prerequisite
    assert c1.modules == ("divide",) and "mastered" in c1.reason and policy.plan["mastered"] == ["multiply"]


def test_ioa_without_gaps_trains_on_everything_and_checks_inputs():
    scores = {"add": 0.9, "rate": 0.9}
    choice = make_policy("ioa").choose(0, state(student_scores=scores, teacher_scores=scores))
    assert choice.modules == ("add", "rate") and "no module left with a gap" in choice.reason
    with pytest.raises(ValueError, match="no per-module teacher scores"):
        make_policy("ioa").choose(0, state(student_scores=scores))
    with pytest.raises(ValueError, match="without probe scores: \\['percent'\\]"):
        make_policy("ioa").choose(0, state(student_scores=scores, teacher_scores=scores,
                                           prerequisites={"rate": ["percent"]}))
    fixed = make_policy("ioa", dataset="prose").choose(0, state(student_scores=scores, teacher_scores=scores))
    assert fixed.weights == {"prose": 1.0, "equations": 0.0, "selfcheck": 0.0}
