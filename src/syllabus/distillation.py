"""Short distillation runs: a student's (prompt, target) examples for a set of traces, their training
length in tokens, the optimizer steps of a token budget, and a cached, resumable SFT of a copy of the student."""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable

from . import launch, train
from .params import Student, Training
from .records import Problem, Trace
from .runs import Stage, hash_obj
from .students import StudentModel


def sft_examples(student: StudentModel, problems: dict[str, Problem], traces: Iterable[Trace | dict]) -> list[tuple[str, str]]:
    """(prompt, target) pairs in the student's format for a set of traces."""
    out = []
    for t in traces:
        pid, text = (t.problem_id, t.text) if isinstance(t, Trace) else (t["problem_id"], t["text"])
        out.append((student.prompt(problems[pid]), student.target(text)))
    return out


def example_tokens(student: StudentModel, examples: list[tuple[str, str]], max_seq_len: int) -> list[int]:
    """Tokens each (prompt, target) example feeds the student in training (after truncation): the one
    measure of an example's length, for token budgets."""
    return [len(ids) for ids, _ in train.tokenize_examples(student.tokenizer, examples, max_seq_len, "target")]


def sft_training(spec: Student, training: Training) -> Training:
    """The SFT settings of a student's distillation runs (stages 1, 4 and 5): the profile's, at the student's
    own ``learning_rate`` where it has one."""
    if spec.learning_rate is None:
        return training
    return training.model_copy(update={"learning_rate": spec.learning_rate})


def budget_steps(student: StudentModel, examples: list[tuple[str, str]], training, *, tokens: int | None,
                 steps: int) -> int:
    """Optimizer steps for an SFT budget: ``tokens`` / (tokens per step at these examples' mean length),
    so runs on short and long traces see about the same number of tokens; ``steps`` when tokens is None."""
    if tokens is None:
        return steps
    lengths = example_tokens(student, examples, training.max_seq_len)
    per_step = training.batch_size * training.grad_accum * sum(lengths) / max(1, len(lengths))
    return max(1, math.ceil(tokens / per_step))


def distil(student: StudentModel, examples: list[tuple[str, str]], *, steps: int, stage: Stage, seed: int,
           tag: str) -> tuple[StudentModel, Any]:
    """A short SFT of a copy of the student on ``examples``; cached and resumable under ``cache/sft/``.

    Returns the trained copy and the training result (losses, tokens seen). The original student is
    left untouched, so equal-budget runs all start from the same weights.
    """
    prof = stage.params
    cfg = sft_training(student.spec, prof.training)
    key = hash_obj({"student": student.fingerprint(), "examples": examples, "steps": steps, "seed": seed,
                    "training": cfg.key_dump()})[:16]
    out_dir = stage.run.cache / "sft" / f"{tag}-{key}"
    model = copy.deepcopy(student.model)
    result = launch.sft(model, student.tokenizer, examples, steps=steps, cfg=cfg, seed=seed,
                        out_dir=out_dir, resume=True, processes=prof.parallel.sft_processes,
                        sharding=prof.parallel.sft_sharding)
    model.eval()  # sft trained the copy in place
    return StudentModel(student.spec, model, student.tokenizer), result
