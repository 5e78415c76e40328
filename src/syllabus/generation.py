"""What students and teachers write, checked by the one verifier: a student's samples (transformers or
vLLM), its pass rates and accuracy (cached by weights), and the teachers' traces of a set of problems."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from . import models, teachers, vllm_backend
from .params import Profile
from .records import Problem, Trace
from .runs import Stage, cached_json, hash_obj
from .students import StudentModel
from .verify import verify


def student_samples(student: StudentModel, problems: list[Problem], *, k: int, prof: Profile, seed: int,
                    cache_dir: Path | None = None, temperature: float | None = None, top_p: float | None = None):
    """k solutions per problem written by the student (greedy when k == 1, else at ``temperature`` /
    ``top_p``, by default ``student_generation``'s), by transformers on the student's device
    (``student_generation.backend: hf``) or by vLLM on its current weights, LoRA merged, saved under
    ``cache_dir/vllm_models`` for this call and deleted after it with its engine (``vllm``)."""
    g = prof.student_generation
    prompts = [student.prompt(p) for p in problems]
    temperature = 0.0 if k == 1 else (g.temperature if temperature is None else temperature)
    top_p = g.top_p if top_p is None else top_p
    if g.backend == "vllm":
        root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "syllabus"
        with vllm_backend.student_weights(student.model, student.tokenizer, student.fingerprint(), root) as weights:
            return vllm_backend.generate(weights, student.tokenizer, prompts, max_new_tokens=g.max_new_tokens,
                                         temperature=temperature, top_p=top_p, num_samples=k, seed=seed,
                                         stop=models.STOP, dtype=vllm_backend.dtype_name(student.model))
    return models.generate(student.model, student.tokenizer, prompts, max_new_tokens=g.max_new_tokens,
                           temperature=temperature, top_p=top_p, num_samples=k, batch_size=g.batch_size, seed=seed,
                           token_budget=g.token_budget)


def pass_rates(student: StudentModel, problems: list[Problem], *, k: int, prof: Profile, seed: int,
               cache_dir: Path | None = None) -> pd.Series:
    """The student's pass rate per problem from k samples (greedy when k == 1), by the one verifier.

    With ``cache_dir``, cached by (student weights, problems, k, generation settings, seed); greedy rates
    (k == 1) do not depend on the seed, so every stage shares them whatever its seed.
    """
    def compute() -> list[float]:
        outs = student_samples(student, problems, k=k, prof=prof, seed=seed, cache_dir=cache_dir)
        return [sum(verify(p, g.text) for g in gens) / len(gens) for p, gens in zip(problems, outs)]

    if cache_dir is None:
        rates = compute()
    else:
        key = hash_obj({"student": student.fingerprint(), "problems": [(p.id, p.text) for p in problems], "k": k,
                        "gen": generation_settings(prof, student), "seed": seed if k > 1 else None})[:24]
        rates = cached_json(Path(cache_dir) / "pass_rates" / f"{key}.json", compute)
    return pd.Series(rates, index=[p.id for p in problems], name="pass_rate", dtype=float)


def generation_settings(prof: Profile, student: StudentModel) -> dict[str, Any]:
    """What decides the student's samples, for cache keys (the ``hf`` backend without a token budget keeps
    its earlier keys; vLLM ignores the budget; ``vllm_dtype``: vLLM runs the student in its own dtype, where
    its ``auto`` had run a float32 student in float16; ``eos_ids``: the ``hf`` backend stops on every end token
    of the model's generation config, where it had stopped on the tokenizer's EOS alone; a model with only
    that one keeps its earlier keys)."""
    settings = prof.student_generation.model_dump(mode="json")
    if settings["token_budget"] is None or settings["backend"] == "vllm":
        del settings["token_budget"]
    if settings["backend"] == "hf":
        del settings["backend"]
        ends = models.eos_ids(student.model, student.tokenizer)
        if len(ends) > 1:
            settings["eos_ids"] = ends
    else:
        settings["vllm_dtype"] = "student"
    return settings


def accuracy(student: StudentModel, problems: list[Problem], *, prof: Profile, seed: int = 0,
             cache_dir: Path | None = None) -> float:
    """Greedy accuracy on a problem set."""
    if not problems:
        return float("nan")
    return float(pass_rates(student, problems, k=1, prof=prof, seed=seed, cache_dir=cache_dir).mean())


def module_accuracy(student: StudentModel, problems: list[Problem], *, prof: Profile, seed: int = 0,
                    cache_dir: Path | None = None) -> pd.Series:
    """Greedy accuracy per module (IOA's P_S(k))."""
    rates = pass_rates(student, problems, k=1, prof=prof, seed=seed, cache_dir=cache_dir)
    modules = pd.Series({p.id: p.module for p in problems})
    return rates.groupby(modules).mean()


@dataclass
class TeacherRun:
    """What one teacher wrote for a set of problems, each trace checked by the verifier."""

    name: str
    traces: list[Trace]
    n_generated: int


def teacher_traces(stage: Stage, problems: list[Problem], n_samples: int,
                   names: Iterable[str] | None = None) -> dict[str, TeacherRun]:
    """Traces from the profile's teachers (all, or ``names``), cached by (teacher, settings, problem, sample)."""
    prof = stage.params
    wanted = set(names) if names is not None else None
    by_id = {p.id: p for p in problems}
    runs: dict[str, TeacherRun] = {}
    for spec in prof.teachers:
        if wanted is not None and spec.name not in wanted:
            continue
        teacher = teachers.make_teacher(spec, data_dir=prof.data.resolved_data_dir(), cache_dir=stage.run.cache,
                                        device=prof.device)
        try:
            res = teachers.generate_traces(teacher, problems, n_samples, cache_dir=stage.run.cache, seed=prof.seed)
        finally:
            teacher.close()  # a vLLM teacher's engine goes before the next teacher's, and before the student trains
        checked = [t.replace(correct=bool(verify(by_id[t.problem_id], t.text))) for t in res.traces]
        runs[spec.name] = TeacherRun(spec.name, checked, res.n_generated)
    return runs
