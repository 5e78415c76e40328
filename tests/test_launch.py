"""Data-parallel SFT: ``accelerate launch`` with two processes (gloo on the CPU) takes the same steps as
one process on the whole batch."""

from __future__ import annotations

import json
import random

import pytest
import torch

from syllabus import lab, launch, models, train
from syllabus.params import Training

torch.set_num_threads(1)


def _setup():
    rng = random.Random(0)
    problems = lab.generate_problems(24, seed=0, max_operand=10, max_value=50)
    examples = [(p.text, lab.write_trace(p, "prose", error_rate=0.0, rng=rng)) for p in problems]
    tokenizer = models.lab_tokenizer([a + " " + b for a, b in examples])
    arch = models.P.LabArch(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    return models.build_lab_model(arch, tokenizer, seed=0), tokenizer, examples


@pytest.mark.parametrize("single_pass", [False, True])
def test_two_processes_take_the_same_steps_as_one(tmp_path, single_pass):
    # batch 5 over 2 processes: one gets 3 examples, the other 2, and a single pass ends on a short batch
    cfg = Training(learning_rate=3e-3, batch_size=5, max_seq_len=96, warmup_ratio=0.25)
    steps = None if single_pass else 6
    one, tokenizer, examples = _setup()
    two, _, _ = _setup()
    alone = train.sft(one, tokenizer, examples, steps=steps, cfg=cfg, seed=3, out_dir=tmp_path / "one",
                      single_pass=single_pass)
    spread = launch.sft(two, tokenizer, examples, steps=steps, cfg=cfg, seed=3, out_dir=tmp_path / "two", processes=2,
                        single_pass=single_pass)
    assert spread.tokens_seen == alone.tokens_seen and spread.steps == alone.steps
    assert spread.resumed_from == spread.steps  # trained by the launched processes, read back here
    assert spread.losses == pytest.approx(alone.losses, rel=1e-4)
    for (name, a), (_, b) in zip(one.named_parameters(), two.named_parameters()):
        assert torch.allclose(a, b, atol=2e-5), name
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["steps_done"] == summary["steps"] == alone.steps
    assert spread.summary["processes"] == summary["processes"] == 2 and "processes" not in alone.summary


def test_a_failed_launch_names_its_log(tmp_path):
    model, tokenizer, examples = _setup()
    cfg = Training(batch_size=4, max_seq_len=96)
    with pytest.raises(launch.LaunchError, match="launch.log"):
        launch.sft(model, tokenizer, examples, steps=2, cfg=cfg, seed=0, out_dir=tmp_path / "bad", processes=2,
                   loss_on="nonsense")


def test_a_stage_distils_over_two_processes_when_the_profile_asks(tmp_path):
    from syllabus import distillation, students
    from syllabus.problems import problem_splits
    from syllabus.runs import open_stage

    small = {"data.n_pool": 16, "data.n_probe": 4, "data.n_heldout": 8, "data.lab.n_pretrain": 120,
             "students": [{"name": "xs", "source": "lab", "warmup_steps": 4,
                           "arch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}}]}
    trained = {}
    for processes in (1, 2):
        stage = open_stage("04_correlation", "ci", {**small, "parallel.sft_processes": processes},
                           run_dir=tmp_path / f"run{processes}")
        splits = problem_splits(stage.params)
        student = students.load_student(stage, stage.params.students[0], splits)
        examples = [(student.prompt(p), student.target(p.solution or p.answer)) for p in splits.pool]
        trained[processes], result = distillation.distil(student, examples, steps=3, stage=stage, seed=0, tag="dp")
        assert result.summary.get("processes", 1) == processes
    for (name, a), (_, b) in zip(trained[1].model.named_parameters(), trained[2].model.named_parameters()):
        assert torch.allclose(a, b, atol=2e-5), name
