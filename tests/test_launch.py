"""Data-parallel SFT: ``accelerate launch`` with two processes (gloo on the CPU), weights replicated or
sharded (FSDP2), takes the same steps as one process on the whole batch."""

from __future__ import annotations

import copy
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


@pytest.mark.parametrize("single_pass,sharding", [(False, "replicate"), (True, "replicate"), (False, "fsdp"),
                                                  (True, "fsdp")])
def test_two_processes_take_the_same_steps_as_one(tmp_path, single_pass, sharding):
    # batch 5 over 2 processes: one gets 3 examples, the other 2, and a single pass ends on a short batch
    cfg = Training(learning_rate=3e-3, batch_size=5, max_seq_len=96, warmup_ratio=0.25)
    steps = None if single_pass else 6
    one, tokenizer, examples = _setup()
    two, _, _ = _setup()
    alone = train.sft(one, tokenizer, examples, steps=steps, cfg=cfg, seed=3, out_dir=tmp_path / "one",
                      single_pass=single_pass)
    spread = launch.sft(two, tokenizer, examples, steps=steps, cfg=cfg, seed=3, out_dir=tmp_path / "two", processes=2,
                        single_pass=single_pass, sharding=sharding)
    assert spread.tokens_seen == alone.tokens_seen and spread.steps == alone.steps
    assert spread.resumed_from == spread.steps  # trained by the launched processes, read back here
    assert spread.losses == pytest.approx(alone.losses, rel=1e-4)
    for (name, a), (_, b) in zip(one.named_parameters(), two.named_parameters()):
        assert torch.allclose(a, b, atol=2e-5), name
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["steps_done"] == summary["steps"] == alone.steps
    assert spread.summary["processes"] == summary["processes"] == 2 and "processes" not in alone.summary
    assert not (tmp_path / "two" / "launch" / "tmp").exists()  # torchelastic's scratch folder, removed once done


def test_sharded_processes_stay_in_step_when_one_has_nothing_to_do(tmp_path):
    # a single pass over 24 examples at batch 23 ends on one example: the second process runs an idle pass
    # (FSDP's gathers and reduce-scatters run per pass on every process, so the counts must match)
    cfg = Training(learning_rate=3e-3, batch_size=23, max_seq_len=96, warmup_ratio=0.0)
    one, tokenizer, examples = _setup()
    two, _, _ = _setup()
    data = train.tokenize_examples(tokenizer, examples, cfg.max_seq_len, "target")
    last = train.single_pass_indices(len(data), 23, 1, 3)
    assert len(last) == 1 and train.step_passes(data, last[1::2], 23) == []
    alone = train.sft(one, tokenizer, examples, steps=None, cfg=cfg, seed=3, out_dir=tmp_path / "one", single_pass=True)
    spread = launch.sft(two, tokenizer, examples, steps=None, cfg=cfg, seed=3, out_dir=tmp_path / "two", processes=2,
                        single_pass=True, sharding="fsdp")
    assert spread.losses == pytest.approx(alone.losses, rel=1e-4)
    for (name, a), (_, b) in zip(one.named_parameters(), two.named_parameters()):
        assert torch.allclose(a, b, atol=2e-5), name


def test_a_sharded_run_resumes_a_checkpoint_and_ends_where_one_process_does(tmp_path, monkeypatch):
    # one process trains 3 of 6 steps and stops after its checkpoint; two sharded processes finish the run
    cfg = Training(learning_rate=3e-3, batch_size=5, max_seq_len=96, warmup_ratio=0.25)
    one, tokenizer, examples = _setup()
    half, _, _ = _setup()
    alone = train.sft(one, tokenizer, examples, steps=6, cfg=cfg, seed=3, out_dir=tmp_path / "one")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt("stopped after the step-3 checkpoint")

    monkeypatch.setattr(train, "_write_records", stop)
    with pytest.raises(KeyboardInterrupt):
        train.sft(half, tokenizer, examples, steps=6, cfg=cfg, seed=3, out_dir=tmp_path / "two", checkpoint_every=3)
    monkeypatch.undo()
    # mark the checkpoint's logged first loss: a resumed run keeps it, a run started over would not
    ckpt = torch.load(tmp_path / "two" / train.CHECKPOINT, weights_only=False)
    assert ckpt["step"] == 3
    ckpt["log"][0]["loss"] = 123.0
    torch.save(ckpt, tmp_path / "two" / train.CHECKPOINT)
    spread = launch.sft(half, tokenizer, examples, steps=6, cfg=cfg, seed=3, out_dir=tmp_path / "two", processes=2,
                        sharding="fsdp", checkpoint_every=3)
    assert spread.summary["processes"] == 2 and spread.losses[0] == 123.0
    assert spread.losses[1:] == pytest.approx(alone.losses[1:], rel=1e-4)
    for (name, a), (_, b) in zip(one.named_parameters(), half.named_parameters()):
        assert torch.allclose(a, b, atol=2e-5), name


@pytest.mark.parametrize("sharding", ["replicate", "fsdp"])
def test_lora_adapters_train_sharded_as_in_one_process(tmp_path, sharding):
    # frozen base weights and trainable adapters in the same sharded layers (no dropout: the RNG draws differ)
    cfg = Training(learning_rate=2e-2, batch_size=5, max_seq_len=96, lora_r=4, lora_dropout=0.0)
    one, tokenizer, examples = _setup()
    one = models.add_lora(one, cfg)
    two = copy.deepcopy(one)  # the same adapters' initial weights (add_lora draws them)
    alone = train.sft(one, tokenizer, examples, steps=4, cfg=cfg, seed=3, out_dir=tmp_path / "one")
    spread = launch.sft(two, tokenizer, examples, steps=4, cfg=cfg, seed=3, out_dir=tmp_path / "two", processes=2,
                        sharding=sharding)
    assert spread.losses == pytest.approx(alone.losses, rel=1e-4)
    trained = [(n, p) for n, p in two.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n, _ in trained)
    for (name, a), (_, b) in zip(one.named_parameters(), two.named_parameters()):
        assert torch.allclose(a, b, atol=2e-5), name


def test_an_unknown_sharding_is_an_error(tmp_path):
    model, tokenizer, examples = _setup()
    with pytest.raises(launch.LaunchError, match="parallel.sft_sharding"):
        launch.sft(model, tokenizer, examples, steps=2, cfg=Training(), seed=0, out_dir=tmp_path, processes=2,
                   sharding="zero3")


def test_a_failed_launch_names_its_log(tmp_path):
    model, tokenizer, examples = _setup()
    cfg = Training(batch_size=4, max_seq_len=96)
    with pytest.raises(launch.LaunchError, match="launch.log") as err:
        launch.sft(model, tokenizer, examples, steps=2, cfg=cfg, seed=0, out_dir=tmp_path / "bad", processes=2,
                   loss_on="nonsense")
    # the processes' own logs are kept beside it, in the run's folder rather than the system's temporary one
    scratch = tmp_path / "bad" / "launch" / "tmp"
    assert str(scratch) in str(err.value) and list(scratch.glob("torchelastic_*"))


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


def test_a_stage_distils_each_student_at_its_own_learning_rate(tmp_path):
    from syllabus import distillation, students
    from syllabus.problems import problem_splits
    from syllabus.runs import open_stage

    arch = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
    small = {"data.n_pool": 8, "data.n_probe": 4, "data.n_heldout": 4, "data.lab.n_pretrain": 60,
             "training.learning_rate": 0.003,
             "students": [{"name": "plain", "source": "lab", "warmup_steps": 2, "arch": arch},
                          {"name": "own", "source": "lab", "warmup_steps": 2, "arch": arch, "learning_rate": 0.001}]}
    stage = open_stage("04_correlation", "ci", small, run_dir=tmp_path / "run")
    splits = problem_splits(stage.params)
    rates = {}
    for spec in stage.params.students:
        student = students.load_student(stage, spec, splits)
        examples = [(student.prompt(p), student.target(p.solution or p.answer)) for p in splits.pool]
        _, result = distillation.distil(student, examples, steps=2, stage=stage, seed=0, tag=spec.name)
        rates[spec.name] = result.summary["training"]["learning_rate"]
    assert rates == {"plain": 0.003, "own": 0.001}


def test_the_model_waits_on_the_cpu_while_the_launched_processes_train(tmp_path, monkeypatch):
    # the caller's model leaves its device for the job file and returns only once the processes are done, so
    # this process does not hold it on the GPU the first process trains on
    import subprocess

    model, tokenizer, examples = _setup()
    events = []
    real_to = type(model).to

    def to(self, *args, **kwargs):
        events.append(f"to {args[0] if args else kwargs}")
        return real_to(self, *args, **kwargs)

    def run(command, **kwargs):  # stands in for accelerate launch; the run then trains here (no checkpoint)
        events.append("launch")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(type(model), "to", to)
    monkeypatch.setattr(launch.subprocess, "run", run)
    launch.sft(model, tokenizer, examples, steps=1, cfg=Training(batch_size=4, max_seq_len=96), seed=0,
               out_dir=tmp_path, processes=2)
    assert events == ["to cpu", "launch", "to cpu"]  # the device it came from, here the CPU


def test_more_processes_than_visible_gpus_is_an_error_naming_the_key(tmp_path, monkeypatch):
    model, tokenizer, examples = _setup()
    monkeypatch.setattr(launch, "visible_gpus", lambda: 1)
    monkeypatch.setattr(launch.subprocess, "run", lambda *a, **k: pytest.fail("nothing may be launched"))
    with pytest.raises(launch.LaunchError, match=r"parallel.sft_processes is 2 but this machine shows 1 GPU") as err:
        launch.sft(model, tokenizer, examples, steps=1, cfg=Training(batch_size=4, max_seq_len=96), seed=0,
                   out_dir=tmp_path, processes=2)
    assert "parallel.sft_processes=1" in str(err.value)
    assert not (tmp_path / "launch").exists()  # refused before any job file was written
