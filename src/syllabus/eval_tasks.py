"""What the shipped lm-eval task YAMLs (``syllabus/tasks/``) call back into.

Loaders (``custom_dataset``) turn the project's problems into lm-eval documents: they read the
data directory through ``syllabus.data`` (so evaluation sees the same problems as curation), build
the prompt with ``syllabus.prompts`` and find every path from lm-eval's metadata or the
environment, never from the working directory. Scorers (``process_results``) decide correctness
with ``syllabus.verify``, the verifier curation and training use. HumanEval completions run in the
project's sandbox through :func:`code_eval`, an offline stand-in for the hub's ``code_eval`` metric.

Metadata keys (``TaskManager(metadata=...)`` or ``lm_eval --metadata '{...}'``): ``data_dir``
(else ``syllabus.data``'s other places: ``$SYLLABUS_DATA_DIR``, ``../shared/data``, the hub), ``lab_file`` (syllabus_lab), ``chat_prompt`` (true when the chat
template is applied: the user turn is then the bare question), ``code_timeout_s``,
``code_memory_mb`` (syllabus_humaneval).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets

from .data import DataError, load_problems
from .errors import SyllabusError
from .prompts import question_prompt
from .records import Problem
from .sandbox import run_python
from .verify import is_correct

ALLOW_CODE_EVAL_ENV = "HF_ALLOW_CODE_EVAL"
DEFAULT_CODE_TIMEOUT_S = 10.0
DEFAULT_CODE_MEMORY_MB = 512  # as syllabus.verify.check_code

# Fields of a Problem kept in an lm-eval document (metadata dicts vary too much for arrow).
_DOC_FIELDS = ("id", "task", "source", "text", "answer", "solution", "module", "level", "tests", "entry_point")


class EvalTaskError(SyllabusError, ValueError):
    """A task that cannot load its data; the message names the task, the key or file, and the fix."""


# --------------------------------------------------------------------------- loaders
def _data_dir(task: str, meta: dict[str, Any]) -> Path | None:
    """The data directory in the metadata, if any (``syllabus.data`` tries the other places)."""
    raw = meta.get("data_dir")
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise EvalTaskError(f"{task}: data directory '{path}' (metadata 'data_dir') does not exist")
    return path


def _prompt(problem: Problem, chat: bool) -> str:
    """The user turn of a chat template, or the plain ``Question: ...\\nAnswer:`` prompt (syllabus.prompts)."""
    return problem.text.strip() if chat else question_prompt(problem.text)


def problems_to_dataset(problems: Sequence[Problem], *, chat: bool = False, extra: dict[str, Any] | None = None):
    """A ``DatasetDict`` with one ``test`` split, one document per problem plus its ``prompt``."""
    if not problems:
        raise EvalTaskError("no problems to evaluate (the source gave an empty list)")
    rows = []
    for p in problems:
        row = {k: getattr(p, k) for k in _DOC_FIELDS}
        row["level"] = None if p.level is None else int(p.level)
        row["prompt"] = p.text if p.task == "humaneval" else _prompt(p, chat)
        row.update(extra or {})
        rows.append(row)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _load_source(task: str, source: str, meta: dict[str, Any], **extra: Any):
    try:
        problems = load_problems(source, "test", data_dir=_data_dir(task, meta))
    except DataError as exc:
        raise EvalTaskError(f"{task}: {exc} (lm-eval: pass metadata {{'data_dir': '/path'}})") from None
    return problems_to_dataset(problems, chat=bool(meta.get("chat_prompt")), extra=extra or None)


def load_gsm8k(**meta: Any):
    return _load_source("syllabus_gsm8k", "gsm8k", meta)


def load_math500(**meta: Any):
    return _load_source("syllabus_math500", "math500", meta)


def load_humaneval(**meta: Any):
    problems = load_problems("humaneval", "test")
    limits = {
        "timeout_s": float(meta.get("code_timeout_s", DEFAULT_CODE_TIMEOUT_S)),
        "memory_mb": int(meta.get("code_memory_mb", DEFAULT_CODE_MEMORY_MB)),
    }
    return problems_to_dataset(problems, extra=limits)


def read_problems_jsonl(path: str | os.PathLike) -> list[Problem]:
    """Problems from a JSONL file of ``Problem.to_dict()`` rows; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise EvalTaskError(f"problem file '{path}' does not exist; write it with syllabus.evaluate.write_problems_jsonl")
    problems = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                problems.append(Problem.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise EvalTaskError(f"{path}, line {lineno}: not a Problem row ({exc}); expected Problem.to_dict() JSON") from None
    return problems


def load_lab(**meta: Any):
    lab_file = meta.get("lab_file")
    if not lab_file:
        raise EvalTaskError(
            "syllabus_lab: no problem file; pass metadata {'lab_file': '/abs/path/lab.jsonl'} "
            "(written by syllabus.evaluate.write_problems_jsonl)"
        )
    return problems_to_dataset(read_problems_jsonl(lab_file), chat=bool(meta.get("chat_prompt")))


# --------------------------------------------------------------------------- scorers
def _score(task: str, doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": float(is_correct(task, results[0], doc["answer"]))}


def score_gsm8k(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return _score("gsm8k", doc, results)


def score_math(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return _score("math", doc, results)


def score_lab(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return _score("lab", doc, results)


def score_by_task(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Score a document with the verifier of its own task (``syllabus_heldout``)."""
    return _score(doc.get("task") or "lab", doc, results)


def humaneval_program(prompt: str, completion: str) -> str:
    """The function under test: the prompt, then the completion cut at a closing code fence."""
    fence = completion.find("```")
    return prompt + (completion if fence == -1 else completion[:fence])


def score_humaneval(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    program = humaneval_program(doc["prompt"], results[0])
    pass_at_k, _ = code_eval([[program]], [doc["tests"]], k=(1,), timeout_s=doc["timeout_s"], memory_mb=doc["memory_mb"])
    return {"pass@1": pass_at_k["pass@1"]}


# --------------------------------------------------------------------------- offline code_eval
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def code_eval(
    predictions: Sequence[Sequence[str]],
    references: Sequence[str],
    k: Iterable[int] = (1,),
    *,
    timeout_s: float = DEFAULT_CODE_TIMEOUT_S,
    memory_mb: int = DEFAULT_CODE_MEMORY_MB,
) -> tuple[dict[str, float], list[list[bool]]]:
    """The hub's ``code_eval`` metric, offline: run each candidate program with its test in the sandbox.

    ``predictions[i]`` are the candidate programs for problem i, ``references[i]`` its test code.
    Refuses to run unless ``HF_ALLOW_CODE_EVAL=1`` (as the hub metric does). Returns the mean
    pass@k per k and the pass/fail of every candidate.
    """
    if os.environ.get(ALLOW_CODE_EVAL_ENV) != "1":
        raise PermissionError(
            f"code_eval runs model-written code; set {ALLOW_CODE_EVAL_ENV}=1 to allow it "
            "(syllabus.evaluate.run_lm_eval does this only while a code task runs)"
        )
    if len(predictions) != len(references):
        raise ValueError(f"code_eval: {len(predictions)} prediction lists but {len(references)} references")
    passed = [
        [run_python(program + "\n" + test + "\n", timeout_s=timeout_s, memory_mb=memory_mb).ok for program in cands]
        for cands, test in zip(predictions, references)
    ]
    scores = {}
    for kk in k:
        per_problem = [pass_at_k(len(p), sum(p), kk) for p in passed if len(p) >= kk]
        scores[f"pass@{kk}"] = sum(per_problem) / len(per_problem) if per_problem else float("nan")
    return scores, passed
