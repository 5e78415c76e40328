"""The local executor: independent jobs side by side in spawned workers, results (and stage tables)
the same as with one worker."""

from __future__ import annotations

import json
import os
import random

import pandas as pd
import pytest
import torch

from syllabus import correlation, executor, lab, workflow
from syllabus.runs import open_stage

torch.set_num_threads(1)

OVERRIDES = {
    "data.n_pool": 16, "data.n_probe": 4, "data.n_heldout": 8, "data.lab.n_pretrain": 120,
    "students": [{"name": "xs", "source": "lab", "warmup_steps": 4,
                  "arch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}}],
    "student_generation.max_new_tokens": 24, "correlation.sft_steps": 2, "correlation.seeds": [0, 1],
}


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_map_keeps_input_order_and_uses_other_processes_with_two_workers():
    one = executor.LocalExecutor(1).map(square_and_pid, list(range(6)))
    two = executor.LocalExecutor(2).map(square_and_pid, list(range(6)))
    assert [r for r, _ in one] == [r for r, _ in two] == [x * x for x in range(6)]
    assert {pid for _, pid in one} == {os.getpid()} and os.getpid() not in {pid for _, pid in two}
    with pytest.raises(ValueError, match="workers must be >= 1"):
        executor.LocalExecutor(0)


def _grid(tmp_path, workers: int):
    stage = open_stage("04_correlation", "ci", {**OVERRIDES, "workers": workers}, run_dir=tmp_path / f"run{workers}")
    splits = workflow.problem_splits(stage.params)
    student = workflow.load_student(stage, stage.params.students[0], splits)
    rng = random.Random(0)
    datasets = {f"teacher={style}": pd.DataFrame([
        {"problem_id": p.id, "teacher": style, "text": lab.write_trace(p, style, error_rate=0.1, rng=rng), "sample": 0,
         "correct": True} for p in splits.pool]) for style in ("equations", "prose")}
    problems = splits.by_id()
    return stage, correlation.gain_grid(stage, [student], datasets, problems, splits.heldout, splits.pool)


def test_two_workers_give_the_same_grid_as_one(tmp_path):
    stage1, (grid1, outcomes1) = _grid(tmp_path, 1)
    stage2, (grid2, outcomes2) = _grid(tmp_path, 2)
    pd.testing.assert_frame_equal(grid1, grid2, check_exact=True)
    pd.testing.assert_frame_equal(outcomes1, outcomes2, check_exact=True)
    assert len(grid1) == 1 + 3 * 2  # control:none, then (2 datasets + control:gold) x 2 seeds
    assert not (stage1.run.cache / "executor").exists()  # one worker: the loop as before, nothing extra
    assert list((stage2.run.cache / "executor").glob("student-xs-*.pt"))  # two: the workers trained the cells
    summaries = {n: [json.loads(f.read_text()) for f in (s.run.cache / "sft").glob("grid-xs-*/train_summary.json")]
                 for n, s in ((1, stage1), (2, stage2))}
    assert len(summaries[1]) == len(summaries[2]) == 6
    assert all(s["resumed_from"] == 0 for s in summaries[1])  # trained in the loop
    assert all(s["resumed_from"] == s["steps"] == 2 for s in summaries[2])  # trained by the workers, read back
