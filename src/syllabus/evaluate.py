"""Stage 6: benchmark a model with lm-evaluation-harness, offline, and tidy the results.

``run_lm_eval`` calls ``lm_eval.simple_evaluate(model="hf", ...)`` (or ``model="vllm"``) once per model, on all
its tasks that are not complete yet (the model is loaded once), on the task YAMLs shipped in
``syllabus/tasks`` (``syllabus_gsm8k``, ``syllabus_math500``, ``syllabus_humaneval``,
``syllabus_lab``, ``syllabus_heldout``) or on lm-eval's own ``gsm8k`` / ``minerva_math500`` pointed at the local data
files. lm-eval's own task index (thousands of YAMLs, seconds to build) is read only when one of its
tasks is asked for, and each task index is built once per process. Per task it keeps lm-eval's own
files (results JSON, samples JSONL, as the command line writes them, each holding that task only)
plus ``provenance.json`` (model hash, task config, limit, versions, truncation rate). A task whose
provenance matches is not run again, so an interrupted benchmark resumes.

When a code task is among them, the call runs with ``confirm_run_unsafe_code=True`` and
``HF_ALLOW_CODE_EVAL=1`` set only for that call; both are off again afterwards.

Layout of ``output_dir`` (one model)::

    <task>/lm_eval/<model folder name>/results_<date>.json     lm-eval's results file
    <task>/lm_eval/<model folder name>/samples_<task>_<date>.jsonl
    <task>/provenance.json                         written last: the task is complete
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import lm_eval
import pandas as pd
from lm_eval.loggers import EvaluationTracker
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.utils import sanitize_model_name
from transformers import AutoTokenizer

from . import vllm_backend
from .errors import SyllabusError
from .eval_tasks import ALLOW_CODE_EVAL_ENV
from .records import Problem
from .runs import (atomic_write_json, atomic_write_text, environment, hash_obj, hash_path, package_versions,
                   publish_mode, read_json)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SYLLABUS_TASKS = ("syllabus_gsm8k", "syllabus_math500", "syllabus_humaneval", "syllabus_lab", "syllabus_heldout")
# lm-eval's own tasks, pointed at local files: task -> (data file per split, relative to data_dir).
BUILTIN_LOCAL_TASKS = {
    "gsm8k": {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    "minerva_math500": {"test": "math500/test.jsonl"},
}
PROVENANCE = "provenance.json"


FILE_TASKS = ("syllabus_lab", "syllabus_heldout")  # tasks whose problems come from the caller's JSONL


class EvaluateError(SyllabusError, RuntimeError):
    """A benchmark that cannot run as asked; the message names the task, file or key and the fix."""


@dataclass(frozen=True)
class TaskResult:
    """One task's scores for one model, read from lm-eval's results file."""

    task: str
    metrics: dict[str, float]            # "exact_match" or "exact_match,flexible-extract" -> value
    stderrs: dict[str, float | None]
    n: int
    limit: int | None
    truncation_rate: float
    results_file: str
    samples_file: str


@dataclass(frozen=True)
class EvalResult:
    """All tasks of one model: what ``run_lm_eval`` returns and ``load_eval_result`` reads back."""

    model: str
    model_dir: str
    output_dir: str
    tasks: dict[str, TaskResult] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def write_problems_jsonl(problems: Iterable[Problem], path: str | os.PathLike) -> Path:
    """Write problems (e.g. lab held-out problems) for ``syllabus_lab``; atomic."""
    text = "".join(json.dumps(p.to_dict(), sort_keys=True) + "\n" for p in problems)
    if not text:
        raise EvaluateError(f"no problems to write to {path}")
    return atomic_write_text(path, text)


@contextlib.contextmanager
def code_eval_allowed(enabled: bool) -> Iterator[None]:
    """Set ``HF_ALLOW_CODE_EVAL=1`` inside the block when ``enabled``; restore the old value after."""
    with environment({ALLOW_CODE_EVAL_ENV: "1"} if enabled else {}):
        yield


def task_config(task: str) -> dict[str, Any]:
    """The YAML config of a shipped syllabus task ({} for lm-eval's built-in tasks)."""
    path = TASKS_DIR / f"{task}.yaml"
    return load_yaml(path, resolve_func=False) if path.is_file() else {}


def is_unsafe(task: str) -> bool:
    return bool(task_config(task).get("unsafe_code", False))


def builtin_local_task(task: str, data_dir: str | os.PathLike) -> dict[str, Any]:
    """lm-eval's own ``task`` as a group wrapper whose keys point it at local files (absolute paths)."""
    if task not in BUILTIN_LOCAL_TASKS:
        raise EvaluateError(f"no local variant of lm-eval task '{task}'; known: {sorted(BUILTIN_LOCAL_TASKS)}")
    files = {}
    for split, rel in BUILTIN_LOCAL_TASKS[task].items():
        path = Path(data_dir).expanduser().resolve() / rel
        if not path.is_file():
            raise EvaluateError(f"task '{task}' needs {path} (split '{split}'); point data_dir at the folder holding {rel}")
        files[split] = str(path)
    spec: dict[str, Any] = {"task": task, "dataset_path": "json", "dataset_name": None,
                            "dataset_kwargs": {"data_files": files}}
    if "train" not in files:
        spec["training_split"] = None
    return {"group": f"{task}_localfile", "task": [spec], "metadata": {"version": 1.0}}


@functools.lru_cache(maxsize=8)
def _cached_task_manager(metadata_json: str, include_defaults: bool):
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults,
                       metadata=json.loads(metadata_json))


def task_manager(metadata: dict[str, Any], tasks: Sequence[str]):
    """lm-eval's task index for ``tasks``: the shipped syllabus tasks only, plus lm-eval's own tasks
    when one of them is asked for; built once per (metadata, kind) in a process."""
    return _cached_task_manager(json.dumps(metadata, sort_keys=True),
                                any(t not in SYLLABUS_TASKS for t in tasks))


def _task_names(task: str) -> set[str]:
    """The names lm-eval reports a task under: the task, plus its group wrapper for a local built-in."""
    return {task, f"{task}_localfile"} if task in BUILTIN_LOCAL_TASKS else {task}


def _task_spec(task: str, data_dir: Path | None) -> str | dict[str, Any]:
    if task in SYLLABUS_TASKS:
        return task
    if task in BUILTIN_LOCAL_TASKS:
        if data_dir is None:
            raise EvaluateError(f"task '{task}' reads local files: pass data_dir")
        return builtin_local_task(task, data_dir)
    raise EvaluateError(
        f"unknown benchmark task '{task}'; use one of {list(SYLLABUS_TASKS)} or lm-eval's {sorted(BUILTIN_LOCAL_TASKS)}"
    )


def _metric_key(key: str) -> str:
    """lm-eval's 'exact_match,none' -> 'exact_match'; other filters stay ('exact_match,strict-match')."""
    return key[: -len(",none")] if key.endswith(",none") else key


# --------------------------------------------------------------------------- truncation
def truncation_rate(samples_file: str | os.PathLike, tokenizer: Any, default_max_gen_toks: int = 256) -> float:
    """Share of generations that used their whole token budget without reaching a stop string.

    lm-eval cuts each response at its first stop string (and the end-of-text token), so a response
    that still has ``max_gen_toks`` tokens ran out of budget. Counts re-encode the logged text.
    """
    lengths, budgets = [], []
    with open(samples_file, encoding="utf-8") as fh:
        for line in fh:
            sample = json.loads(line)
            gen_kwargs = sample["arguments"]["gen_args_0"].get("arg_1") or {}
            budgets.append(int(gen_kwargs.get("max_gen_toks", default_max_gen_toks)))
            text = sample["resps"][0][0]
            lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    if not lengths:
        raise EvaluateError(f"{samples_file} has no samples")
    return sum(n >= b for n, b in zip(lengths, budgets)) / len(lengths)


# --------------------------------------------------------------------------- reading lm-eval's files
def _only(paths: list[Path], what: str, where: Path) -> Path:
    if len(paths) != 1:
        raise EvaluateError(f"expected one {what} in {where}, found {len(paths)}; delete the folder and run again")
    return paths[0]


def read_task_result(task_dir: str | os.PathLike, task: str, tokenizer: Any = None) -> TaskResult:
    """One task's result from lm-eval's files in ``task_dir`` (and its provenance when present)."""
    task_dir = Path(task_dir)
    results_file = _only(sorted(task_dir.rglob("results_*.json")), "results_*.json", task_dir)
    results = read_json(results_file)
    leaf = task
    if task not in results["results"]:  # a group wrapper: its one leaf task carries the scores
        leaves = [name for name in results["results"] if name != task]
        leaf = _only([Path(n) for n in leaves], "leaf task", results_file).name
    samples_file = _only(sorted(task_dir.rglob(f"samples_{leaf}_*.jsonl")), f"samples_{leaf}_*.jsonl", task_dir)
    scores = results["results"][leaf]
    metrics, stderrs = {}, {}
    for key, value in scores.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
            continue  # 'alias', 'sample_len' and stderrs are not metrics
        name, _, filt = key.partition(",")
        stderr = scores.get(f"{name}_stderr,{filt}")
        metrics[_metric_key(key)] = float(value)
        stderrs[_metric_key(key)] = float(stderr) if isinstance(stderr, (int, float)) else None
    prov_path = task_dir / PROVENANCE
    if prov_path.is_file():
        trunc = read_json(prov_path)["truncation_rate"]
    elif tokenizer is not None:
        trunc = truncation_rate(samples_file, tokenizer)
    else:
        raise EvaluateError(f"{task_dir} has no {PROVENANCE}; pass a tokenizer to compute the truncation rate")
    return TaskResult(
        task=task, metrics=metrics, stderrs=stderrs, n=int(results["n-samples"][leaf]["effective"]),
        limit=results["config"].get("limit"), truncation_rate=trunc,
        results_file=str(results_file), samples_file=str(samples_file),
    )


def sample_scores(samples_file: str | os.PathLike, metric: str = "exact_match") -> dict[str, float]:
    """Per problem, one metric of lm-eval's logged samples: ``{problem id: value}`` (the doc's ``id``, which the
    syllabus tasks carry; else lm-eval's ``doc_id``)."""
    scores: dict[str, float] = {}
    with open(samples_file, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            sample = json.loads(line)
            if metric not in sample:
                raise EvaluateError(f"{samples_file}, line {i}: no metric '{metric}' (it has "
                                    f"{sorted(k for k in sample if k in sample.get('metrics', []))})")
            doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
            scores[str(doc.get("id", sample["doc_id"]))] = float(sample[metric])
    return scores


# --------------------------------------------------------------------------- running
def run_lm_eval(
    model_dir: str | os.PathLike,
    tasks: Sequence[str],
    *,
    data_dir: str | os.PathLike | None,
    limit: int | None,
    max_gen_toks: int,
    batch_size: int | str,
    apply_chat_template: bool,
    device: str = "cpu",
    output_dir: str | os.PathLike,
    seed: int,
    lab_file: str | os.PathLike | None = None,
    model_name: str | None = None,
    dtype: str = "float32",
    code_timeout_s: float | None = None,
    code_memory_mb: int | None = None,
    backend: str = "hf",
) -> EvalResult:
    """Benchmark the HF model in ``model_dir`` on ``tasks`` with one ``lm_eval.simple_evaluate`` call,
    through lm-eval's ``backend`` model type (``hf``, or ``vllm`` on GPU machines).

    Completed tasks (provenance with the same key) are read back instead of re-run; the others run
    together, the model loaded once. With ``vllm``, ``batch_size`` is ``"auto"``: lm-eval's vllm model
    hands vLLM every request at once (a number would cut them into chunks of that many, one ``generate``
    call each), and vLLM schedules its own batches.
    """
    if backend == "vllm":
        batch_size = "auto"
    model_dir = Path(model_dir).expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        raise EvaluateError(f"model directory '{model_dir}' has no config.json; save the model with save_pretrained first")
    output_dir = Path(output_dir).expanduser().resolve()
    data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
    for needs_file in FILE_TASKS:
        if needs_file in tasks and lab_file is None:
            raise EvaluateError(f"task '{needs_file}' needs lab_file (write it with write_problems_jsonl)")
    metadata: dict[str, Any] = {"chat_prompt": bool(apply_chat_template)}
    if data_dir is not None:
        metadata["data_dir"] = str(data_dir)
    if lab_file is not None:
        metadata["lab_file"] = str(Path(lab_file).expanduser().resolve())
    if code_timeout_s is not None:
        metadata["code_timeout_s"] = code_timeout_s
    if code_memory_mb is not None:
        metadata["code_memory_mb"] = code_memory_mb

    name = model_name or model_dir.name
    model_hash = hash_path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = EvalResult(model=name, model_dir=str(model_dir), output_dir=str(output_dir))
    pending: dict[str, tuple[Any, dict[str, Any], str]] = {}  # task -> (spec, inputs, key)
    for task in tasks:
        spec = _task_spec(task, data_dir)
        inputs = {
            "model_hash": model_hash, "task": task, "spec": spec, "task_config": task_config(task),
            "metadata": metadata, "limit": limit, "max_gen_toks": max_gen_toks, "batch_size": batch_size,
            "apply_chat_template": apply_chat_template, "device": device, "dtype": dtype, "seed": seed,
            "data_hash": hash_path(metadata["lab_file"]) if task in FILE_TASKS else None,
            "versions": package_versions(("lm_eval", "transformers", "torch", "datasets", "math-verify")),
            **({"backend": backend, "vllm": package_versions(("vllm",))} if backend != "hf" else {}),
        }
        key = hash_obj(inputs)
        prov_path = output_dir / task / PROVENANCE
        if not (prov_path.is_file() and read_json(prov_path).get("key") == key):
            pending[task] = (spec, inputs, key)
    if pending:
        _run_tasks(model_dir, pending, output_dir, metadata, tokenizer, limit=limit, max_gen_toks=max_gen_toks,
                   batch_size=batch_size, apply_chat_template=apply_chat_template, device=device, dtype=dtype,
                   seed=seed, backend=backend)
    for task in tasks:
        out.tasks[task] = read_task_result(output_dir / task, task)
    atomic_write_json(output_dir / "eval_result.json", asdict(out))
    return out


def lm_eval_model_args(backend: str, model_dir, dtype: str, seed: int) -> dict[str, Any]:
    """``model_args`` of lm-eval's ``hf`` or ``vllm`` model type for a saved model directory."""
    if backend == "hf":
        return {"pretrained": str(model_dir), "dtype": dtype}
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise EvaluateError("benchmark.backend is 'vllm' but vLLM is not installed: pip install 'syllabus[vllm]' "
                                "on a GPU machine, or set benchmark.backend: hf")
        return {"pretrained": str(model_dir), "dtype": dtype, "seed": seed}
    raise EvaluateError(f"unknown lm-eval backend {backend!r}; use hf or vllm")


def _only_tasks(results: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """lm-eval's results dict restricted to the tasks (and groups) in ``names``."""
    per_task = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")
    return {k: ({n: v for n, v in value.items() if n in names} if k in per_task and isinstance(value, dict) else value)
            for k, value in results.items()}


def _run_tasks(model_dir, pending, output_dir, metadata, tokenizer, *, limit, max_gen_toks, batch_size,
               apply_chat_template, device, dtype, seed, backend="hf") -> None:
    """One ``simple_evaluate`` over all ``pending`` tasks (task -> (spec, inputs, key)); then each task's
    own results and samples files, and last its provenance, into ``output_dir/<task>/``."""
    unsafe = any(is_unsafe(task) for task in pending)
    tracker = EvaluationTracker()
    if backend == "vllm":  # lm-eval's engine takes 90% of the GPU: nothing of ours may hold a share then
        vllm_backend.release()
        vllm_backend.free_gpu_memory()
    try:
        with code_eval_allowed(unsafe):
            results = lm_eval.simple_evaluate(
                model=backend, model_args=lm_eval_model_args(backend, model_dir, dtype, seed),
                tasks=[spec for spec, _, _ in pending.values()], task_manager=task_manager(metadata, list(pending)),
                device=device, limit=limit, batch_size=batch_size, gen_kwargs={"max_gen_toks": max_gen_toks},
                apply_chat_template=apply_chat_template, log_samples=True, evaluation_tracker=tracker,
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                confirm_run_unsafe_code=unsafe,
            )
    finally:
        if backend == "vllm":  # the engine lm-eval made for this model goes now, before the next model's is made
            vllm_backend.free_gpu_memory()
    samples = results.pop("samples")
    for task, (_, inputs, key) in pending.items():
        names = _task_names(task)
        task_dir = output_dir / task
        task_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".lm_eval-", suffix=".tmp", dir=task_dir))
        try:
            task_tracker = EvaluationTracker(output_path=str(staging))
            task_tracker.general_config_tracker = copy.deepcopy(tracker.general_config_tracker)
            # lm-eval names its folder after the model path, i.e. the machine's absolute path: use the folder's name
            task_tracker.general_config_tracker.model_name_sanitized = sanitize_model_name(Path(model_dir).name)
            task_samples = {n: v for n, v in samples.items() if n in names}
            task_tracker.save_results_aggregated(results=_only_tasks(results, names), samples=task_samples)
            for n, rows in task_samples.items():
                task_tracker.save_results_samples(task_name=n, samples=rows)
            result = read_task_result(staging, task, tokenizer)  # checks that lm-eval wrote its files
            final = task_dir / "lm_eval"
            if final.exists():
                shutil.rmtree(final)
            publish_mode(staging)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        provenance = {"key": key, **inputs, "truncation_rate": result.truncation_rate,
                      "n": result.n, "metrics": result.metrics}
        atomic_write_json(task_dir / PROVENANCE, provenance)


def load_eval_result(output_dir: str | os.PathLike) -> EvalResult:
    """Read back what ``run_lm_eval`` wrote to ``output_dir``."""
    path = Path(output_dir) / "eval_result.json"
    if not path.is_file():
        raise EvaluateError(f"{path} does not exist; run run_lm_eval with output_dir={output_dir} first")
    raw = read_json(path)
    raw["tasks"] = {t: TaskResult(**r) for t, r in raw["tasks"].items()}
    return EvalResult(**raw)


# --------------------------------------------------------------------------- tidy table
TIDY_COLUMNS = ["model", "task", "metric", "value", "stderr", "limit", "n", "truncation_rate"]


def tidy_results(results: Iterable[EvalResult | str | os.PathLike]):
    """One row per model x task x metric: model, task, metric, value, stderr, limit, n, truncation_rate."""
    rows = []
    for res in results:
        res = res if isinstance(res, EvalResult) else load_eval_result(res)
        for task, tr in res.tasks.items():
            for metric, value in tr.metrics.items():
                rows.append({"model": res.model, "task": task, "metric": metric, "value": value,
                             "stderr": tr.stderrs.get(metric), "limit": tr.limit, "n": tr.n,
                             "truncation_rate": tr.truncation_rate})
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return df.astype({"value": float, "stderr": float, "truncation_rate": float}).sort_values(
        ["model", "task", "metric"], ignore_index=True)
