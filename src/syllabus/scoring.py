"""Teacher-forcing scores of (prompt, target) pairs under a causal LM: NLL, entropy and IFD.

For each pair the student reads the prompt and is scored on the target tokens only:

- ``nll``: mean per-token negative log-likelihood of the target given the prompt (nats);
- ``entropy``: mean per-token entropy of the student's next-token distribution at the target positions;
- ``nll_unconditional``: mean NLL of the same target tokens without the prompt (only a start token
  before them), so that ``ifd = nll / nll_unconditional`` (instruction-following difficulty);
- ``rank``: mean rank of each target token among the student's next-token logits (1 = its top
  choice), clipped at ``RANK_CLIP`` = 100, from the same logits as ``nll`` (no second pass): the
  numerator of the Rank-Surprisal Ratio (arXiv 2601.14249).

``score_pairs`` is the fast path: pairs are sorted by length, right-padded into batches with attention
masks and run under ``torch.inference_mode``; the LM head is applied to the target positions only,
in chunks small enough to stay in cache (``HEAD_CHUNK_ELEMENTS``), so a large vocabulary never
materialises a (batch x length x vocab) tensor and the statistics of a chunk (one exponential,
``_fast_token_stats``) read it from cache. Pairs that
share a prompt (the traces of one problem; in the IFD pass every target shares the start token)
share one forward pass over it: the prompt runs once, its KV cache is repeated for each of its
targets, and the targets run on top of it (``share_prompts=True``, the default).
``score_pairs_naive`` scores one example at a time from the model's full logits: it is the baseline
of ``benchmarks/bench_dmc_scoring.py`` and the reference the fast path must match to 1e-5.
``cached_scores`` keeps scores on disk per (model fingerprint, settings), one row per pair, so
re-scoring an unchanged pair costs nothing. A student marked to compute in bfloat16 (``devices.autocast``)
is scored under autocast; the statistics are taken from float32 logits.

Tokenisation: the prompt and the target are tokenised separately (target without special tokens)
and concatenated, the usual SFT layout. The tokenizer's own start token (BOS) is prepended when
the tokenizer adds one. ``max_length`` truncates long pairs: the target keeps its first tokens (at
least half of ``max_length``), the prompt keeps its last; such rows are marked ``truncated``.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from .devices import autocast
from .runs import atomic_write_bytes, hash_obj

SCORER_VERSION = 4  # 2: prompts shared through a KV cache (equal to version 1 to 1e-5); 3: adds rank;
# 4: statistics in one exponential pass over cache-sized chunks (equal to version 3 to 1e-6)
SCORE_COLUMNS = ["n_prompt_tokens", "n_tokens", "nll", "entropy", "nll_unconditional", "ifd", "rank", "truncated"]
RANK_CLIP = 100  # the Rank-Surprisal Ratio clips token ranks here
HEAD_CHUNK_ELEMENTS = 1 << 21  # logits computed at once on a CPU: positions x vocab (8 MiB in float32, so the
# statistics' passes over a chunk run in cache: 3.5x faster than 64 MiB chunks on GSM8K's 2,000 tokens)
ACCELERATOR_HEAD_CHUNK_ELEMENTS = 1 << 24  # on a GPU (64 MiB): fewer, larger head matmuls; no CPU cache to fit

Encoded = tuple[list[int], list[int]]  # (context ids, target ids)


# --------------------------------------------------------------------------- tokenisation
def _start_ids(tokenizer) -> list[int]:
    """What the tokenizer puts before a text ([BOS] for Llama-style tokenizers, [] for GPT-2 style)."""
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]:
        return [bos]
    return []


def _unconditional_start(tokenizer, start: list[int]) -> list[int]:
    """Context for scoring a target without its prompt: the start token, else BOS, else EOS."""
    if start:
        return start
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return [tid]
    raise ValueError("scoring: the tokenizer has neither a BOS nor an EOS token, so a target cannot be "
                     "scored without its prompt; set tokenizer.bos_token or pass unconditional=False")


def _checked_pair(i: int, pair: Any) -> tuple[str, str]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
        raise ValueError(f"scoring: pair {i} is not a (prompt, target) pair of strings: {pair!r:.120}")
    return pair[0], pair[1]


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int | None = None
                 ) -> tuple[list[Encoded], list[Encoded], list[bool]]:
    """Token ids of each pair with and without its prompt, and whether it was truncated."""
    if max_length is not None and max_length < 4:
        raise ValueError(f"scoring: max_length={max_length} is too small; use at least 4 (or None for no limit)")
    start = _start_ids(tokenizer)
    checked = [_checked_pair(i, pair) for i, pair in enumerate(pairs)]
    prompts, targets = [p for p, _ in checked], [t for _, t in checked]
    # One batched call per side (the Rust tokenizer encodes a list far faster than item by item).
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if checked else []
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"] if checked else []
    conditional, unconditional, truncated = [], [], []
    for i, (prompt, ids, tgt) in enumerate(zip(prompts, prompt_ids, target_ids)):
        ctx = start + list(ids)
        tgt = list(tgt)
        if not tgt:
            raise ValueError(f"scoring: pair {i} has an empty target (prompt {prompt[:60]!r}); "
                             "drop it or give it a trace text")
        if not ctx:
            ctx = _unconditional_start(tokenizer, start)
        cut = max_length is not None and len(ctx) + len(tgt) > max_length
        if cut:
            keep_t = min(len(tgt), max(max_length - len(ctx), max_length // 2))
            ctx, tgt = ctx[len(ctx) - (max_length - keep_t):], tgt[:keep_t]
        conditional.append((ctx, tgt))
        unconditional.append((_unconditional_start(tokenizer, start), tgt))
        truncated.append(cut)
    return conditional, unconditional, truncated


def _frame(conditional: list[Encoded], truncated: list[bool], nll, entropy, nll_unc, rank) -> pd.DataFrame:
    df = pd.DataFrame({
        "n_prompt_tokens": [len(c) for c, _ in conditional],
        "n_tokens": [len(t) for _, t in conditional],
        "nll": np.asarray(nll, dtype=float),
        "entropy": np.asarray(entropy, dtype=float),
        "nll_unconditional": np.asarray(nll_unc, dtype=float),
    })
    with np.errstate(divide="ignore", invalid="ignore"):
        df["ifd"] = df["nll"] / df["nll_unconditional"].where(df["nll_unconditional"] > 0)
    df["rank"] = np.asarray(rank, dtype=float)
    df["truncated"] = truncated
    return df[SCORE_COLUMNS]


def _device(model) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------- the naive baseline
def _token_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position NLL of ``labels``, entropy and the label's rank (1 + tokens with a higher logit,
    clipped at ``RANK_CLIP``), from logits (positions x vocab), in float32."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, labels[:, None])[:, 0]
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    rank = 1 + (logits > logits.gather(-1, labels[:, None])).sum(-1)
    return nll, entropy, rank.clamp(max=RANK_CLIP).to(nll.dtype)


def _fast_token_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_token_stats`` in fewer passes over the logits, for the batched paths (equal to 1e-5): one
    exponential, and the entropy as log Z - sum(e * z) / Z with z the max-shifted logits and e = exp(z).
    Rows where that is not finite (a logit of -inf) are recomputed by ``_token_stats``."""
    logits = logits.float()
    z = logits - logits.amax(-1, keepdim=True)
    e = z.exp()
    total = e.sum(-1)
    label_z = z.gather(-1, labels[:, None])[:, 0]
    log_total = total.log()
    nll = log_total - label_z
    entropy = log_total - (e * z).sum(-1) / total
    rank = (1 + (logits > logits.gather(-1, labels[:, None])).sum(-1)).clamp(max=RANK_CLIP).to(nll.dtype)
    bad = ~torch.isfinite(entropy)
    if bad.any():
        nll[bad], entropy[bad], rank[bad] = _token_stats(logits[bad], labels[bad])
    return nll, entropy, rank


def _score_one(model, ctx: list[int], tgt: list[int]) -> tuple[float, float, float]:
    ids = torch.tensor([ctx + tgt], device=_device(model))
    logits = model(input_ids=ids, use_cache=False).logits[0]
    nll, ent, rank = _token_stats(logits[len(ctx) - 1: len(ctx) + len(tgt) - 1], ids[0, len(ctx):])
    return nll.double().mean().item(), ent.double().mean().item(), rank.double().mean().item()


def score_pairs_naive(model, tokenizer, pairs: Sequence[tuple[str, str]], *, max_length: int | None = None,
                      unconditional: bool = True) -> pd.DataFrame:
    """One pair at a time from the model's full logits (the baseline and the reference)."""
    conditional, uncond, truncated = encode_pairs(tokenizer, pairs, max_length)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(model):
            cond = [_score_one(model, c, t) for c, t in conditional]
            unc = [_score_one(model, c, t)[0] for c, t in uncond] if unconditional else [np.nan] * len(cond)
    finally:
        model.train(was_training)
    return _frame(conditional, truncated, [c[0] for c in cond], [c[1] for c in cond], unc, [c[2] for c in cond])


# --------------------------------------------------------------------------- the batched scorer
def _head(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden states -> logits, as the model's own forward computes them (LM head, optional soft-cap)."""
    lm_head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden)
        return torch.tanh(logits / cap) * cap if cap else logits

    return head


def _head_reproduces_logits(model, ids: list[int]) -> bool:
    """Check once that decoder + head gives the model's logits (else use the full-logits path)."""
    if model.get_output_embeddings() is None:
        return False
    x = torch.tensor([ids[:8]], device=_device(model))
    full = model(input_ids=x, use_cache=False).logits[0].float()
    try:
        hidden = model.get_decoder()(input_ids=x, use_cache=False).last_hidden_state
        mine = _head(model)(hidden[0]).float()
    except (AttributeError, TypeError, ValueError):  # an architecture without a plain decoder + head
        return False
    return full.shape == mine.shape and torch.allclose(full, mine, rtol=1e-4, atol=1e-4)


def _batches(lengths: list[int], batch_size: int, max_batch_tokens: int | None) -> list[list[int]]:
    """Indices sorted by length (longest first), cut into batches of at most ``batch_size`` rows and,
    when set, at most ``max_batch_tokens`` padded tokens (rows x longest row)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            rows = len(batches[-1]) + 1
            width = lengths[batches[-1][0]]
            if rows <= batch_size and (max_batch_tokens is None or rows * width <= max_batch_tokens):
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


def _head_chunk_rows(vocab: int, device: torch.device) -> int:
    """Positions whose logits go through the head and the statistics at once (``vocab`` 0: the model's own
    forward already gave full logits, and chunks only bound the rows of each statistics call)."""
    elements = HEAD_CHUNK_ELEMENTS if device.type == "cpu" else ACCELERATOR_HEAD_CHUNK_ELEMENTS
    return max(1, elements // max(vocab, 1))


def _head_plan(model, ids: list[int], entropy: bool) -> tuple[bool, Callable, int, Callable]:
    """What both batched paths need to turn the decoder's output into statistics: ``fast`` (decoder + head
    reproduce the model's logits on ``ids``, so the head runs on target positions only), the head (the
    identity when not fast: the output is then the logits), positions per head chunk, and the statistics
    (NLL alone for the IFD pass)."""
    fast = _head_reproduces_logits(model, ids)
    head = _head(model) if fast else (lambda x: x)
    vocab = model.get_output_embeddings().weight.shape[0] if fast else 0
    return fast, head, _head_chunk_rows(vocab, _device(model)), (_fast_token_stats if entropy else _nll_only)


def _nll_only(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position NLL by the fused cross-entropy kernel; no entropy or rank (NaN), for the IFD pass."""
    nll = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    nan = torch.full_like(nll, float("nan"))
    return nll, nan, nan


def _score_sequences(model, seqs: list[Encoded], batch_size: int, max_batch_tokens: int | None, pad_id: int,
                     progress: bool = False, entropy: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean target NLL, entropy and clipped rank (NaN when not asked for) of each (context, target)
    sequence, batched and length-sorted."""
    device, decoder = _device(model), model.get_decoder()
    fast, head, chunk, stats = _head_plan(model, seqs[0][0] + seqs[0][1], entropy)
    nll_sum, ent_sum, rank_sum = np.zeros(len(seqs)), np.zeros(len(seqs)), np.zeros(len(seqs))
    batches = _batches([len(c) + len(t) for c, t in seqs], batch_size, max_batch_tokens)
    if progress:
        batches = tqdm(batches, desc="scoring", unit="batch")
    for idx in batches:
        width = max(len(seqs[i][0]) + len(seqs[i][1]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        rows, cols, owner = [], [], []
        for b, i in enumerate(idx):
            ctx, tgt = seqs[i]
            n = len(ctx) + len(tgt)
            input_ids[b, :n] = torch.tensor(ctx + tgt)
            mask[b, :n] = 1
            rows += [b] * len(tgt)
            cols += range(len(ctx), n)  # positions of the target tokens
            owner += [i] * len(tgt)
        input_ids, mask = input_ids.to(device), mask.to(device)
        rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        labels = input_ids[rows_t, cols_t]
        if fast:  # hidden state before each target token, then the head on those positions only
            hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
            hidden = hidden[rows_t, cols_t - 1]
            parts = [stats(head(hidden[s:s + chunk]), labels[s:s + chunk]) for s in range(0, len(rows), chunk)]
        else:
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            parts = [stats(logits[rows_t[s:s + chunk], cols_t[s:s + chunk] - 1], labels[s:s + chunk])
                     for s in range(0, len(rows), chunk)]
        nll = torch.cat([p[0] for p in parts]).double().cpu().numpy()
        ent = torch.cat([p[1] for p in parts]).double().cpu().numpy()
        np.add.at(nll_sum, owner, nll)
        np.add.at(ent_sum, owner, ent)
        np.add.at(rank_sum, owner, torch.cat([p[2] for p in parts]).double().cpu().numpy())
    counts = np.array([len(t) for _, t in seqs], dtype=float)
    return nll_sum / counts, ent_sum / counts, rank_sum / counts


def score_pairs(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16,
                max_batch_tokens: int | None = None, max_length: int | None = None, unconditional: bool = True,
                progress: bool = False, share_prompts: bool = True) -> pd.DataFrame:
    """Scores of each (prompt, target) pair, in input order: see ``SCORE_COLUMNS`` and the module doc.

    A batch holds at most ``batch_size`` rows and, when set, ``max_batch_tokens`` padded tokens.
    ``share_prompts`` runs each distinct prompt once for all its targets (a KV cache); False scores
    every pair in full (the previous path; equal to 1e-5).
    """
    if batch_size < 1:
        raise ValueError(f"scoring: batch_size must be >= 1, got {batch_size}")
    conditional, uncond, truncated = encode_pairs(tokenizer, pairs, max_length)
    if not conditional:
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "truncated" else float) for c in SCORE_COLUMNS})
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(model):
            score = _score_shared if share_prompts and _sharing_works(model, conditional[0], pad_id) else _score_sequences
            nll, ent, rank = score(model, conditional, batch_size, max_batch_tokens, pad_id, progress)
            nll_unc = (score(model, uncond, batch_size, max_batch_tokens, pad_id, progress, entropy=False)[0]
                       if unconditional else np.full(len(conditional), np.nan))
    finally:
        model.train(was_training)
    return _frame(conditional, truncated, nll, ent, nll_unc, rank)


# --------------------------------------------------------------------------- prompt sharing
def _prompt_windows(seqs: list[Encoded], batch_size: int, max_batch_tokens: int | None) -> list[list[int]]:
    """Row indices per window: the rows of a set of distinct contexts that run as one batch (longest
    context first; at most ``batch_size`` contexts and, when set, ``max_batch_tokens`` padded tokens)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(seqs):
        groups.setdefault(tuple(ctx), []).append(i)
    contexts = sorted(groups, key=lambda c: (-len(c), groups[c][0]))
    windows: list[list[tuple[int, ...]]] = []
    for ctx in contexts:
        if windows:
            n, width = len(windows[-1]) + 1, len(windows[-1][0])
            if n <= batch_size and (max_batch_tokens is None or n * width <= max_batch_tokens):
                windows[-1].append(ctx)
                continue
        windows.append([ctx])
    return [[i for ctx in window for i in groups[ctx]] for window in windows]


def _forward(model, fast: bool, cache=None, **inputs):
    """(hidden states if ``fast`` else logits, the KV cache) of one forward pass, with ``cache`` as past
    (transformers 5 renamed ``past_key_values`` to ``cache``; the decoder's signature says which)."""
    decoder = model.get_decoder()
    if cache is not None:
        name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        inputs[name] = cache
    out = decoder(**inputs) if fast else model(**inputs)
    new_cache = out["cache"] if "cache" in out else out["past_key_values"]
    return (out.last_hidden_state if fast else out.logits), new_cache


def _select_cache(cache, index: torch.Tensor):
    """A new ``DynamicCache`` holding batch rows ``index`` of ``cache`` (rows may repeat)."""
    return DynamicCache([(keys.index_select(0, index), values.index_select(0, index), *rest)
                         for keys, values, *rest in cache])


def _window_outputs(model, fast: bool, window: list[int], seqs: list[Encoded], batch_size: int,
                    max_batch_tokens: int | None, pad_id: int) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Per target batch of a window: the hidden state (or logits) before each target token, (rows x
    width x d), and the row indices. The window's distinct contexts run once (right-padded, with a KV
    cache); its rows, longest target first, run in batches on top of their context's cache, at their
    own positions."""
    device = _device(model)
    contexts: dict[tuple[int, ...], int] = {}
    for i in window:
        contexts.setdefault(tuple(seqs[i][0]), len(contexts))
    ctx_width = max(len(c) for c in contexts)
    ctx_ids = torch.full((len(contexts), ctx_width), pad_id, dtype=torch.long)
    ctx_mask = torch.zeros((len(contexts), ctx_width), dtype=torch.long)
    for ctx, u in contexts.items():
        ctx_ids[u, :len(ctx)] = torch.tensor(ctx)
        ctx_mask[u, :len(ctx)] = 1
    ctx_mask = ctx_mask.to(device)
    ctx_out, cache = _forward(model, fast, input_ids=ctx_ids.to(device), attention_mask=ctx_mask, use_cache=True)
    ctx_len = torch.tensor([len(c) for c in contexts], device=device)
    last = ctx_out[torch.arange(len(contexts), device=device), ctx_len - 1]  # before each first target token
    rows = sorted(window, key=lambda i: (-len(seqs[i][1]), i))
    start = 0
    while start < len(rows):
        width = len(seqs[rows[start]][1]) - 1  # the targets run without their last token (nothing follows it)
        n = min(batch_size, len(rows) - start)
        if max_batch_tokens is not None:
            n = max(1, min(n, max_batch_tokens // max(1, width)))
        batch, start = rows[start:start + n], start + n
        owner = torch.tensor([contexts[tuple(seqs[i][0])] for i in batch], device=device)
        first = last[owner][:, None]
        if width == 0:
            yield first, batch
            continue
        tgt_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        tgt_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            tgt = seqs[i][1][:-1]
            tgt_ids[r, :len(tgt)] = torch.tensor(tgt, dtype=torch.long)
            tgt_mask[r, :len(tgt)] = 1
        mask = torch.cat([ctx_mask[owner], tgt_mask.to(device)], dim=1)
        positions = ctx_len[owner][:, None] + torch.arange(width, device=device)[None]
        out, _ = _forward(model, fast, _select_cache(cache, owner), input_ids=tgt_ids.to(device),
                          attention_mask=mask, position_ids=positions, use_cache=True)
        yield torch.cat([first, out], dim=1), batch


def _score_shared(model, seqs: list[Encoded], batch_size: int, max_batch_tokens: int | None, pad_id: int,
                  progress: bool = False, entropy: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``_score_sequences``, each distinct context run once for all its targets (``_window_outputs``)."""
    device = _device(model)
    fast, head, chunk, stats = _head_plan(model, seqs[0][0] + seqs[0][1], entropy)
    nll_sum, ent_sum, rank_sum = np.zeros(len(seqs)), np.zeros(len(seqs)), np.zeros(len(seqs))
    windows = _prompt_windows(seqs, batch_size, max_batch_tokens)
    if progress:
        windows = tqdm(windows, desc="scoring", unit="batch")
    for window in windows:
        for out, rows in _window_outputs(model, fast, window, seqs, batch_size, max_batch_tokens, pad_id):
            pick_rows, pick_cols, labels, owner = [], [], [], []
            for r, i in enumerate(rows):
                tgt = seqs[i][1]
                pick_rows += [r] * len(tgt)
                pick_cols += range(len(tgt))
                labels += tgt
                owner += [i] * len(tgt)
            picked = out[torch.tensor(pick_rows, device=device), torch.tensor(pick_cols, device=device)]
            labels_t = torch.tensor(labels, device=device)
            parts = [stats(head(picked[s:s + chunk]), labels_t[s:s + chunk]) for s in range(0, len(labels), chunk)]
            np.add.at(nll_sum, owner, torch.cat([p[0] for p in parts]).double().cpu().numpy())
            np.add.at(ent_sum, owner, torch.cat([p[1] for p in parts]).double().cpu().numpy())
            np.add.at(rank_sum, owner, torch.cat([p[2] for p in parts]).double().cpu().numpy())
    counts = np.array([len(t) for _, t in seqs], dtype=float)
    return nll_sum / counts, ent_sum / counts, rank_sum / counts


def _sharing_works(model, seq: Encoded, pad_id: int) -> bool:
    """Check once per call that the shared path reproduces the plain one on a short pair (a model whose
    forward takes no KV cache or position ids falls back to the plain path)."""
    ctx, tgt = seq[0][-6:], (seq[1] * 3)[:6]
    probe = [(ctx, tgt), (ctx, tgt[:3])]
    with torch.inference_mode():
        try:
            shared = _score_shared(model, probe, 2, None, pad_id)[0]
        except (AttributeError, TypeError, ValueError, NotImplementedError, RuntimeError):
            return False
        plain = _score_sequences(model, probe, 2, None, pad_id)[0]
    return bool(np.allclose(shared, plain, rtol=1e-4, atol=1e-4))


# --------------------------------------------------------------------------- fingerprints and cache
def model_fingerprint(model) -> str:
    """SHA-256 of the model class and every tensor of its state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"|{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's full definition (vocabulary, merges, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else hash_obj(sorted(tokenizer.get_vocab().items()))
    return hash_obj([type(tokenizer).__name__, body, tokenizer.bos_token_id, tokenizer.eos_token_id,
                     _start_ids(tokenizer)])


def pair_key(prompt: str, target: str) -> str:
    return hash_obj([prompt, target])


def cached_scores(model, tokenizer, pairs: Sequence[tuple[str, str]], *, cache_dir: str | os.PathLike,
                  batch_size: int = 16, max_batch_tokens: int | None = None, max_length: int | None = None,
                  unconditional: bool = True,
                  fingerprint: str | None = None, progress: bool = False) -> pd.DataFrame:
    """``score_pairs`` with a disk cache: only pairs not yet scored by this model and settings are scored.

    The cache folder is ``<cache_dir>/<model fingerprint>-<settings hash>/``; each call that scores
    something adds one parquet file (written atomically) holding a ``key`` column and the scores.
    ``fingerprint`` may pass a precomputed ``model_fingerprint(model)``. The result's ``attrs`` say
    how many rows came from the cache (``n_cached``) and how many were scored (``n_scored``).
    """
    fingerprint = fingerprint or model_fingerprint(model)
    settings = {"version": SCORER_VERSION, "tokenizer": tokenizer_fingerprint(tokenizer),
                "max_length": max_length, "unconditional": unconditional}
    folder = Path(cache_dir) / f"{fingerprint[:20]}-{hash_obj(settings)[:12]}"
    keys = [pair_key(*_checked_pair(i, p)) for i, p in enumerate(pairs)]
    known = _read_cache(folder)
    missing: dict[str, tuple[str, str]] = {}
    for key, pair in zip(keys, pairs):
        if key not in known.index and key not in missing:
            missing[key] = pair
    if missing:
        new = score_pairs(model, tokenizer, list(missing.values()), batch_size=batch_size,
                          max_batch_tokens=max_batch_tokens, max_length=max_length, unconditional=unconditional,
                          progress=progress)
        new.insert(0, "key", list(missing))
        buf = io.BytesIO()
        new.to_parquet(buf, index=False)
        atomic_write_bytes(folder / f"part-{hash_obj(sorted(missing))[:16]}.parquet", buf.getvalue())
        known = pd.concat([known, new.set_index("key")]) if len(known) else new.set_index("key")
    out = known.loc[keys, SCORE_COLUMNS].reset_index(drop=True)
    out.attrs.update(n_cached=len(pairs) - len(missing), n_scored=len(missing), fingerprint=fingerprint)
    return out


def _read_cache(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    frames = []
    for part in parts:
        try:
            frames.append(pd.read_parquet(part))
        except Exception as exc:  # a damaged part is never trusted
            raise ValueError(f"scoring cache: cannot read {part} ({exc}); "
                             "delete the file to re-score its pairs") from None
    if not frames:
        return pd.DataFrame(columns=SCORE_COLUMNS, index=pd.Index([], name="key"))
    df = pd.concat(frames, ignore_index=True).drop_duplicates("key", keep="last")
    return df.set_index("key")

