"""SFT: target-only loss, deterministic batches, LoRA, records, and bit-exact resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from syllabus import models, params as P, train

torch.set_num_threads(1)

TEXTS = [f"Tom has {a} apples. He buys {b} more.\nAnswer: {a} + {b} = {a + b}.\n#### {a + b}"
         for a in range(1, 13) for b in range(1, 9)]
EXAMPLES = [(t.split("\nAnswer:")[0] + "\nAnswer:", t.split("\nAnswer:")[1]) for t in TEXTS]
ARCH = P.LabArch(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=96)
CFG = P.Training(batch_size=8, max_seq_len=64, learning_rate=5e-3, warmup_ratio=0.1)


def fresh(seed: int = 0):
    tok = models.lab_tokenizer(TEXTS)
    return models.build_lab_model(ARCH, tok, seed), tok


def test_labels_cover_the_target_and_eos_only():
    _, tok = fresh()
    (ids, labels), = train.tokenize_examples(tok, [("Question: x\nAnswer:", " 3 + 4 = 7")], 64, "target")
    n_prompt = len(tok.encode("Question: x\nAnswer:"))
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    (ids, labels), = train.tokenize_examples(tok, [("Question: x\nAnswer:", " 3 + 4 = 7")], 64, "all")
    assert labels == ids
    (ids, _), = train.tokenize_examples(tok, [("Question: x\nAnswer:", " 3 + 4 = 7")], 5, "target")
    assert len(ids) == 5


def test_batch_order_is_seeded_epochs():
    n, b = 10, 4
    first = [i for s in range(5) for i in train.batch_indices(n, b, s, seed=3)]  # 20 = two epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert first == [i for s in range(5) for i in train.batch_indices(n, b, s, seed=3)]
    assert first != [i for s in range(5) for i in train.batch_indices(n, b, s, seed=4)]


def test_sft_learns_and_records_its_run(tmp_path):
    model, tok = fresh()
    res = train.sft(model, tok, EXAMPLES, steps=40, cfg=CFG, seed=0, out_dir=tmp_path)
    assert len(res.losses) == 40 and res.losses[-1] < 0.5 * res.losses[0]
    with open(tmp_path / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, 41)) and int(rows[-1]["tokens"]) == res.tokens_seen
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["n_examples"] == len(EXAMPLES) and summary["data_hash"] == res.data_hash
    assert summary["tokens_seen"] == res.tokens_seen > 40 * 8 * 10 and summary["wall_s"] > 0
    # a finished run resumes to itself: nothing is trained again
    again = train.sft(model, tok, EXAMPLES, steps=40, cfg=CFG, seed=0, out_dir=tmp_path)
    assert again.resumed_from == 40 and again.losses == res.losses


def test_resume_refuses_another_runs_checkpoint(tmp_path):
    model, tok = fresh()
    train.sft(model, tok, EXAMPLES, steps=2, cfg=CFG, seed=0, out_dir=tmp_path)
    with pytest.raises(train.TrainError, match="different training run"):
        train.sft(model, tok, EXAMPLES[:10], steps=2, cfg=CFG, seed=0, out_dir=tmp_path)


def test_examples_without_target_tokens_are_an_error():
    model, tok = fresh()
    with pytest.raises(train.TrainError, match="max_seq_len"):
        train.sft(model, tok, [("Question: " + "x " * 100, " 7")], steps=1, cfg=CFG, seed=0)


def test_lora_trains_adapters_and_leaves_the_base_alone():
    model, tok = fresh()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = models.add_lora(model, CFG.model_copy(update={"lora_r": 4, "lora_dropout": 0.1}))
    res = train.sft(lora, tok, EXAMPLES, steps=15, cfg=CFG.model_copy(update={"learning_rate": 2e-2}), seed=0)
    assert res.losses[-1] < res.losses[0]
    merged_names = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                    for k, v in lora.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(merged_names[k], v) for k, v in base.items())


SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from test_train import fresh, EXAMPLES, CFG, STEPS
    from syllabus import train
    model, tok = fresh()
    train.sft(model, tok, EXAMPLES, steps=STEPS, cfg=CFG, seed=5, out_dir=sys.argv[1], checkpoint_every=3)
""")
STEPS = 60


def test_killed_and_resumed_training_gives_identical_weights(tmp_path, project_root):
    """A subprocess is SIGKILLed between checkpoints; resuming here must give the uninterrupted weights."""
    out_dir, script = tmp_path / "run", tmp_path / "run_sft.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(project_root / "src"))
    proc = subprocess.Popen([sys.executable, str(script), str(out_dir), str(project_root / "tests")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (out_dir / train.CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # land somewhere between two checkpoints
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == -signal.SIGKILL, output
    killed_at = torch.load(out_dir / train.CHECKPOINT, weights_only=False)["step"]
    assert 0 < killed_at < STEPS

    resumed, tok = fresh()
    res = train.sft(resumed, tok, EXAMPLES, steps=STEPS, cfg=CFG, seed=5, out_dir=out_dir, checkpoint_every=3)
    straight, _ = fresh()
    ref = train.sft(straight, tok, EXAMPLES, steps=STEPS, cfg=CFG, seed=5)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.resumed_from == killed_at and res.losses == ref.losses and res.tokens_seen == ref.tokens_seen
    summary = json.loads((out_dir / "train_summary.json").read_text())
    assert summary["resumed_from"] == killed_at and summary["steps_done"] == STEPS


def test_single_pass_trains_on_every_example_once(tmp_path):
    model, tok = fresh()
    examples = EXAMPLES[:19]
    res = train.sft(model, tok, examples, steps=None, cfg=CFG, seed=1, single_pass=True, out_dir=tmp_path / "run")
    assert res.steps == 3  # ceil(19 / 8): the last batch has 3 examples
    assert res.tokens_seen == sum(len(ids) for ids, _ in train.tokenize_examples(tok, examples, CFG.max_seq_len,
                                                                                     "target"))
    seen = [i for step in range(3) for i in train.single_pass_indices(19, 8, step, 1)]
    assert sorted(seen) == list(range(19))
    with pytest.raises(train.TrainError, match="takes 3 steps, not 4"):
        train.sft(fresh()[0], tok, examples, steps=4, cfg=CFG, seed=1, single_pass=True)


def test_span_schedule_in_parts_is_the_whole_schedule():
    whole = [train.lr_factor(s, 12, 0.25, "cosine") for s in range(12)]
    parts = [train.span_lr_factor(s, 4, (p / 3, (p + 1) / 3), 0.25, "cosine") for p in range(3) for s in range(4)]
    assert parts == pytest.approx(whole)
    assert parts[4] > 0.9  # no second warm-up at a phase start (a restart would give 1/3)
    with pytest.raises(train.TrainError, match="schedule_span"):
        model, tok = fresh()
        train.sft(model, tok, EXAMPLES[:8], steps=1, cfg=CFG, seed=0, schedule_span=(0.5, 0.5))


def test_phases_that_carry_the_optimizer_train_as_one_run_and_restarts_do_not(tmp_path):
    """Every step here sees all 8 examples, so one 6-step run and two 3-step calls that carry AdamW and
    the schedule must end with the same weights; two calls that restart the optimizer must not."""
    cfg = P.Training(batch_size=8, max_seq_len=64, learning_rate=5e-3, warmup_ratio=1 / 3)
    data = EXAMPLES[:8]
    one, tok = fresh()
    train.sft(one, tok, data, steps=6, cfg=cfg, seed=0)
    carried, _ = fresh()
    first = train.sft(carried, tok, data, steps=3, cfg=cfg, seed=0, schedule_span=(0, 0.5), out_dir=tmp_path / "p0")
    second = train.sft(carried, tok, data, steps=3, cfg=cfg, seed=0, schedule_span=(0.5, 1),
                       optimizer_state=first.optimizer_state, out_dir=tmp_path / "p1")
    restarted, _ = fresh()
    train.sft(restarted, tok, data, steps=3, cfg=cfg, seed=0)
    train.sft(restarted, tok, data, steps=3, cfg=cfg, seed=0)
    w1, wc, wr = (dict(m.named_parameters()) for m in (one, carried, restarted))
    assert all(torch.allclose(w1[n], wc[n], atol=1e-5) for n in w1)
    assert not all(torch.allclose(w1[n], wr[n], atol=1e-3) for n in w1)
    lrs = [r["lr"] for r in json_log(tmp_path / "p1")]  # the whole run's steps 4-6, not a new schedule
    assert lrs == pytest.approx([cfg.learning_rate * train.lr_factor(s, 6, 1 / 3, "cosine") for s in (3, 4, 5)])
    # a finished phase read back from its checkpoint hands on the same optimizer state
    again = train.sft(fresh()[0], tok, data, steps=3, cfg=cfg, seed=0, schedule_span=(0, 0.5), out_dir=tmp_path / "p0")
    assert again.resumed_from == 3
    assert torch.equal(again.optimizer_state["state"][0]["exp_avg"], first.optimizer_state["state"][0]["exp_avg"])
    assert second.optimizer_state["state"][0]["step"] == 6


def json_log(out_dir):
    with open(out_dir / "train_log.csv") as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]


# --------------------------------------------------------------------------- padding groups, target-only head
def test_padding_groups_cover_every_example_once_and_split_only_where_it_pays():
    lengths = [30, 90, 31, 88, 29, 91, 32, 89]
    groups = train.padding_groups(lengths, overhead=48)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert [sorted(lengths[i] for i in g) for g in groups] == [[29, 30, 31, 32], [88, 89, 90, 91]]
    assert train.padding_groups(lengths, overhead=10_000) == [sorted(range(8), key=lambda i: lengths[i])]
    assert train.padding_groups([50] * 6, overhead=1) == [list(range(6))]  # nothing to save: one pass
    assert train.padding_groups([], overhead=48) == []


def test_grouped_target_only_step_has_the_one_padded_batch_gradient():
    model, tok = fresh()
    model.train()
    items = train.tokenize_examples(tok, [(p, t * (1 + i % 3)) for i, (p, t) in enumerate(EXAMPLES[:12])], 64, "target")
    n_target = sum(sum(label != -100 for label in lab[1:]) for _, lab in items)
    batch = train.collate(items, tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    (torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100,
                                       reduction="sum") / n_target).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    groups = train.padding_groups([len(ids) for ids, _ in items], overhead=0)
    assert len(groups) > 1
    for g in groups:
        train.target_loss(model, train.collate([items[i] for i in g], tok.pad_token_id), n_target).backward()
    for ref, p in zip(reference, model.parameters()):
        torch.testing.assert_close(p.grad, ref, rtol=1e-5, atol=1e-6)


def test_target_loss_drops_the_mask_only_where_padding_is_on_the_right():
    """Right padding: the causal mask alone keeps real tokens off the padding, so the loss and gradient
    are those of the masked pass. Left padding would let real tokens see pads: there the mask stays."""
    model, tok = fresh()
    items = train.tokenize_examples(tok, [(p, t * (1 + i % 3)) for i, (p, t) in enumerate(EXAMPLES[:6])], 64, "target")
    n_target = sum(sum(label != -100 for label in lab[1:]) for _, lab in items)

    def masked(batch):
        shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
        keep = shifted != -100
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        logits = model.get_output_embeddings()(hidden[keep])
        return torch.nn.functional.cross_entropy(logits, shifted[keep], reduction="sum") / n_target

    right = train.collate(items, tok.pad_token_id)
    width = right["input_ids"].shape[1]
    left = {key: torch.stack([torch.roll(row, width - int(m.sum())) for row, m in zip(value, right["attention_mask"])])
            for key, value in right.items()}
    assert not bool(left["attention_mask"][:, 0].all())
    for batch in (right, left):
        model.zero_grad(set_to_none=True)
        train.target_loss(model, batch, n_target).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        masked(batch).backward()
        for got, want in zip(grads, [p.grad for p in model.parameters()]):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
