"""The run's problems: pool / probe / held-out splits from the profile's task, and the lab students'
warm-up and vocabulary texts (``lab``/``data`` composed)."""

from __future__ import annotations

import math
import random
from typing import Iterable

from . import data, lab, prompts
from .overlap import normalize_text
from .params import Profile, Student
from .records import SPLITS, Problem, Splits


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
