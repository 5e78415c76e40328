"""The profile's ``device``: resolved once, refused up front when the machine cannot honour it, and
every tensor that enters a student (training, scoring, generation) on the student's device."""

from __future__ import annotations


import pytest
import torch

from syllabus import devices, models, params as P, scoring, train
from syllabus.params import ParamsError, load_profile
from syllabus import preflight
from syllabus.preflight import check_runnable
from tiny_lm import apple_pairs

torch.set_num_threads(1)

ARCH = P.LabArch(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=128)
TRAINING = P.Training(batch_size=4, max_seq_len=96, learning_rate=3e-3)
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")


@pytest.fixture(autouse=True)
def one_thread():
    yield
    torch.set_num_threads(1)


def lab_pairs(n: int = 24, seed: int = 0) -> list[tuple[str, str]]:
    return apple_pairs(n, seed)


# --------------------------------------------------------------------------- the setting
def test_cuda_on_a_machine_without_a_gpu_is_one_clear_error_before_any_work(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    prof = load_profile("ci", {"device": "cuda"})
    with pytest.raises(ParamsError) as err:
        check_runnable(prof)
    message = str(err.value)
    assert "cannot run (1 problem(s)); nothing was started" in message
    assert "key 'device': is 'cuda' but this machine has no usable GPU" in message and "device: cpu" in message
    with pytest.raises(devices.DeviceError, match="no usable GPU"):  # a stage called directly says the same
        models.load_student(P.Student(name="s", source="lab", arch=ARCH), cache_dir="unused", training=TRAINING,
                            vocab_texts=["a b"], device="cuda")
    check_runnable(load_profile("ci", {"device": "auto"}))  # auto falls back to the CPU


def test_auto_resolves_to_the_gpu_only_when_there_is_one(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cuda") == torch.device("cuda")
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_a_vllm_backend_without_vllm_is_refused_up_front(monkeypatch):
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else object())
    prof = load_profile("ci", {"student_generation.backend": "vllm", "benchmark.backend": "vllm"})
    with pytest.raises(ParamsError) as err:
        check_runnable(prof)
    assert "key 'student_generation.backend': is 'vllm' but vLLM is not installed" in str(err.value)
    assert "key 'benchmark.backend': is 'vllm'" in str(err.value)


# --------------------------------------------------------------------------- tensors on the model's device
def _guard(model) -> list[int]:
    """Forward pre-hooks on every module of ``model`` that assert each tensor entering it (positional or
    keyword) is on the model's device; returns a list that counts the checked calls."""
    device = devices.model_device(model)
    calls: list[int] = []

    def check(module, args, kwargs):
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        wrong = [(tuple(t.shape), str(t.device)) for t in tensors if t.device != device]
        assert not wrong, f"{type(module).__name__} got tensors {wrong} off the model's device {device}"
        calls.append(len(tensors))

    for module in model.modules():
        module.register_forward_pre_hook(check, with_kwargs=True)
    return calls


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU), pytest.param("auto")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_students_train_score_and_generate_on_the_profile_device_in_its_dtype(tmp_path, device, dtype):
    pairs = lab_pairs()
    spec = P.Student(name="s", source="lab", arch=ARCH, warmup_steps=2, dtype=dtype)
    model, tok = models.load_student(spec, cache_dir=tmp_path, training=TRAINING, threads=1, device=device,
                                     pretrain_texts=[p + t for p, t in pairs])
    assert devices.model_device(model) == devices.resolve_device(device)
    # mixed precision: float32 weights, forward passes in the student's dtype (tests/test_precision.py)
    assert {p.dtype for p in model.parameters()} == {torch.float32} and devices.compute_dtype(model) == dtype
    calls = _guard(model)
    result = train.sft(model, tok, pairs, steps=2, cfg=TRAINING, seed=0, out_dir=tmp_path / "sft")
    assert len(result.losses) == 2 and calls
    trained = len(calls)
    scores = scoring.score_pairs(model, tok, pairs[:6], batch_size=4, max_batch_tokens=128)
    assert scores["nll"].notna().all() and len(calls) > trained
    scored = len(calls)
    gens = models.generate(model, tok, [p for p, _ in pairs[:3]], max_new_tokens=4, temperature=0.7, num_samples=2,
                           batch_size=4, seed=1)
    assert [len(g) for g in gens] == [2, 2, 2] and len(calls) > scored
    assert devices.model_device(model) == devices.resolve_device(device)  # nothing moved the model back


def test_lora_students_land_on_the_device_with_their_adapters(tmp_path):
    pairs = lab_pairs(8)
    spec = P.Student(name="s", source="lab", arch=ARCH, warmup_steps=1, lora=True)
    cfg = TRAINING.model_copy(update={"lora_targets": ["q_proj", "v_proj"]})
    model, _ = models.load_student(spec, cache_dir=tmp_path, training=cfg, threads=1, device="auto",
                                   pretrain_texts=[p + t for p, t in pairs])
    want = devices.resolve_device("auto")
    assert {p.device for p in model.parameters()} == {want}
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_the_guard_catches_a_tensor_off_the_models_device():
    tok = models.lab_tokenizer(["a b c"])
    model = models.build_lab_model(ARCH, tok, 0)
    _guard(model)
    with pytest.raises(AssertionError, match="off the model's device cpu"):
        model(input_ids=torch.zeros((1, 3), dtype=torch.long, device="meta"))


def test_the_lab_gpu_profile_is_tinys_design_with_larger_bf16_students_on_the_gpu():
    gpu, tiny = load_profile("lab-gpu"), load_profile("tiny")
    assert gpu.device == "cuda" and {s.dtype for s in gpu.students} == {"bfloat16"}
    assert gpu.data == tiny.data.model_copy(update={"lab": tiny.data.lab.model_copy(update={"n_pretrain": 6000})})
    assert [t.model_dump() for t in gpu.teachers] == [t.model_dump() for t in tiny.teachers]
    assert (gpu.teacher_selection.seeds, gpu.correlation.seeds, gpu.dynamic.seeds) == ([0, 1, 2],) * 3
    assert gpu.correlation.datasets == tiny.correlation.datasets and gpu.dynamic.policies == tiny.dynamic.policies
    for big, small in zip(gpu.students, tiny.students):
        assert big.arch.hidden_size > small.arch.hidden_size and big.arch.num_layers > small.arch.num_layers
        assert (big.warmup_modules, big.warmup_style) == (small.warmup_modules, small.warmup_style)
    check_runnable(load_profile("lab-gpu", {"device": "cpu"}))  # everything but the GPU is there
