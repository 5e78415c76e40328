"""Batched decoding with a KV cache from which finished rows leave: the tokens of transformers'
``generate`` (greedy, or sampling at a temperature with top-p), at less cost.

``generate`` keeps every row of a batch in each forward pass until the last row ends, feeding the
finished ones padding. A batch of lab samples ends at very different lengths (a few rows run on to the
token limit), so most late steps computed rows whose tokens are thrown away. Here a row leaves the
batch, its attention-mask row and its KV cache as soon as it ends (down to ``min_rows`` rows).

What stays the same as ``generate`` (transformers 5.x): the forward call (each row's positions counted
from its first token, no attention mask for a batch without padding, the LM head on the last position
only), the prompt pass over the whole left-padded batch, the float32 copy of the last logits, transformers' own temperature and top-p warpers applied row by row, and the random numbers of
sampling. ``torch.multinomial(p, 1)`` is ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn for the whole
``[rows, vocab]`` tensor, so ``q`` is drawn at the full batch's shape at every step and each running
row takes its own slice. A row's forward pass does not depend on the other rows as long as the batch
keeps ``min_rows`` rows (below), so each row's tokens are ``generate``'s bit for bit where the
measured thresholds hold (a test checks it on a small model, and skips where the machine's matrix
product depends on the batch size above them); elsewhere a rare near-tie may come out differently.
"""

from __future__ import annotations

import inspect
from typing import Callable, Collection

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper


# Below 16 rows, the CPU's single-thread float32 matrix product takes another path whose sums differ in the
# last bit (every weight shape of the lab students and SmolLM2-135M, torch 2.13 on the AVX-512 machine); with
# two threads some shapes differ up to 56 rows. So the batch never shrinks below ``min_rows`` rows: finished
# rows stay as fillers, and every row's logits are those of the whole batch.
MIN_ROWS = 16  # one CPU thread
MIN_ROWS_THREADED = 64  # more CPU threads (56 measured on two), or a GPU (not measured)


def min_rows(device: torch.device) -> int:
    """The fewest rows a shrinking batch keeps on ``device`` with the present torch thread count."""
    return MIN_ROWS if device.type == "cpu" and torch.get_num_threads() == 1 else MIN_ROWS_THREADED


def _cache_of(outputs):
    """The KV cache a forward pass returned (``cache`` in newer transformers 5.x releases,
    ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        if name in outputs and outputs[name] is not None:
            return outputs[name]
    raise RuntimeError("decoding: the model's forward pass returned no KV cache (use_cache=True was passed)")


def _forward_parameters(model) -> set[str]:
    """The names the model's forward pass takes (a PEFT model's: its base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def decode(model, input_ids: torch.LongTensor, attention_mask: torch.LongTensor, *, max_new_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, eos_id: int | Collection[int] | None = None,
           ended: Callable[[list[int]], bool] = lambda ids: False) -> list[list[int]]:
    """New token ids of each row of a left-padded batch, up to and including the token that ends it:
    ``eos_id`` (one id or several), a token after which ``ended(row's new ids)`` is true (a stop string), or the
    ``max_new_tokens``-th. Greedy when ``temperature == 0``; otherwise sampled from the torch global
    generator (seed it before the call). Call under ``torch.inference_mode()``."""
    rows, sampling = input_ids.shape[0], temperature > 0
    enders = frozenset() if eos_id is None else frozenset([eos_id] if isinstance(eos_id, int) else eos_id)
    warpers = []
    if sampling:
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    accepts = _forward_parameters(model)
    cache_keyword = "cache" if "cache" in accepts else "past_key_values"  # renamed within transformers 5.x
    extra = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
    # as generate: positions count each row's own tokens (0 at its first), and a batch without padding
    # runs without an attention mask
    positions = None
    if "position_ids" in accepts:
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        extra["position_ids"] = positions
    if bool((attention_mask == 1).all()):
        attention_mask = None
    new: list[list[int]] = [[] for _ in range(rows)]
    members = list(range(rows))  # the row of each position of the forward pass
    live = [True] * rows
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, return_dict=True, **extra)
    for step in range(max_new_tokens):
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        cache = _cache_of(outputs)
        del outputs
        if sampling:
            for warp in warpers:
                logits = warp(None, logits)
            probs = torch.softmax(logits, dim=-1)
            q = torch.empty((rows, probs.shape[-1]), dtype=probs.dtype, device=probs.device).exponential_(1)
            next_tokens = (probs / (q if len(members) == rows else q[members])).argmax(dim=-1)
        else:
            next_tokens = torch.argmax(logits, dim=-1)
        for row, token in zip(members, next_tokens.tolist()):
            if live[row]:
                new[row].append(token)
                live[row] = token not in enders and not ended(new[row])
        running = [j for j, row in enumerate(members) if live[row]]
        if not running or step + 1 == max_new_tokens:
            break
        floor = min(min_rows(input_ids.device), len(members))
        if len(running) < floor:  # ended rows stay in the pass as fillers, their tokens unused
            running = sorted(running + [j for j, row in enumerate(members) if not live[row]][:floor - len(running)])
        if len(running) < len(members):
            kept = torch.tensor(running, device=input_ids.device)
            cache.batch_select_indices(kept)
            next_tokens = next_tokens[kept]
            attention_mask = attention_mask[kept] if attention_mask is not None else None
            positions = positions[kept] if positions is not None else None
            members = [members[j] for j in running]
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(members), 1))], dim=-1)
        if positions is not None:
            positions = positions[:, -1:] + 1
            extra["position_ids"] = positions
        outputs = model(input_ids=next_tokens[:, None], attention_mask=attention_mask, use_cache=True,
                        return_dict=True, **{cache_keyword: cache}, **extra)
    return new
