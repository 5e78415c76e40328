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
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np

from . import stats
from .lab import ancestors

# IOA's thresholds compare scores that are fractions of a few items: 1.0 - 0.7 is 0.30000000000000004 in
# floating point, so a module exactly at a threshold would land on either side by rounding. Every
# comparison of a score with a threshold allows this much.
SCORE_TOLERANCE = 1e-9


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
    module_items: Mapping[str, int] = field(default_factory=dict)  # items behind each P_S(k) (IOA's gate)

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
    remedial: tuple[str, ...] | None = None  # ioa: train on new problems of these modules (made by the caller)

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
        out[k] = {"student": ps, "teacher": pt, "gap": gap, "deficient": gap > tau_gap + SCORE_TOLERANCE}
    return out


# --------------------------------------------------------------------------- IOA: Organizer
def topological_layers(modules: Sequence[str], prerequisites: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Kahn layering of ``modules`` (Eq. 7): a module comes after every one of ``modules`` it depends on,
    directly or through modules outside them (rate after add, through multiply); others count as met."""
    chosen = set(modules)
    pending = {k: {p for p in ancestors(k, prerequisites) if p in chosen and p != k} for k in chosen}
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
    return _mean(student, nxt) - _mean(student, current) <= tau_zpd * _mean(student, current) + SCORE_TOLERANCE


def split_by_score(stage: Sequence[str], student: Mapping[str, float], max_range: float = 0.3) -> list[list[str]]:
    """Sort a stage's modules by P_S and cut groups whose P_S range is at most ``max_range`` (IOA code)."""
    groups: list[list[str]] = []
    for k in sorted(stage, key=lambda m: (student[m], m)):
        if groups and student[k] - student[groups[-1][0]] <= max_range + SCORE_TOLERANCE:
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


def wilson_bound(successes: float, n: int, confidence: float, side: str) -> float:
    """One side (``lower`` / ``upper``) of the Wilson score interval for ``successes`` of ``n`` at ``confidence``
    (two-sided); with n = 0 nothing is known: 0 (lower) or 1 (upper)."""
    if n <= 0:
        return 0.0 if side == "lower" else 1.0
    lower, upper = stats.wilson(min(float(n), max(0.0, successes)), n, NormalDist().inv_cdf(0.5 + confidence / 2))
    return lower if side == "lower" else upper


def severity(gaps: Mapping[str, Mapping[str, Any]], prerequisites: Mapping[str, Sequence[str]], alpha: float = 0.7,
             strength: float = 0.5) -> dict[str, float]:
    """IOA's Eq. 4: alpha * Delta(k) + (1 - alpha) * mean Dep over k's graph neighbours (prerequisites and
    dependants). The graph is fixed (no conditional-performance estimate of Eq. 3), every edge has
    ``strength`` (the notes' fallback (b)); a module without neighbours gets 0 for the second term."""
    neighbours: dict[str, set[str]] = {k: set() for k in gaps}
    for k, pre in prerequisites.items():
        for p in pre:
            if k in neighbours and p in neighbours and p != k:
                neighbours[k].add(p)
                neighbours[p].add(k)
    return {k: alpha * float(g["gap"]) + (1 - alpha) * (strength if neighbours[k] else 0.0) for k, g in gaps.items()}


def top_targets(gaps: Mapping[str, Mapping[str, Any]], severities: Mapping[str, float], share: float,
                exclude: Sequence[str] = ()) -> list[str]:
    """IOA's Eq. 5: the top m = ceil(share x |deficient|) deficient modules by severity (ties by name),
    leaving out ``exclude`` (the modules already mastered or flagged "not mastered")."""
    deficient = [k for k, g in gaps.items() if g["deficient"] and k not in set(exclude)]
    if not deficient:
        return []
    m = max(1, math.ceil(share * len(deficient)))
    return sorted(sorted(deficient), key=lambda k: -severities[k])[:m]


def deficient_prerequisites(targets: Sequence[str], gaps: Mapping[str, Mapping[str, Any]],
                            prerequisites: Mapping[str, Sequence[str]], exclude: Sequence[str] = ()) -> list[str]:
    """The deficient modules that some target depends on, directly or through other modules, leaving out
    the targets themselves and ``exclude`` (modules flagged "not mastered"), in name order.

    Eq. 7 places a module only after its prerequisites have been taught; a prerequisite the student has
    not got (deficient) but that Eq. 5 did not pick would never be taught first, so it joins the targets."""
    chosen, skip = set(targets), set(exclude)
    seen = set().union(*(ancestors(k, prerequisites) for k in targets))
    return sorted(m for m in seen if m not in chosen and m not in skip and gaps.get(m, {}).get("deficient"))


def mastery_gate(student: Mapping[str, float], teacher: Mapping[str, float], items: Mapping[str, int],
                 modules: Sequence[str], *, tau_mastery: float, ceiling: float, confidence: float,
                 bound: str = "upper") -> dict[str, Any]:
    """Eq. 9 with a confidence bound and an attainable ceiling.

    Module k's target is min(tau_mastery x P_T(k), ceiling). With ``bound: upper`` the module counts
    as mastered unless the data show it below target (the Wilson upper bound of P_S(k) on its n_k items
    is under the target): a truly mastered module fails with probability <= (1 - confidence) / 2.
    With ``bound: lower`` the data must show it at target (Wilson lower bound >= target). Without item
    counts (``items`` missing the module) the point estimate P_S(k) is compared with the target.
    ``score`` (min over modules of P_S / target) measures progress between rounds.
    """
    missing = [k for k in modules if k not in student or k not in teacher]
    if missing:
        raise ValueError(f"ioa: no student or teacher score for modules {missing}; probe them on this checkpoint")
    rows, passed, score = {}, True, math.inf
    for k in modules:
        n = int(items.get(k, 0))
        target = min(tau_mastery * float(teacher[k]), ceiling)
        b = wilson_bound(float(student[k]) * n, n, confidence, bound) if n > 0 else float(student[k])
        ok = target <= 0 or b >= target - SCORE_TOLERANCE
        rows[k] = {"p_s": float(student[k]), "n": n, "target": target, "bound": b, "mastered": ok}
        passed &= ok
        score = min(score, float(student[k]) / target if target > 0 else 1.0)
    return {"passed": bool(passed), "score": 1.0 if score == math.inf else float(score), "modules": rows}


@register
class IOAPolicy(Policy):
    """IOA's Identifier and Organizer over phases (docs/method.md, stage 5; IOA Algorithm 1, lines 2-13).

    Identifier (first phase, and again after every stage, mastered or not): the gap Delta(k) of every
    module, deficient when > tau_gap; severity (Eq. 4) and the top ``target_share`` of the deficient
    modules (Eq. 5) become the targets. Organizer: the targets in prerequisite layers, a layer that
    breaks the ZPD bound split by score; the first stage is taught. With ``prerequisites_first`` a target's
    deficient prerequisites (direct or not, ``deficient_prerequisites``) join the targets, so that they are
    taught in the stages before it. Before each later phase the stage
    meets the mastery gate (``mastery_gate``: a Wilson bound on P_S against min(tau_mastery x P_T, the
    attainable ceiling)). Passed: a new diagnosis (modules mastered or flagged are not targeted again, though with
    ``prerequisites_first`` a mastered module deficient again comes back as a new target's prerequisite)
    and its first stage. Failed: a remedial round - new problems on the weak modules and their
    prerequisites, simpler ones by default (``Choice.remedial``; the caller makes them) - unless the
    remediation budget (``remedial_budget_share`` of the phases left), the plateau rule
    (``plateau_rounds`` rounds in a row without ``min_progress`` in the gate score) or
    ``max_remedial_rounds`` says stop: then the stage's weak modules are flagged "not mastered" and the
    curriculum moves on (a new diagnosis). With no target left, it trains on every
    module (consolidation). ``mastery_ceiling`` None: the attainable ceiling is the best P_S the
    student showed, at the first diagnosis, on a module it was not deficient in.
    ``dataset`` fixes the dataset of first teaching (e.g. the adapter's); else every candidate equally.
    """

    name = "ioa"

    def __init__(self, tau_gap: float = 0.3, tau_mastery: float = 0.9, tau_zpd: float = 0.15,
                 max_remedial_rounds: int = 5, max_range: float = 0.3, dataset: str | None = None,
                 alpha: float = 0.7, target_share: float = 0.25, dependency_strength: float = 0.5,
                 gate_confidence: float = 0.9, gate_bound: str = "upper", mastery_ceiling: float | None = None,
                 plateau_rounds: int = 2, min_progress: float = 0.05, remedial_budget_share: float = 0.5,
                 prerequisites_first: bool = True):
        if gate_bound not in ("upper", "lower"):
            raise ValueError(f"ioa: gate_bound must be 'upper' or 'lower', got {gate_bound!r}")
        self.tau_gap, self.tau_mastery, self.tau_zpd = tau_gap, tau_mastery, tau_zpd
        self.max_remedial_rounds, self.max_range, self.dataset = max_remedial_rounds, max_range, dataset
        self.alpha, self.target_share, self.dependency_strength = alpha, target_share, dependency_strength
        self.gate_confidence, self.gate_bound, self.mastery_ceiling = gate_confidence, gate_bound, mastery_ceiling
        self.plateau_rounds, self.min_progress = plateau_rounds, min_progress
        self.remedial_budget_share = remedial_budget_share
        self.prerequisites_first = prerequisites_first
        self.plan: dict[str, Any] | None = None

    def _weights(self, state: SelectionState) -> dict[str, float]:
        if self.dataset is None:
            return _uniform(state.datasets)
        if self.dataset not in state.datasets:
            raise ValueError(f"ioa: dataset '{self.dataset}' is not a candidate ({list(state.datasets)})")
        return _one_hot(state.datasets, self.dataset)

    # ---- Identifier
    def _identify(self, phase: int, state: SelectionState) -> dict[str, Any]:
        if not state.teacher_scores:
            raise ValueError("ioa: the selection state has no per-module teacher scores (P_T); probe the teacher first")
        gaps = module_gaps(state.student_scores, state.teacher_scores, self.tau_gap)
        unknown = sorted({p for k, pre in state.prerequisites.items() for p in [k, *pre]} - set(gaps))
        if unknown:
            raise ValueError(f"ioa: the module graph names modules without probe scores: {unknown}")
        sev = severity(gaps, state.prerequisites, self.alpha, self.dependency_strength)
        done = list(self.plan["not_mastered"]) + list(self.plan["mastered"]) if self.plan else []
        targets = top_targets(gaps, sev, self.target_share, exclude=done)
        added = (deficient_prerequisites(targets, gaps, state.prerequisites,
                                         exclude=self.plan["not_mastered"] if self.plan else ())
                 if self.prerequisites_first else [])
        targets = targets + added
        stages, violations = organize(targets, state.prerequisites, state.student_scores, self.tau_zpd, self.max_range)
        for k, g in gaps.items():
            g["severity"] = sev[k]
            g["target"] = k in targets
        return {"phase": phase, "gaps": gaps, "targets": targets, "prerequisites_added": added, "stages": stages,
                "zpd_violations": violations}

    def _ceiling(self, gaps: Mapping[str, Mapping[str, Any]]) -> float:
        if self.mastery_ceiling is not None:
            return float(self.mastery_ceiling)
        shown = [g["student"] for g in gaps.values() if not g["deficient"]]
        return max(shown) if shown else 1.0

    def _new_plan(self, phase: int, state: SelectionState, why: str) -> Choice:
        diagnosis = self._identify(phase, state)
        if self.plan is None:
            self.plan = {"ceiling": self._ceiling(diagnosis["gaps"]), "not_mastered": [], "mastered": [],
                         "remedial_phases": 0, "log": []}
        plan = self.plan
        plan.update(diagnosis=diagnosis, stages=diagnosis["stages"], current=0, rounds=0, best=None, stalled=0)
        if not diagnosis["stages"]:
            plan["current"] = None
            left = "" if not plan["not_mastered"] else f" (flagged not mastered: {plan['not_mastered']})"
            return self._all(phase, state, f"{why}; no module left with a gap > {self.tau_gap}{left}: consolidation")
        added = diagnosis["prerequisites_added"]
        with_pre = f" (deficient prerequisites among them: {added})" if added else ""
        return self._stage(phase, state, f"{why}; targets {diagnosis['targets']}{with_pre} in "
                                         f"{len(diagnosis['stages'])} stage(s): stage 1 first teaching")

    # ---- Organizer
    def choose(self, phase: int, state: SelectionState) -> Choice:
        if self.plan is None:
            return self._new_plan(phase, state, "diagnosis")
        plan = self.plan
        if plan["current"] is None:  # consolidating: diagnose again, training may have opened new gaps
            return self._new_plan(phase, state, "re-diagnosis")
        modules = plan["stages"][plan["current"]]
        gate = mastery_gate(state.student_scores, state.teacher_scores, state.module_items, modules,
                            tau_mastery=self.tau_mastery, ceiling=plan["ceiling"], confidence=self.gate_confidence,
                            bound=self.gate_bound)
        entry = {"phase": phase, "stage": plan["current"], "modules": list(modules), "passed": gate["passed"],
                 "score": gate["score"], "rounds": plan["rounds"], "gate": gate["modules"]}
        label = f"stage {plan['current'] + 1}/{len(plan['stages'])} {list(modules)}"
        if gate["passed"]:
            plan["mastered"] += [k for k in modules if k not in plan["mastered"]]
            plan["log"].append({**entry, "outcome": "mastered"})
            return self._advance(phase, state, f"{label} mastered (gate score {gate['score']:.2f})")
        weak = [k for k, g in gate["modules"].items() if not g["mastered"]]
        improved = plan["best"] is None or gate["score"] >= plan["best"] + self.min_progress - SCORE_TOLERANCE
        plan["stalled"] = 0 if improved else plan["stalled"] + 1
        plan["best"] = gate["score"] if plan["best"] is None else max(plan["best"], gate["score"])
        left = max(0, state.n_phases - phase)
        stop = None
        if plan["rounds"] >= self.max_remedial_rounds:
            stop = f"{self.max_remedial_rounds} remedial rounds used"
        elif plan["stalled"] >= self.plateau_rounds and plan["rounds"] > 0:
            stop = f"plateau: no progress >= {self.min_progress} in {plan['stalled']} round(s)"
        elif plan["remedial_phases"] + 1 > self.remedial_budget_share * left + SCORE_TOLERANCE:
            stop = (f"remediation budget: {plan['remedial_phases']} remedial phase(s) used, at most "
                    f"{self.remedial_budget_share} x {left} phase(s) left")
        if stop is None:
            plan["rounds"] += 1
            plan["remedial_phases"] += 1
            plan["log"].append({**entry, "outcome": f"remedial round {plan['rounds']}"})
            targets = sorted(set(weak) | {p for k in weak for p in state.prerequisites.get(k, ())},
                             key=lambda k: (k not in weak, k))
            return Choice(self._weights(state), f"phase {phase}: {label} not mastered (weak {weak}, gate score "
                          f"{gate['score']:.2f}): remedial round {plan['rounds']} on new problems of "
                          f"{targets}", modules=tuple(targets), stage=plan["current"], remedial=tuple(targets))
        plan["not_mastered"] += [k for k in weak if k not in plan["not_mastered"]]
        plan["log"].append({**entry, "outcome": f"not mastered ({stop})"})
        return self._advance(phase, state, f"{label} not mastered, flagged {weak} ({stop}); moving on")

    def _advance(self, phase: int, state: SelectionState, why: str) -> Choice:
        """The Identifier runs again between curriculum stages, on the current checkpoint."""
        return self._new_plan(phase, state, f"{why}; re-diagnosis")

    def _stage(self, phase: int, state: SelectionState, why: str) -> Choice:
        i = self.plan["current"]
        modules = tuple(self.plan["stages"][i])
        return Choice(self._weights(state), f"phase {phase}: {why}: modules {list(modules)}", modules=modules, stage=i)

    def _all(self, phase: int, state: SelectionState, why: str) -> Choice:
        modules = tuple(sorted(state.teacher_scores))
        return Choice(self._weights(state), f"phase {phase}: {why}: modules {list(modules)}", modules=modules)

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plan = state.get("plan")
