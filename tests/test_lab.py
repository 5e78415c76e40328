"""The lab generator and the lab teachers: property tests (hypothesis) and reproducibility."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syllabus import lab
from syllabus.params import LAB_MODULES
from syllabus.prompts import question_prompt
from syllabus.verify import extract_answer, verify

module_sets = st.lists(st.sampled_from(lab.MODULES), min_size=1, max_size=7, unique=True)
step_ranges = st.tuples(st.integers(1, 3), st.integers(0, 2)).map(lambda t: (t[0], min(3, t[0] + t[1])))


def _fingerprint(problems) -> str:
    return hashlib.sha256(json.dumps([p.to_dict() for p in problems], sort_keys=True).encode()).hexdigest()


def test_modules_match_params_and_prerequisites_form_a_dag():
    assert lab.MODULES == LAB_MODULES
    order = lab.topological_order()
    assert sorted(order) == sorted(lab.MODULES)
    for module, prereqs in lab.PREREQUISITES.items():
        assert module not in lab.ancestors(module), f"cycle through {module}"
        for p in prereqs:
            assert order.index(p) < order.index(module)
    assert lab.topological_order(["percent", "add"]) == ["add", "percent"]
    with pytest.raises(ValueError, match="unknown lab modules"):
        lab.topological_order(["fractions"])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), modules=module_sets, steps=step_ranges,
       max_operand=st.integers(20, 60))
def test_problems_have_integer_answers_and_verified_gold_solutions(seed, modules, steps, max_operand):
    lo, hi = steps
    problems = lab.generate_problems(12, seed, modules=modules, min_steps=lo, max_steps=hi, max_operand=max_operand)
    assert len({p.id for p in problems}) == len(problems) == len({p.text for p in problems})
    for p in problems:
        assert p.task == "lab" and p.source == "lab"
        assert str(int(p.answer)) == p.answer and int(p.answer) >= 1
        assert p.solution.endswith(f"#### {p.answer}")
        assert verify(p, p.solution), (p.text, p.solution)
        assert p.module in modules and lo <= p.level <= hi
        steps_meta = p.metadata["steps"]
        assert len(steps_meta) == p.level and steps_meta[-1]["module"] == p.module
        assert all(s["module"] in modules for s in steps_meta)
        value = p.metadata["start"]
        for s in steps_meta:  # the structured steps reproduce the arithmetic
            assert lab.apply_step(s, value) == s["result"]
            value = s["result"]
        assert value == int(p.answer)
        assert json.loads(json.dumps(p.metadata)) == p.metadata
        assert (p.text + p.solution).isascii()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), modules=module_sets)
def test_same_seed_same_problems_other_seed_other_problems(seed, modules):
    a = lab.generate_problems(20, seed, modules=modules)
    b = lab.generate_problems(20, seed, modules=modules)
    c = lab.generate_problems(20, seed + 1, modules=modules)
    assert a == b
    assert [p.text for p in a] != [p.text for p in c]


def test_problems_do_not_depend_on_the_hash_seed():
    code = ("import hashlib, json; from syllabus import lab; "
            "ps = lab.generate_problems(50, 7); "
            "print(hashlib.sha256(json.dumps([p.to_dict() for p in ps], sort_keys=True).encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": h, "PYTHONPATH": os.pathsep.join(sys.path)}
                           ).stdout.strip() for h in ("1", "2")}
    assert outs == {_fingerprint(lab.generate_problems(50, 7))}


def test_default_problems_are_small_and_balanced():
    problems = lab.generate_problems(700, 0)
    words = [len(p.text.split()) for p in problems]
    assert 15 <= sum(words) / len(words) <= 45
    per_module = {m: sum(p.module == m for p in problems) for m in lab.MODULES}
    assert min(per_module.values()) >= 60, per_module
    assert max(int(p.answer) for p in problems) <= 20 * lab.MAX_VALUE_FACTOR


def test_draw_splits_are_disjoint_and_pretrain_can_exclude_them():
    splits = lab.draw_splits({"pool": 300, "probe": 60, "heldout": 100}, seed=3, max_steps=1, max_operand=6)
    texts = [set(p.text for p in ps) for ps in splits.values()]
    assert sum(len(t) for t in texts) == len(set().union(*texts)) == 460
    assert all(p.id.startswith("lab-heldout-") for p in splits["heldout"])
    held = {p.text for p in splits["heldout"]}
    corpus = lab.pretrain_corpus(200, 11, max_steps=1, max_operand=6, exclude=held)
    assert len(corpus) == 200
    for text in corpus:
        assert text.startswith("Question: ") and "\nAnswer: " in text
        question = text.split("\nAnswer:")[0].removeprefix("Question: ")
        assert question not in held
        assert extract_answer("lab", text) is not None


def test_impossible_requests_fail_clearly():
    with pytest.raises(ValueError, match="min_steps"):
        lab.generate_problems(3, 0, min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="unknown lab modules"):
        lab.generate_problems(3, 0, modules=["calculus"])
    with pytest.raises(RuntimeError, match="distinct lab problems"):
        lab.generate_problems(5000, 0, modules=["add"], max_steps=1, max_operand=3)


# --------------------------------------------------------------------------- lab teachers
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), style=st.sampled_from(lab.STYLES))
def test_error_free_traces_verify_and_slipped_traces_do_not(seed, style):
    problem = lab.generate_problems(1, seed)[0]
    rng = random.Random(seed)
    if style != "sloppy":
        good = lab.write_trace(problem, style, error_rate=0.0, rng=rng)
        assert verify(problem, good), good
    bad = lab.write_trace(problem, style, error_rate=1.0, rng=rng)
    assert not verify(problem, bad), bad
    assert bad.rsplit("\n", 1)[1].startswith("#### ")


def test_styles_are_distinct():
    problem = next(p for p in lab.generate_problems(50, 1) if p.level == 3)
    traces = {s: lab.write_trace(problem, s, error_rate=0.0, rng=random.Random(0)) for s in ("equations", "prose",
                                                                                         "selfcheck")}
    assert len(set(traces.values())) == 3
    assert len(traces["equations"]) < len(traces["prose"]) < len(traces["selfcheck"])
    assert "Check:" in traces["selfcheck"] and "Step 1:" in traces["prose"] and "Step" not in traces["equations"]


@pytest.mark.parametrize("style,error_rate,low,high", [
    ("prose", 0.0, 0.0, 0.0), ("equations", 0.25, 0.18, 0.32), ("sloppy", 0.0, 0.33, 0.47), ("selfcheck", 1.0, 1.0, 1.0),
])
def test_error_rate_is_respected(style, error_rate, low, high):
    problems = lab.generate_problems(600, 5)
    rng = random.Random(9)
    wrong = sum(not verify(p, lab.write_trace(p, style, error_rate=error_rate, rng=rng)) for p in problems)
    assert low <= wrong / len(problems) <= high


def test_write_trace_rejects_unknown_style_and_non_lab_problems():
    problem = lab.generate_problems(1, 0)[0]
    with pytest.raises(ValueError, match="style"):
        lab.write_trace(problem, "poetry", error_rate=0, rng=random.Random(0))
    from syllabus.records import Problem

    with pytest.raises(ValueError, match="metadata"):
        lab.write_trace(Problem("x", "gsm8k", "gsm8k", "q", "1"), "prose", error_rate=0, rng=random.Random(0))


def test_pretrain_text_uses_the_one_prompt_format():
    text = lab.pretrain_corpus(1, 0)[0]
    problem = lab.generate_problems(1, 0, id_prefix="lab-pretrain")[0]
    assert text == question_prompt(problem.text) + " " + problem.solution


def test_main_modules_fix_the_last_step_and_keep_the_earlier_steps_of_the_data():
    probe = lab.generate_problems(40, seed=3, main_modules=["divide"], min_steps=2, max_steps=2, max_operand=10,
                                  max_value=50)
    assert {p.module for p in probe} == {"divide"}
    earlier = {s["module"] for p in probe for s in p.metadata["steps"][:-1]}
    # earlier steps come from divide's prerequisites as in the data, not only divide itself
    assert earlier <= lab.ancestors("divide") | {"divide"} and len(earlier) >= 3
    only = lab.generate_problems(40, seed=3, modules=["divide"], min_steps=2, max_steps=2, max_operand=10, max_value=50)
    assert {s["module"] for p in only for s in p.metadata["steps"]} == {"divide"}
    # the default draw is unchanged by the option
    assert lab.generate_problems(5, seed=1) == lab.generate_problems(5, seed=1, main_modules=None)
    with pytest.raises(ValueError, match="main_modules must be a non-empty subset"):
        lab.generate_problems(5, seed=1, modules=["add"], main_modules=["divide"])


def test_generate_problems_up_to_returns_every_distinct_problem_when_the_space_is_small():
    settings = dict(modules=["divide"], min_steps=1, max_steps=1, max_operand=4, max_value=20)
    with pytest.raises(RuntimeError, match="distinct lab problems"):
        lab.generate_problems(5000, 0, **settings)
    found = lab.generate_problems(5000, 0, up_to=True, **settings)
    assert 0 < len(found) < 5000 and len({p.text for p in found}) == len(found)
    assert found[:10] == lab.generate_problems(10, 0, **settings)  # the same draws, stopped later
