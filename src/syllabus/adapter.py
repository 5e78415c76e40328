"""The IOA Adapter: rewrite a teacher's trace to fit a small student.

One fixed step template (IOA's "Stepwise" format, ``docs/method.md`` stage 2)::

    Step 1: <one operation, plain words>
    Step 2: ...
    #### N

Two rewriters: ``render_steps`` renders a problem's structured steps (``problem.metadata["steps"]``,
written by the lab generator) and ``rewrite_rules`` works on any trace text (sentences and equations
one per step, filler dropped, self-checks dropped, plain words, the final answer kept).
``adapt_text`` picks one. The trace's final answer is found by ``verify.final_answer`` (the one
final-answer grammar). Callers must verify a rewrite again before using it
(``syllabus.curate.adapt_traces`` does).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Mapping, Sequence

from .errors import SyllabusError
from .lab import step_equation
from .records import Problem
from .verify import final_answer

STEP_TEMPLATE = "Step {i}: {text}"


class AdapterError(SyllabusError, ValueError):
    """A trace the Adapter cannot rewrite; the message is the reason."""


# --------------------------------------------------------------------------- the closing line
def final_line(answer: str, marker: str) -> str:
    """The closing line: ``#### N``, or ``\\boxed{}`` when the teacher boxed its answer (MATH)."""
    return f"Final answer: $\\boxed{{{answer}}}$" if marker == "boxed" else f"#### {answer}"


def render(steps: Sequence[str], answer: str, marker: str = "####") -> str:
    """The fixed template: numbered steps, then the final-answer line."""
    lines = [STEP_TEMPLATE.format(i=i, text=s) for i, s in enumerate(steps, 1)]
    return "\n".join(lines + [final_line(answer, marker)])


# --------------------------------------------------------------------------- structured steps
_OPS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/", "+": "+", "-": "-", "*": "*", "/": "/",
        "plus": "+", "minus": "-", "times": "*", "sum": "+", "difference": "-", "product": "*", "quotient": "/"}
_KEYS = {
    "op": ("op", "operation", "operator", "module", "kind"),
    "operands": ("operands", "args", "inputs", "values", "numbers"),
    "result": ("result", "value", "output", "answer"),
    "words": ("words", "quantity", "description", "label", "unit", "what", "text"),
}


def _get(step: Mapping[str, Any], what: str) -> Any:
    return next((step[k] for k in _KEYS[what] if step.get(k) not in (None, "", [])), None)


def _number(x: Any) -> Fraction | None:
    try:
        return Fraction(str(x).replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def _symbol_for(operands: Sequence[Any], result: Any, op: str | None) -> str | None:
    """The arithmetic sign that turns the operands into the result (named op first, then inferred)."""
    nums = [_number(x) for x in operands]
    res = _number(result)
    if len(nums) != 2 or None in nums or res is None:
        return _OPS.get(str(op).lower()) if op is not None else None
    a, b = nums
    candidates = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}
    named = _OPS.get(str(op).lower()) if op is not None else None
    if named and candidates.get(named) == res:
        return named
    return next((s for s, v in candidates.items() if v == res), None)


def render_step(step: Mapping[str, Any]) -> str:
    """One structured step as one plain equation, e.g. ``Find the apples in all: 5 + 3 = 8``."""
    if not isinstance(step, Mapping):
        raise AdapterError(f"a structured step must be a mapping, got {type(step).__name__}")
    if {"op", "a", "value", "result", "holder", "object"} <= set(step):  # the lab generator's steps
        return f"{step['holder']} has {step['value']} {step['object']}. {step_equation(dict(step))}"
    op, operands, result, words = (_get(step, k) for k in ("op", "operands", "result", "words"))
    if result is None:
        raise AdapterError(f"structured step {dict(step)} has no result")
    lead = f"Find {str(words).strip()}: " if words else ""
    if not operands:
        return f"{lead}{result}"
    operands = list(operands) if isinstance(operands, (list, tuple)) else [operands]
    sign = _symbol_for(operands, result, op)
    if sign is None:  # e.g. a percent with its own form: say it in words
        name = str(op) if op else "work out"
        return f"{lead}{name} of {' and '.join(map(str, operands))} is {result}"
    return f"{lead}{f' {sign} '.join(map(str, operands))} = {result}"


def render_steps(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every structured step rendered, one operation each."""
    if not steps:
        raise AdapterError("no structured steps")
    return [render_step(s) for s in steps]


def _steps_result(steps: Sequence[Mapping[str, Any]]) -> Any:
    return _get(steps[-1], "result") if steps and isinstance(steps[-1], Mapping) else None


# --------------------------------------------------------------------------- rule-based rewriting
_CHECK = re.compile(
    r"^\s*(?:check|checking|verify|verification|double[- ]check|sanity check|let me (?:check|verify)|"
    r"let's (?:check|verify)|let us (?:check|verify))\b|\u2713|\u2714", re.IGNORECASE)
# Discourse markers at the start of a step: dropped always, or only before a comma when the word can
# also be content ("Next year ...", "First prize ...").
_LEADING = re.compile(
    r"^(?:(?:so|well|now|okay|ok|alright|hmm|then|therefore|thus|hence|and|but|also)\b|"
    r"(?:first|firstly|second|next|finally|great|good|lastly)\s*,)[,:]?\s*", re.IGNORECASE)
_FILLER = re.compile(
    r"\b(?:let's|let us|let me|we can see that|we know that|it follows that|note that|notice that|basically|"
    r"actually|just|clearly|obviously|of course|i think|we have that|we get that|simply|this means|"
    r"that means)\b,?\s*", re.IGNORECASE)
_PLAIN = {"therefore": "so", "thus": "so", "hence": "so", "subsequently": "then", "additionally": "also",
          "utilize": "use", "approximately": "about", "compute": "work out", "calculate": "work out",
          "determine": "find", "consequently": "so", "obtain": "get"}
_PLAIN_RE = re.compile(r"\b(" + "|".join(_PLAIN) + r")\b", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9$\\(])")
_CLAUSE = re.compile(r"\s*;\s*|,\s+(?:and\s+|then\s+|so\s+)?|\s+and\s+then\s+|\s+then\s+")
_CONNECTOR = re.compile(r"\s*,?\s*\b(?:so|then|meaning|which means)\b\s*", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"####|\\boxed|\b(?:final\s+answer|answer\s+is)\b|^A:", re.IGNORECASE)
_ANSWER_TAIL = re.compile(
    r"[,;]?\s*(?:(?:so|thus|therefore|hence)\s*,?\s*)?(?:(?:the\s+)?(?:final\s+answer|answer\s+is)|\$?\\boxed)",
    re.IGNORECASE)


def _plain_words(text: str) -> str:
    text = _PLAIN_RE.sub(lambda m: _PLAIN[m.group(1).lower()], text)
    for _ in range(3):
        text = _LEADING.sub("", text.strip())
    text = " ".join(_FILLER.sub("", text).split())
    text = text.strip(" ,;:").removesuffix(".")
    return text[:1].upper() + text[1:]


def _clauses(sentence: str) -> list[str]:
    """One operation per step: split a sentence holding several equations, or facts then an equation."""
    parts = [p for p in _CLAUSE.split(sentence) if p.strip()]
    if sum("=" in p for p in parts) > 1:
        return parts
    # Facts first, then the operation: "a dozen is 12 so he gets 252/12 = 21" -> two steps.
    pieces = _CONNECTOR.split(sentence)
    if len(pieces) == 2 and "=" in pieces[1] and "=" not in pieces[0] and len(pieces[0].split()) >= 3:
        return pieces
    return [sentence]


def _without_answer(line: str) -> str:
    """A line minus its answer statement (``#### N``, "the answer is", ``\\boxed{}``)."""
    line = re.split(r"####|^A:", line, maxsplit=1)[0]
    m = _ANSWER_TAIL.search(line)
    return line[:m.start()] if m else line


def rule_steps(text: str) -> list[str]:
    """The trace's reasoning as short plain steps: no tags, checks, filler or final-answer lines."""
    body = text.replace("<think>", "\n").replace("</think>", "\n")
    body = re.sub(r"<<[^<>]*>>", "", body)  # GSM8K calculator annotations
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    while lines and _ANSWER_LINE.search(lines[-1]):
        rest = _without_answer(lines.pop()).strip()
        if rest:
            lines.append(rest)
            break
    steps = []
    for line in lines:
        line = line.split("####", 1)[0]
        if _CHECK.search(line):
            continue
        line = re.sub(r"^(?:step\s*\d+\s*[:.)]|\d+[.)]|[-*\u2022])\s*", "", line, flags=re.IGNORECASE)
        for sentence in _SENTENCE.split(line):
            if _CHECK.search(sentence):
                continue
            for clause in _clauses(sentence):
                clause = _plain_words(clause)
                if re.search(r"\d", clause) or len(clause.split()) >= 2:  # drops "See", "Hmm"
                    steps.append(clause)
    return steps


def rewrite_rules(text: str) -> str:
    """Rewrite any trace text into the fixed template; AdapterError when it has no answer or steps."""
    found = final_answer(text)
    if found is None:
        raise AdapterError("no final answer to keep")
    steps = rule_steps(text)
    if not steps:
        raise AdapterError("no reasoning steps left after rewriting")
    return render(steps, *found)


def _same_answer(a: Any, b: Any) -> bool:
    na, nb = _number(a), _number(b)
    return na == nb if na is not None and nb is not None else str(a).strip() == str(b).strip()


def adapt_text(problem: Problem, text: str) -> tuple[str, str]:
    """Rewrite ``text`` for the student; returns (rewrite, method).

    Uses the problem's structured steps (method ``steps``) when it has them and their result equals
    the trace's final answer - so a wrong trace is never turned into the gold solution - else the
    rules (method ``rules``).
    """
    steps = problem.metadata.get("steps") if isinstance(problem.metadata, Mapping) else None
    found = final_answer(text)
    if steps and found and _same_answer(_steps_result(steps), found[0]):
        try:
            return render(render_steps(steps), found[0], found[1]), "steps"
        except AdapterError:
            pass  # unusable structure: fall back to the rules
    return rewrite_rules(text), "rules"
