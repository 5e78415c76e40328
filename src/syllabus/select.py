"""Stage-5 selection policies: before each training phase, choose what the student learns next.

A policy sees a ``SelectionState`` computed on the current checkpoint (the DMC of every candidate
dataset, the student's and teacher's per-module scores, the problem levels) and returns a
``Choice``: mixture weights over the candidate datasets, optionally an item filter (modules or
levels), and a sentence saying why. Policies that remember something across phases (``dmc_static``,
``ioa``) keep it in a JSON-friendly ``state_dict()`` so a resumed run continues exactly.

Policies: ``dmc_dynamic``, ``dmc_static``, ``random``, ``all``, ``easy_to_hard`` and ``ioa`` (IOA's
Knowledge Identifier and Organizer; docs/method.md, stage 5).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class SelectionState:
    """What a policy may look at before a phase (all measured on the current checkpoint)."""

    datasets: Sequence[str]
    n_phases: int = 1
    dmc: Mapping[str, float] = field(default_factory=dict)
    student_scores: Mapping[str, float] = field(default_factory=dict)  # P_S(k) per module
    teacher_scores: Mapping[str, float] = field(default_factory=dict)  # P_T(k) per module
    prerequisites: Mapping[str, Sequence[str]] = field(default_factory=dict)  # module -> prerequisites
    levels: Sequence[int] = ()  # difficulty levels present in the candidate data

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("selection: no candidate datasets")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"selection: duplicate candidate datasets in {list(self.datasets)}")


@dataclass(frozen=True)
class Choice:
    """Mixture weights over candidate datasets (summing to 1), an optional item filter, and why."""

    weights: dict[str, float]
    reason: str
    modules: tuple[str, ...] | None = None  # train only on items of these modules
    levels: tuple[int, ...] | None = None  # train only on items of these levels
    stage: int | None = None  # ioa: index of the curriculum stage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_hot(datasets: Sequence[str], best: str) -> dict[str, float]:
    return {d: float(d == best) for d in datasets}


def _uniform(datasets: Sequence[str]) -> dict[str, float]:
    return {d: 1.0 / len(datasets) for d in datasets}


def _dmc_of(state: SelectionState) -> dict[str, float]:
    missing = [d for d in state.datasets if d not in state.dmc or not math.isfinite(state.dmc[d])]
    if missing:
        raise ValueError(f"selection: no finite DMC for candidate dataset(s) {missing}; compute DMC on the "
                         "current checkpoint for every candidate before choosing")
    return {d: float(state.dmc[d]) for d in state.datasets}


class Policy:
    """Base class: ``choose(phase, state) -> Choice``; stateful policies override the state dict."""

    name = "policy"

    def choose(self, phase: int, state: SelectionState) -> Choice:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


def make_policy(name: str, **params: Any) -> Policy:
    """A policy by name (``dynamic.policies`` in the profile) with its parameters."""
    if name not in POLICIES:
        raise ValueError(f"unknown selection policy '{name}'; known: {sorted(POLICIES)}")
    try:
        return POLICIES[name](**params)
    except TypeError as exc:
        raise ValueError(f"selection policy '{name}': bad parameters {sorted(params)} ({exc})") from None


# --------------------------------------------------------------------------- DMC policies
@register
class DMCDynamic(Policy):
    """Recompute DMC of every candidate on the current checkpoint; train on the best, or a softmax mix."""

    name = "dmc_dynamic"

    def __init__(self, mixture: str = "best", temperature: float = 0.05):
        if mixture not in ("best", "softmax"):
            raise ValueError(f"dmc policy: mixture must be 'best' or 'softmax', got {mixture!r}")
        if temperature <= 0:
            raise ValueError(f"dmc policy: temperature must be > 0, got {temperature}")
        self.mixture, self.temperature = mixture, temperature

    def weigh(self, dmc: Mapping[str, float]) -> tuple[dict[str, float], str]:
        names = list(dmc)
        values = np.array([dmc[d] for d in names])
        if self.mixture == "best":
            best = names[int(np.argmax(values))]  # ties: the first candidate in the given order
            return _one_hot(names, best), f"best DMC: {best} ({dmc[best]:.4f})"
        z = np.exp((values - values.max()) / self.temperature)
        w = z / z.sum()
        return {d: float(x) for d, x in zip(names, w)}, f"softmax of DMC at temperature {self.temperature}"

    def choose(self, phase: int, state: SelectionState) -> Choice:
        weights, why = self.weigh(_dmc_of(state))
        return Choice(weights, f"phase {phase}: {why}")


@register
class DMCStatic(DMCDynamic):
    """Rank by DMC once, at the first phase, and keep that choice."""

    name = "dmc_static"

    def __init__(self, mixture: str = "best", temperature: float = 0.05):
        super().__init__(mixture, temperature)
        self.fixed: dict[str, float] | None = None
        self.why = ""

    def choose(self, phase: int, state: SelectionState) -> Choice:
        if self.fixed is None:
            self.fixed, self.why = self.weigh(_dmc_of(state))
            return Choice(dict(self.fixed), f"phase {phase}: ranked once: {self.why}")
        return Choice(dict(self.fixed), f"phase {phase}: kept the first ranking ({self.why})")

    def state_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "why": self.why}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fixed, self.why = state.get("fixed"), state.get("why", "")


# --------------------------------------------------------------------------- baselines
@register
class RandomPolicy(Policy):
    """One candidate per phase, drawn uniformly with a generator seeded by (seed, phase)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def choose(self, phase: int, state: SelectionState) -> Choice:
        rng = np.random.default_rng([self.seed, phase])
        pick = list(state.datasets)[int(rng.integers(len(state.datasets)))]
        return Choice(_one_hot(state.datasets, pick), f"phase {phase}: random draw (seed {self.seed}): {pick}")


@register
class AllPolicy(Policy):
    """A uniform mixture of every candidate dataset."""

    name = "all"

    def choose(self, phase: int, state: SelectionState) -> Choice:
        return Choice(_uniform(state.datasets), f"phase {phase}: uniform mix of {len(state.datasets)} datasets")


@register
class EasyToHard(Policy):
    """A fixed curriculum: the sorted levels are cut into one contiguous band per phase.

    Phase p trains on band p (or on bands 0..p when ``cumulative``), from every dataset equally.
    With fewer levels than phases, a level spans several phases.
    """

    name = "easy_to_hard"

    def __init__(self, cumulative: bool = False):
        self.cumulative = cumulative

    def choose(self, phase: int, state: SelectionState) -> Choice:
        levels = sorted(set(state.levels))
        if not levels:
            raise ValueError("easy_to_hard: the selection state has no levels; give the problems' levels "
                             "(Problem.level) of the candidate data")
        n = max(1, state.n_phases)
        p = min(max(phase, 0), n - 1)
        band = level_band(levels, n, p)
        picked = tuple(lv for lv in levels if lv <= band[-1]) if self.cumulative else tuple(band)
        return Choice(_uniform(state.datasets), f"phase {phase}: levels {list(picked)} (curriculum of {n} phases)",
                      levels=picked)


def level_band(levels: Sequence[int], n_phases: int, phase: int) -> list[int]:
    """The levels of one phase: sorted levels cut into ``n_phases`` contiguous, non-empty bands."""
    n, count = n_phases, len(levels)
    if count >= n:
        return [lv for i, lv in enumerate(levels) if i * n // count == phase]
    return [levels[phase * count // n]]


# --------------------------------------------------------------------------- IOA: Identifier
def module_gaps(student: Mapping[str, float], teacher: Mapping[str, float], tau_gap: float = 0.3) -> dict[str, dict]:
    """Per module: P_S, P_T, the relative gap Delta = (P_T - P_S) / P_T (0 when P_T = 0) and deficiency."""
    missing = sorted(set(teacher) - set(student))
    if missing:
        raise ValueError(f"ioa: modules {missing} have a teacher score but no student score; probe the student on them")
    out = {}
    for k in sorted(teacher):
        ps, pt = float(student[k]), float(teacher[k])
        gap = (pt - ps) / pt if pt > 0 else 0.0
        out[k] = {"student": ps, "teacher": pt, "gap": gap, "deficient": gap > tau_gap}
    return out


def mastery_ratio(student: Mapping[str, float], teacher: Mapping[str, float], modules: Sequence[str]) -> float:
    """min_k P_S(k) / P_T(k) over the modules (a module the teacher cannot do counts as mastered)."""
    missing = [k for k in modules if k not in student or k not in teacher]
    if missing:
        raise ValueError(f"ioa: no student or teacher score for modules {missing}; probe them on this checkpoint")
    ratios = [float(student[k]) / float(teacher[k]) if float(teacher[k]) > 0 else 1.0 for k in modules]
    return min(ratios) if ratios else 1.0


# --------------------------------------------------------------------------- IOA: Organizer
def topological_layers(modules: Sequence[str], prerequisites: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Kahn layering of the sub-graph on ``modules`` (Eq. 7): prerequisites outside it count as met."""
    chosen = set(modules)
    pending = {k: {p for p in prerequisites.get(k, ()) if p in chosen and p != k} for k in chosen}
    layers: list[list[str]] = []
    while pending:
        ready = sorted(k for k, pre in pending.items() if not pre)
        if not ready:
            raise ValueError(f"ioa: the prerequisite graph has a cycle among {sorted(pending)}; "
                             "remove one edge of the cycle from the module graph")
        layers.append(ready)
        for k in ready:
            del pending[k]
        for pre in pending.values():
            pre.difference_update(ready)
    return layers


def _mean(scores: Mapping[str, float], modules: Sequence[str]) -> float:
    return float(np.mean([scores[k] for k in modules]))


def zpd_ok(current: Sequence[str], nxt: Sequence[str], student: Mapping[str, float], tau_zpd: float) -> bool:
    """Literal Eq. 8: mean P_S(next) - mean P_S(current) <= tau_zpd * mean P_S(current)."""
    return _mean(student, nxt) - _mean(student, current) <= tau_zpd * _mean(student, current) + 1e-12


def split_by_score(stage: Sequence[str], student: Mapping[str, float], max_range: float = 0.3) -> list[list[str]]:
    """Sort a stage's modules by P_S and cut groups whose P_S range is at most ``max_range`` (IOA code)."""
    groups: list[list[str]] = []
    for k in sorted(stage, key=lambda m: (student[m], m)):
        if groups and student[k] - student[groups[-1][0]] <= max_range:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def organize(targets: Sequence[str], prerequisites: Mapping[str, Sequence[str]], student: Mapping[str, float],
             tau_zpd: float = 0.15, max_range: float = 0.3) -> tuple[list[list[str]], list[str]]:
    """Curriculum stages: prerequisite layers, a layer that breaks the ZPD bound split by score.

    Returns the stages and a list of the ZPD violations left after splitting (a single module, or a
    group, can still step too far; they are reported rather than hidden).
    """
    stages: list[list[str]] = []
    for layer in topological_layers(targets, prerequisites):
        if stages and not zpd_ok(stages[-1], layer, student, tau_zpd) and len(layer) > 1:
            stages.extend(split_by_score(layer, student, max_range))
        else:
            stages.append(layer)
    violations = [f"stage {i} -> {i + 1}: mean P_S {_mean(student, a):.3f} -> {_mean(student, b):.3f}"
                  for i, (a, b) in enumerate(zip(stages, stages[1:])) if not zpd_ok(a, b, student, tau_zpd)]
    return stages, violations


@register
class IOAPolicy(Policy):
    """IOA Identifier + Organizer over phases (docs/method.md, stage 5; IOA Algorithm 1 lines 2-12).

    First phase: find the deficient modules (gap > tau_gap), order them in prerequisite layers and
    split layers that break the ZPD bound; train on stage 1. Each later phase: if the current stage
    passes the mastery gate (min P_S/P_T >= tau_mastery) move to the next stage, else stay for a
    remedial round, at most ``max_remedial_rounds`` times, then move on and log "not mastered".
    After the last stage, or when no module is deficient, train on all target (or all) modules.
    The Identifier runs once, as in the authors' code. ``dataset`` fixes the dataset the modules'
    items come from (e.g. the adapter's); else every candidate is used equally.
    """

    name = "ioa"

    def __init__(self, tau_gap: float = 0.3, tau_mastery: float = 0.9, tau_zpd: float = 0.15,
                 max_remedial_rounds: int = 5, max_range: float = 0.3, dataset: str | None = None):
        self.tau_gap, self.tau_mastery, self.tau_zpd = tau_gap, tau_mastery, tau_zpd
        self.max_remedial_rounds, self.max_range, self.dataset = max_remedial_rounds, max_range, dataset
        self.plan: dict[str, Any] | None = None

    def _weights(self, state: SelectionState) -> dict[str, float]:
        if self.dataset is None:
            return _uniform(state.datasets)
        if self.dataset not in state.datasets:
            raise ValueError(f"ioa: dataset '{self.dataset}' is not a candidate ({list(state.datasets)})")
        return _one_hot(state.datasets, self.dataset)

    def _identify(self, state: SelectionState) -> None:
        if not state.teacher_scores:
            raise ValueError("ioa: the selection state has no per-module teacher scores (P_T); probe the teacher first")
        gaps = module_gaps(state.student_scores, state.teacher_scores, self.tau_gap)
        unknown = sorted({p for k, pre in state.prerequisites.items() for p in [k, *pre]} - set(gaps))
        if unknown:
            raise ValueError(f"ioa: the module graph names modules without probe scores: {unknown}")
        targets = [k for k, g in gaps.items() if g["deficient"]]
        stages, violations = organize(targets, state.prerequisites, state.student_scores, self.tau_zpd, self.max_range)
        self.plan = {"gaps": gaps, "targets": targets, "stages": stages, "zpd_violations": violations,
                     "current": 0, "rounds": 0, "log": []}

    def choose(self, phase: int, state: SelectionState) -> Choice:
        if self.plan is None:
            self._identify(state)
            plan = self.plan
            if not plan["stages"]:
                return self._all(phase, state, f"no module has a gap > {self.tau_gap}")
            return self._stage(phase, state, f"stage 1/{len(plan['stages'])}: first teaching")
        plan = self.plan
        i = plan["current"]
        if i >= len(plan["stages"]):
            return self._all(phase, state, "curriculum complete")
        ratio = mastery_ratio(state.student_scores, state.teacher_scores, plan["stages"][i])
        if ratio >= self.tau_mastery:
            plan["log"].append({"phase": phase, "stage": i, "mastered": True, "ratio": ratio})
            why = f"stage {i + 1} mastered (min P_S/P_T {ratio:.3f} >= {self.tau_mastery})"
            return self._advance(phase, state, why)
        if plan["rounds"] < self.max_remedial_rounds:
            plan["rounds"] += 1
            return self._stage(phase, state, f"stage {i + 1} not mastered (min P_S/P_T {ratio:.3f} < "
                                             f"{self.tau_mastery}): remedial round {plan['rounds']}")
        plan["log"].append({"phase": phase, "stage": i, "mastered": False, "ratio": ratio})
        return self._advance(phase, state, f"stage {i + 1} not mastered after {self.max_remedial_rounds} "
                                           f"remedial rounds (min P_S/P_T {ratio:.3f}); moving on")

    def _advance(self, phase: int, state: SelectionState, why: str) -> Choice:
        plan = self.plan
        plan["current"] += 1
        plan["rounds"] = 0
        if plan["current"] >= len(plan["stages"]):
            return self._all(phase, state, f"{why}; curriculum complete")
        return self._stage(phase, state, f"{why}; stage {plan['current'] + 1}/{len(plan['stages'])}")

    def _stage(self, phase: int, state: SelectionState, why: str) -> Choice:
        i = self.plan["current"]
        modules = tuple(self.plan["stages"][i])
        return Choice(self._weights(state), f"phase {phase}: {why}: modules {list(modules)}", modules=modules, stage=i)

    def _all(self, phase: int, state: SelectionState, why: str) -> Choice:
        modules = tuple(self.plan["targets"]) or tuple(sorted(state.teacher_scores))
        return Choice(self._weights(state), f"phase {phase}: {why}: modules {list(modules)}", modules=modules)

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plan = state.get("plan")

