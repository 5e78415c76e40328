"""Batched decoding with a KV cache from which finished rows leave: the tokens of transformers'
``generate`` (greedy, or sampling at a temperature with top-p), at less cost.

``generate`` keeps every row of a batch in each forward pass until the last row ends, feeding the
finished ones padding. A batch of lab samples ends at very different lengths (a few rows run on to the
token limit), so most late steps computed rows whose tokens are thrown away. Here a row leaves the
batch, its attention-mask row and its KV cache as soon as it ends.

What stays the same as ``generate`` (transformers 5.x, the same forward call: input ids, attention mask,
cache; no position ids): the prompt pass over the whole left-padded batch, the float32 copy of the last
logits, transformers' own temperature and top-p warpers applied row by row, and the random numbers of
sampling. ``torch.multinomial(p, 1)`` is ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn for the whole
``[rows, vocab]`` tensor, so ``q`` is drawn at the full batch's shape at every step and each running
row takes its own slice. A row's forward pass does not depend on the other rows, so on the CPUs this
was measured on each row's tokens are ``generate``'s bit for bit (a test checks it on a small model).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper


def _cache_of(outputs):
    """The KV cache a forward pass returned (``cache`` in transformers >= 5.x's newer releases,
    ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        if name in outputs and outputs[name] is not None:
            return outputs[name]
    raise RuntimeError("decoding: the model's forward pass returned no KV cache (use_cache=True was passed)")


def _cache_keyword(model) -> str:
    """The forward pass's name for the cache argument (renamed from ``past_key_values`` in transformers 5.x)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def decode(model, input_ids: torch.LongTensor, attention_mask: torch.LongTensor, *, max_new_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, eos_id: int | None = None,
           ended: Callable[[list[int]], bool] = lambda ids: False) -> list[list[int]]:
    """New token ids of each row of a left-padded batch, up to and including the token that ends it:
    ``eos_id``, a token after which ``ended(row's new ids)`` is true (a stop string), or the
    ``max_new_tokens``-th. Greedy when ``temperature == 0``; otherwise sampled from the torch global
    generator (seed it before the call). Call under ``torch.inference_mode()``."""
    rows, sampling = input_ids.shape[0], temperature > 0
    warpers = []
    if sampling:
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    cache_keyword = _cache_keyword(model)
    new: list[list[int]] = [[] for _ in range(rows)]
    running = list(range(rows))  # the batch row of each row still in the forward pass
    index = torch.arange(rows, device=input_ids.device)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, return_dict=True)
    for step in range(max_new_tokens):
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        cache = _cache_of(outputs)
        del outputs
        if sampling:
            for warp in warpers:
                logits = warp(None, logits)
            probs = torch.softmax(logits, dim=-1)
            q = torch.empty((rows, probs.shape[-1]), dtype=probs.dtype, device=probs.device).exponential_(1)
            next_tokens = (probs / (q if len(running) == rows else q[index])).argmax(dim=-1)
        else:
            next_tokens = torch.argmax(logits, dim=-1)
        keep = []
        for j, (row, token) in enumerate(zip(running, next_tokens.tolist())):
            new[row].append(token)
            if token != eos_id and not ended(new[row]):
                keep.append(j)
        if not keep or step + 1 == max_new_tokens:
            break
        if len(keep) < len(running):
            kept = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(kept)
            attention_mask, next_tokens, index = attention_mask[kept], next_tokens[kept], index[kept]
            running = [running[j] for j in keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(running), 1))], dim=-1)
        outputs = model(input_ids=next_tokens[:, None], attention_mask=attention_mask, use_cache=True,
                        return_dict=True, **{cache_keyword: cache})
    return new
