"""Stage 2: the trace-curation funnel (DED's filters and diversity, plus dedup and decontamination).

Every step is a function ``step(items, ...) -> (kept, dropped)``; ``dropped`` is a list of
``Dropped`` records, so nothing disappears without a reason. Problem-level steps (decontamination,
compression, balance) drop problems; ``cascade`` carries those drops over to the problems' traces.
A ``Funnel`` collects the counts after each step per dataset and teacher.

Decisions that depend on order (which duplicate to keep, diversity ties, balance sampling) are made
in a stable order - problems by id, traces by (problem id, teacher, sample) - so the same inputs give
the same output whatever order they arrive in. Kept items come back in their input order.

Text normalisation, n-grams, near-duplicate search and the decontamination lookup live in
``syllabus.overlap``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Iterable, Literal, Mapping, Sequence, TypeVar

import numpy as np
import pandas as pd
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from .adapter import AdapterError, adapt_text
from .errors import SyllabusError
from .overlap import Contamination, EvalSets, NearDuplicateIndex, find_contamination, shingles, text_hash
from .params import Curation
from .records import Problem, Trace
from .runs import hash_obj
from .verify import has_final_answer

Verify = Callable[[Problem, str], bool]
CountTokens = Callable[[str], int]
Item = TypeVar("Item", Problem, Trace)

CODE_TASKS = ("humaneval",)
PASS_RATE_BANDS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


class CurationError(SyllabusError, ValueError):
    """Input the funnel cannot use; the message names the item and the fix."""


@dataclass(frozen=True)
class Dropped:
    """Why one trace (``kind="trace"``) or problem (``kind="problem"``) left the funnel."""

    item: str
    kind: Literal["trace", "problem"]
    problem_id: str
    teacher: str | None
    step: str
    reason: str
    detail: str = ""


# --------------------------------------------------------------------------- ids, order, text
def trace_id(trace: Trace) -> str:
    """``problem|teacher|sample``, with ``|adapted`` for Adapter rewrites."""
    suffix = "|adapted" if trace.settings.get("adapter") else ""
    return f"{trace.problem_id}|{trace.teacher}|{trace.sample}{suffix}"


def _trace_key(trace: Trace) -> tuple:
    return (trace.problem_id, trace.teacher, trace.sample, bool(trace.settings.get("adapter")))


def _drop_trace(trace: Trace, step: str, reason: str, detail: str = "") -> Dropped:
    return Dropped(trace_id(trace), "trace", trace.problem_id, trace.teacher, step, reason, detail)


def _drop_problem(problem: Problem, step: str, reason: str, detail: str = "") -> Dropped:
    return Dropped(problem.id, "problem", problem.id, None, step, reason, detail)


def _in_input_order(items: Sequence[Item], keep: set[int]) -> list[Item]:
    return [item for i, item in enumerate(items) if i in keep]


def word_count(text: str) -> int:
    """The fallback length unit: whitespace-separated words."""
    return len(text.split())


def _index(problems: Iterable[Problem]) -> dict[str, Problem]:
    out: dict[str, Problem] = {}
    for p in problems:
        if p.id in out:
            raise CurationError(f"problem id '{p.id}' appears twice; problem ids must be unique")
        out[p.id] = p
    return out


def _problem_of(trace: Trace, by_id: Mapping[str, Problem], step: str) -> Problem:
    try:
        return by_id[trace.problem_id]
    except KeyError:
        raise CurationError(
            f"{step}: trace '{trace_id(trace)}' refers to problem '{trace.problem_id}', which is not among "
            "the problems given; pass the problem list the traces were generated for"
        ) from None


# --------------------------------------------------------------------------- 1. format and length
def think_tags_problem(text: str, required: bool) -> str | None:
    """Why the ``<think>...</think>`` block is malformed, or None when it is fine."""
    opens, closes = text.count("<think>"), text.count("</think>")
    if opens == closes == 0:
        return "no <think>...</think> block" if required else None
    if opens != 1 or closes != 1:
        return f"{opens} <think> and {closes} </think> tags (need exactly one pair)"
    if text.index("<think>") > text.index("</think>"):
        return "</think> comes before <think>"
    return None


def filter_format(
    traces: Sequence[Trace],
    problems: Iterable[Problem],
    *,
    max_tokens: int,
    count_tokens: CountTokens | None = None,
    require_think_tags: bool = False,
) -> tuple[list[Trace], list[Dropped]]:
    """Drop truncated, over-length (``count_tokens`` tokens, else words) and malformed traces.

    Malformed: empty; unbalanced ``<think>`` tags (missing ones too when ``require_think_tags``); no
    final-answer marker (``####``, ``\\boxed{}``, "the answer is", "final answer:", a closing ``A: N``
    line; code tasks exempt).
    The first failing check is the reason.
    """
    step, count = "format", count_tokens or word_count
    unit = "tokens" if count_tokens else "words"
    by_id = _index(problems)
    keep, dropped = set(), []
    for i, t in enumerate(traces):
        problem = _problem_of(t, by_id, step)
        length = count(t.text)
        tags = think_tags_problem(t.text, require_think_tags)
        if t.truncated:
            dropped.append(_drop_trace(t, step, "truncated", "generation hit its token budget"))
        elif length > max_tokens:
            dropped.append(_drop_trace(t, step, "too long", f"{length} {unit} > {max_tokens}"))
        elif not t.text.strip():
            dropped.append(_drop_trace(t, step, "malformed", "empty trace"))
        elif tags:
            dropped.append(_drop_trace(t, step, "malformed", tags))
        elif problem.task not in CODE_TASKS and not has_final_answer(t.text):
            dropped.append(_drop_trace(t, step, "malformed", "no final-answer marker (#### N, \\boxed{}, ...)"))
        else:
            keep.add(i)
    return _in_input_order(traces, keep), dropped


# --------------------------------------------------------------------------- 2. correctness
def filter_correct(
    traces: Sequence[Trace], problems: Iterable[Problem], verify: Verify
) -> tuple[list[Trace], list[Dropped]]:
    """Run the verifier on every trace; keep the right ones (with ``correct=True``), drop the rest."""
    step, by_id = "correct", _index(problems)
    kept, dropped = [], []
    for t in traces:
        problem = _problem_of(t, by_id, step)
        try:
            ok = bool(verify(problem, t.text))
        except Exception as exc:  # a verifier crash is a bug to see, not a silent drop
            raise CurationError(f"{step}: the verifier failed on trace '{trace_id(t)}': {exc!r}") from exc
        if ok:
            kept.append(t.replace(correct=True))
        else:
            dropped.append(_drop_trace(t, step, "wrong answer", f"gold answer {problem.answer!r}"))
    return kept, dropped


# --------------------------------------------------------------------------- 3. duplicates
def _dedup(
    items: Sequence[Item],
    *,
    text: Callable[[Item], str],
    name: Callable[[Item], str],
    order: Callable[[Item], tuple],
    group: Callable[[Item], Hashable],
    drop: Callable[[Item, str, str], Dropped],
    ngram: int,
    threshold: float,
) -> tuple[list[Item], list[Dropped]]:
    keep, dropped = set(), []
    seen: dict[Hashable, dict[str, str]] = defaultdict(dict)
    near: dict[Hashable, NearDuplicateIndex] = defaultdict(lambda: NearDuplicateIndex(threshold))
    for i in sorted(range(len(items)), key=lambda i: order(items[i])):
        item, g = items[i], group(items[i])
        h = text_hash(text(item))
        if h in seen[g]:
            dropped.append(drop(item, "exact duplicate", f"same normalised text as {seen[g][h]}"))
            continue
        sh = shingles(text(item), ngram)
        hit = near[g].nearest(sh)
        if hit:
            dropped.append(drop(item, "near duplicate", f"{ngram}-gram Jaccard {hit[1]:.3f} with {hit[0]}"))
            continue
        seen[g][h] = name(item)
        near[g].add(name(item), sh)
        keep.add(i)
    return _in_input_order(items, keep), dropped


def dedup_traces(
    traces: Sequence[Trace],
    *,
    ngram: int = 5,
    threshold: float = 0.8,
    scope: Literal["teacher", "problem", "dataset"] = "teacher",
) -> tuple[list[Trace], list[Dropped]]:
    """Drop exact duplicates (normalised-text hash) and near duplicates (word ``ngram`` Jaccard >=
    ``threshold``) among one teacher's traces of a problem (``scope="teacher"``), among all traces of
    a problem (``"problem"``) or among all traces (``"dataset"``); the first in (problem, teacher,
    sample) order stays."""
    groups = {"teacher": lambda t: (t.problem_id, t.teacher), "problem": lambda t: t.problem_id,
              "dataset": lambda t: None}
    if scope not in groups:
        raise CurationError(f"dedup_traces: unknown scope '{scope}' (use {', '.join(groups)})")
    return _dedup(
        traces, text=lambda t: t.text, name=trace_id, order=_trace_key, group=groups[scope],
        drop=lambda t, reason, detail: _drop_trace(t, "dedup", reason, detail),
        ngram=ngram, threshold=threshold,
    )


def dedup_problems(
    problems: Sequence[Problem], *, ngram: int = 5, threshold: float = 0.8
) -> tuple[list[Problem], list[Dropped]]:
    """Drop problems whose text duplicates (exactly or nearly) an earlier problem, by id order."""
    return _dedup(
        problems, text=lambda p: p.text, name=lambda p: p.id, order=lambda p: (p.id,), group=lambda p: None,
        drop=lambda p, reason, detail: _drop_problem(p, "dedup", reason, detail),
        ngram=ngram, threshold=threshold,
    )


# --------------------------------------------------------------------------- 4. decontamination

def decontaminate(
    problems: Sequence[Problem], eval_sets: EvalSets, *, n: int = 13
) -> tuple[list[Problem], list[Dropped]]:
    """Drop problems found in any evaluation set (``find_contamination``); the detail names every
    eval set, item and matching n-gram."""
    return contamination_drops(problems, find_contamination(problems, eval_sets, n))


def contamination_drops(
    problems: Sequence[Problem], found: Sequence[Contamination]
) -> tuple[list[Problem], list[Dropped]]:
    """Split ``problems`` by the matches of ``find_contamination``."""
    hits: dict[str, list[Contamination]] = defaultdict(list)
    for c in found:
        hits[c.problem_id].append(c)
    kept, dropped = [], []
    for p in problems:
        if p.id in hits:
            detail = "; ".join(f"{c.eval_set}:{c.eval_id} ({c.match} '{c.text}')" for c in hits[p.id])
            dropped.append(_drop_problem(p, "decontaminate", "contaminated", detail))
        else:
            kept.append(p)
    return kept, dropped


# --------------------------------------------------------------------------- 5. question compression
def _checked_pass_rates(problems: Sequence[Problem], pass_rates: Mapping[str, float], step: str) -> None:
    missing = [p.id for p in problems if p.id not in pass_rates]
    if missing:
        raise CurationError(
            f"{step}: no student pass rate for {len(missing)} problem(s), e.g. {missing[:3]}; estimate it for "
            "every problem (k student samples, curation.pass_rate_samples) before this step"
        )
    bad = [(k, v) for k, v in pass_rates.items() if not 0.0 <= float(v) <= 1.0]
    if bad:
        raise CurationError(f"{step}: pass rates must lie in [0, 1]; got {bad[:3]}")


def compress_by_pass_rate(
    problems: Sequence[Problem], pass_rates: Mapping[str, float], *, easy_pass_rate: float = 0.75
) -> tuple[list[Problem], list[Dropped]]:
    """DED's question compression: drop problems the student already solves more often than
    ``easy_pass_rate``."""
    step = "compress"
    _checked_pass_rates(problems, pass_rates, step)
    kept, dropped = [], []
    for p in problems:
        rate = float(pass_rates[p.id])
        if rate > easy_pass_rate:
            dropped.append(_drop_problem(p, step, "too easy", f"student pass rate {rate:.2f} > {easy_pass_rate}"))
        else:
            kept.append(p)
    return kept, dropped


# --------------------------------------------------------------------------- 6. diversity
def _diversity_text(text: str) -> str:
    return " ".join(text.lower().split())


def edit_distances(texts: Sequence[str]) -> np.ndarray:
    """Pairwise normalised Levenshtein distances (0 = same, 1 = nothing shared), case and spacing ignored."""
    norm = [_diversity_text(t) for t in texts]
    return cdist(norm, norm, scorer=Levenshtein.normalized_distance, dtype=np.float64, workers=1)


def farthest_point_order(distances: np.ndarray, k: int) -> list[int]:
    """Greedy max-min selection of ``k`` indices: start from the item with the largest distance sum,
    then add the item farthest from everything chosen; ties go to the lower index."""
    n = len(distances)
    if k >= n:
        return list(range(n))
    chosen = [int(np.argmax(distances.sum(axis=1)))]
    nearest = distances[chosen[0]].copy()
    while len(chosen) < k:
        nearest[chosen] = -1.0
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, distances[nxt])
    return chosen


def select_diverse(
    traces: Sequence[Trace], *, keep_per_problem: int = 4, per_teacher: bool = True
) -> tuple[list[Trace], list[Dropped]]:
    """Per problem (and teacher, when ``per_teacher``), keep the ``keep_per_problem`` (P) most
    mutually distant traces (DED)."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i in sorted(range(len(traces)), key=lambda i: _trace_key(traces[i])):
        t = traces[i]
        groups[(t.problem_id, t.teacher) if per_teacher else t.problem_id].append(i)
    keep, dropped = set(), []
    for members in groups.values():
        dist = edit_distances([traces[i].text for i in members])
        chosen = farthest_point_order(dist, keep_per_problem)
        keep.update(members[c] for c in chosen)
        for local, i in enumerate(members):
            if local not in chosen:
                near = min(chosen, key=lambda c: (dist[local, c], c))
                dropped.append(_drop_trace(
                    traces[i], "diversity", "not diverse",
                    f"{keep_per_problem} more distant traces kept; nearest {trace_id(traces[members[near]])} "
                    f"at edit distance {dist[local, near]:.3f}",
                ))
    return _in_input_order(traces, keep), dropped


# --------------------------------------------------------------------------- 7. difficulty balance
def pass_rate_band(rate: float, bands: Sequence[float] = PASS_RATE_BANDS) -> str:
    """The ``lo-hi`` band holding ``rate`` (bands are half-open, the last one closed)."""
    for lo, hi in zip(bands[:-1], bands[1:]):
        if lo <= rate < hi or (hi == bands[-1] and rate == hi):
            return f"{lo:.2f}-{hi:.2f}"
    raise CurationError(f"pass rate {rate} lies outside the bands {list(bands)}")


def balance_difficulty(
    problems: Sequence[Problem],
    *,
    by: Literal["level", "pass_rate"],
    seed: int,
    pass_rates: Mapping[str, float] | None = None,
    bands: Sequence[float] = PASS_RATE_BANDS,
) -> tuple[list[Problem], list[Dropped]]:
    """Sample every stratum (level, or student pass-rate band) down to the smallest one's size, seeded.
    Problems without a level form their own stratum ``none``."""
    step = "balance"
    if by == "pass_rate":
        if pass_rates is None:
            raise CurationError(f"{step}: balance_by 'pass_rate' needs the student pass rates")
        _checked_pass_rates(problems, pass_rates, step)
        stratum = lambda p: pass_rate_band(float(pass_rates[p.id]), bands)  # noqa: E731
    elif by == "level":
        stratum = lambda p: "none" if p.level is None else str(p.level)  # noqa: E731
    else:
        raise CurationError(f"{step}: unknown balance_by '{by}' (use 'level' or 'pass_rate')")
    strata: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(problems)), key=lambda i: problems[i].id):
        strata[stratum(problems[i])].append(i)
    if not strata:
        return [], []
    size = min(len(m) for m in strata.values())
    rng = random.Random(seed)
    keep, dropped = set(), []
    for label in sorted(strata):
        chosen = set(rng.sample(strata[label], size))
        keep |= chosen
        for i in strata[label]:
            if i not in chosen:
                detail = f"{by} stratum '{label}' has {len(strata[label])} problems; sampled down to {size}"
                dropped.append(_drop_problem(problems[i], step, "balanced out", detail))
    return _in_input_order(problems, keep), dropped


# --------------------------------------------------------------------------- 8. IOA Adapter
def adapt_traces(
    traces: Sequence[Trace], problems: Iterable[Problem], verify: Verify
) -> tuple[list[Trace], list[Dropped]]:
    """Rewrite each trace for the student (``syllabus.adapter.adapt_text``) and verify it again; a
    rewrite that fails either way is dropped with its reason. Rewrites carry ``settings["adapter"]``
    (``steps`` or ``rules``) and the original's teacher and sample."""
    step, by_id = "adapter", _index(problems)
    kept, dropped = [], []
    for t in traces:
        problem = _problem_of(t, by_id, step)
        if problem.task in CODE_TASKS:
            dropped.append(_drop_trace(t, step, "not adapted", f"{problem.task} traces are code, left as written"))
            continue
        try:
            text, method = adapt_text(problem, t.text)
        except AdapterError as exc:
            dropped.append(_drop_trace(t, step, "rewrite failed", str(exc)))
            continue
        rewrite = t.replace(text=text, n_tokens=None, correct=None, settings={**t.settings, "adapter": method})
        try:
            ok = bool(verify(problem, text))
        except Exception as exc:
            raise CurationError(f"{step}: the verifier failed on rewrite '{trace_id(rewrite)}': {exc!r}") from exc
        if ok:
            kept.append(rewrite.replace(correct=True))
        else:
            dropped.append(_drop_trace(rewrite, step, "wrong after rewrite",
                                       f"{method} rewrite fails the verifier (gold {problem.answer!r})"))
    return kept, dropped


# --------------------------------------------------------------------------- problem drops -> traces
def cascade(traces: Sequence[Trace], problem_drops: Sequence[Dropped]) -> tuple[list[Trace], list[Dropped]]:
    """Drop the traces of dropped problems; each keeps its problem's step and reason."""
    why = {d.problem_id: d for d in problem_drops if d.kind == "problem"}
    kept, dropped = [], []
    for t in traces:
        d = why.get(t.problem_id)
        if d is None:
            kept.append(t)
        else:
            dropped.append(_drop_trace(t, d.step, d.reason, f"problem dropped: {d.detail}"))
    return kept, dropped


# --------------------------------------------------------------------------- the funnel
class Funnel:
    """Counts after each step per dataset and teacher, and every drop with its reason."""

    def __init__(self) -> None:
        self._rows: list[dict] = []
        self._dropped: list[Dropped] = []
        self._order: dict[tuple[str, str], int] = {}

    def record(self, step: str, kept: Sequence[Trace], dropped: Sequence[Dropped] = (), *,
               dataset: str = "all") -> list[Trace]:
        """Count ``kept`` traces (and their problems) per teacher after ``step``; returns ``kept``."""
        order = self._order.setdefault((dataset, step), len(self._order))
        self._dropped.extend(dropped)
        teachers = sorted({t.teacher for t in kept} | {d.teacher for d in dropped if d.kind == "trace"})
        for teacher in teachers:
            mine = [t for t in kept if t.teacher == teacher]
            self._rows.append({
                "dataset": dataset, "step_no": order, "step": step, "teacher": teacher,
                "traces": len(mine), "problems": len({t.problem_id for t in mine}),
                "dropped": sum(1 for d in dropped if d.kind == "trace" and d.teacher == teacher),
            })
        return list(kept)

    def table(self) -> pd.DataFrame:
        """One row per (dataset, step, teacher): traces and problems left, traces dropped at the step."""
        cols = ["dataset", "step_no", "step", "teacher", "traces", "problems", "dropped"]
        return pd.DataFrame(self._rows, columns=cols).sort_values(["dataset", "step_no", "teacher"],
                                                                  ignore_index=True)

    def wide(self, value: str = "traces") -> pd.DataFrame:
        """Steps as rows, teachers as columns (plus ``total``): the funnel at a glance."""
        tab = self.table()
        out = tab.pivot_table(index=["dataset", "step_no", "step"], columns="teacher", values=value,
                              aggfunc="sum", fill_value=0)
        out["total"] = out.sum(axis=1)
        return out.reset_index().drop(columns="step_no").rename_axis(columns=None)

    def dropped(self) -> pd.DataFrame:
        """Every dropped trace and problem with its step, reason and detail."""
        return pd.DataFrame([asdict(d) for d in self._dropped],
                            columns=["item", "kind", "problem_id", "teacher", "step", "reason", "detail"])

    def reasons(self) -> pd.DataFrame:
        """Counts of dropped traces per step, reason and teacher."""
        d = self.dropped()
        d = d[d["kind"] == "trace"]
        return (d.groupby(["step", "reason", "teacher"], sort=True).size().rename("traces").reset_index())


# --------------------------------------------------------------------------- candidate datasets
def build_candidate_datasets(
    problems: Sequence[Problem],
    traces: Sequence[Trace],
    *,
    styles: Mapping[str, str | None] | None = None,
    pass_rates: Mapping[str, float] | None = None,
    bands: Sequence[float] = PASS_RATE_BANDS,
    min_rows: int = 1,
    unique: bool = True,
) -> pd.DataFrame:
    """Named candidate datasets as one tidy table, one row per (dataset, trace).

    Datasets: ``all``, ``teacher=T``, ``style=S`` (teachers grouped by ``styles``), ``level=L`` (when
    problems have levels) and ``pass_rate=lo-hi`` (when ``pass_rates`` are given); each also as
    ``...+adapted`` built from the Adapter rewrites among ``traces``. Datasets under ``min_rows``
    rows are left out, and with ``unique`` so is a dataset whose content equals one listed before it
    (e.g. ``teacher=T`` when T is the only teacher). ``dataset_hash`` hashes the sorted content.
    """
    by_id = _index(problems)
    styles = styles or {}
    rows = []
    for t in sorted(traces, key=_trace_key):
        p = _problem_of(t, by_id, "candidate datasets")
        rate = None if pass_rates is None else pass_rates.get(p.id)
        rows.append({
            "problem_id": p.id, "teacher": t.teacher, "style": styles.get(t.teacher), "sample": t.sample,
            "adapted": bool(t.settings.get("adapter")), "adapter": t.settings.get("adapter"),
            "question": p.text, "text": t.text, "answer": p.answer, "task": p.task, "source": p.source,
            "module": p.module, "level": p.level, "pass_rate": rate,
            "band": None if rate is None else pass_rate_band(float(rate), bands),
            "n_words": word_count(t.text),
        })
    base = pd.DataFrame(rows)
    if base.empty:
        return base
    parts = []
    for adapted, suffix in ((False, ""), (True, "+adapted")):
        pool = base[base["adapted"] == adapted]
        groups = [("all", pool)]
        groups += [(f"teacher={k}", g) for k, g in pool.groupby("teacher", sort=True)]
        groups += [(f"style={k}", g) for k, g in pool.dropna(subset=["style"]).groupby("style", sort=True)]
        groups += [(f"level={int(k)}", g) for k, g in pool.dropna(subset=["level"]).groupby("level", sort=True)]
        groups += [(f"pass_rate={k}", g) for k, g in pool.dropna(subset=["band"]).groupby("band", sort=True)]
        for name, g in groups:
            if len(g) >= min_rows:
                parts.append(g.assign(dataset=name + suffix))
    content = ["problem_id", "teacher", "sample", "adapter", "question", "text"]
    named, seen = [], set()
    for part in parts:
        h = hash_obj(part[content].astype(str).values.tolist())
        if unique and h in seen:
            continue
        seen.add(h)
        named.append(part.assign(dataset_hash=h))
    out = pd.concat(named, ignore_index=True) if named else base.iloc[0:0].assign(dataset=[], dataset_hash=[])
    out["pass_rate"] = pd.to_numeric(out["pass_rate"])
    front = ["dataset", "dataset_hash"]
    return out[front + [c for c in out.columns if c not in front]]


def dataset_summary(candidates: pd.DataFrame, count_tokens: CountTokens | None = None) -> pd.DataFrame:
    """Per dataset: rows, problems, teachers, length (``count_tokens`` tokens, else words) and hash."""
    df = candidates.assign(length=candidates["text"].map(count_tokens or word_count))
    out = df.groupby("dataset", sort=True).agg(
        rows=("text", "size"), problems=("problem_id", "nunique"), teachers=("teacher", "nunique"),
        mean_length=("length", "mean"), median_length=("length", "median"),
        p90_length=("length", lambda s: float(np.percentile(s, 90))), max_length=("length", "max"),
        dataset_hash=("dataset_hash", "first"),
    )
    out.insert(3, "length_unit", "tokens" if count_tokens else "words")
    return out.reset_index()


def length_distribution(candidates: pd.DataFrame, count_tokens: CountTokens | None = None) -> pd.DataFrame:
    """Long table (dataset, teacher, length) for a per-dataset length histogram."""
    length = candidates["text"].map(count_tokens or word_count)
    return pd.DataFrame({"dataset": candidates["dataset"], "teacher": candidates["teacher"], "length": length})


# --------------------------------------------------------------------------- the whole funnel
@dataclass
class CurationResult:
    """What the funnel leaves: problems that still have traces, curated traces, Adapter rewrites."""

    problems: list[Problem]
    traces: list[Trace]
    adapted: list[Trace]
    funnel: Funnel
    contamination: list[Contamination] = field(default_factory=list)


def run_funnel(
    problems: Sequence[Problem],
    traces: Sequence[Trace],
    cfg: Curation,
    *,
    verify: Verify,
    eval_sets: EvalSets,
    pass_rates: Mapping[str, float] | None = None,
    count_tokens: CountTokens | None = None,
    seed: int = 0,
    dataset: str = "all",
    funnel: Funnel | None = None,
) -> CurationResult:
    """The stage-2 funnel of docs/method.md in order, every step counted in ``funnel``.

    Dedup and diversity work per (problem, teacher) when ``cfg.per_teacher`` (so per-teacher
    candidate datasets do not depend on the other teachers), else per problem; problems are
    deduplicated across the whole pool. Compression (and pass-rate balancing) need ``pass_rates``;
    without them compression is skipped.
    Balancing runs when ``cfg.balance_by`` is not ``none``; the Adapter when ``cfg.adapter``.
    """
    funnel = funnel or Funnel()
    problems = list(problems)

    def problem_step(name: str, kept_problems: list[Problem], drops: list[Dropped], current: list[Trace]):
        kept, trace_drops = cascade(current, drops)
        return kept_problems, funnel.record(name, kept, drops + trace_drops, dataset=dataset)

    def with_traces(ps: list[Problem], current: list[Trace]) -> list[Problem]:
        ids = {t.problem_id for t in current}
        return [p for p in ps if p.id in ids]

    current = funnel.record("sampled", traces, dataset=dataset)
    kept, drops = filter_format(current, problems, max_tokens=cfg.max_trace_tokens, count_tokens=count_tokens,
                                require_think_tags=cfg.require_think_tags)
    current = funnel.record("format", kept, drops, dataset=dataset)
    kept, drops = filter_correct(current, problems, verify)
    current = funnel.record("correct", kept, drops, dataset=dataset)

    live, problem_drops = dedup_problems(with_traces(problems, current), ngram=cfg.near_dup_ngram,
                                         threshold=cfg.near_dup_threshold)
    current, cascaded = cascade(current, problem_drops)
    kept, drops = dedup_traces(current, ngram=cfg.near_dup_ngram, threshold=cfg.near_dup_threshold,
                               scope="teacher" if cfg.per_teacher else "problem")
    current = funnel.record("dedup", kept, problem_drops + cascaded + drops, dataset=dataset)

    found = find_contamination(live, eval_sets, cfg.decontam_ngram)
    live, drops = contamination_drops(live, found)
    live, current = problem_step("decontaminate", live, drops, current)

    if pass_rates is not None:
        live, drops = compress_by_pass_rate(with_traces(live, current), pass_rates,
                                            easy_pass_rate=cfg.easy_pass_rate)
        live, current = problem_step("compress", live, drops, current)

    kept, drops = select_diverse(current, keep_per_problem=cfg.keep_per_problem, per_teacher=cfg.per_teacher)
    current = funnel.record("diversity", kept, drops, dataset=dataset)

    if cfg.balance_by != "none":
        live, drops = balance_difficulty(with_traces(live, current), by=cfg.balance_by, seed=seed,
                                         pass_rates=pass_rates)
        live, current = problem_step("balance", live, drops, current)

    adapted: list[Trace] = []
    if cfg.adapter:
        adapted, drops = adapt_traces(current, problems, verify)
        funnel.record("adapter", adapted, drops, dataset=dataset)
    return CurationResult(with_traces(live, current), current, adapted, funnel, found)
