"""Token ids and token counts, the one way every stage takes them.

``encode_prompt`` is how a prompt becomes ids (generation, training and scoring agree) and
``count_tokens`` how long a text is (trace lengths, teachers' token counts). How many tokens an
example feeds a student in training is ``train.tokenize_examples``'s business (it builds on these).
"""

from __future__ import annotations


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own special tokens (as lm-eval's ``hf`` model does)
    unless the text already starts with the BOS token."""
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    return tokenizer.encode(text, add_special_tokens=add)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` alone (no special tokens)."""
    return len(tokenizer.encode(text, add_special_tokens=False))

