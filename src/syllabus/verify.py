"""The one verifier: final-answer extraction and correctness for every task.

- ``lab`` and ``gsm8k``: exact numeric match of the extracted final answer (``#### N``, ``\\boxed{}``,
  "the answer is ...", else the last number), after removing thousands separators, currency,
  units, percent signs and trailing periods; decimals and fractions compare by value.
- ``math``: math-verify with the gold answer first; plain numbers take a fast exact path. Its
  signal-based timeouts are used only in the main thread; other threads hand the comparison to a
  worker process (whose main thread may use signals), so nothing hangs and no thread breaks.
- ``humaneval``: the problem's tests run against prompt + completion in ``syllabus.sandbox``.

Reasoning blocks (``<think>...</think>``) are removed before extraction; a response whose reasoning
block never closes has no final answer.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import functools
import multiprocessing
import re
import threading
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

import math_verify

from .records import Problem
from .sandbox import run_python

NUMERIC_TASKS = ("lab", "gsm8k")
MATH_TIMEOUT_S = 5

_THINK_CLOSE = re.compile(r"</think\s*>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think\s*>", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+")
_ANSWER_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*:?|(?:^|\n)\s*A\s*:", re.IGNORECASE)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.]+)\s*\}\s*\{\s*(-?[\d.]+)\s*\}")
_LATEX_NOISE = re.compile(r"\\text\s*\{[^{}]*\}|\\mathrm\s*\{[^{}]*\}|\\[,;!: ]|\\left|\\right|\\\$|\\%|\$")


# --------------------------------------------------------------------------- extraction
def strip_reasoning(response: str) -> str | None:
    """The part after the last ``</think>``; None when a ``<think>`` block never closes."""
    closes = list(_THINK_CLOSE.finditer(response))
    if closes:
        return response[closes[-1].end():]
    if _THINK_OPEN.search(response):
        return None
    return response


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``), nested braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    after = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    rest = text[after:].lstrip()
    if not rest.startswith("{"):
        words = rest.split("$")[0].split() if text[after:after + 1] == " " else []
        return words[0] if words else None
    i = len(text) - len(rest)
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _clean_number_text(text: str) -> str:
    text = text.replace("\u2212", "-").replace("\u2013", "-")
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    text = _LATEX_NOISE.sub(" ", text)
    return text


def parse_number(text: str | None) -> Fraction | None:
    """The first number in ``text`` as an exact fraction (``$1,234.50`` -> 2469/2), else None."""
    if text is None:
        return None
    match = _NUMBER.search(_clean_number_text(text))
    if not match:
        return None
    token = match.group(0).replace(",", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Canonical text of a number: ``18``, ``-3``, ``0.25`` when finite in decimal, else ``2/3``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:
        return _decimal(value)
    return f"{value.numerator}/{value.denominator}"


def _decimal(value: Fraction) -> str:
    with localcontext() as ctx:
        ctx.prec = 50
        out = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


def _numeric_answer_text(text: str) -> str | None:
    """Where the final numeric answer sits: after ``####``, in ``\\boxed{}``, after "answer is", else last number."""
    if "####" in text:
        return text.rsplit("####", 1)[1]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        tail = text[phrases[-1].end():]
        if parse_number(tail.split("\n")[0]) is not None:
            return tail.split("\n")[0]
    numbers = list(_NUMBER.finditer(_clean_number_text(text)))
    return numbers[-1].group(0) if numbers else None


def _math_answer_text(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        tail = text[phrases[-1].end():].split("\n")[0]
        tail = re.split(r"\.\s|\.$|I hope", tail)[0]
        return tail.strip().strip("$").strip() or None
    return None


def extract_answer(task: str, response: str) -> str | None:
    """The final answer in ``response`` as text (numbers canonical for lab/gsm8k), or None."""
    text = strip_reasoning(response or "")
    if text is None:
        return None
    if task in NUMERIC_TASKS:
        value = parse_number(_numeric_answer_text(text))
        return None if value is None else format_number(value)
    if task == "math":
        return _math_answer_text(text)
    raise ValueError(f"extract_answer: unknown task {task!r}; answers are extracted for {NUMERIC_TASKS + ('math',)}")


# --------------------------------------------------------------------------- the final-answer grammar
# How a trace marks its final answer, for every part that asks: ``extract_answer`` (scoring, below),
# ``has_final_answer`` (curation's format filter) and ``final_answer`` (the Adapter keeps the answer
# and its marker). Each keeps the rule it has always applied; they live here so that a change to the
# grammar is made in one place.

# A trace is well formed when one of these marks its final answer (code tasks are exempt).
ANSWER_MARKERS: tuple[re.Pattern, ...] = (
    re.compile(r"####\s*\S"),
    re.compile(r"\\boxed\s*\{"),
    re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s+is\b", re.IGNORECASE),
    re.compile(r"\bfinal\s+answer\s*:", re.IGNORECASE),
    re.compile(r"^A:\s*\S", re.MULTILINE),  # GSM8K's example model solutions end "A: N"
)
_HASHES = re.compile(r"####\s*([^\n]+)")
_CLOSING = re.compile(r"^A:\s*(\S[^\n]*)", re.MULTILINE)  # GSM8K's example model solutions
_PHRASE = re.compile(r"(?:final\s+answer\s*(?:is|:)|answer\s+is)\s*:?\s*\$?([^\s$]+)", re.IGNORECASE)


def has_final_answer(text: str) -> bool:
    """Whether one of ``ANSWER_MARKERS`` marks a final answer in ``text``."""
    return any(p.search(text) for p in ANSWER_MARKERS)


def final_answer(text: str) -> tuple[str, str] | None:
    """The trace's final answer and how it was marked (``####``, ``boxed`` or ``phrase``), or None.
    A closing ``A: N`` line counts as ``####``."""
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip().rstrip("."), "####"
    boxed = last_boxed(text)
    if boxed and boxed.strip():
        return boxed.strip(), "boxed"
    closing = _CLOSING.findall(text)
    if closing:
        return closing[-1].strip().rstrip("."), "####"
    phrase = _PHRASE.findall(text)
    if phrase:
        return phrase[-1].rstrip(".,;"), "phrase"
    return None


# --------------------------------------------------------------------------- math-verify
def _mv_equal(gold: str, response: str) -> bool:
    """math-verify (gold first) with its signal timeouts; call only from a main thread."""
    gold_parsed = _parse_gold(gold)
    pred = math_verify.parse(response, parsing_timeout=MATH_TIMEOUT_S)
    return bool(gold_parsed and pred and math_verify.verify(gold_parsed, pred, timeout_seconds=MATH_TIMEOUT_S))


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold: str):
    text = gold if "\\boxed" in gold else f"\\boxed{{{gold}}}"
    return math_verify.parse(text, parsing_timeout=MATH_TIMEOUT_S)


_pool: cf.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _worker_pool() -> cf.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
        return _pool


def _reset_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            for proc in list(getattr(_pool, "_processes", {}).values()):
                proc.kill()
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None


def math_equal(gold: str, response: str) -> bool:
    """math-verify equivalence of ``response`` to ``gold``, bounded in time from any thread."""
    if threading.current_thread() is threading.main_thread():
        return _mv_equal(gold, response)
    future = _worker_pool().submit(_mv_equal, gold, response)
    try:
        return future.result(timeout=4 * MATH_TIMEOUT_S + 30)  # the worker's own timeouts fire first
    except cf.TimeoutError:
        _reset_pool()
        return False
    except cf.process.BrokenProcessPool:
        _reset_pool()
        return False


# --------------------------------------------------------------------------- correctness
def _gold_value(gold: str) -> Fraction | None:
    return parse_number(gold.rsplit("####", 1)[1] if "####" in gold else gold)


def is_correct(task: str, response: str, gold: str) -> bool:
    """Whether ``response``'s final answer equals ``gold`` for ``task`` in lab, gsm8k, math."""
    if task in NUMERIC_TASKS:
        pred = extract_answer(task, response)
        want = _gold_value(gold)
        if want is None:
            raise ValueError(f"is_correct: gold answer {gold!r} of a {task} problem is not a number")
        return pred is not None and parse_number(pred) == want
    if task == "math":
        text = strip_reasoning(response or "")
        if text is None:
            return False
        pred = _math_answer_text(text)
        if pred is not None and _is_plain_number(pred) and _is_plain_number(gold):
            return parse_number(pred) == parse_number(gold)
        return math_equal(gold, text)
    raise ValueError(f"is_correct: unknown task {task!r}; use one of {NUMERIC_TASKS + ('math',)} "
                     "(humaneval: check_code or verify)")


_PLAIN = re.compile(r"\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*")


def _is_plain_number(text: str) -> bool:
    return bool(_PLAIN.fullmatch(_clean_number_text(text)))


# --------------------------------------------------------------------------- code
@dataclass(frozen=True)
class CodeResult:
    """Outcome of running a problem's tests on a completion (``status`` from the sandbox)."""

    passed: bool
    status: str
    detail: str
    seconds: float


def code_program(problem: Problem, completion: str) -> str:
    """Prompt + completion + the problem's tests (which end by calling ``check(entry_point)``)."""
    if not problem.tests:
        raise ValueError(f"problem {problem.id}: no tests; code verification needs Problem.tests")
    return f"{problem.text}{completion}\n\n{problem.tests}\n"


def check_code(problem: Problem, completion: str, *, timeout_s: float = 10, memory_mb: int = 512) -> CodeResult:
    """Run the problem's tests against ``completion`` in the sandbox; passed when they exit cleanly."""
    result = run_python(code_program(problem, completion), timeout_s=timeout_s, memory_mb=memory_mb)
    lines = (result.stderr or "").strip().splitlines()
    detail = lines[-1] if lines else result.status
    return CodeResult(passed=result.ok, status=result.status, detail=detail[:500], seconds=result.seconds)


def verify(problem: Problem, response: str) -> bool:
    """The one verdict for a response to ``problem``, dispatching on ``problem.task``."""
    if problem.task == "humaneval":
        return check_code(problem, response).passed
    return is_correct(problem.task, response, problem.answer)
