"""The one prompt format shared by generation, training, scoring and evaluation.

Plain (non-chat) students see ``Question: <text>\\nAnswer:`` followed by `` <trace>`` - the same
zero-shot format as lm-eval's ``gsm8k`` task, so training and benchmarking agree. Chat students get
the question as the user turn of their chat template and the trace as the assistant turn.
"""

from __future__ import annotations

from typing import Any

QUESTION_TEMPLATE = "Question: {text}\nAnswer:"
STOP_STRINGS = ("\nQuestion:", "Question:")


def question_prompt(text: str) -> str:
    return QUESTION_TEMPLATE.format(text=text.strip())


def target_text(trace: str) -> str:
    """The completion that follows the prompt (leading space, as after ``Answer:``)."""
    return " " + trace.strip()


def chat_prompt(tokenizer: Any, text: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text.strip()}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompt(text: str, tokenizer: Any = None, use_chat_template: bool = False) -> str:
    """Prompt for a question: chat template when asked (and the tokenizer has one), else the plain format."""
    if use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return chat_prompt(tokenizer, text)
    return question_prompt(text)


def build_target(trace: str, use_chat_template: bool = False, eos: str | None = None) -> str:
    """The trained completion: the trace, plus the end-of-sequence token text when given."""
    body = trace.strip() if use_chat_template else target_text(trace)
    return body + (eos or "")
