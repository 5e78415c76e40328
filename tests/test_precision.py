"""Mixed precision and gradient checkpointing in SFT.

A bfloat16 student trains float32 weights (AdamW's moments too) with its forward passes under
``torch.autocast`` in bfloat16 (CPU autocast runs bf16 here); float32 students run exactly as before, without
autocast. Gradient checkpointing gives the same loss and gradients and is part of no cache key.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch

from syllabus import devices, models, params as P, train
from syllabus.params import ParamsError, load_profile
from syllabus.preflight import check_runnable
from syllabus.runs import hash_obj
from tiny_lm import apple_pairs

torch.set_num_threads(1)

ARCH = P.LabArch(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)
TRAINING = P.Training(batch_size=4, max_seq_len=96, learning_rate=3e-3)
CPU_PROFILES = ("tiny", "ci", "smol", "tiny-wide", "tiny-wide-b")


@pytest.fixture(autouse=True)
def one_thread():
    yield
    torch.set_num_threads(1)


def lab_pairs(n: int = 16, seed: int = 0) -> list[tuple[str, str]]:
    return apple_pairs(n, seed)


def student(tmp_path, dtype: str, **spec):
    pairs = lab_pairs()
    s = P.Student(name="s", source="lab", arch=ARCH, warmup_steps=2, dtype=dtype, **spec)
    model, tok = models.load_student(s, cache_dir=tmp_path, training=TRAINING, threads=1, device="cpu",
                                     pretrain_texts=[p + t for p, t in pairs])
    return model, tok, pairs


def linear_outputs(model) -> set[torch.dtype]:
    """The dtypes of every Linear output from now on (a forward hook)."""
    seen: set[torch.dtype] = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    return seen


# --------------------------------------------------------------------------- mixed precision
def test_a_bf16_student_trains_float32_weights_with_bf16_forward_passes(tmp_path):
    model, tok, pairs = student(tmp_path, "bfloat16")
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert devices.compute_dtype(model) == "bfloat16"
    seen = linear_outputs(model)
    result = train.sft(model, tok, pairs, steps=2, cfg=TRAINING, seed=0)
    assert seen == {torch.bfloat16} and all(math.isfinite(x) for x in result.losses)
    moments = result.optimizer_state["state"]
    assert moments and {v.dtype for s in moments.values() for k, v in s.items() if k != "step"} == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_small_step_moves_weights_that_a_pure_bf16_update_would_leave_unchanged(tmp_path):
    model, tok, pairs = student(tmp_path, "bfloat16")
    weight = dict(model.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    before = weight.detach().clone()
    cfg = TRAINING.model_copy(update={"learning_rate": 1e-5, "warmup_ratio": 0.0, "lr_schedule": "constant"})
    train.sft(model, tok, pairs, steps=1, cfg=cfg, seed=0)
    after = weight.detach()
    changed = after != before
    assert changed.float().mean() > 0.9  # AdamW's first step moves every weight by ~lr
    # ... by less than bfloat16 resolves at that weight: a bf16 copy of the weights would not have moved
    below_bf16 = after.to(torch.bfloat16) == before.to(torch.bfloat16)
    assert (changed & below_bf16).float().mean() > 0.5


def test_a_lora_bf16_student_keeps_its_frozen_base_in_bf16_and_trains_float32_adapters(tmp_path):
    model, tok, pairs = student(tmp_path, "bfloat16", lora=True)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    assert frozen == {torch.bfloat16}
    seen = linear_outputs(model)
    train.sft(model, tok, pairs, steps=1, cfg=TRAINING, seed=0)
    assert torch.bfloat16 in seen


def test_a_bf16_student_is_saved_in_bf16_and_keeps_training_in_float32(tmp_path):
    model, tok, _ = student(tmp_path / "cache", "bfloat16")
    models.save_model(model, tok, tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"
    reloaded, _ = models.load_pretrained("dir", str(tmp_path / "saved"), dtype="bfloat16")
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the caller's model is left as it was


def test_scoring_and_generation_of_a_bf16_student_run_in_bf16(tmp_path):
    from syllabus import scoring

    model, tok, pairs = student(tmp_path, "bfloat16")
    seen = linear_outputs(model)
    scores = scoring.score_pairs(model, tok, pairs[:4], batch_size=4)
    assert scores["nll"].notna().all() and seen == {torch.bfloat16}
    seen.clear()
    gens = models.generate(model, tok, [p for p, _ in pairs[:2]], max_new_tokens=3, batch_size=2)
    assert len(gens) == 2 and seen == {torch.bfloat16}


@pytest.mark.parametrize("profile", CPU_PROFILES)
def test_the_cpu_profiles_students_run_in_float32_without_autocast(profile):
    assert {s.dtype for s in load_profile(profile).students} == {"float32"}
    tok = models.lab_tokenizer(["a b c"])
    model = models.build_lab_model(ARCH, tok, 0)
    models.set_compute_dtype(model, "float32")
    assert devices.COMPUTE_DTYPE_ATTR not in model.__dict__
    assert isinstance(devices.autocast(model), contextlib.nullcontext)


def test_float16_training_is_refused_with_the_fix(tmp_path):
    model, tok, pairs = student(tmp_path, "float16")
    with pytest.raises(train.TrainError, match="loss scaling.*bfloat16"):
        train.sft(model, tok, pairs, steps=1, cfg=TRAINING, seed=0)
    prof = load_profile("ci", {"students.0.dtype": "float16"})
    with pytest.raises(ParamsError, match=r"key 'students.0.dtype': is float16"):
        check_runnable(prof)


# --------------------------------------------------------------------------- gradient checkpointing
def count_calls(module) -> list:
    """A list that grows by one at every run of ``module.forward``, recomputations included (torch's
    checkpoint runs no module hooks when it recomputes)."""
    calls, forward = [], module.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    module.forward = counted
    return calls


def _loss_and_grads(model, tok, pairs):
    data = train.tokenize_examples(tok, pairs, 96, "target")
    batch = train.collate(data, tok.pad_token_id)
    n_target = int((batch["labels"][:, 1:] != -100).sum())
    model.zero_grad(set_to_none=True)
    loss = train.target_loss(model, batch, n_target)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def checkpointing_is_on(model) -> bool:
    """transformers >= 5.20 says is_activation_checkpointing, earlier 5.x is_gradient_checkpointing (vLLM's
    extra pins transformers < 5.20)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    pairs = lab_pairs(6)
    tok = models.lab_tokenizer([p + t for p, t in pairs])
    plain = models.build_lab_model(ARCH, tok, 0).train()
    ckpt = copy.deepcopy(plain)
    train._checkpointing_on(ckpt)  # the package's switch: transformers' names changed in 5.20
    layer_calls = count_calls(ckpt.model.layers[0].mlp)
    loss_a, grads_a = _loss_and_grads(plain, tok, pairs)
    loss_b, grads_b = _loss_and_grads(ckpt, tok, pairs)
    assert len(layer_calls) == 2  # the layer ran again in the backward pass: checkpointing is on
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], atol=1e-6, rtol=0), name


def test_sft_with_gradient_checkpointing_trains_the_same_run_and_switches_it_off_after(tmp_path):
    pairs = lab_pairs()
    tok = models.lab_tokenizer([p + t for p, t in pairs])
    plain = models.build_lab_model(ARCH, tok, 0)
    ckpt = copy.deepcopy(plain)
    layer_calls = count_calls(ckpt.model.layers[0].mlp)
    on = TRAINING.model_copy(update={"gradient_checkpointing": True})
    a = train.sft(plain, tok, pairs, steps=3, cfg=TRAINING, seed=0, out_dir=tmp_path / "off")
    b = train.sft(ckpt, tok, pairs, steps=3, cfg=on, seed=0, out_dir=tmp_path / "on")
    passes = sum(len(train.step_passes(train.tokenize_examples(tok, pairs, 96, "target"),
                                       train.batch_indices(len(pairs), 4, s, 0), 4)) for s in range(3))
    assert len(layer_calls) == 2 * passes  # each forward ran again in its backward pass
    assert b.losses == pytest.approx(a.losses, abs=1e-6)
    for (name, x), (_, y) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(x, y, atol=1e-6, rtol=0), name
    assert not checkpointing_is_on(ckpt) and ckpt.config.use_cache is plain.config.use_cache
    assert not getattr(ckpt, "_require_grads_hooks", None)  # nor the embedding hook that came with it
    assert b.summary["training"] == {**a.summary["training"], "gradient_checkpointing": True}
    assert "gradient_checkpointing" not in a.summary["training"]
    # a memory setting: a checkpoint written without it resumes with it (the same run key)
    resumed = train.sft(copy.deepcopy(plain), tok, pairs, steps=3, cfg=on, seed=0, out_dir=tmp_path / "off")
    assert resumed.resumed_from == 3


# Training settings hashed as the SFT cache keys hold them, computed before gradient_checkpointing existed:
# a CPU profile's lab students, distillation runs and stage-5 phases keep their cache keys.
TRAINING_KEYS = {
    "tiny": "6424332190ddc4ee30b72b604d4e6aff2d268d02e5d7c70505d2742dca33ee17",
    "ci": "b37f3945ca558067918b6bdfce9eb6d684ee6100d65992bb2c6d5ff1fc44e0d5",
    "smol": "6412f2c067c45011243e4597a358aedb693f62dbe143b36ddb1f162b7ae9a6e6",
    "tiny-wide": "6424332190ddc4ee30b72b604d4e6aff2d268d02e5d7c70505d2742dca33ee17",
    "tiny-wide-b": "6424332190ddc4ee30b72b604d4e6aff2d268d02e5d7c70505d2742dca33ee17",
}


def test_cpu_profiles_keep_their_training_cache_keys():
    for name in CPU_PROFILES:
        training = load_profile(name).training
        assert not training.gradient_checkpointing
        assert hash_obj(training.key_dump()) == TRAINING_KEYS[name], name


def test_the_paper_profile_fits_its_micro_batch_with_the_same_rows_per_step():
    paper = load_profile("paper")
    t = paper.training
    assert t.batch_size * t.grad_accum == 128 and t.batch_size <= 2 and t.gradient_checkpointing
    assert {s.dtype for s in paper.students} == {"bfloat16"} and not any(s.lora for s in paper.students)
