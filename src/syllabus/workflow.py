"""Steps shared by the stages: problem splits, students, pass rates and short distillation runs.

Every function here is a thin composition of the package's parts (``lab``/``data`` for problems,
``models`` for students and generation, ``verify`` for answers, ``train`` for SFT), so that a
notebook cell reads like a sentence of the method.
"""

from __future__ import annotations

import copy
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from . import data, executor, lab, launch, models, prompts, scoring, teachers, tokens, train, vllm_backend
from .overlap import normalize_text
from .params import Profile, Student
from .records import SPLITS, Problem, Splits, Trace  # Splits: read by notebooks 03-05 as workflow.Splits
from .runs import Stage, cached_json, hash_obj
from .verify import verify

def lab_modules_in_order(modules: Iterable[str]) -> list[str]:
    """Lab modules in prerequisite order (prerequisites first)."""
    return lab.topological_order(list(modules))


def problem_splits(prof: Profile) -> Splits:
    """The run's pool / probe / held-out problems, disjoint by text, from the profile's task.

    Lab: drawn from the profile's seed. GSM8K / MATH: the test file is shuffled with the seed and
    cut into held-out and probe; the pool is the rest of it (``data.pool_split: test``, e.g. when
    the teachers are files of solutions to test problems) or the train file.
    """
    d = prof.data
    if d.task == "lab":
        return Splits(**{s: list(data.load_from_params(prof, "lab", s)) for s in SPLITS})
    test = list(data.load_from_params(prof, d.task, "test"))
    rng = random.Random(prof.seed)
    rng.shuffle(test)
    heldout, rest = test[: d.n_heldout], test[d.n_heldout:]
    probe, rest = rest[: d.n_probe], rest[d.n_probe:]
    if d.pool_split == "test":
        pool = rest[: d.n_pool]
    else:
        train = list(data.load_from_params(prof, d.task, "train"))
        rng.shuffle(train)
        seen = {normalize_text(p.text) for p in heldout + probe}
        pool = [p for p in train if normalize_text(p.text) not in seen][: d.n_pool]
    return Splits(pool=pool, probe=probe, heldout=heldout)


def warmup_modules(prof: Profile, spec: Student) -> list[str]:
    """The lab modules a student's warm-up covers: ``warmup_modules``, else the first ``warmup_fraction``
    of the task's modules in prerequisite order (so students start with different skills)."""
    modules = lab_modules_in_order(prof.data.lab.modules)
    if spec.warmup_modules is not None:
        return [m for m in modules if m in spec.warmup_modules]
    return modules[: max(1, math.ceil(len(modules) * spec.warmup_fraction))]


def pretrain_texts(prof: Profile, spec: Student, exclude: Iterable[Problem] = ()) -> list[str]:
    """Warm-up text for a lab student: correct solutions of fresh lab problems on its warm-up modules,
    written in its ``warmup_style``."""
    cfg = prof.data.lab
    return lab.pretrain_corpus(cfg.n_pretrain, prof.seed * 1000 + 7, modules=warmup_modules(prof, spec),
                               min_steps=cfg.min_steps, max_steps=cfg.max_steps, max_operand=cfg.max_operand,
                               max_value=cfg.max_value, exclude=[p.text for p in exclude], style=spec.warmup_style)


def tokenizer_texts(prof: Profile, pretrain: list[str]) -> list[str]:
    """Text the lab tokenizer's vocabulary is built from: warm-up text plus every lab teacher style,
    so that no teacher's words are unknown to the students (no trace is trained on here)."""
    cfg = prof.data.lab
    problems = lab.generate_problems(200, seed=prof.seed * 1000 + 11, modules=cfg.modules, min_steps=cfg.min_steps,
                                     max_steps=cfg.max_steps, max_operand=cfg.max_operand, max_value=cfg.max_value,
                                     id_prefix="vocab")
    styles = ("equations", "prose", "selfcheck", "sloppy")
    rng = random.Random(prof.seed)
    traces = [lab.write_trace(p, s, error_rate=0.5, rng=rng) for p in problems for s in styles]
    return pretrain + [prompts.question_prompt(p.text) for p in problems] + traces


# --------------------------------------------------------------------------- students
@dataclass
class StudentModel:
    """A loaded student: its spec, model, tokenizer and whether it uses a chat template."""

    spec: Student
    model: Any
    tokenizer: Any

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def use_chat(self) -> bool:
        return self.spec.chat_template

    def prompt(self, problem: Problem) -> str:
        return prompts.build_prompt(problem.text, self.tokenizer, self.use_chat)

    def target(self, trace_text: str) -> str:
        return prompts.build_target(trace_text, self.use_chat, eos=self.tokenizer.eos_token)

    def count_tokens(self, text: str) -> int:
        """Length of ``text`` in this student's tokens (``tokens.count_tokens``)."""
        return tokens.count_tokens(self.tokenizer, text)

    def fingerprint(self) -> str:
        """``scoring.model_fingerprint`` of the weights, hashed again only after they changed: the
        memo is keyed by every tensor's identity and in-place version counter, which any optimizer
        step or ``load_state_dict`` bumps (stage 5 trains ``model`` in place)."""
        state = [(id(t), getattr(t, "_version", None)) for t in self.model.state_dict(keep_vars=True).values()]
        memo = getattr(self, "_fingerprint_memo", None)
        if memo is None or memo[0] != state or None in (v for _, v in state):
            memo = (state, scoring.model_fingerprint(self.model))
            self._fingerprint_memo = memo
        return memo[1]


def _student_kwargs(stage: Stage, spec: Student, splits: Splits | None) -> dict[str, Any]:
    """The keyword arguments of ``models.load_student`` for a student of this run."""
    prof = stage.params
    kwargs: dict[str, Any] = {"cache_dir": str(stage.run.cache), "threads": prof.threads, "training": prof.training,
                              "seed": prof.seed, "device": prof.device}
    if spec.source == "lab":
        exclude = (splits.probe + splits.heldout) if splits else ()
        pre = pretrain_texts(prof, spec, exclude)
        kwargs.update(pretrain_texts=pre, vocab_texts=tokenizer_texts(prof, pre))
    return kwargs


def load_student(stage: Stage, spec: Student | str, splits: Splits | None = None) -> StudentModel:
    """Load (and for lab students warm-start, once per run, cached under ``cache/``) a student."""
    if isinstance(spec, str):
        spec = next(s for s in stage.params.students if s.name == spec)
    model, tok = models.load_student(spec, **_student_kwargs(stage, spec, splits))
    model.eval()
    return StudentModel(spec, model, tok)


def warm_students(stage: Stage, splits: Splits) -> list[str]:
    """Warm-start the profile's lab students that are not cached yet side by side, one per worker of the
    profile's executor (a no-op with one local worker: ``load_student`` then warms each when first asked).
    The later stages find them in the run's cache. Returns the names warmed here."""
    prof = stage.params
    if not executor.spreads(prof):
        return []
    jobs = []
    for spec in prof.students:
        if spec.source != "lab" or not spec.warmup_steps:
            continue
        kwargs = _student_kwargs(stage, spec, splits)
        folder = Path(models.model_dir_for(spec, cache_dir=kwargs["cache_dir"], training=kwargs["training"],
                                           pretrain_texts=kwargs["pretrain_texts"], vocab_texts=kwargs["vocab_texts"],
                                           seed=kwargs["seed"]))
        if not (folder / models.INFO_FILE).is_file():
            jobs.append({"spec": spec, **kwargs})
    if len(jobs) > 1:
        executor.for_profile(prof, stage.run.cache / "slurm").map(_warm_student, jobs)
        return [job["spec"].name for job in jobs]
    return []


def _warm_student(job: dict[str, Any]) -> str:
    """A worker's warm-up: ``models.load_student`` writes the student into the run's cache."""
    job = dict(job)
    spec = job.pop("spec")
    models.load_student(spec, **job)
    return spec.name


# --------------------------------------------------------------------------- generation and accuracy
def student_samples(student: StudentModel, problems: list[Problem], *, k: int, prof: Profile, seed: int,
                    cache_dir: Path | None = None, temperature: float | None = None, top_p: float | None = None):
    """k solutions per problem written by the student (greedy when k == 1, else at ``temperature`` /
    ``top_p``, by default ``student_generation``'s), by transformers on the student's device
    (``student_generation.backend: hf``) or by vLLM on its current weights, LoRA merged, saved once per
    checkpoint under ``cache_dir`` (``vllm``)."""
    g = prof.student_generation
    prompts = [student.prompt(p) for p in problems]
    temperature = 0.0 if k == 1 else (g.temperature if temperature is None else temperature)
    top_p = g.top_p if top_p is None else top_p
    if g.backend == "vllm":
        root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "syllabus"
        weights = vllm_backend.student_weights_dir(student.model, student.tokenizer, student.fingerprint(), root)
        return vllm_backend.generate(weights, student.tokenizer, prompts, max_new_tokens=g.max_new_tokens,
                                     temperature=temperature, top_p=top_p, num_samples=k, seed=seed,
                                     stop=models.STOP)
    return models.generate(student.model, student.tokenizer, prompts, max_new_tokens=g.max_new_tokens,
                           temperature=temperature, top_p=top_p, num_samples=k, batch_size=g.batch_size, seed=seed)


def pass_rates(student: StudentModel, problems: list[Problem], *, k: int, prof: Profile, seed: int,
               cache_dir: Path | None = None) -> pd.Series:
    """The student's pass rate per problem from k samples (greedy when k == 1), by the one verifier.

    With ``cache_dir``, cached by (student weights, problems, k, generation settings, seed).
    """
    def compute() -> list[float]:
        outs = student_samples(student, problems, k=k, prof=prof, seed=seed, cache_dir=cache_dir)
        return [sum(verify(p, g.text) for g in gens) / len(gens) for p, gens in zip(problems, outs)]

    if cache_dir is None:
        rates = compute()
    else:
        key = hash_obj({"student": student.fingerprint(), "problems": [(p.id, p.text) for p in problems], "k": k,
                        "gen": generation_settings(prof), "seed": seed})[:24]
        rates = cached_json(Path(cache_dir) / "pass_rates" / f"{key}.json", compute)
    return pd.Series(rates, index=[p.id for p in problems], name="pass_rate", dtype=float)


def generation_settings(prof: Profile) -> dict[str, Any]:
    """What decides the student's samples, for cache keys (the ``hf`` backend keeps its earlier keys)."""
    settings = prof.student_generation.model_dump(mode="json")
    if settings["backend"] == "hf":
        del settings["backend"]
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


# --------------------------------------------------------------------------- teachers
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
        res = teachers.generate_traces(teacher, problems, n_samples, cache_dir=stage.run.cache, seed=prof.seed)
        checked = [t.replace(correct=bool(verify(by_id[t.problem_id], t.text))) for t in res.traces]
        runs[spec.name] = TeacherRun(spec.name, checked, res.n_generated)
    return runs


# --------------------------------------------------------------------------- distillation
def sft_examples(student: StudentModel, problems: dict[str, Problem], traces: Iterable[Trace | dict]) -> list[tuple[str, str]]:
    """(prompt, target) pairs in the student's format for a set of traces."""
    out = []
    for t in traces:
        pid, text = (t.problem_id, t.text) if isinstance(t, Trace) else (t["problem_id"], t["text"])
        out.append((student.prompt(problems[pid]), student.target(text)))
    return out


def budget_steps(student: StudentModel, examples: list[tuple[str, str]], training, *, tokens: int | None,
                 steps: int) -> int:
    """Optimizer steps for an SFT budget: ``tokens`` / (tokens per step at these examples' mean length),
    so runs on short and long traces see about the same number of tokens; ``steps`` when tokens is None."""
    if tokens is None:
        return steps
    lengths = [len(ids) for ids, _ in train.tokenize_examples(student.tokenizer, examples, training.max_seq_len,
                                                               "target")]
    per_step = training.batch_size * training.grad_accum * sum(lengths) / max(1, len(lengths))
    return max(1, math.ceil(tokens / per_step))


def distil(student: StudentModel, examples: list[tuple[str, str]], *, steps: int, stage: Stage, seed: int,
           tag: str) -> tuple[StudentModel, Any]:
    """A short SFT of a copy of the student on ``examples``; cached and resumable under ``cache/sft/``.

    Returns the trained copy and the training result (losses, tokens seen). The original student is
    left untouched, so equal-budget runs all start from the same weights.
    """
    prof = stage.params
    key = hash_obj({"student": student.fingerprint(), "examples": examples, "steps": steps, "seed": seed,
                    "training": prof.training.model_dump(mode="json")})[:16]
    out_dir = stage.run.cache / "sft" / f"{tag}-{key}"
    model = copy.deepcopy(student.model)
    result = launch.sft(model, student.tokenizer, examples, steps=steps, cfg=prof.training, seed=seed,
                        out_dir=out_dir, resume=True, processes=prof.parallel.sft_processes)
    model.eval()  # sft trained the copy in place
    return StudentModel(student.spec, model, student.tokenizer), result
