import pandas as pd
import pytest

from syllabus import dynamic


def test_prerequisites_lab_graph_step_chain_and_none_for_subjects():
    graph = dynamic.prerequisites(["add", "multiply", "percent", "steps-2", "steps-3", "steps-5", "Algebra"])
    assert graph["steps-2"] == [] and graph["steps-3"] == ["steps-2"] and graph["steps-5"] == ["steps-3"]
    assert graph["Algebra"] == []
    assert graph["add"] == [] and set(graph["percent"]) <= {"add", "multiply"} and graph["percent"]


def test_teacher_module_scores_and_early_policy_checks():
    raw = pd.DataFrame({"teacher": ["t", "t", "t", "u"], "module": ["steps-2", "steps-2", None, "steps-3"],
                        "correct": [True, False, True, True]})
    assert dynamic.teacher_module_scores(raw, "t") == {"steps-2": 0.5}
    assert dynamic.teacher_module_scores(raw, "u") == {"steps-3": 1.0}
    assert dynamic.teacher_module_scores(raw, "u", measurable={"steps-2"}) == {}  # the probe has no steps-3
    no_levels = {"d": pd.DataFrame({"level": [None, None]})}
    with pytest.raises(ValueError, match="easy_to_hard needs problem levels.*dynamic.policies"):
        dynamic.check_policies(["random", "easy_to_hard"], no_levels, {"steps-2": 0.5})
    with pytest.raises(ValueError, match="ioa needs problem modules"):
        dynamic.check_policies(["ioa"], no_levels, {})
    dynamic.check_policies(["random", "ioa"], no_levels, {"steps-2": 0.5})  # both servable: no error
