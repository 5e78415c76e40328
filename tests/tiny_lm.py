"""A real, tiny causal LM for tests: a BPE tokenizer trained on a few sentences and a small Llama.

Nothing is mocked: the tokenizer is a ``tokenizers`` BPE wrapped in ``PreTrainedTokenizerFast`` and
the model is a randomly initialised ``LlamaForCausalLM`` (seeded, so every test sees the same one).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SENTENCES = [
    "Question: Tom has 3 boxes with 12 apples each. How many apples does he have?",
    "Answer: 3 * 12 = 36. He has 36 apples. #### 36",
    "Question: A shop sells 5 pens for 2 dollars each. What is the total?",
    "Answer: 5 * 2 = 10 dollars. #### 10",
    "Question: Mia reads 20 pages a day for 4 days. How many pages?",
    "Answer: First, 20 + 20 = 40. Next, 40 + 40 = 80. Therefore 80 pages. #### 80",
    "Question: What is 15 percent of 60? Answer: 0.15 * 60 = 9. #### 9",
    "Step 1: add the numbers. Step 2: divide by two. Check: the answer is right.",
]


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_llama(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def apple_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` seeded (prompt, target) SFT pairs of one-step additions, in the package's prompt and target format."""
    import random

    from syllabus.prompts import question_prompt, target_text

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        out.append((question_prompt(f"Tom has {a} apples and buys {b} more. How many now?"),
                    target_text(f"Tom has {a} + {b} = {a + b} apples.\n#### {a + b}")))
    return out
