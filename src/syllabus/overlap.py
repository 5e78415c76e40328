"""Text overlap: normalisation, word n-grams, Jaccard near-duplicates, and n-gram decontamination.

Normalisation follows lm-eval's decontamination (lower case, punctuation removed, whitespace
collapsed), with one change: a ``.``, ``,`` or ``'`` between two word characters is deleted
(``1,000`` -> ``1000``, ``don't`` -> ``dont``) while every other punctuation mark or symbol becomes a
space, so ``3+4=7`` and ``3 + 4 = 7`` normalise alike.

Decontamination is open-r1's and lm-eval's word n-gram lookup (13-grams by default) with two gaps
closed: a text shorter than n words is checked by containment (either way), and every hit says
which eval set, which item and which n-gram matched.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

from .records import Problem

_INNER_PUNCT = re.compile(r"(?<=\w)[.,'\u2019](?=\w)")
_PUNCT = re.compile(r"[^\w\s]|_")


def normalize_text(text: str) -> str:
    """Lower case, punctuation and symbols removed, whitespace collapsed (see the module docstring)."""
    text = _INNER_PUNCT.sub("", text.lower())
    return " ".join(_PUNCT.sub(" ", text).split())


def text_hash(text: str) -> str:
    """Hash of the normalised text: equal for texts differing only in case, spacing or punctuation."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def word_ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All length-``n`` windows of ``words`` (none when there are fewer than ``n`` words)."""
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of the normalised text; a text shorter than ``n`` words is one shingle."""
    words = normalize_text(text).split()
    if not words:
        return set()
    return set(word_ngrams(words, n)) if len(words) >= n else {tuple(words)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicateIndex:
    """Shingle sets of the items kept so far, with an inverted index to find Jaccard neighbours."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.postings: dict[tuple, list[int]] = defaultdict(list)
        self.sizes: list[int] = []
        self.names: list[str] = []

    def nearest(self, sh: set) -> tuple[str, float] | None:
        shared = Counter(j for g in sh for j in self.postings.get(g, ()))
        best = None  # (jaccard, -index): highest Jaccard, then the earliest kept item
        for j, c in shared.items():
            score = c / (len(sh) + self.sizes[j] - c)
            if score >= self.threshold and (best is None or (score, -j) > best):
                best = (score, -j)
        return None if best is None else (self.names[-best[1]], best[0])

    def add(self, name: str, sh: set) -> None:
        j = len(self.sizes)
        self.sizes.append(len(sh))
        self.names.append(name)
        for g in sh:
            self.postings[g].append(j)


# --------------------------------------------------------------------------- decontamination
EvalSets = Mapping[str, Sequence["Problem | str"]]


@dataclass(frozen=True)
class Contamination:
    """One problem found in one evaluation set: the eval item and the shared n-gram (or containment)."""

    problem_id: str
    eval_set: str
    eval_id: str
    match: Literal["ngram", "contains", "contained"]
    text: str


class _EvalIndex:
    """One evaluation set's n-grams and its normalised texts (for containment of short texts)."""

    def __init__(self, items: Sequence[Problem | str], n: int):
        self.ids = [x.id if isinstance(x, Problem) else str(i) for i, x in enumerate(items)]
        self.texts = [normalize_text(x.text if isinstance(x, Problem) else x) for x in items]
        self.ngrams: dict[tuple, int] = {}
        for j, t in enumerate(self.texts):
            for g in word_ngrams(t.split(), n):
                self.ngrams.setdefault(g, j)
        self.joined = "\n".join(f" {t} " for t in self.texts)
        self.starts = np.cumsum([0] + [len(t) + 3 for t in self.texts[:-1]])
        self.short = [(j, t) for j, t in enumerate(self.texts) if t and len(t.split()) < n]

    def find(self, text: str, n: int) -> tuple[str, str, str] | None:
        words = text.split()
        if not words:
            return None
        for g in word_ngrams(words, n):
            if g in self.ngrams:
                return self.ids[self.ngrams[g]], "ngram", " ".join(g)
        if len(words) < n:  # a problem shorter than n words: is all of it inside an eval item?
            at = self.joined.find(f" {text} ")
            if at >= 0:
                j = int(np.searchsorted(self.starts, at, side="right")) - 1
                return self.ids[j], "contains", text
        padded = f" {text} "
        for j, t in self.short:  # an eval item shorter than n words: is all of it inside the problem?
            if f" {t} " in padded:
                return self.ids[j], "contained", t
        return None


def find_contamination(problems: Sequence[Problem], eval_sets: EvalSets, n: int = 13) -> list[Contamination]:
    """Every (problem, eval set) pair that shares a normalised word ``n``-gram, or where the shorter
    text (under ``n`` words) lies wholly inside the other; the first match per pair is reported."""
    indexes = {name: _EvalIndex(items, n) for name, items in sorted(eval_sets.items())}
    found = []
    for p in sorted(problems, key=lambda p: p.id):
        text = normalize_text(p.text)
        for name, index in indexes.items():
            hit = index.find(text, n)
            if hit:
                found.append(Contamination(p.id, name, *hit))
    return found

