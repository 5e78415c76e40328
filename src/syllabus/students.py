"""Students: a loaded model with its tokenizer and prompt format (``StudentModel``), and ``load_student``,
which warm-starts a lab student once per run (``models`` composed with the lab warm-up texts of ``problems``);
``warm_students`` warms them side by side on the profile's workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import executor, models, prompts, scoring, tokens
from .params import Student
from .problems import pretrain_texts, tokenizer_texts
from .records import Problem, Splits
from .runs import Stage


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
        executor.for_profile(prof, stage.run.cache / "jobs").map(_warm_student, jobs)
        return [job["spec"].name for job in jobs]
    return []


def _warm_student(job: dict[str, Any]) -> str:
    """A worker's warm-up: ``models.load_student`` writes the student into the run's cache."""
    job = dict(job)
    spec = job.pop("spec")
    models.load_student(spec, **job)
    return spec.name
