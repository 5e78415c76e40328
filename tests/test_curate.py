"""The stage-2 funnel steps on small hand-made cases (and one real GSM8K decontamination check)."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from syllabus import curate as C
from syllabus import overlap as O
from syllabus.adapter import adapt_text, render_step, rule_steps
from syllabus.verify import final_answer, verify
from syllabus.params import Curation
from syllabus.records import Problem, Trace


def check_hashes(problem: Problem, response: str) -> bool:
    """A small numeric checker (the last ``#### N`` equals the gold number) for the single-step tests, so that
    they show which traces a step keeps given a verdict; the end-to-end funnel test uses the real verifier."""
    found = re.findall(r"####\s*(-?[\d,]*\.?\d+)", response)
    return bool(found) and float(found[-1].replace(",", "")) == float(problem.answer)


def prob(pid: str, text: str, answer: str = "15", level: int | None = None, task: str = "gsm8k", **meta) -> Problem:
    return Problem(id=pid, task=task, source=task, text=text, answer=answer, level=level, module="add",
                   metadata=meta)


def tr(pid: str, text: str, teacher: str = "t1", sample: int = 0, **kw) -> Trace:
    return Trace(problem_id=pid, teacher=teacher, text=text, sample=sample, **kw)


GOOD = "Tom has 5 apples and buys 3 more, so he has 5 + 3 = 8. He doubles them: 8 * 2 = 16. He eats one: 16 - 1 = 15.\n#### 15"
P1 = prob("p1", "Tom has 5 apples. He buys 3 more, doubles his apples and eats one. How many apples does he have?")


# --------------------------------------------------------------------------- text
def test_normalize_text_ignores_case_spacing_and_punctuation():
    assert O.normalize_text("  Tom HAS 1,000   apples!\n") == "tom has 1000 apples"
    assert O.normalize_text("3+4=7") == O.normalize_text("3 + 4 = 7") == "3 4 7"
    assert O.text_hash("Don't stop.") == O.text_hash("dont STOP")
    assert O.text_hash("a b c") != O.text_hash("a b d")


def test_shingles_of_short_text_is_the_whole_text():
    assert O.shingles("One two", 5) == {("one", "two")}
    assert len(O.shingles("a b c d e f", 5)) == 2
    assert O.shingles("...", 5) == set()


# --------------------------------------------------------------------------- 1. format
def test_filter_format_drops_truncated_long_and_malformed_with_reasons():
    code = prob("c1", "def f(x):", task="humaneval")
    traces = [
        tr("p1", GOOD, sample=0),
        tr("p1", GOOD, sample=1, truncated=True),
        tr("p1", GOOD + " and more words" * 20, sample=2),
        tr("p1", "He has 5 + 3 = 8 apples and then 16.", sample=3),
        tr("p1", "   ", sample=4),
        tr("c1", "    return x + 1", sample=0),  # code needs no answer marker
    ]
    kept, dropped = C.filter_format(traces, [P1, code], max_tokens=60)
    assert [(t.problem_id, t.sample) for t in kept] == [("p1", 0), ("c1", 0)]
    why = {d.item: (d.step, d.reason) for d in dropped}
    assert why == {
        "p1|t1|1": ("format", "truncated"),
        "p1|t1|2": ("format", "too long"),
        "p1|t1|3": ("format", "malformed"),
        "p1|t1|4": ("format", "malformed"),
    }
    assert "words > 60" in next(d.detail for d in dropped if d.reason == "too long")


def test_filter_format_counts_with_the_given_tokenizer_callable():
    chars = len  # any callable str -> int is a tokenizer here
    kept, dropped = C.filter_format([tr("p1", GOOD)], [P1], max_tokens=50, count_tokens=chars)
    assert not kept and f"{len(GOOD)} tokens > 50" in dropped[0].detail
    kept, _ = C.filter_format([tr("p1", GOOD)], [P1], max_tokens=500, count_tokens=chars)
    assert len(kept) == 1


def test_filter_format_think_tags():
    ok = "<think>5 + 3 = 8, 8 * 2 = 16, 16 - 1 = 15</think>\n#### 15"
    traces = [tr("p1", ok, sample=0), tr("p1", GOOD, sample=1),
              tr("p1", "<think>5 + 3 = 8 <think> 15\n#### 15", sample=2),
              tr("p1", "</think>5 + 3 = 8<think>\n#### 15", sample=3)]
    kept, dropped = C.filter_format(traces, [P1], max_tokens=100, require_think_tags=True)
    assert [t.sample for t in kept] == [0]
    assert {d.item: d.detail for d in dropped} == {
        "p1|t1|1": "no <think>...</think> block",
        "p1|t1|2": "2 <think> and 0 </think> tags (need exactly one pair)",
        "p1|t1|3": "</think> comes before <think>",
    }
    # Not required: a trace without tags is fine, stray unbalanced tags are still malformed.
    kept, dropped = C.filter_format(traces, [P1], max_tokens=100, require_think_tags=False)
    assert [t.sample for t in kept] == [0, 1]


def test_unknown_problem_id_is_a_clear_error():
    with pytest.raises(C.CurationError, match="trace 'zz\\|t1\\|0' refers to problem 'zz'"):
        C.filter_format([tr("zz", GOOD)], [P1], max_tokens=100)


# --------------------------------------------------------------------------- 2. correctness
def test_filter_correct_uses_the_verifier_and_keeps_the_reason():
    traces = [tr("p1", GOOD), tr("p1", GOOD.replace("#### 15", "#### 16"), sample=1)]
    kept, dropped = C.filter_correct(traces, [P1], check_hashes)
    assert [t.sample for t in kept] == [0] and kept[0].correct is True
    assert (dropped[0].item, dropped[0].reason, dropped[0].detail) == ("p1|t1|1", "wrong answer", "gold answer '15'")


def test_a_crashing_verifier_is_reported_not_swallowed():
    def broken(problem, response):
        raise RuntimeError("sandbox gone")

    with pytest.raises(C.CurationError, match="verifier failed on trace 'p1\\|t1\\|0'.*sandbox gone"):
        C.filter_correct([tr("p1", GOOD)], [P1], broken)


# --------------------------------------------------------------------------- 3. duplicates
LONG = ("First we count the apples Tom has at the start which is five apples in the basket. "
        "Then he buys three more apples at the shop so he now has eight apples in the basket. "
        "Then he doubles them and has sixteen, and after eating one he has fifteen left. #### 15")


def test_exact_and_near_duplicates_are_dropped_keeping_the_first():
    traces = [
        tr("p1", LONG, sample=0),
        tr("p1", LONG.upper().replace(". ", " .  "), sample=1),  # same after normalisation
        tr("p1", LONG.replace("at the shop", "at the store"), sample=2),  # one word changed
        tr("p1", GOOD, sample=3),  # different
        tr("p2", LONG, sample=0),  # same text, other problem: kept at problem scope
    ]
    kept, dropped = C.dedup_traces(traces, ngram=5, threshold=0.8)
    assert [(t.problem_id, t.sample) for t in kept] == [("p1", 0), ("p1", 3), ("p2", 0)]
    why = {d.item: (d.reason, d.detail) for d in dropped}
    assert why["p1|t1|1"] == ("exact duplicate", "same normalised text as p1|t1|0")
    reason, detail = why["p1|t1|2"]
    assert reason == "near duplicate" and detail.endswith("with p1|t1|0")
    score = float(re.search(r"Jaccard ([\d.]+)", detail).group(1))
    direct = O.jaccard(O.shingles(LONG, 5), O.shingles(traces[2].text, 5))
    assert 0.8 <= score == pytest.approx(direct, abs=1e-3)
    # Dataset scope also catches the copy under another problem.
    kept, dropped = C.dedup_traces(traces, scope="dataset")
    assert ("p2", 0) not in [(t.problem_id, t.sample) for t in kept]


def test_dedup_scope_teacher_keeps_each_teachers_own_traces():
    traces = [tr("p1", LONG, "a"), tr("p1", LONG, "b"), tr("p1", LONG, "b", sample=1)]
    kept, dropped = C.dedup_traces(traces, scope="teacher")
    assert [C.trace_id(t) for t in kept] == ["p1|a|0", "p1|b|0"] and dropped[0].item == "p1|b|1"
    kept, dropped = C.dedup_traces(traces, scope="problem")
    assert [C.trace_id(t) for t in kept] == ["p1|a|0"]
    with pytest.raises(C.CurationError, match="unknown scope 'world'"):
        C.dedup_traces(traces, scope="world")


def test_dedup_decision_does_not_depend_on_input_order():
    traces = [tr("p1", LONG, sample=i) for i in range(4)] + [tr("p1", GOOD, sample=9)]
    first, _ = C.dedup_traces(traces)
    shuffled = traces[:]
    random.Random(3).shuffle(shuffled)
    second, _ = C.dedup_traces(shuffled)
    assert sorted(C.trace_id(t) for t in first) == sorted(C.trace_id(t) for t in second) == ["p1|t1|0", "p1|t1|9"]


def test_near_duplicate_threshold_is_respected():
    a, b = "one two three four five six", "one two three four five seven"
    assert O.jaccard(O.shingles(a, 3), O.shingles(b, 3)) == pytest.approx(3 / 5)
    kept, _ = C.dedup_traces([tr("p1", a), tr("p1", b, sample=1)], ngram=3, threshold=0.61)
    assert len(kept) == 2
    kept, _ = C.dedup_traces([tr("p1", a), tr("p1", b, sample=1)], ngram=3, threshold=0.6)
    assert len(kept) == 1


def test_dedup_problems_across_the_dataset():
    problems = [prob("b", P1.text.lower() + "  "), P1.__class__(**{**P1.__dict__, "id": "a"}), prob("c", "What is 2 + 2?")]
    kept, dropped = C.dedup_problems(problems)
    assert [p.id for p in kept] == ["a", "c"]
    assert dropped[0].kind == "problem" and dropped[0].detail == "same normalised text as a"


# --------------------------------------------------------------------------- 4. decontamination
EVAL = [
    prob("e1", "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
               "muffins for her friends every day with four."),
    prob("e2", "What is 7 times 8?"),
]


def test_contaminated_problem_is_dropped_with_eval_set_and_ngram():
    problems = [
        prob("dirty", "Quick one. JANET'S ducks lay 16 eggs per day; she eats three for breakfast every morning, and"
                      " then sells the rest."),
        prob("clean", "A farmer has 12 cows and buys 5 more cows at the market on Monday. How many cows now?"),
        prob("short", "what is 7 times 8"),  # under 13 words, identical to an eval item
        prob("wraps", "Bob asks: what is 7 times 8? Then he adds 2 to that number and writes down the result."),
    ]
    kept, dropped = C.decontaminate(problems, {"gsm8k": EVAL, "math": ["unrelated text"]}, n=13)
    assert [p.id for p in kept] == ["clean"]
    why = {d.item: d.detail for d in dropped}
    assert why["dirty"] == ("gsm8k:e1 (ngram 'janets ducks lay 16 eggs per day she eats three for breakfast every')")
    assert why["short"].startswith("gsm8k:e2 (contains")
    assert why["wraps"].startswith("gsm8k:e2 (contained")
    found = O.find_contamination(problems, {"gsm8k": EVAL}, n=13)
    assert [(c.problem_id, c.match) for c in found] == [("dirty", "ngram"), ("short", "contains"), ("wraps", "contained")]


def test_twelve_shared_words_are_not_a_13gram_match():
    twelve = "janets ducks lay 16 eggs per day she eats three for breakfast"
    kept, _ = C.decontaminate([prob("x", twelve + " and then sleeps all afternoon")], {"gsm8k": EVAL}, n=13)
    assert [p.id for p in kept] == ["x"]
    kept, _ = C.decontaminate([prob("x", twelve + " and then sleeps all afternoon")], {"gsm8k": EVAL}, n=12)
    assert kept == []


def test_decontamination_finds_a_reworded_copy_of_a_real_gsm8k_test_problem(data_dir):
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").open()]
    eval_set = [prob(f"test-{i}", r["question"]) for i, r in enumerate(rows)]
    copied = rows[23]["question"].upper().replace(" ", "  ")
    train = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").open()]
    pool = [prob("copy", "Here is a problem. " + copied)] + [prob(f"train-{i}", r["question"]) for i, r in enumerate(train)]
    found = O.find_contamination(pool, {"gsm8k_test": eval_set})
    assert ("copy", "gsm8k_test", "test-23") in {(c.problem_id, c.eval_set, c.eval_id) for c in found}


# --------------------------------------------------------------------------- 5. compression
def test_easy_problems_are_compressed_away():
    problems = [prob("easy", "a"), prob("edge", "b"), prob("hard", "c")]
    kept, dropped = C.compress_by_pass_rate(problems, {"easy": 0.9, "edge": 0.75, "hard": 0.0}, easy_pass_rate=0.75)
    assert [p.id for p in kept] == ["edge", "hard"]
    assert (dropped[0].item, dropped[0].reason, dropped[0].detail) == ("easy", "too easy", "student pass rate 0.90 > 0.75")
    with pytest.raises(C.CurationError, match="no student pass rate for 1 problem.*'hard'"):
        C.compress_by_pass_rate(problems, {"easy": 0.9, "edge": 0.5})
    with pytest.raises(C.CurationError, match="must lie in \\[0, 1\\]"):
        C.compress_by_pass_rate(problems, {"easy": 1.5, "edge": 0.5, "hard": 0.1})


# --------------------------------------------------------------------------- 6. diversity
def test_farthest_point_order_on_a_hand_checked_line():
    x = np.array([0.0, 1.0, 5.0, 10.0])
    d = np.abs(x[:, None] - x[None, :])
    # sums 16, 14, 14, 24 -> start at 10; farthest from {10} is 0; then 5 (min 5) beats 1 (min 1).
    assert C.farthest_point_order(d, 3) == [3, 0, 2]
    assert C.farthest_point_order(d, 9) == [0, 1, 2, 3]
    # Ties go to the lower index.
    assert C.farthest_point_order(np.ones((3, 3)) - np.eye(3), 2) == [0, 1]


def test_select_diverse_keeps_the_most_distant_traces():
    # Normalised Levenshtein: A-B .25, A-C 1, A-D .5, B-C .75, B-D .25, C-D .5
    texts = {"A": "aaaa", "B": "aaab", "C": "bbbb", "D": "abab"}
    traces = [tr("p1", t, sample=i) for i, t in enumerate(texts.values())]
    d = C.edit_distances(list(texts.values()))
    assert d[0, 1] == pytest.approx(0.25) and d[0, 2] == pytest.approx(1.0) and d[2, 3] == pytest.approx(0.5)
    kept, dropped = C.select_diverse(traces, keep_per_problem=2)
    assert sorted(t.text for t in kept) == ["aaaa", "bbbb"]  # start C (largest sum), then A
    kept, dropped = C.select_diverse(traces, keep_per_problem=3)
    assert sorted(t.text for t in kept) == ["aaaa", "abab", "bbbb"]
    assert [(d.item, d.reason) for d in dropped] == [("p1|t1|1", "not diverse")]
    assert "nearest p1|t1|0 at edit distance 0.250" in dropped[0].detail
    kept, dropped = C.select_diverse(traces + [tr("p2", "x")], keep_per_problem=4)
    assert len(kept) == 5 and not dropped
    # Per teacher: each teacher's traces of a problem are selected on their own.
    other = [tr("p1", "aaaa", "u"), tr("p1", "aaab", "u", sample=1)]
    kept, _ = C.select_diverse(traces + other, keep_per_problem=2, per_teacher=True)
    assert sorted(C.trace_id(t) for t in kept) == ["p1|t1|0", "p1|t1|2", "p1|u|0", "p1|u|1"]
    kept, _ = C.select_diverse(traces + other, keep_per_problem=2, per_teacher=False)
    assert len(kept) == 2


# --------------------------------------------------------------------------- 7. balance
def test_balance_by_level_is_seeded_and_equalises_strata():
    problems = [prob(f"a{i}", "x", level=1) for i in range(5)] + [prob("b0", "y", level=2), prob("b1", "z", level=2)]
    kept, dropped = C.balance_difficulty(problems, by="level", seed=7)
    assert sorted(p.level for p in kept) == [1, 1, 2, 2] and len(dropped) == 3
    again, _ = C.balance_difficulty(list(reversed(problems)), by="level", seed=7)
    assert sorted(p.id for p in again) == sorted(p.id for p in kept)
    assert dropped[0].reason == "balanced out" and "stratum '1' has 5 problems; sampled down to 2" in dropped[0].detail


def test_balance_by_pass_rate_band():
    problems = [prob(f"p{i}", "x") for i in range(6)]
    rates = {"p0": 0.0, "p1": 0.1, "p2": 0.2, "p3": 0.6, "p4": 1.0, "p5": 0.9}
    assert C.pass_rate_band(1.0) == "0.75-1.00" and C.pass_rate_band(0.25) == "0.25-0.50"
    kept, dropped = C.balance_difficulty(problems, by="pass_rate", seed=0, pass_rates=rates)
    bands = sorted(C.pass_rate_band(rates[p.id]) for p in kept)
    assert bands == ["0.00-0.25", "0.50-0.75", "0.75-1.00"]
    with pytest.raises(C.CurationError, match="needs the student pass rates"):
        C.balance_difficulty(problems, by="pass_rate", seed=0)


# --------------------------------------------------------------------------- 8. adapter
SLOPPY = ("<think>Okay, so let's see. Tom has 5 apples. Well, he buys 3 more, therefore 5 + 3 = 8, then 8 * 2 = 16; "
          "16 - 1 = 15.\nCheck: 15 + 1 = 16 \u2713</think>\nThe answer is 15.\n#### 15")


def test_rule_adapter_one_operation_per_step_plain_words_answer_kept():
    text, method = adapt_text(P1, SLOPPY)
    assert method == "rules"
    lines = text.splitlines()
    assert lines[-1] == "#### 15"
    assert all(re.fullmatch(rf"Step {i}: \S.*", line) for i, line in enumerate(lines[:-1], 1))
    assert lines == ["Step 1: Tom has 5 apples", "Step 2: He buys 3 more", "Step 3: 5 + 3 = 8", "Step 4: 8 * 2 = 16",
                     "Step 5: 16 - 1 = 15", "#### 15"]
    low = text.lower()
    for gone in ("okay", "let's", "well", "therefore", "check", "<think>", "\u2713", "answer is"):
        assert gone not in low
    assert check_hashes(P1, text)
    # Facts, then the operation; GSM8K calculator annotations and the closing "A: N" line handled.
    assert adapt_text(P1, GOOD)[0].splitlines()[:2] == ["Step 1: Tom has 5 apples and buys 3 more", "Step 2: He has 5 + 3 = 8"]
    gsm = "A dozen is 12 so he gets 252/12 = <<252/12=21>>21 dozen.\nA: 21"
    assert adapt_text(P1, gsm)[0] == "Step 1: A dozen is 12\nStep 2: He gets 252/12 = 21 dozen\n#### 21"


def test_structured_steps_are_rendered_when_they_agree_with_the_trace():
    steps = [{"op": "add", "operands": [5, 3], "result": 8, "words": "the apples after shopping"},
             {"op": "multiply", "operands": [8, 2], "result": 16},
             {"op": "comparison", "operands": [16, 1], "result": 15, "words": "the apples left"}]
    lab = prob("lab-1", P1.text, task="lab", steps=steps)
    text, method = adapt_text(lab, SLOPPY)
    assert method == "steps"
    assert text == ("Step 1: Find the apples after shopping: 5 + 3 = 8\nStep 2: 8 * 2 = 16\n"
                    "Step 3: Find the apples left: 16 - 1 = 15\n#### 15")
    # A wrong trace is never turned into the gold solution: the rules rewrite it (and verification fails).
    wrong, method = adapt_text(lab, SLOPPY.replace("#### 15", "#### 14"))
    assert method == "rules" and wrong.endswith("#### 14") and not check_hashes(lab, wrong)
    assert render_step({"operation": "percent", "operands": [40, 25], "result": 12}) == "percent of 40 and 25 is 12"
    assert render_step({"op": "rate", "operands": [60, 3], "result": 20}) == "60 / 3 = 20"


def test_adapt_traces_reverifies_and_keeps_reasons():
    math = prob("m1", "Compute 7 + 8.", task="math")
    code = prob("c1", "def f(x):", task="humaneval")
    traces = [tr("p1", SLOPPY), tr("p1", "Nothing useful here.", sample=1),
              tr("m1", "7 + 8 = 15, so the answer is \\boxed{15}."), tr("c1", "return x")]
    kept, dropped = C.adapt_traces(traces, [P1, math, code], check_hashes)
    assert [C.trace_id(t) for t in kept] == ["p1|t1|0|adapted"]
    assert kept[0].correct is True and kept[0].settings["adapter"] == "rules" and kept[0].teacher == "t1"
    why = {d.item: (d.reason, d.detail) for d in dropped}
    assert why["p1|t1|1"] == ("rewrite failed", "no final answer to keep")
    assert why["m1|t1|0|adapted"][0] == "wrong after rewrite"  # boxed answer, the #### checker rejects it
    assert why["c1|t1|0"][0] == "not adapted"


def test_final_answer_extraction():
    assert final_answer("so 3\n#### 1,200") == ("1,200", "####")
    assert final_answer("thus $\\boxed{\\frac{1}{2}}$.") == ("\\frac{1}{2}", "boxed")
    assert final_answer("The final answer is 42.") == ("42", "phrase")
    assert final_answer("no answer") is None
    assert rule_steps("Step 1: 2 + 2 = 4.\nStep 2: 4 * 3 = 12\n#### 12") == ["2 + 2 = 4", "4 * 3 = 12"]


# --------------------------------------------------------------------------- funnel and datasets
def test_funnel_counts_per_step_and_teacher_and_keeps_every_drop():
    funnel = C.Funnel()
    traces = [tr("p1", GOOD, "a"), tr("p1", GOOD.replace("#### 15", "#### 16"), "b"), tr("p2", GOOD, "b")]
    funnel.record("sampled", traces)
    kept, dropped = C.filter_correct(traces, [P1, prob("p2", "x")], check_hashes)
    funnel.record("correct", kept, dropped)
    tab = funnel.table()
    assert tab[["step", "teacher", "traces", "problems", "dropped"]].values.tolist() == [
        ["sampled", "a", 1, 1, 0], ["sampled", "b", 2, 2, 0], ["correct", "a", 1, 1, 0], ["correct", "b", 1, 1, 1]]
    wide = funnel.wide()
    assert wide[["step", "a", "b", "total"]].values.tolist() == [["sampled", 1, 2, 3], ["correct", 1, 1, 2]]
    assert funnel.dropped()[["item", "reason"]].values.tolist() == [["p1|b|0", "wrong answer"]]
    assert funnel.reasons()[["step", "reason", "teacher", "traces"]].values.tolist() == [["correct", "wrong answer", "b", 1]]


def test_cascade_carries_problem_drops_to_traces():
    drops = [C.Dropped("p1", "problem", "p1", None, "decontaminate", "contaminated", "gsm8k:e1")]
    kept, dropped = C.cascade([tr("p1", GOOD), tr("p2", GOOD)], drops)
    assert [t.problem_id for t in kept] == ["p2"]
    assert (dropped[0].item, dropped[0].step, dropped[0].reason) == ("p1|t1|0", "decontaminate", "contaminated")


def test_candidate_datasets_are_named_tidy_and_hashed_stably():
    problems = [prob("p1", "q1", level=1), prob("p2", "q2", level=2)]
    traces = [tr("p1", "a #### 15", "eq"), tr("p2", "b #### 15", "eq"), tr("p1", "c #### 15", "pr"),
              tr("p1", "Step 1: a\n#### 15", "eq", settings={"adapter": "rules"})]
    rates = {"p1": 0.1, "p2": 0.8}
    styles = {"eq": "equations", "pr": "prose"}
    df = C.build_candidate_datasets(problems, traces, styles=styles, pass_rates=rates, unique=False)
    names = set(df["dataset"])
    assert names == {"all", "teacher=eq", "teacher=pr", "style=equations", "style=prose", "level=1", "level=2",
                     "pass_rate=0.00-0.25", "pass_rate=0.75-1.00", "all+adapted", "teacher=eq+adapted",
                     "style=equations+adapted", "level=1+adapted", "pass_rate=0.00-0.25+adapted"}
    assert len(df[df["dataset"] == "all"]) == 3 and set(df[df["dataset"] == "all+adapted"]["adapted"]) == {True}
    for col in ("dataset", "dataset_hash", "problem_id", "teacher", "sample", "text", "question", "module", "level"):
        assert col in df.columns
    again = C.build_candidate_datasets(problems, list(reversed(traces)), styles=styles, pass_rates=rates,
                                       unique=False)
    hashes = df.groupby("dataset")["dataset_hash"].first()
    assert hashes.equals(again.groupby("dataset")["dataset_hash"].first())
    changed = C.build_candidate_datasets(problems, [traces[0].replace(text="z #### 15")] + traces[1:], unique=False)
    assert changed.groupby("dataset")["dataset_hash"].first()["all"] != hashes["all"]
    assert hashes["teacher=pr"] != hashes["teacher=eq"]
    summary = C.dataset_summary(df)
    row = summary.set_index("dataset").loc["all"]
    assert (row["rows"], row["problems"], row["teachers"], row["length_unit"]) == (3, 2, 2, "words")
    assert len(C.length_distribution(df)) == len(df)
    assert set(C.build_candidate_datasets(problems, traces, min_rows=2)["dataset"]) == {"all", "teacher=eq", "level=1"}
    # A dataset equal to an earlier one (one teacher: teacher=eq is all) is left out unless asked for.
    one = [t for t in traces if t.teacher == "eq"]
    assert "teacher=eq" not in set(C.build_candidate_datasets(problems, one)["dataset"])
    assert "teacher=eq" in set(C.build_candidate_datasets(problems, one, unique=False)["dataset"])


def test_run_funnel_end_to_end_on_a_hand_made_pool():
    problems = [
        P1,
        prob("easy", "Sam has 10 pens and gives 5 of them away to his little sister. How many pens are left?", "5"),
        prob("dirty", EVAL[0].text + " How many does she keep?", "9"),
        prob("fine", "Ana reads 4 pages a day for 3 days and then 3 more pages. How many pages did she read?", "15"),
    ]
    t = [tr("p1", GOOD, "a", 0), tr("p1", GOOD.replace("16 - 1 = 15", "16-1 = 15"), "a", 1),  # exact dup
         tr("p1", SLOPPY, "b", 0), tr("p1", LONG, "b", 1, truncated=True),
         tr("easy", "10 - 5 = 5\n#### 5", "a", 0), tr("dirty", "16 - 3 - 4 = 9\n#### 9", "a", 0),
         tr("fine", "4 * 3 = 12 and 12 + 3 = 15\n#### 15", "b", 0), tr("fine", "4 + 3 = 7\n#### 7", "b", 1)]
    cfg = Curation(max_trace_tokens=80, keep_per_problem=4, adapter=True)
    rates = {"p1": 0.25, "easy": 1.0, "dirty": 0.0, "fine": 0.5}
    out = C.run_funnel(problems, t, cfg, verify=verify, eval_sets={"gsm8k": EVAL}, pass_rates=rates)
    assert sorted(C.trace_id(x) for x in out.traces) == ["fine|b|0", "p1|a|0", "p1|b|0"]
    assert [p.id for p in out.problems] == ["p1", "fine"]
    assert all(verify(next(p for p in problems if p.id == x.problem_id), x.text) for x in out.adapted)
    assert len(out.adapted) == 3 and all(x.text.startswith("Step 1: ") for x in out.adapted)
    reasons = out.funnel.dropped().set_index("item")["reason"].to_dict()
    assert reasons["p1|b|1"] == "truncated" and reasons["fine|b|1"] == "wrong answer"
    assert reasons["p1|a|1"] == "exact duplicate" and reasons["dirty"] == "contaminated"
    assert reasons["dirty|a|0"] == "contaminated" and reasons["easy|a|0"] == "too easy"
    wide = out.funnel.wide()
    assert wide["step"].tolist() == ["sampled", "format", "correct", "dedup", "decontaminate", "compress",
                                     "diversity", "adapter"]
    assert wide["total"].tolist() == [8, 7, 6, 5, 4, 3, 3, 3]
    assert [c.problem_id for c in out.contamination] == ["dirty"]


# --------------------------------------------------------------------------- properties
from hypothesis import given, settings, strategies as st  # noqa: E402

WORDS = ["tom", "has", "5", "3", "apples", "+", "=", "8", "so", "buys", "more", "16", "15", "-"]
trace_lists = st.lists(
    st.tuples(st.sampled_from(["p1", "p2"]), st.sampled_from(["a", "b"]),
              st.lists(st.sampled_from(WORDS), min_size=0, max_size=12), st.booleans()),
    min_size=0, max_size=12,
).map(lambda rows: [tr(pid, " ".join(words) + (" #### 15" if end else ""), teacher, sample=i)
                    for i, (pid, teacher, words, end) in enumerate(rows)])
PROBLEMS = [P1, prob("p2", "Another problem about apples and pears.")]


@settings(max_examples=40, deadline=None)
@given(trace_lists, st.randoms(use_true_random=False))
def test_every_step_partitions_its_input_and_ignores_input_order(traces, rnd):
    steps = [
        lambda ts: C.filter_format(ts, PROBLEMS, max_tokens=10),
        lambda ts: C.filter_correct(ts, PROBLEMS, check_hashes),
        lambda ts: C.dedup_traces(ts, ngram=3, threshold=0.7, scope="problem"),
        lambda ts: C.select_diverse(ts, keep_per_problem=2),
        lambda ts: C.adapt_traces(ts, PROBLEMS, check_hashes),
    ]
    for step in steps:
        kept, dropped = step(traces)
        kept_ids = [C.trace_id(t).removesuffix("|adapted") for t in kept]
        dropped_ids = [d.item.removesuffix("|adapted") for d in dropped]
        assert sorted(kept_ids + dropped_ids) == sorted(C.trace_id(t) for t in traces)
        shuffled = traces[:]
        rnd.shuffle(shuffled)
        assert sorted(C.trace_id(t) for t in step(shuffled)[0]) == sorted(C.trace_id(t) for t in kept)
