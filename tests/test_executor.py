"""The local executor: independent jobs side by side in spawned workers, results (and stage tables)
the same as with one worker."""

from __future__ import annotations

import json
import os
import random

import pickle
import sys
import types

import pandas as pd
import pytest
import torch

from syllabus import executor, lab, students
from syllabus.problems import problem_splits
from syllabus.stages import correlation, teacher_selection
from syllabus.params import load_profile
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


def chatty_job(x: int) -> tuple[str | None, str | None]:
    print(f"to stdout {x}")
    print(f"to stderr {x}", file=sys.stderr)
    os.write(2, f"from C {x}\n".encode())
    if x == 99:
        raise ValueError("job 99 failed")
    return os.environ.get("TQDM_DISABLE"), os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")


def test_workers_write_to_their_log_not_the_terminal_and_errors_still_reach_the_caller(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    out = executor.LocalExecutor(2, log_dir=tmp_path / "jobs").map(chatty_job, [0, 1])
    assert out == [("1", "1")] * 2  # no progress bars in the workers
    assert "TQDM_DISABLE" not in os.environ and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"  # restored
    logs = "".join(f.read_text() for f in sorted((tmp_path / "jobs").glob("worker-*.log")))
    for x in (0, 1):
        assert f"to stdout {x}" in logs and f"to stderr {x}" in logs and f"from C {x}" in logs
    seen = capfd.readouterr()
    assert "to stdout" not in seen.out and "to stderr" not in seen.err and "from C" not in seen.err
    with pytest.raises(ValueError, match="job 99 failed"):
        executor.LocalExecutor(2, log_dir=tmp_path / "jobs").map(chatty_job, [1, 99])


def visible_devices(_: int) -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")


def test_gpu_ids_follow_the_parents_cuda_visible_devices(monkeypatch):
    """With CUDA_VISIBLE_DEVICES=3,5 this process's GPUs 0 and 1 are physical 3 and 5: a worker must be
    given "3" or "5", not "0" or "1" (which would put both workers on physical GPU 0 and 1 outside the list)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert executor.visible_gpu_ids(2) == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb,GPU-cc")
    assert executor.visible_gpu_ids(2) == ["GPU-aa", "GPU-bb"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert executor.visible_gpu_ids(2) == ["0", "1"]


def test_each_worker_is_pinned_to_one_of_the_given_gpus():
    seen = executor.LocalExecutor(2, ["3", "5"]).map(visible_devices, list(range(8)))
    assert seen and set(seen) <= {"3", "5"}


def test_map_keeps_input_order_and_uses_other_processes_with_two_workers():
    one = executor.LocalExecutor(1).map(square_and_pid, list(range(6)))
    two = executor.LocalExecutor(2).map(square_and_pid, list(range(6)))
    assert [r for r, _ in one] == [r for r, _ in two] == [x * x for x in range(6)]
    assert {pid for _, pid in one} == {os.getpid()} and os.getpid() not in {pid for _, pid in two}
    with pytest.raises(ValueError, match="workers must be >= 1"):
        executor.LocalExecutor(0)


def _grid(tmp_path, workers: int, **parallel):
    extra = {f"parallel.{k}": v for k, v in parallel.items()}
    stage = open_stage("04_correlation", "ci", {**OVERRIDES, "parallel.workers": workers, **extra},
                       run_dir=tmp_path / f"run{workers}{''.join(parallel.values())}")
    splits = problem_splits(stage.params)
    student = students.load_student(stage, stage.params.students[0], splits)
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


def _leaderboard(tmp_path, workers: int):
    stage = open_stage("01_teacher_selection", "ci", {**OVERRIDES, "parallel.workers": workers,
                                                      "teacher_selection.smoke_sft_steps": 2,
                                                      "teacher_selection.seeds": [0, 1]},
                       run_dir=tmp_path / f"smoke{workers}")
    splits = problem_splits(stage.params)
    student = students.load_student(stage, stage.params.students[0], splits)
    problems = splits.pool[:8]
    runs = teacher_selection.generate_all(stage, problems)
    return stage, teacher_selection.leaderboard(stage, student, runs, problems, splits.probe)


def test_two_workers_give_the_same_teacher_leaderboard_as_one(tmp_path):
    stage1, board1 = _leaderboard(tmp_path, 1)
    stage2, board2 = _leaderboard(tmp_path, 2)
    pd.testing.assert_frame_equal(board1, board2, check_exact=True)
    trained = [json.loads(f.read_text()) for f in (stage2.run.cache / "sft").glob("smoke-xs-*/train_summary.json")]
    assert len(trained) == 2 * len(board2[board2["teacher_accuracy"] > 0])  # every smoke test, both seeds
    assert all(s["resumed_from"] == s["steps"] for s in trained)  # trained by the workers, read back


# --------------------------------------------------------------------------- Slurm through submitit
class _Job:
    def __init__(self, fn, item):
        self._fn, self._item = pickle.loads(pickle.dumps((fn, item)))  # what crosses to a Slurm job

    def result(self):
        return self._fn(self._item)


def submitit_standin(record: dict) -> types.ModuleType:
    """A stand-in for submitit (absent here, and no Slurm): ``AutoExecutor`` records its folder and
    parameters; ``map_array`` pickles each (function, item) as a job would and runs it on ``result()``."""

    class AutoExecutor:
        def __init__(self, folder):
            record["folder"] = folder

        def update_parameters(self, **kwargs):
            record.update(kwargs)

        def map_array(self, fn, items):
            record["jobs"] = record.get("jobs", 0) + len(items)
            return [_Job(fn, item) for item in items]

    mod = types.ModuleType("submitit")
    mod.AutoExecutor = AutoExecutor
    return mod


def test_the_slurm_executor_submits_one_job_per_item_with_the_profiles_resources(tmp_path, monkeypatch):
    record: dict = {}
    monkeypatch.setitem(sys.modules, "submitit", submitit_standin(record))
    prof = load_profile("ci", {"parallel.executor": "slurm", "parallel.workers": 3, "parallel.slurm_partition": "gpu"})
    results = executor.for_profile(prof, tmp_path / "slurm").map(square_and_pid, list(range(5)))
    assert [r for r, _ in results] == [x * x for x in range(5)]
    assert record == {"folder": str(tmp_path / "slurm"), "timeout_min": 60, "gpus_per_node": 1, "cpus_per_task": 1,
                      "slurm_array_parallelism": 3, "slurm_partition": "gpu", "jobs": 5}
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ImportError, match="needs submitit, which is not installed: pip install submitit"):
        executor.for_profile(prof, tmp_path / "slurm")


def test_slurm_jobs_give_the_same_grid_as_one_local_worker(tmp_path, monkeypatch):
    record: dict = {}
    monkeypatch.setitem(sys.modules, "submitit", submitit_standin(record))
    _, (grid1, outcomes1) = _grid(tmp_path, 1)
    stage, (grid2, outcomes2) = _grid(tmp_path, 2, executor="slurm")
    pd.testing.assert_frame_equal(grid1, grid2, check_exact=True)
    pd.testing.assert_frame_equal(outcomes1, outcomes2, check_exact=True)
    assert record["jobs"] == 6 and record["folder"] == str(stage.run.cache / "jobs")


def test_two_workers_warm_both_lab_students_as_one_process_would(tmp_path):
    specs = [{"name": name, "source": "lab", "warmup_steps": 3,
              "arch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}}
             for name in ("xs", "xs2")]
    weights = {}
    for workers in (1, 2):
        stage = open_stage("01_teacher_selection", "ci", {**OVERRIDES, "students": specs,
                                                          "parallel.workers": workers}, run_dir=tmp_path / f"w{workers}")
        splits = problem_splits(stage.params)
        assert students.warm_students(stage, splits) == ([] if workers == 1 else ["xs", "xs2"])
        assert students.warm_students(stage, splits) == []  # cached now (or left to load_student)
        weights[workers] = [students.load_student(stage, name, splits).model.state_dict() for name in ("xs", "xs2")]
    for one, two in zip(weights[1], weights[2]):
        for key in one:
            assert torch.equal(one[key], two[key]), key
