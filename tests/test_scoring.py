"""The batched scorer against the one-at-a-time path, HF's own loss, hand values and the disk cache."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from syllabus import scoring
from syllabus.scoring import cached_scores, model_fingerprint, score_pairs, score_pairs_naive
from tiny_lm import SENTENCES, tiny_llama, tiny_tokenizer

torch.set_num_threads(1)
NUMERIC = ["nll", "entropy", "nll_unconditional", "ifd", "rank"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(tok)


def make_pairs(n: int = 23) -> list[tuple[str, str]]:
    """Prompts and targets of very different lengths, so batches carry a lot of padding."""
    return [(SENTENCES[i % 8][: 12 + 9 * (i % 7)], " " + " ".join(SENTENCES[(i * 3 + 1) % 8] for _ in range(1 + i % 4)))
            for i in range(n)]


@pytest.mark.parametrize("batch_size, max_batch_tokens", [(1, None), (4, None), (16, None), (64, 150)])
def test_batched_matches_one_at_a_time(model, tok, batch_size, max_batch_tokens):
    pairs = make_pairs()
    fast = score_pairs(model, tok, pairs, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    slow = score_pairs_naive(model, tok, pairs)
    assert list(fast.columns) == scoring.SCORE_COLUMNS
    np.testing.assert_allclose(fast[NUMERIC].to_numpy(), slow[NUMERIC].to_numpy(), atol=1e-5, rtol=0)
    assert (fast["n_tokens"] == slow["n_tokens"]).all() and (fast["n_prompt_tokens"] == slow["n_prompt_tokens"]).all()


def test_rank_is_one_for_the_top_token_and_clipped(model, tok):
    """The rank column counts the tokens the student prefers to the target token, plus one, clipped at 100."""
    import torch

    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    _, _, rank = scoring._token_stats(logits, torch.tensor([1, 3]))
    assert rank.tolist() == [1.0, 4.0]
    flat = torch.zeros((1, 300))
    flat[0, 1:201] = 1.0  # 200 tokens above token 0
    assert scoring._token_stats(flat, torch.tensor([0]))[2].tolist() == [float(scoring.RANK_CLIP)]
    scores = score_pairs(model, tok, make_pairs(5))
    assert ((scores["rank"] >= 1) & (scores["rank"] <= scoring.RANK_CLIP)).all()


def test_fast_token_stats_equal_the_reference_formulas():
    """The batched paths' one-pass statistics match the textbook ones, ties in rank and a -inf logit included."""
    import torch

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((64, 500), generator=gen) * 4
    logits[3, 7] = float("-inf")  # a masked token: the one-pass entropy is NaN there, so the row falls back
    logits[5, :] = 1.0  # all tied: rank 1, entropy log(500)
    labels = torch.randint(0, 500, (64,), generator=gen)
    for fast, ref in zip(scoring._fast_token_stats(logits, labels), scoring._token_stats(logits, labels)):
        assert torch.isfinite(fast).all()
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    assert scoring._fast_token_stats(logits, labels)[2][5].item() == 1.0


def test_head_chunks_fit_a_cpu_cache_and_are_larger_on_a_gpu():
    """On a CPU a chunk of logits is 8 MiB, so the statistics read it from cache; a GPU takes 64 MiB chunks."""
    import torch

    assert scoring._head_chunk_rows(49152, torch.device("cpu")) == (1 << 21) // 49152 == 42
    assert scoring._head_chunk_rows(49152, torch.device("cuda")) == (1 << 24) // 49152 == 341
    assert scoring._head_chunk_rows(10**9, torch.device("cpu")) == 1


def test_padding_cannot_change_a_score(model, tok):
    short = (SENTENCES[0][:20], " 3 * 12 = 36")
    long = (SENTENCES[5] * 3, " " + SENTENCES[4] * 3)
    alone = score_pairs(model, tok, [short])
    padded = score_pairs(model, tok, [long, short, long], batch_size=3)
    np.testing.assert_allclose(padded.loc[1, NUMERIC].to_numpy(float), alone.loc[0, NUMERIC].to_numpy(float), atol=1e-5)


def test_nll_equals_transformers_own_loss_on_target_tokens(model, tok):
    prompt, target = SENTENCES[2], " " + SENTENCES[3]
    ctx = tok(prompt, add_special_tokens=False)["input_ids"]
    tgt = tok(target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + tgt])
    labels = ids.clone()
    labels[0, : len(ctx)] = -100
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss.item()
    row = score_pairs(model, tok, [(prompt, target)]).iloc[0]
    assert row["n_tokens"] == len(tgt)
    assert row["nll"] == pytest.approx(loss, abs=1e-5)


def test_zero_head_gives_uniform_distribution(tok):
    """With an all-zero LM head every next-token distribution is uniform: NLL = entropy = log V."""
    m = tiny_llama(tok)
    m.config.tie_word_embeddings = False
    m.lm_head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=False)
    torch.nn.init.zeros_(m.lm_head.weight)
    row = score_pairs(m, tok, [(SENTENCES[0], " " + SENTENCES[1])]).iloc[0]
    assert row["nll"] == pytest.approx(math.log(len(tok)), abs=1e-5)
    assert row["entropy"] == pytest.approx(math.log(len(tok)), abs=1e-5)
    assert row["ifd"] == pytest.approx(1.0, abs=1e-6)


def test_unconditional_is_the_target_without_prompt(model, tok):
    target = " " + SENTENCES[5]
    both = score_pairs(model, tok, [(SENTENCES[4], target), ("", target)])
    assert both.loc[0, "nll_unconditional"] == pytest.approx(both.loc[1, "nll"], abs=1e-6)
    assert both.loc[0, "ifd"] == pytest.approx(both.loc[0, "nll"] / both.loc[0, "nll_unconditional"])
    assert both.loc[0, "nll"] != pytest.approx(both.loc[1, "nll"], abs=1e-4)  # the prompt matters


def test_input_order_is_kept(model, tok):
    pairs = make_pairs(9)
    order = [4, 0, 8, 2, 6, 1, 7, 3, 5]
    base = score_pairs(model, tok, pairs, batch_size=4)
    perm = score_pairs(model, tok, [pairs[i] for i in order], batch_size=4)
    np.testing.assert_allclose(perm[NUMERIC].to_numpy(), base.loc[order, NUMERIC].to_numpy(), atol=1e-5)


def test_large_vocab_head_chunks_match(model, tok, monkeypatch):
    pairs = make_pairs(7)
    expected = score_pairs_naive(model, tok, pairs)
    monkeypatch.setattr(scoring, "HEAD_CHUNK_ELEMENTS", 3 * len(tok))  # three positions per head chunk
    got = score_pairs(model, tok, pairs, batch_size=5)
    np.testing.assert_allclose(got[NUMERIC].to_numpy(), expected[NUMERIC].to_numpy(), atol=1e-5)


def test_soft_capped_logits_are_reproduced(tok):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    gemma = Gemma2ForCausalLM(cfg).eval()
    pairs = make_pairs(6)
    np.testing.assert_allclose(score_pairs(gemma, tok, pairs, batch_size=3)[NUMERIC].to_numpy(),
                               score_pairs_naive(gemma, tok, pairs)[NUMERIC].to_numpy(), atol=1e-5)


def test_batches_respect_rows_and_token_budget():
    lengths = [10, 50, 30, 50, 20, 5, 40]
    batches = scoring._batches(lengths, batch_size=3, max_batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) <= 3 and len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1
    assert batches[0] == [1, 3]  # longest first, stable on ties


def test_models_with_other_logit_heads_fall_back_to_full_logits(tok):
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    cfg = GraniteConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, logits_scaling=4.0,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    granite = GraniteForCausalLM(cfg).eval()
    pairs = make_pairs(6)
    assert not scoring._head_reproduces_logits(granite, [5, 6, 7, 8])  # logits are divided by logits_scaling
    np.testing.assert_allclose(score_pairs(granite, tok, pairs, batch_size=3)[NUMERIC].to_numpy(),
                               score_pairs_naive(granite, tok, pairs)[NUMERIC].to_numpy(), atol=1e-5)


def test_max_length_truncates_and_flags(model, tok):
    pairs = [(SENTENCES[5] * 2, " " + SENTENCES[5] * 2), (SENTENCES[0][:10], " 36")]
    df = score_pairs(model, tok, pairs, max_length=32)
    assert df["truncated"].tolist() == [True, False]
    assert df.loc[0, "n_prompt_tokens"] + df.loc[0, "n_tokens"] == 32
    assert df.loc[0, "n_tokens"] >= 16  # the target keeps at least half
    ref = score_pairs_naive(model, tok, pairs, max_length=32)
    np.testing.assert_allclose(df[NUMERIC].to_numpy(), ref[NUMERIC].to_numpy(), atol=1e-5)


def test_bad_pairs_name_the_row(model, tok):
    with pytest.raises(ValueError, match="pair 1 has an empty target"):
        score_pairs(model, tok, [("Question: a", " b"), ("Question: c", "")])
    with pytest.raises(ValueError, match="pair 0 is not a"):
        score_pairs(model, tok, [("only a prompt",)])


def test_scoring_leaves_training_mode(model, tok):
    model.train()
    score_pairs(model, tok, make_pairs(2))
    assert model.training
    model.eval()


def test_fingerprint_is_stable_and_sees_every_weight(tok):
    a, b = tiny_llama(tok, seed=3), tiny_llama(tok, seed=3)
    assert model_fingerprint(a) == model_fingerprint(b) == model_fingerprint(copy.deepcopy(a))
    with torch.no_grad():
        b.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(tiny_llama(tok, seed=4))


def test_cache_scores_each_pair_once(model, tok, tmp_path):
    calls = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(1), with_kwargs=True)
    decoder_hook = model.get_decoder().register_forward_pre_hook(lambda mod, args, kwargs: calls.append(1),
                                                                 with_kwargs=True)
    try:
        pairs = make_pairs(8)
        first = cached_scores(model, tok, pairs, cache_dir=tmp_path)
        assert first.attrs["n_scored"] == 8 and calls
        calls.clear()
        again = cached_scores(model, tok, pairs[::-1], cache_dir=tmp_path)
        assert again.attrs == {**again.attrs, "n_cached": 8, "n_scored": 0}
        assert calls == []  # the model never ran
        np.testing.assert_array_equal(again[NUMERIC].to_numpy(), first[NUMERIC].to_numpy()[::-1])
        more = cached_scores(model, tok, pairs + [("Question: new", " 7")], cache_dir=tmp_path)
        assert more.attrs["n_scored"] == 1 and more.attrs["n_cached"] == 8
    finally:
        hook.remove()
        decoder_hook.remove()
    other = tiny_llama(tok, seed=9)
    assert cached_scores(other, tok, pairs, cache_dir=tmp_path).attrs["n_scored"] == 8  # another model, new key
    assert not list(tmp_path.rglob("*.tmp")) and len(list(tmp_path.glob("*/part-*.parquet"))) == 3
    np.testing.assert_allclose(first[NUMERIC].to_numpy(), score_pairs(model, tok, pairs)[NUMERIC].to_numpy(), atol=1e-5)


def test_damaged_cache_file_is_named(model, tok, tmp_path):
    cached_scores(model, tok, make_pairs(2), cache_dir=tmp_path)
    part = next(tmp_path.glob("*/part-*.parquet"))
    part.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="delete the file"):
        cached_scores(model, tok, make_pairs(2), cache_dir=tmp_path)


# --------------------------------------------------------------------------- prompt sharing
def shared_prompt_pairs() -> list[tuple[str, str]]:
    """Several traces per prompt, of very different lengths, in mixed order (as candidate datasets are)."""
    prompts = [SENTENCES[0], SENTENCES[2][:30], SENTENCES[4], SENTENCES[6][:9]]
    return [(prompts[(i * 5) % 4], " " + " ".join(SENTENCES[(i * 3 + 1) % 8] for _ in range(1 + i % 3))[: 8 + 11 * (i % 9)])
            for i in range(22)] + [(prompts[1], " 7")]


@pytest.mark.parametrize("batch_size, max_batch_tokens", [(1, None), (3, None), (64, None), (64, 60), (8, 25)])
def test_shared_prompts_match_one_at_a_time(model, tok, batch_size, max_batch_tokens):
    pairs = shared_prompt_pairs()
    shared = score_pairs(model, tok, pairs, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    plain = score_pairs(model, tok, pairs, batch_size=batch_size, max_batch_tokens=max_batch_tokens, share_prompts=False)
    slow = score_pairs_naive(model, tok, pairs)
    np.testing.assert_allclose(shared[NUMERIC].to_numpy(), slow[NUMERIC].to_numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(shared[NUMERIC].to_numpy(), plain[NUMERIC].to_numpy(), atol=1e-5, rtol=0)
    assert shared[["n_prompt_tokens", "n_tokens", "truncated"]].equals(slow[["n_prompt_tokens", "n_tokens", "truncated"]])


def test_each_distinct_prompt_runs_once_per_window(tok):
    cond, _, _ = scoring.encode_pairs(tok, shared_prompt_pairs())
    windows = scoring._prompt_windows(cond, batch_size=2, max_batch_tokens=None)
    assert sorted(i for w in windows for i in w) == list(range(len(cond)))
    contexts = [{tuple(cond[i][0]) for i in w} for w in windows]
    assert all(len(c) <= 2 for c in contexts)  # at most batch_size distinct prompts per window
    assert sum(len(c) for c in contexts) == len({tuple(c) for c, _ in cond})  # each prompt in one window only
    widths = [max(len(c) for c in cs) for cs in contexts]
    assert widths == sorted(widths, reverse=True)  # longest prompts first
    capped = scoring._prompt_windows(cond, batch_size=64, max_batch_tokens=20)
    assert all(len(cs) == 1 or len(cs) * max(map(len, cs)) <= 20
               for cs in ({tuple(cond[i][0]) for i in w} for w in capped))


def test_shared_prompts_on_a_full_logits_model_and_a_soft_capped_one(tok):
    from transformers import Gemma2Config, Gemma2ForCausalLM, GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    granite = GraniteForCausalLM(GraniteConfig(logits_scaling=4.0, **common)).eval()
    gemma = Gemma2ForCausalLM(Gemma2Config(head_dim=8, final_logit_softcapping=0.5, **common)).eval()
    pairs = shared_prompt_pairs()
    for m in (granite, gemma):
        cond, _, _ = scoring.encode_pairs(tok, pairs)
        assert scoring._sharing_works(m, cond[0], tok.pad_token_id)
        np.testing.assert_allclose(score_pairs(m, tok, pairs, batch_size=4)[NUMERIC].to_numpy(),
                                   score_pairs_naive(m, tok, pairs)[NUMERIC].to_numpy(), atol=1e-5)

