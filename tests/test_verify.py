"""The one verifier: extraction cases, agreement targets on the real data, thread safety, code checks.

The real-data tests print their exceptions and disagreements (``pytest -s`` shows them);
``benchmarks/verifier_report.py`` writes the same lists to ``docs/verifier-report.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

from syllabus.data import load_model_solutions, load_problems
from syllabus.records import Problem
from syllabus.verify import check_code, extract_answer, is_correct, last_boxed, math_equal, verify


# --------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("response,expected", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("#### 1,234,567", "1234567"),
    ("The answer is $1,234.50.", "1234.5"),
    ("So the answer is 18 dollars.", "18"),
    ("Total: 45 km.\nThe answer is 45 km", "45"),
    ("The temperature drops to -12 degrees.\n#### -12", "-12"),
    ("#### \u22127", "-7"),
    ("the answer is: 0.50", "0.5"),
    ("So we get \\boxed{\\frac{3}{4}}.", "0.75"),
    ("\\boxed{\\$1,000}", "1000"),
    ("\\boxed{2/3}", "2/3"),
    ("That is 40% of the class.\n#### 40%", "40"),
    ("<think>Maybe 41? No, 42.</think>The answer is 42.", "42"),
    ("<think>I think it is 41", None),
    ("Reasoning... </think> #### 8", "8"),
    ("He had 5 - 2 = <<5-2=3>>3 left\nA: 3", "3"),
    ("12 * 3 = 36, and 36 + 4 = 40 so he pays 40.", "40"),
    ("no digits here", None),
    ("", None),
])
def test_numeric_extraction(response, expected):
    assert extract_answer("gsm8k", response) == expected


@pytest.mark.parametrize("response,gold,correct", [
    ("#### 7", "7", True), ("#### 7.00", "7", True), ("#### 3/4", "0.75", True), ("#### 8", "7", False),
    ("The answer is 1,000.", "1000", True), ("The answer is 10.", "100", False), ("#### -3", "3", False),
    ("<think>#### 7</think>#### 9", "7", False), ("<think>#### 7", "7", False), ("solution #### 5", "... #### 5", True),
])
def test_numeric_correctness(response, gold, correct):
    assert is_correct("gsm8k", response, gold) is correct
    assert is_correct("lab", response, gold) is correct


def test_last_boxed_handles_nesting_and_variants():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{\\sqrt{2}}}.") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\fbox{x+1}") == "x+1"
    assert last_boxed("$\\boxed 5$") == "5"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("nothing") is None


@pytest.mark.parametrize("response,gold,correct", [
    ("so $\\boxed{\\frac{1}{2}}$", "0.5", True),
    ("so $\\boxed{\\frac{\\sqrt{2}}{2}}$", "\\frac{1}{\\sqrt{2}}", True),
    ("$\\boxed{x^2+2x+1}$", "(x+1)^2", True),
    ("$\\boxed{x^2+1}$", "(x+1)^2", False),
    ("Final Answer: The final answer is $12$. I hope it is correct.", "12", True),
    ("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("$\\boxed{(3, \\pi)}$", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("<think>\\boxed{5}</think> so \\boxed{6}", "5", False),
])
def test_math_correctness(response, gold, correct):
    assert is_correct("math", response, gold) is correct


def test_math_verification_works_from_threads():
    """Outside the main thread math-verify's signal timeouts cannot run; a worker process does it."""
    cases = [("$\\boxed{\\frac{\\sqrt{2}}{2}}$", "\\frac{1}{\\sqrt{2}}", True), ("$\\boxed{x^2+1}$", "(x+1)^2", False)]
    with cf.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: (threading.current_thread() is threading.main_thread(),
                                           math_equal(c[1], c[0])), cases))
    assert results == [(False, True), (False, False)]


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown task"):
        is_correct("chess", "e4", "e4")


# --------------------------------------------------------------------------- real data
# Each check runs on the committed fixture subsets and, when the full data is present, on all of it.
DATA = pytest.mark.parametrize("which", ["fixture", "full"])


def _data(request, which):
    return request.getfixturevalue("data_dir" if which == "fixture" else "full_data_dir")


@DATA
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gsm8k_gold_solution_verifies(request, which, split):
    problems = load_problems("gsm8k", split, data_dir=_data(request, which))
    failures = [p.id for p in problems if not verify(p, p.solution)]
    print(f"\nGSM8K {split}: {len(failures)} of {len(problems)} gold solutions fail: {failures}")
    assert failures == []
    shifted = [p for p in problems if is_correct("gsm8k", p.solution, str(int(float(p.answer)) + 1))]
    assert shifted == []


@DATA
def test_math500_reference_solutions_verify(request, which):
    problems = load_problems("math500", data_dir=_data(request, which))
    exceptions = [(p.id, p.answer, extract_answer("math", p.solution)) for p in problems if not verify(p, p.solution)]
    print(f"\nMATH-500: {len(exceptions)} of {len(problems)} reference solutions do not verify:")
    for item in exceptions:
        print("  ", item)
    assert len(exceptions) <= 0.005 * len(problems)
    # a negative control: each solution against the next problem's answer must mostly fail
    wrong = [is_correct("math", a.solution, b.answer) for a, b in zip(problems[:100], problems[1:101])
             if a.answer != b.answer]
    assert sum(wrong) <= 2, f"{sum(wrong)} of {len(wrong)} mismatched answers accepted"


@DATA
def test_agreement_with_gsm8k_correctness_labels(request, which):
    rows = load_model_solutions(_data(request, which))
    assert len(rows) == {"fixture": 160, "full": 5276}[which]  # 4 GPT-3 models per problem
    disagreements = [r for r in rows if is_correct("gsm8k", r["solution"], r["gold"]) != r["is_correct"]]
    print(f"\nGSM8K labels: {len(rows) - len(disagreements)} of {len(rows)} agree; disagreements:")
    for r in disagreements:
        print(f"  {r['problem_id']} {r['model']} label={r['is_correct']} gold={r['gold']} "
              f"extracted={extract_answer('gsm8k', r['solution'])}")
    assert min(sum(r["is_correct"] for r in rows), sum(not r["is_correct"] for r in rows)) > 0.19 * len(rows)
    assert len(disagreements) <= 0.01 * len(rows)


# --------------------------------------------------------------------------- code
@pytest.fixture(scope="module")
def humaneval():
    return load_problems("humaneval")


def test_every_humaneval_canonical_solution_passes(humaneval):
    with cf.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: (p.id, check_code(p, p.solution)), humaneval))
    failures = [(pid, r.status, r.detail) for pid, r in results if not r.passed]
    print(f"\nHumanEval: {len(humaneval) - len(failures)} of {len(humaneval)} canonical solutions pass; {failures}")
    assert failures == []


@pytest.mark.parametrize("completion", ["", "    pass\n", "    return None\n", "    while True:\n        pass\n"])
def test_empty_or_wrong_completions_fail(humaneval, completion):
    for problem in humaneval[:3]:
        result = check_code(problem, completion, timeout_s=1.5)
        assert not result.passed and result.status in ("error", "timeout"), (problem.id, result)


def test_verify_dispatches_on_task(humaneval):
    problem = humaneval[0]
    assert verify(problem, problem.solution) and not verify(problem, "    return True\n")
    lab = Problem("lab-1", "lab", "lab", "Ava has 2 pens. How many?", "2")
    assert verify(lab, "#### 2") and not verify(lab, "#### 3")
