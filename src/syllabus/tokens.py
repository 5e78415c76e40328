"""Token ids and token counts, the one way every stage takes them.

``encode_prompt`` is how a prompt becomes ids (generation, training and scoring agree), ``encode_text``
how a text without special tokens does, and ``count_tokens`` how long a text is (trace lengths, teachers'
token counts). How many tokens an example feeds a student in training is ``train.tokenize_examples``'s
business (it builds on these).

Encodings are remembered per tokenizer object (and its vocabulary size) while it lives: stage 5 measures,
draws and trains on the same few thousand texts in every phase of every run, and encoding them again was
a tenth of its time. A tokenizer that cannot be weakly referenced is not remembered.
"""

from __future__ import annotations

import weakref

MEMO_LIMIT = 200_000  # encodings remembered per tokenizer; beyond it the memo starts afresh
_memos: dict[tuple[int, int], dict[tuple[bool, str], tuple[int, ...]]] = {}


def _forget(tokenizer_id: int) -> None:
    for key in [k for k in _memos if k[0] == tokenizer_id]:
        del _memos[key]


def _encode(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    try:
        key = (id(tokenizer), len(tokenizer))
    except TypeError:  # no len(): not a tokenizer we can key
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)
    memo = _memos.get(key)
    if memo is None:
        try:
            weakref.finalize(tokenizer, _forget, key[0])
        except TypeError:  # cannot be weakly referenced: an id could be reused, so nothing is remembered
            return tokenizer.encode(text, add_special_tokens=add_special_tokens)
        memo = _memos[key] = {}
    ids = memo.get((add_special_tokens, text))
    if ids is None:
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        ids = memo[(add_special_tokens, text)] = tuple(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    return list(ids)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own special tokens (as lm-eval's ``hf`` model does)
    unless the text already starts with the BOS token."""
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    return _encode(tokenizer, text, add)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` alone (no special tokens)."""
    return _encode(tokenizer, text, False)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` alone (no special tokens)."""
    return len(encode_text(tokenizer, text))
