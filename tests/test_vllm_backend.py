"""vLLM for the student's own samples and for stage 6, through a stand-in where vllm is absent
(``tests/vllm_standin.py``: a real transformers model behind vLLM's names)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

import vllm_standin
from syllabus import evaluate, generation, lab, models, params as P, students, teachers, vllm_backend
from syllabus.devices import set_compute_dtype
from syllabus.params import load_profile

torch.set_num_threads(1)

ARCH = P.LabArch(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=160)
TRAINING = P.Training(batch_size=4, max_seq_len=128, learning_rate=3e-3, lora_targets=["q_proj", "v_proj"])
PROBLEMS = lab.generate_problems(6, seed=5, modules=["add", "subtract"], min_steps=1, max_steps=1, max_operand=9,
                                 max_value=20, id_prefix="v")


@pytest.fixture(autouse=True)
def fresh_engine():
    torch.set_num_threads(1)
    vllm_backend.release()
    yield
    vllm_backend.release()
    torch.set_num_threads(1)


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", vllm_standin.module())
    vllm_standin.LLM.loaded.clear()
    vllm_standin.LLM.made.clear()
    vllm_standin.LLM.alive.clear()
    vllm_standin.LLM.calls.clear()
    return vllm_standin


def lab_student(tmp_path, lora: bool) -> students.StudentModel:
    texts = [lab.write_trace(p, "equations", error_rate=0.0, rng=__import__("random").Random(0))
             for p in lab.generate_problems(40, seed=1, modules=["add", "subtract"], min_steps=1, max_steps=1,
                                            max_operand=9, max_value=20, id_prefix="w")]
    texts = [f"Question: {p.text}\nAnswer: {t}" for p, t in zip(PROBLEMS, texts)] + texts
    spec = P.Student(name="s", source="lab", arch=ARCH, warmup_steps=20, lora=lora)
    model, tok = models.load_student(spec, cache_dir=tmp_path, training=TRAINING, pretrain_texts=texts, threads=1)
    if lora:  # make the adapter matter: B is zero after initialisation
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return students.StudentModel(spec, model.eval(), tok)


@pytest.mark.parametrize("lora", [False, True])
def test_vllm_student_samples_are_the_hf_samples_when_greedy(tmp_path, standin, lora):
    student = lab_student(tmp_path, lora)
    hf = load_profile("ci", {"student_generation.max_new_tokens": 96})
    vl = load_profile("ci", {"student_generation.max_new_tokens": 96, "student_generation.backend": "vllm"})
    want = generation.student_samples(student, PROBLEMS, k=1, prof=hf, seed=0)
    got = generation.student_samples(student, PROBLEMS, k=1, prof=vl, seed=0, cache_dir=tmp_path / "cache")
    assert got == want  # text, n_tokens (vLLM keeps the EOS or stop-string tokens in token_ids) and truncated
    assert any(g[0].text.strip() for g in want)
    assert not lora or all(not g[0].truncated for g in want)  # the LoRA student ends with EOS: counts compared
    (served,) = standin.LLM.made
    assert served["model"].startswith(str(tmp_path / "cache" / "vllm_models"))
    assert "config.json" in served["files"] and "adapter_config.json" not in served["files"]  # LoRA merged
    again = generation.student_samples(student, PROBLEMS, k=1, prof=vl, seed=0, cache_dir=tmp_path / "cache")
    assert again == got and len(standin.LLM.loaded) == 2  # one engine per call, the same samples


def test_the_student_engine_and_its_weights_folder_last_one_call(tmp_path, standin, monkeypatch):
    student = lab_student(tmp_path, lora=True)
    prof = load_profile("ci", {"student_generation.max_new_tokens": 4, "student_generation.backend": "vllm"})
    events = []

    def free():
        gc.collect()
        events.append(("free", len(standin.LLM.alive)))  # engines still alive once collected

    monkeypatch.setattr(vllm_backend, "free_gpu_memory", free)
    real_init = standin.LLM.__init__
    monkeypatch.setattr(standin.LLM, "__init__",
                        lambda self, *a, **kw: events.append("build") or real_init(self, *a, **kw))
    generation.student_samples(student, PROBLEMS[:2], k=1, prof=prof, seed=0, cache_dir=tmp_path)
    # freed before vLLM measures the GPU, and the engine gone when it is released after the call (no name for it
    # left in generate's frame)
    assert events == [("free", 0), "build", ("free", 0)]
    assert vllm_backend._ENGINE == {} and not standin.LLM.alive  # nothing holds the GPU while the student trains
    assert not Path(standin.LLM.made[0]["model"]).exists()  # no copy of the weights left behind
    assert list((tmp_path / "vllm_models").iterdir()) == []

    def broken(self, *a, **kw):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(standin.LLM, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        generation.student_samples(student, PROBLEMS[:2], k=1, prof=prof, seed=0, cache_dir=tmp_path)
    assert vllm_backend._ENGINE == {} and list((tmp_path / "vllm_models").iterdir()) == []  # a failed call too


def test_vllm_student_samples_k_per_problem_and_a_new_checkpoint_gets_a_new_engine(tmp_path, standin):
    student = lab_student(tmp_path, lora=False)
    prof = load_profile("ci", {"student_generation.max_new_tokens": 8, "student_generation.backend": "vllm"})
    outs = generation.student_samples(student, PROBLEMS, k=3, prof=prof, seed=1, cache_dir=tmp_path)
    assert [len(g) for g in outs] == [3] * len(PROBLEMS)
    with torch.no_grad():
        next(student.model.parameters()).add_(0.01)  # a training step changes the weights
    generation.student_samples(student, PROBLEMS, k=1, prof=prof, seed=1, cache_dir=tmp_path)
    assert len(set(standin.LLM.loaded)) == 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vllm_serves_the_student_in_its_own_dtype(tmp_path, standin, dtype):
    student = lab_student(tmp_path, lora=True)
    student.model.to(models.DTYPES[dtype])
    prof = load_profile("ci", {"student_generation.max_new_tokens": 4, "student_generation.backend": "vllm"})
    generation.student_samples(student, PROBLEMS[:2], k=1, prof=prof, seed=0, cache_dir=tmp_path)
    assert [m["dtype"] for m in standin.LLM.made] == [dtype]  # vLLM's "auto" would run float32 in float16


def test_vllm_serves_a_mixed_precision_student_in_its_compute_dtype(tmp_path, standin):
    """A full fine-tune of a bf16 student keeps float32 weights and computes in bf16 (devices.set_compute_dtype);
    vLLM must serve the bf16 copy save_model writes in bf16, not in float32."""
    student = lab_student(tmp_path, lora=False)
    set_compute_dtype(student.model, "bfloat16")
    assert next(student.model.parameters()).dtype == torch.float32
    prof = load_profile("ci", {"student_generation.max_new_tokens": 4, "student_generation.backend": "vllm"})
    generation.student_samples(student, PROBLEMS[:2], k=1, prof=prof, seed=0, cache_dir=tmp_path)
    assert [m["dtype"] for m in standin.LLM.made] == ["bfloat16"]


def test_the_hf_backend_never_imports_vllm_and_keeps_its_cache_keys(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    student = lab_student(tmp_path, lora=False)
    prof = load_profile("ci", {"student_generation.max_new_tokens": 8})
    generation.pass_rates(student, PROBLEMS, k=1, prof=prof, seed=0, cache_dir=tmp_path)
    assert "vllm" not in sys.modules
    keys = generation.generation_settings(prof, student)
    assert not {"backend", "token_budget", "eos_ids"} & set(keys)  # the hf backend adds nothing to the cache keys
    budgeted = load_profile("ci", {"student_generation.token_budget": 4096})
    assert generation.generation_settings(budgeted, student)["token_budget"] == 4096  # a budget can change the samples
    vl = load_profile("ci", {"student_generation.backend": "vllm", "student_generation.token_budget": 4096})
    assert generation.generation_settings(vl, student)["backend"] == "vllm"
    assert generation.generation_settings(vl, student)["vllm_dtype"] == "student"  # "auto" dtype samples not reused
    assert "token_budget" not in generation.generation_settings(vl, student)  # vLLM schedules its own batches
    # a model whose generation config names a second end token stops on it now: its samples are not reused
    student.model.generation_config.eos_token_id = [student.tokenizer.eos_token_id, 5]
    assert generation.generation_settings(prof, student)["eos_ids"] == [student.tokenizer.eos_token_id, 5]
    assert "eos_ids" not in generation.generation_settings(vl, student)  # vLLM always stopped on them


def test_vllm_missing_is_a_clear_error_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    student = lab_student(tmp_path, lora=False)
    prof = load_profile("ci", {"student_generation.backend": "vllm"})
    with pytest.raises(vllm_backend.VLLMMissing, match=r"student_generation.backend 'vllm' needs vLLM.*"
                                                       r"pip install 'syllabus\[vllm\]'.*backend: hf"):
        generation.student_samples(student, PROBLEMS, k=1, prof=prof, seed=0, cache_dir=tmp_path)


def test_stage6_hands_lm_eval_its_vllm_model_type_and_model_args(tmp_path, monkeypatch, standin):
    import lm_eval

    student = lab_student(tmp_path, lora=False)
    model_dir = models.save_model(student.model, student.tokenizer, tmp_path / "model")
    lab_file = evaluate.write_problems_jsonl(PROBLEMS, tmp_path / "heldout.jsonl")
    seen = {}

    class Stop(Exception):
        pass

    def capture(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(lm_eval, "simple_evaluate", capture)
    with pytest.raises(Stop):
        evaluate.run_lm_eval(model_dir, ["syllabus_lab"], data_dir=None, limit=2, max_gen_toks=8, batch_size=2,
                             apply_chat_template=False, output_dir=tmp_path / "out", seed=3, lab_file=lab_file,
                             dtype="bfloat16", backend="vllm")
    assert seen["model"] == "vllm"
    assert seen["batch_size"] == "auto"  # lm-eval's vllm model: every request in one generate call, not chunks of 2
    assert seen["model_args"] == {"pretrained": str(model_dir.resolve()), "dtype": "bfloat16", "seed": 3}
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setattr(evaluate.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(evaluate.EvaluateError, match=r"benchmark.backend is 'vllm' but vLLM is not installed"):
        evaluate.lm_eval_model_args("vllm", model_dir, "float32", 0)
    assert evaluate.lm_eval_model_args("hf", model_dir, "float32", 0) == {"pretrained": str(model_dir),
                                                                          "dtype": "float32"}


def test_greedy_pass_rates_are_shared_across_seeds_and_sampled_ones_are_not(tmp_path, monkeypatch):
    student = lab_student(tmp_path, lora=False)
    prof = load_profile("ci", {"student_generation.max_new_tokens": 8})
    calls = []
    real = generation.student_samples
    monkeypatch.setattr(generation, "student_samples", lambda *a, **kw: calls.append(kw["k"]) or real(*a, **kw))
    first = generation.pass_rates(student, PROBLEMS, k=1, prof=prof, seed=0, cache_dir=tmp_path)
    again = generation.pass_rates(student, PROBLEMS, k=1, prof=prof, seed=123, cache_dir=tmp_path)  # another stage
    assert calls == [1] and again.equals(first)  # greedy: the seed changes nothing, so the cache answers
    generation.pass_rates(student, PROBLEMS, k=2, prof=prof, seed=0, cache_dir=tmp_path)
    generation.pass_rates(student, PROBLEMS, k=2, prof=prof, seed=1, cache_dir=tmp_path)
    assert calls == [1, 2, 2]  # sampled: each seed draws its own samples


class CharTokenizer:
    """One token per character."""

    def __len__(self):
        return 256

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


def test_n_tokens_counts_as_the_hf_path_does_though_vllm_keeps_the_tokens_it_stopped_on():
    from types import SimpleNamespace as C

    tok = CharTokenizer()
    eos = C(text="abc", token_ids=[1, 2, 3, 0], finish_reason="stop", stop_reason=None)  # EOS kept in token_ids
    stop_string = C(text="ab", token_ids=[1, 2, 3, 4], finish_reason="stop", stop_reason="\nQuestion:")
    length = C(text="abcd", token_ids=[1, 2, 3, 4], finish_reason="length", stop_reason=None)
    assert [vllm_backend.n_tokens(c, tok) for c in (eos, stop_string, length)] == [3, 2, 4]
    gens = vllm_backend.to_generations([C(outputs=[eos])], 2, tok)
    assert gens == [[models.Generation("abc", 3, False)] * 2]


def test_stage6_frees_the_gpu_before_and_after_each_lm_eval_vllm_run(tmp_path, monkeypatch, standin):
    import lm_eval

    student = lab_student(tmp_path, lora=False)
    model_dir = models.save_model(student.model, student.tokenizer, tmp_path / "model")
    lab_file = evaluate.write_problems_jsonl(PROBLEMS, tmp_path / "heldout.jsonl")
    vllm_backend.engine(str(model_dir))  # an engine of ours still held (a teacher's or a student's)
    held_during = []

    class Stop(Exception):
        pass

    def fake_simple_evaluate(**kwargs):  # lm-eval makes its own engine, which ends in a reference cycle
        held_during.append(len(standin.LLM.alive))
        llm = standin.LLM(kwargs["model_args"]["pretrained"])
        llm.cycle = llm
        del llm
        raise Stop

    monkeypatch.setattr(lm_eval, "simple_evaluate", fake_simple_evaluate)
    gc.disable()  # only an explicit collection frees a cycle
    try:
        with pytest.raises(Stop):
            evaluate.run_lm_eval(model_dir, ["syllabus_lab"], data_dir=None, limit=2, max_gen_toks=8, batch_size=2,
                                 apply_chat_template=False, output_dir=tmp_path / "out", seed=3, lab_file=lab_file,
                                 backend="vllm")
        assert held_during == [0]  # our engine was released before lm-eval's was made
        assert not standin.LLM.alive  # lm-eval's engine was collected when its run ended
    finally:
        gc.enable()


def vllm_teacher_spec(tmp_path, **sampling) -> P.Teacher:
    """A vllm teacher served from a saved lab model (the stand-in loads it with transformers)."""
    student = lab_student(tmp_path, lora=False)
    model_dir = models.save_model(student.model, student.tokenizer, tmp_path / "teacher")
    return P.Teacher(name="t", backend="vllm", model=str(model_dir),
                     sampling=P.Sampling(**{"max_new_tokens": 8, **sampling}))


def test_a_vllm_teacher_makes_its_engine_only_to_generate_and_lets_it_go_after(tmp_path, standin):
    spec = vllm_teacher_spec(tmp_path)
    teacher = teachers.make_teacher(spec)
    assert standin.LLM.made == [] and teacher.settings()["backend"] == "vllm"  # the tokenizer alone, no engine
    res = teachers.generate_traces(teacher, PROBLEMS, 2, cache_dir=tmp_path / "cache", seed=0, progress=False)
    assert res.n_generated == 2 * len(PROBLEMS) and len(standin.LLM.made) == 1
    teacher.close()
    assert not standin.LLM.alive  # its GPU memory goes before a student trains or another teacher generates
    again = teachers.make_teacher(spec)
    res = teachers.generate_traces(again, PROBLEMS, 2, cache_dir=tmp_path / "cache", seed=0, progress=False)
    assert res.n_generated == 0 and len(standin.LLM.made) == 1  # every trace cached: the model is never loaded


def test_a_vllm_teacher_sends_token_ids_with_a_seed_per_problem_in_large_chunks(tmp_path, standin):
    from syllabus.prompts import build_prompt
    from syllabus.runs import stable_seed
    from syllabus.tokens import encode_prompt

    spec = vllm_teacher_spec(tmp_path, temperature=0.8)
    teacher = teachers.make_teacher(spec)
    problems = lab.generate_problems(20, seed=9, modules=["add"], min_steps=1, max_steps=1, max_operand=9,
                                     max_value=20, id_prefix="c")
    res = teachers.generate_traces(teacher, problems, 2, cache_dir=tmp_path / "cache", seed=4, progress=False)
    assert res.n_generated == 40
    (call,) = standin.LLM.calls  # 20 problems, one generate call (16 per call before)
    tok = teacher.tokenizer
    assert [prompt for prompt, _ in call] == [
        {"prompt_token_ids": encode_prompt(tok, build_prompt(p.text, tok, teacher.use_chat))}
        for p in problems]  # token ids: vLLM adds no start token on top of what the chat template wrote
    assert [params.seed for _, params in call] == [stable_seed(4, p.id) % 2**31 for p in problems]
    assert teacher.settings()["version"] == 2  # traces of version 1 (one seed for all, text prompts) are not reused


def test_a_vllm_teachers_engine_spreads_over_its_gpus_with_a_bounded_context(tmp_path, standin):
    spec = vllm_teacher_spec(tmp_path)
    problems = PROBLEMS[:2]
    teachers.generate_traces(teachers.make_teacher(spec), problems, 1, cache_dir=tmp_path / "a", progress=False)
    big = spec.model_copy(update={"tensor_parallel_size": 2, "max_model_len": 96, "gpu_memory_utilization": 0.85})
    teacher = teachers.make_teacher(big)
    teachers.generate_traces(teacher, problems, 1, cache_dir=tmp_path / "b", progress=False)
    plain, split = standin.LLM.made
    assert not {"tensor_parallel_size", "max_model_len", "gpu_memory_utilization"} & set(plain)  # vLLM's defaults
    assert (split["tensor_parallel_size"], split["max_model_len"], split["gpu_memory_utilization"]) == (2, 96, 0.85)
    assert teacher.settings()["max_model_len"] == 96  # a bound can cut a trace short: part of the cache key
