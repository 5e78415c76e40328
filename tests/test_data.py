"""Problem loaders on the real files, malformed rows, the data-directory errors, caching, lab splits."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from syllabus.data import DataError, ProblemSet, humaneval_file, load_from_params, load_problems
from syllabus.params import LabTask, load_profile
from syllabus.runs import hash_file


@pytest.mark.parametrize("source,split,rows", [
    ("gsm8k", "train", 7473), ("gsm8k", "test", 1319), ("math", "test", 5000), ("math500", "test", 500),
])
def test_benchmark_files_load_completely(data_dir, source, split, rows):
    problems = load_problems(source, split, data_dir=data_dir)
    assert isinstance(problems, ProblemSet) and len(problems) == rows
    assert problems.meta["n_skipped"] == 0 and problems.meta["skipped_rows"] == []
    assert problems.meta["sha256"] == hash_file(problems.meta["path"])
    assert len({p.id for p in problems}) == rows
    assert all(p.text and p.answer and p.solution for p in problems)


def test_gsm8k_fields(data_dir):
    first = load_problems("gsm8k", "train", data_dir=data_dir)[0]
    assert first.task == "gsm8k" and first.answer == "72" and first.solution.endswith("#### 72")
    assert first.text.startswith("Natalia sold clips")
    assert first.level == 2  # two reasoning lines before '####'
    levels = [p.level for p in load_problems("gsm8k", "test", data_dir=data_dir)]
    assert min(levels) >= 1 and max(levels) <= 8 and len(set(levels)) >= 5


def test_math_fields(data_dir):
    problems = load_problems("math", "test", data_dir=data_dir)
    assert {p.module for p in problems} == {"Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra",
                                           "Number Theory", "Prealgebra", "Precalculus"}
    assert {p.level for p in problems} <= {1, 2, 3, 4, 5, None}
    assert sum(p.level is not None for p in problems) >= 4990
    nested = next(p for p in problems if p.answer.count("{") >= 2)
    assert nested.answer.count("{") == nested.answer.count("}")  # nested braces kept whole
    assert problems[0].answer == "2" and problems[0].level == 3


def test_math500_fields(data_dir):
    problems = load_problems("math500", data_dir=data_dir)
    assert all(isinstance(p.level, int) and 1 <= p.level <= 5 for p in problems)
    assert problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and problems[0].module == "Precalculus"
    texts = {p.text for p in load_problems("math", data_dir=data_dir)}
    assert sum(p.text in texts for p in problems) == 500  # MATH-500 is a subset of the MATH test file


def test_humaneval_comes_from_the_package():
    problems = load_problems("humaneval")
    assert len(problems) == 164 and problems.meta["path"] == str(humaneval_file())
    first = problems[0]
    assert first.id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert first.tests.rstrip().endswith("check(has_close_elements)") and "def check(" in first.tests
    assert first.text.startswith("from typing import List")


def _write_jsonl(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_malformed_rows_are_reported_with_file_and_line_and_counted(tmp_path):
    good = json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"})
    _write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [
        good,
        "{not json",
        json.dumps({"question": "No answer field"}),
        json.dumps({"question": "No final answer", "answer": "it is five"}),
        json.dumps(["a", "list"]),
        good.replace("2 + 3", "1 + 1").replace("#### 5", "#### 2"),
    ])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problems = load_problems("gsm8k", "test", data_dir=tmp_path)
    assert len(problems) == 2 and [p.answer for p in problems] == ["5", "2"]
    assert problems.meta["n_skipped"] == 4
    assert [row["line"] for row in problems.meta["skipped_rows"]] == [2, 3, 4, 5]
    assert "'answer'" in problems.meta["skipped_rows"][1]["reason"]
    messages = [str(w.message) for w in caught]
    assert any(f"{tmp_path / 'gsm8k' / 'test.jsonl'}:2:" in m for m in messages)
    assert len([m for m in messages if "skipped malformed row" in m]) == 4


def test_without_hub_or_data_dir_the_error_names_both(monkeypatch, tmp_path):
    monkeypatch.delenv("SYLLABUS_DATA_DIR", raising=False)
    with pytest.raises(DataError) as info:
        load_problems("gsm8k", "test")
    message = str(info.value)
    assert "data.hub.gsm8k" in message and "data.data_dir" in message and "SYLLABUS_DATA_DIR" in message
    with pytest.raises(DataError, match=f"{tmp_path}.*has no gsm8k/test.jsonl"):
        load_problems("gsm8k", "test", data_dir=tmp_path)


def test_environment_variable_is_the_fallback(monkeypatch, data_dir):
    monkeypatch.setenv("SYLLABUS_DATA_DIR", str(data_dir))
    assert len(load_problems("math500", limit=7)) == 7


def test_unreachable_hub_falls_back_to_the_data_directory(data_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="unavailable"):
        problems = load_problems("gsm8k", "test", data_dir=data_dir, hub_id="openai/gsm8k:main", limit=3)
    assert len(problems) == 3 and problems.meta["path"].endswith("gsm8k/test.jsonl")


def test_loading_is_cached_and_notices_changes(tmp_path):
    path = tmp_path / "gsm8k" / "test.jsonl"
    _write_jsonl(path, [json.dumps({"question": "q1", "answer": "#### 1"})])
    a = load_problems("gsm8k", "test", data_dir=tmp_path)
    b = load_problems("gsm8k", "test", data_dir=tmp_path)
    assert a[0] is b[0]  # parsed once
    _write_jsonl(path, [json.dumps({"question": "q1", "answer": "#### 1"}), json.dumps({"question": "q2",
                                                                                       "answer": "#### 2"})])
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock resolution
    assert [p.answer for p in load_problems("gsm8k", "test", data_dir=tmp_path)] == ["1", "2"]


def test_lab_splits_follow_the_profile_and_are_disjoint():
    task = LabTask(max_steps=2)
    sizes = {"pool": 50, "probe": 10, "heldout": 20}
    splits = {s: load_problems("lab", s, lab_task=task, lab_sizes=sizes, seed=4) for s in ("pool", "probe", "heldout")}
    assert [len(splits[s]) for s in ("pool", "probe", "heldout")] == [50, 10, 20]
    texts = [{p.text for p in ps} for ps in splits.values()]
    assert len(set().union(*texts)) == 80
    assert all(p.level <= 2 for ps in splits.values() for p in ps)
    assert load_problems("lab", "probe", lab_task=task, lab_sizes=sizes, seed=4) == splits["probe"]
    assert load_problems("lab", "probe", lab_task=task, lab_sizes=sizes, seed=5) != splits["probe"]


def test_load_from_params_uses_the_profile():
    profile = load_profile("tiny")
    pool = load_from_params(profile, "lab", "pool")
    assert len(pool) == profile.data.n_pool and pool.meta["seed"] == profile.seed


@pytest.mark.parametrize("source,split,match", [
    ("gsm9k", "test", "unknown problem source"), ("math", "train", "no split 'train'"),
    ("humaneval", "train", "only the 'test' split"), ("lab", "test", "lab has splits"),
])
def test_bad_requests_fail_clearly(source, split, match, data_dir):
    with pytest.raises(DataError, match=match):
        load_problems(source, split, data_dir=data_dir)
