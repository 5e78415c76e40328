"""Students: a loaded model with its tokenizer and prompt format (``StudentModel``), and ``load_student``,
which warm-starts a lab student once per run (``models`` composed with the lab warm-up texts of ``problems``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import models, prompts, scoring, tokens
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


def load_student(stage: Stage, spec: Student | str, splits: Splits | None = None) -> StudentModel:
    """Load (and for lab students warm-start, once per run, cached under ``cache/``) a student."""
    prof = stage.params
    if isinstance(spec, str):
        spec = next(s for s in prof.students if s.name == spec)
    kwargs: dict[str, Any] = {}
    if spec.source == "lab":
        exclude = (splits.probe + splits.heldout) if splits else ()
        pre = pretrain_texts(prof, spec, exclude)
        kwargs = {"pretrain_texts": pre, "vocab_texts": tokenizer_texts(prof, pre)}
    model, tok = models.load_student(spec, cache_dir=stage.run.cache, threads=prof.threads, training=prof.training,
                                     seed=prof.seed, device=prof.device, **kwargs)
    model.eval()
    return StudentModel(spec, model, tok)
