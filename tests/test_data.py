"""Problem loaders on the fixture and full files, malformed rows, the four places data comes from, caching, lab splits."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import datasets
import pytest

from syllabus import params
from syllabus.data import (HUB_IDS, LOCAL_FILES, DataError, ProblemSet, humaneval_file, load_from_params,
                           load_model_solutions, load_problems)
from syllabus.params import LabTask, load_profile
from syllabus.runs import hash_file

MATH_SUBJECTS = {"Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory",
                 "Prealgebra", "Precalculus"}


FIXTURE_ROWS = {("gsm8k", "train"): 40, ("gsm8k", "test"): 40, ("math", "test"): 60, ("math500", "test"): 40}
FULL_ROWS = {("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math", "test"): 5000, ("math500", "test"): 500}


def _loads_completely(directory, source, split, rows):
    problems = load_problems(source, split, data_dir=directory)
    assert isinstance(problems, ProblemSet) and len(problems) == rows
    assert problems.meta["n_skipped"] == 0 and problems.meta["skipped_rows"] == []
    assert problems.meta["sha256"] == hash_file(problems.meta["path"])
    assert problems.meta["path"] == str((directory / LOCAL_FILES[(source, split)]).resolve())
    assert len({p.id for p in problems}) == rows
    assert all(p.text and p.answer and p.solution for p in problems)


@pytest.mark.parametrize("source,split", sorted(FIXTURE_ROWS))
def test_fixture_files_load_completely(data_dir, source, split):
    _loads_completely(data_dir, source, split, FIXTURE_ROWS[(source, split)])


@pytest.mark.parametrize("source,split", sorted(FULL_ROWS))
def test_full_benchmark_files_load_completely(full_data_dir, source, split):
    _loads_completely(full_data_dir, source, split, FULL_ROWS[(source, split)])


def test_gsm8k_fields(data_dir):
    first = load_problems("gsm8k", "train", data_dir=data_dir)[0]
    assert first.task == "gsm8k" and first.answer == "72" and first.solution.endswith("#### 72")
    assert first.text.startswith("Natalia sold clips")
    assert first.level == 2  # two reasoning lines before '####'
    levels = [p.level for p in load_problems("gsm8k", "test", data_dir=data_dir)]
    assert min(levels) >= 1 and max(levels) <= 8 and len(set(levels)) >= 5


def test_math_fields(data_dir):
    problems = load_problems("math", "test", data_dir=data_dir)
    assert {p.module for p in problems} == MATH_SUBJECTS
    assert {p.level for p in problems} <= {1, 2, 3, 4, 5}
    nested = next(p for p in problems if p.answer.count("{") >= 2)
    assert nested.answer.count("{") == nested.answer.count("}")  # nested braces kept whole
    assert problems[0].answer == "2" and problems[0].level == 3


def test_full_math_levels_and_subjects(full_data_dir):
    problems = load_problems("math", "test", data_dir=full_data_dir)
    assert {p.module for p in problems} == MATH_SUBJECTS
    assert {p.level for p in problems} <= {1, 2, 3, 4, 5, None}
    assert sum(p.level is not None for p in problems) >= 4990


@pytest.mark.parametrize("which", ["fixture", "full"])
def test_math500_fields_and_every_problem_is_in_math(which, request):
    directory = request.getfixturevalue("data_dir" if which == "fixture" else "full_data_dir")
    problems = load_problems("math500", data_dir=directory)
    assert all(isinstance(p.level, int) and 1 <= p.level <= 5 for p in problems)
    assert problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and problems[0].module == "Precalculus"
    texts = {p.text for p in load_problems("math", data_dir=directory)}
    assert all(p.text in texts for p in problems)  # MATH-500 is a subset of the MATH test file


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


def test_a_data_file_that_is_not_utf8_names_the_byte_offset_and_the_fix(tmp_path):
    good = json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n"
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(good.encode() * 2000 + b'{"question": "Caf\xe9?", "answer": "#### 1"}\n')  # past a read chunk
    offset = len(good.encode()) * 2000 + len('{"question": "Caf')
    with pytest.raises(DataError, match=rf"test\.jsonl: not UTF-8: byte 0xe9 at byte offset {offset}, line 2001; "
                                        "re-save it as UTF-8$"):
        load_problems("gsm8k", "test", data_dir=tmp_path)


class HubStandIn:
    """Stands in for ``datasets.load_dataset`` (no hub is reachable here): serves rows from a local
    file as a real ``datasets.Dataset``, or fails as an unreachable hub does; records every call."""

    def __init__(self, rows_file=None):
        self.rows_file, self.calls = rows_file, []

    def __call__(self, name, config=None, split=None, **kwargs):
        self.calls.append((name, config, split))
        if self.rows_file is None:
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")
        rows = [json.loads(line) for line in self.rows_file.read_text().splitlines()]
        if "type" in rows[0]:  # MATH: one config per subject
            rows = [r for r in rows if r["type"].lower().replace(" & ", "_and_").replace(" ", "_") == config]
        return datasets.Dataset.from_list(rows)


def _copy(data_dir, relative, folder):
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(data_dir / relative, folder / relative)
    return folder


def test_data_is_looked_for_in_four_places_in_order(data_dir, tmp_path, monkeypatch):
    relative = "gsm8k/test.jsonl"
    given, env, shared = (_copy(data_dir, relative, tmp_path / name) for name in ("given", "env", "shared"))
    monkeypatch.setattr(params, "SHARED_DATA_DIR", shared)
    monkeypatch.setenv("SYLLABUS_DATA_DIR", str(env))
    hub = HubStandIn(data_dir / relative)
    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert load_problems("gsm8k", "test", data_dir=given).meta["path"] == str(given / relative)
    assert load_problems("gsm8k", "test").meta["path"] == str(env / relative)
    monkeypatch.delenv("SYLLABUS_DATA_DIR")
    assert load_problems("gsm8k", "test").meta["path"] == str(shared / relative)
    # a place that is set but lacks the file is passed over; the hub comes last
    (shared / relative).unlink()
    monkeypatch.setenv("SYLLABUS_DATA_DIR", str(tmp_path / "nowhere"))
    assert hub.calls == []
    from_hub = load_problems("gsm8k", "test", data_dir=tmp_path / "empty")
    assert hub.calls == [("openai/gsm8k", "main", "test")] and from_hub.meta["path"] == "hub:openai/gsm8k:main"
    assert [p.answer for p in from_hub] == [p.answer for p in load_problems("gsm8k", "test", data_dir=given)]
    # the profile's hub id replaces the default one; MATH comes from its subject configs, concatenated
    load_problems("gsm8k", "test", hub_id="someone/gsm8k-copy")
    assert hub.calls[-1] == ("someone/gsm8k-copy", None, "test")
    hub.rows_file = data_dir / "math/test.jsonl"
    math = load_problems("math", "test")
    assert len(math) == 60 and hub.calls[-1] == ("EleutherAI/hendrycks_math", "precalculus", "test")
    assert [c[1] for c in hub.calls[-7:]] == HUB_IDS["math"].split(":")[1].split(",")
    assert {p.module for p in math} == MATH_SUBJECTS


def test_when_no_place_has_the_data_one_error_names_all_four(tmp_path, monkeypatch):
    hub = HubStandIn()
    monkeypatch.setattr(datasets, "load_dataset", hub)
    with pytest.raises(DataError) as info:
        load_problems("gsm8k", "test")
    message = str(info.value)
    for part in ("1. data.data_dir: not set", "2. $SYLLABUS_DATA_DIR: not set",
                 f"3. ../shared/data beside the project ({params.SHARED_DATA_DIR}): does not exist",
                 "4. the hub (openai/gsm8k:main through datasets.load_dataset): ConnectionError",
                 "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set", "Fix: set data.data_dir", "export SYLLABUS_DATA_DIR"):
        assert part in message
    assert hub.calls == [("openai/gsm8k", "main", "test")]
    monkeypatch.setenv("SYLLABUS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=rf"1\. data.data_dir \({tmp_path / 'a'}\): does not exist; "
                                        rf"2\. \$SYLLABUS_DATA_DIR \({tmp_path}\): has no gsm8k/test.jsonl"):
        load_problems("gsm8k", "test", data_dir=tmp_path / "a")
    with pytest.raises(DataError, match="example_model_solutions.jsonl: tried in order"):
        load_model_solutions()


def test_environment_variable_is_a_place(monkeypatch, data_dir):
    monkeypatch.setenv("SYLLABUS_DATA_DIR", str(data_dir))
    assert len(load_problems("math500", limit=7)) == 7


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
