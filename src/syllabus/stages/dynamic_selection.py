"""Stage 5 composed: one training run cut into phases, where a policy picks the data before every phase.

Each (policy, seed) run starts from the same student and gets the same compute per phase: with
``budget: tokens`` (default) one pass over examples drawn until they hold the phase's token budget
(``steps_per_phase`` x batch x ``training.grad_accum`` examples of the candidates' mean length), so every
policy trains on the same number of tokens within one example; with ``budget: steps`` ``steps_per_phase``
optimizer steps on ``steps_per_phase`` x batch examples, whatever their length. With ``carry_optimizer``
(default) the phases continue one AdamW state and one LR schedule: a phase is a re-selection point, not a
restart.
Before each phase the policy sees a ``select.SelectionState`` measured on the current checkpoint: the
DMC of the candidate datasets (``dynamic.datasets``; recomputed, for the DMC policies), the student's
per-module accuracy on IOA's probe items (P_S) and the teacher's on the same items (P_T). The phase's
examples are drawn from the chosen mixture; IOA's stages draw new problems written for them
(``stage_data``) and its remedial rounds other new ones, simpler by default (``remedial_data``).

Every piece is cached by content (pass rates and scores by model fingerprint, each phase's SFT as a
resumable checkpoint that holds the optimizer state the next phase continues), so an interrupted run
continues where it stopped and a finished one replays from the cache without training again; the
(policy, seed) runs can run side by side (``run_policies``, ``parallel.workers``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import adapter, distillation, executor, generation, lab, launch, models, select, sft_cells, stats
from ..problems import lab_modules_in_order, warmup_modules
from ..progress import track
from ..records import Problem, Splits
from ..runs import RunDir, Stage, atomic_write_json, exclusive, hash_obj, stable_seed
from ..scoring import model_fingerprint
from ..students import StudentModel
from ..verify import verify
from . import dmc
from .trace_curation import matching_datasets

DMC_POLICIES = ("dmc_dynamic", "dmc_static")


@dataclass
class PolicyRun:
    """What one (policy, seed) run produced."""

    policy: str
    seed: int
    curve: list[dict[str, Any]] = field(default_factory=list)
    choices: list[dict[str, Any]] = field(default_factory=list)
    dmc: list[pd.DataFrame] = field(default_factory=list)
    module_curve: list[dict[str, Any]] = field(default_factory=list)
    ioa_plan: list[dict[str, Any]] = field(default_factory=list)
    # the final student of a first-seed run (every seed's with ``final_seeds: all``), saved for stage 6
    # (``save_final``: model_dir, weights); a run holds no model, so a stage keeps one student in memory per
    # process, not one per run
    final_model: dict[str, str] | None = None
    final_outcomes: pd.Series | None = None  # held-out pass (0/1) per problem after the last phase


def stage_student(prof):
    """The student stage 5 trains (``params.Student``): ``dynamic.student`` by name, else the profile's first."""
    name = prof.dynamic.student
    return next(s for s in prof.students if s.name == name) if name is not None else prof.students[0]


def prerequisites(modules) -> dict[str, list[str]]:
    """IOA's module graph: the lab task's own graph for lab modules; for GSM8K's ``steps-<k>`` modules
    an estimated chain (k steps require k-1); no prerequisites for any other module (e.g. MATH subjects)."""
    modules = set(modules)
    graph = {}
    for m in sorted(modules):
        if m in lab.PREREQUISITES:
            graph[m] = [p for p in lab.PREREQUISITES[m] if p in modules]
        elif m.startswith("steps-") and m[6:].isdigit():
            below = sorted((int(o[6:]), o) for o in modules
                           if o.startswith("steps-") and o[6:].isdigit() and int(o[6:]) < int(m[6:]))
            graph[m] = [below[-1][1]] if below else []
        else:
            graph[m] = []
    return graph


def teacher_module_scores(raw_traces: pd.DataFrame, teacher: str, measurable=None) -> dict[str, float]:
    """IOA's P_T(k): the teacher's accuracy per module over its raw (unfiltered) traces of stage 2,
    for the modules in ``measurable`` when given (those the probe set, where the student's P_S(k) is
    measured, has problems of: a module without a P_S can be neither gapped nor gated)."""
    rows = raw_traces[raw_traces["teacher"] == teacher].dropna(subset=["module"])
    if measurable is not None:
        rows = rows[rows["module"].isin(set(measurable))]
    return rows.groupby("module")["correct"].mean().to_dict()


def check_policies(policies: list[str], datasets: dict[str, pd.DataFrame], teacher_scores: dict[str, float]) -> None:
    """Refuse, before any training, a policy that the candidate data cannot serve."""
    if "easy_to_hard" in policies and not any(rows["level"].notna().any() for rows in datasets.values()):
        raise ValueError("dynamic.policies: easy_to_hard needs problem levels and no candidate problem has one; "
                         "remove easy_to_hard from dynamic.policies in the profile")
    if "ioa" in policies and not teacher_scores:
        raise ValueError("dynamic.policies: ioa needs problem modules (IOA's skills) and no raw trace of the selected "
                         "teacher has one; remove ioa from dynamic.policies in the profile")


def policy_params(stage: Stage, name: str, seed: int, ioa_dataset: str | None) -> dict[str, Any]:
    d = stage.params.dynamic
    if name in DMC_POLICIES:
        return {"mixture": d.mixture, "temperature": d.softmax_temperature}
    if name == "random":
        return {"seed": seed}
    if name == "ioa":
        i = d.ioa
        return {"tau_gap": i.tau_gap, "tau_mastery": i.tau_mastery, "tau_zpd": i.tau_zpd,
                "max_remedial_rounds": i.max_remedial_rounds, "dataset": ioa_dataset, "alpha": i.alpha,
                "target_share": i.target_share, "gate_confidence": i.gate_confidence, "gate_bound": i.gate_bound,
                "mastery_ceiling": i.mastery_ceiling, "plateau_rounds": i.plateau_rounds,
                "min_progress": i.min_progress, "remedial_budget_share": i.remedial_budget_share,
                "prerequisites_first": i.prerequisites_first}
    return {}


def choice_datasets(datasets: dict[str, pd.DataFrame], patterns: list[str] | None) -> dict[str, pd.DataFrame]:
    """The candidates the policies choose among (and the DMC policies rescore every phase): those matching
    any glob of ``dynamic.datasets``, or all when it is not set."""
    return matching_datasets(datasets, patterns, "dynamic.datasets")


# --------------------------------------------------------------------------- IOA's probe items and remediation
@dataclass
class IOAProbe:
    """IOA's probe: items per module on which both P_T (the selected teacher, once) and P_S (the student,
    every phase) are measured."""

    items: list[Problem]
    teacher_scores: dict[str, float]  # P_T(k)
    item_counts: dict[str, int]  # n_k
    table: pd.DataFrame  # per item: module, the teacher's verdict


def ioa_items(prof, splits: Splits) -> list[Problem]:
    """``dynamic.ioa.items_per_module`` items per module. Lab: drawn fresh with the data's settings, the
    module as the problem's main (last) step and earlier steps from its prerequisites, as in the pool (so
    P_S(k) measures module k as the data ask it), none sharing a text with the pool, probe or held-out
    problems; stratified by level (``level_counts``: the data draw every number of steps equally often,
    so each level gets an equal share of a module's items instead of a share left to chance). Other tasks:
    the probe problems (whatever each module has; fewer than asked is reported by ``ioa_probe``)."""
    if prof.data.task != "lab":
        return [p for p in splits.probe if p.module is not None]
    taken = {p.text for split in (splits.pool, splits.probe, splits.heldout) for p in split}
    L = prof.data.lab
    per_level = level_counts(prof.dynamic.ioa.items_per_module, L.min_steps, L.max_steps)
    items: list[Problem] = []
    for m in pool_modules(splits):
        for level, n in per_level.items():
            seed = stable_seed(prof.seed, "ioa", m, level, bits=32, form="compact")
            drawn = module_problems(prof, splits, m, n, seed, f"lab-ioa-{m}-level{level}", taken, steps=level)
            taken.update(p.text for p in drawn)
            items += drawn
    return items


def level_counts(n: int, min_steps: int, max_steps: int) -> dict[int, int]:
    """``n`` items split as evenly as possible over the levels (numbers of steps) ``min_steps..max_steps``,
    the remainder to the lower levels; levels that get none are left out."""
    levels = list(range(min_steps, max_steps + 1))
    share, extra = divmod(n, len(levels))
    counts = {level: share + (i < extra) for i, level in enumerate(levels)}
    return {level: c for level, c in counts.items() if c}


def pool_modules(splits: Splits) -> list[str]:
    """The lab modules of the pool, prerequisites first."""
    return lab.topological_order(sorted({p.module for p in splits.pool if p.module in lab.MODULES}))


def module_problems(prof, splits: Splits, module: str, n: int, seed: int, id_prefix: str,
                    exclude: set[str], steps: int | None = None) -> list[Problem]:
    """``n`` new lab problems of ``module`` drawn with the data's settings, the module as the last step and
    earlier steps from its prerequisites among the pool's modules, as in the pool; none of ``exclude``.
    ``steps`` fixes the number of steps (the level); None draws it as the data do."""
    L = prof.data.lab
    lo, hi = (L.min_steps, L.max_steps) if steps is None else (steps, steps)
    return lab.generate_problems(n, seed, modules=pool_modules(splits), main_modules=[module],
                                 min_steps=lo, max_steps=hi, max_operand=L.max_operand,
                                 max_value=L.max_value, id_prefix=id_prefix, exclude=exclude)


def ioa_probe(stage: Stage, splits: Splits, teacher: str) -> IOAProbe:
    """IOA's probe items and P_T(k) on them: the selected teacher's verified answer, one sample per item."""
    items = ioa_items(stage.params, splits)
    if not items:
        raise ValueError("dynamic.policies: ioa needs problem modules (IOA's skills) and no probe problem has one; "
                         "remove ioa from dynamic.policies in the profile")
    run = generation.teacher_traces(stage, items, 1, names=[teacher])[teacher]
    verdict = {t.problem_id: bool(t.correct) for t in run.traces if t.sample == 0}
    table = pd.DataFrame([{"problem_id": p.id, "module": p.module, "level": p.level,
                           "teacher_correct": verdict.get(p.id, False)} for p in items])
    counts = table.groupby("module").size().astype(int).to_dict()
    wanted = stage.params.dynamic.ioa.items_per_module
    short = {m: n for m, n in counts.items() if n < wanted}
    if short:
        warnings.warn(f"ioa: fewer probe items than dynamic.ioa.items_per_module={wanted} for modules {short}; "
                      "their gate is less certain (raise data.n_probe for more)", stacklevel=2)
    return IOAProbe(items, table.groupby("module")["teacher_correct"].mean().astype(float).to_dict(), counts, table)


REMEDIAL = "ioa:remedial"
STAGE_NEW = "ioa:new"


def lab_teacher(prof, teacher: str):
    """The selected teacher's spec when it is a lab teacher on the lab task (its pen can write new problems'
    traces), else None."""
    spec = next((t for t in prof.teachers if t.name == teacher), None)
    return spec if prof.data.task == "lab" and spec is not None and spec.backend == "lab" else None


def stage_data(prof, splits: Splits, modules, teacher: str, key: list, exclude: set[str]
               ) -> tuple[pd.DataFrame, dict[str, Problem]] | None:
    """IOA's first teaching of a stage on data written for it (``dynamic.ioa.first_teaching: new``): rows of a
    dataset named ``ioa:new``, or None where it cannot be written (not the lab task or not a lab teacher; the
    stage is then taught from the pool).

    ``dynamic.ioa.stage_problems`` new problems split evenly over the stage's modules, each drawn with the
    data's settings (its difficulty, the module as the last step, as ``module_problems``), none sharing a text
    with ``exclude``; the teacher's pen writes them, the verifier keeps the correct ones and IOA's Adapter
    rewrites them. The paper's Adapter synthesises each stage's data; about one pass over each problem per
    phase, where the pool's few problems of one module are seen ~20 times (benchmarks/README.md).
    """
    spec = lab_teacher(prof, teacher)
    if prof.dynamic.ioa.first_teaching != "new" or spec is None:
        return None
    modules = sorted(modules)
    seed = stable_seed(prof.seed, "ioa-stage", *key, bits=32, form="compact")
    n, k = prof.dynamic.ioa.stage_problems, len(modules)
    new: list[Problem] = []
    for i, module in enumerate(modules):
        count = n // k + (i < n % k)
        if count:
            new += module_problems(prof, splits, module, count, stable_seed(seed, module, bits=32, form="compact"),
                                   f"lab-stage-{hash_obj(key)[:8]}-{module}", exclude | {p.text for p in new})
    return adapted_teacher_rows(new, spec, seed, STAGE_NEW), {p.id: p for p in new}


def remedial_data(prof, modules, teacher: str, key: list, exclude: set[str], first_teaching: pd.DataFrame
                  ) -> tuple[pd.DataFrame, dict[str, Problem]]:
    """IOA's remediation, unlike first teaching: rows of a dataset named ``ioa:remedial``.

    Lab (the selected teacher a lab teacher): ``dynamic.ioa.remedial_problems`` new problems of the weak
    modules and their prerequisites, simpler than the pool's as ``dynamic.ioa.remedial_form`` says (one step
    and operands up to half the data's; one step; operands up to half; or, ``as-data``, not simpler), none
    sharing a text with ``exclude``; the teacher's pen writes them (its style and error rate), the
    verifier keeps the correct ones and IOA's Adapter rewrites them. Other tasks: the weak modules'
    rows of the first-teaching dataset at their lowest level (the easier problems).
    """
    spec = lab_teacher(prof, teacher)
    if spec is not None:
        L, form = prof.data.lab, prof.dynamic.ioa.remedial_form
        seed = stable_seed(prof.seed, "remedial", *key, bits=32, form="compact")
        prefix = f"lab-remedial-{hash_obj(key)[:8]}"
        steps = (L.min_steps, L.max_steps) if form in ("small-operands", "as-data") else (1, 1)
        operand = L.max_operand if form in ("one-step", "as-data") else max(4, L.max_operand // 2)
        settings = dict(min_steps=steps[0], max_steps=steps[1], max_value=L.max_value, id_prefix=prefix,
                        exclude=exclude, modules=[m for m in modules if m in lab.MODULES])
        # small settings allow few distinct problems (one-step divide with operands up to 5: a few hundred): then
        # every one of them, drawn from more than once
        new = lab.generate_problems(prof.dynamic.ioa.remedial_problems, seed, max_operand=operand, up_to=True,
                                    **settings)
        return adapted_teacher_rows(new, spec, seed, REMEDIAL), {p.id: p for p in new}
    rows = first_teaching[first_teaching["module"].isin(list(modules))]
    if rows["level"].notna().any():
        lowest = rows.groupby("module")["level"].transform("min")
        rows = rows[rows["level"] == lowest]
    return rows.assign(dataset=REMEDIAL).reset_index(drop=True), {}


def adapted_teacher_rows(problems: list[Problem], spec, seed: int, dataset: str) -> pd.DataFrame:
    """A lab teacher's traces of ``problems`` (``spec``: its style and error rate, one sample each), the ones
    the verifier passes rewritten by IOA's Adapter: rows of ``dataset``, as stage 2 makes them."""
    rng = random.Random(seed)
    rows = []
    for p in problems:
        text = lab.write_trace(p, spec.style or spec.name, error_rate=spec.error_rate, rng=rng)
        if not verify(p, text):
            continue
        adapted, _ = adapter.adapt_text(p, text)
        rows.append({"dataset": dataset, "problem_id": p.id, "teacher": spec.name, "text": adapted, "sample": 0,
                     "correct": True, "module": p.module, "level": p.level})
    return pd.DataFrame(rows)


def ioa_dataset(datasets: dict[str, pd.DataFrame], teacher: str) -> str:
    """IOA teaches from adapted data: the selected teacher's adapted set when there is one."""
    for name in (f"teacher={teacher}+adapted", f"teacher={teacher}", "all+adapted", "all"):
        if name in datasets:
            return name
    return sorted(datasets)[0]


def draw_examples(choice: select.Choice, datasets: dict[str, pd.DataFrame], n: int, rng: random.Random) -> pd.DataFrame:
    """``n`` rows drawn with replacement from the chosen mixture (after the choice's module/level filter)."""
    pools = {}
    for name, weight in choice.weights.items():
        if weight <= 0:
            continue
        rows = datasets[name]
        if choice.modules is not None:
            rows = rows[rows["module"].isin(choice.modules)]
        if choice.levels is not None:
            rows = rows[rows["level"].isin(choice.levels)]
        if len(rows):
            pools[name] = (weight, rows.reset_index(drop=True))
    if not pools:  # the filter left nothing: fall back to the unfiltered mixture
        pools = {name: (w, datasets[name]) for name, w in choice.weights.items() if w > 0}
    names = sorted(pools)
    weights = [pools[k][0] for k in names]
    offsets = dict(zip(names, np.cumsum([0] + [len(pools[k][1]) for k in names[:-1]]).tolist()))
    picks = []
    for _ in range(n):  # per draw: a dataset by weight, then a row of it (the random numbers of every earlier run)
        name = rng.choices(names, weights=weights)[0]
        picks.append(offsets[name] + rng.randrange(len(pools[name][1])))
    rows = pd.concat([pools[k][1] for k in names], ignore_index=True)
    return rows.iloc[picks].reset_index(drop=True)


def mean_example_tokens(student: StudentModel, problems: dict[str, Problem],
                        datasets: dict[str, pd.DataFrame], max_seq_len: int) -> float:
    """Mean training tokens of a candidate example, over the distinct traces of all candidate datasets:
    the same for every policy, so ``budget: tokens`` gives every policy the same tokens per phase."""
    rows = pd.concat(list(datasets.values())).drop_duplicates(["problem_id", "text"])
    examples = distillation.sft_examples(student, problems, dmc.traces_of(rows))
    return float(np.mean(distillation.example_tokens(student, examples, max_seq_len)))


def draw_to_token_budget(student: StudentModel, problems: dict[str, Problem], choice: select.Choice,
                         datasets: dict[str, pd.DataFrame], budget: float, n_hint: int, rng: random.Random,
                         max_seq_len: int) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Examples drawn one after another from the choice (as ``draw_examples``) until their training tokens
    reach ``budget``: the first draws are the same whatever the budget, so the overshoot is under one example."""
    state = rng.getstate()
    n = max(1, n_hint)
    while True:
        rng.setstate(state)
        batch = draw_examples(choice, datasets, 2 * n, rng)
        examples = distillation.sft_examples(student, problems, dmc.traces_of(batch))
        reached = np.flatnonzero(np.cumsum(distillation.example_tokens(student, examples, max_seq_len)) >= budget)
        if len(reached):
            m = int(reached[0]) + 1
            return batch.iloc[:m].reset_index(drop=True), examples[:m]
        n *= 2


@dataclass
class PolicyInputs:
    """Everything a (policy, seed) run reads besides the student (picklable, for the workers)."""

    datasets: dict[str, pd.DataFrame]  # every candidate dataset of stage 2
    problems: dict[str, Problem]
    splits: Splits
    prerequisites: dict[str, list[str]]
    selected_teacher: str
    ioa: IOAProbe | None = None

    @property
    def teacher_scores(self) -> dict[str, float]:
        return self.ioa.teacher_scores if self.ioa is not None else {}


def phase_budget(prof, student: StudentModel, problems: dict[str, Problem],
                 datasets: dict[str, pd.DataFrame]) -> tuple[int, float | None]:
    """A phase's examples (``steps_per_phase`` x batch x accumulation) and, with ``dynamic.budget: tokens``,
    its training tokens (that many examples of the candidates' mean length; the same for every policy), else
    None (the phase trains ``steps_per_phase`` steps)."""
    training = distillation.sft_training(student.spec, prof.training)
    n_examples = prof.dynamic.steps_per_phase * training.batch_size * training.grad_accum
    if prof.dynamic.budget != "tokens":
        return n_examples, None
    return n_examples, n_examples * mean_example_tokens(student, problems, datasets, training.max_seq_len)


def phase_rng(prof, seed: int, phase: int) -> random.Random:
    """The draws of a phase. Common random numbers: they depend on (seed, phase), not on the policy, so two
    policies that choose the same mixture train on the same examples and differ only by their choices.
    (A Random seeded by the hash's text, not by stable_seed's number: the same draws as every earlier run.)"""
    return random.Random(hash_obj([prof.seed, seed, phase]))


def phase_sft_seed(seed: int, phase: int) -> int:
    """A phase's SFT seed (its example order), the same for every policy."""
    return stable_seed(seed, phase, bits=32, form="compact")


def phase_span(phase: int, phases: int) -> tuple[float, float]:
    """The part of the run's one LR schedule that a phase covers."""
    return phase / phases, (phase + 1) / phases


def phase_dir(stage: Stage, student: StudentModel, seed: int, phase: int, key: str):
    """Where a stage-5 phase's checkpoint lives: named by the phase's content key, shared by every policy."""
    return stage.run.cache / "dynamic" / student.name / f"seed{seed}" / f"phase{phase}-{key}"


def run_policy(stage: Stage, student: StudentModel, policy_name: str, seed: int,
               inputs: PolicyInputs) -> PolicyRun:
    """One (policy, seed) run: before every phase the policy chooses, the phase trains on draws from its
    choice and the held-out accuracy (overall and per module) is recorded. With ``dynamic.carry_optimizer``
    the phases continue one AdamW state and one LR schedule (``train.sft``'s ``optimizer_state`` and
    ``schedule_span``), so a phase is a re-selection point, not a restart; IOA's phases are fine-tunes of their
    own instead with ``dynamic.ioa.own_schedule`` (the paper's FineTune per stage)."""
    prof = stage.params
    d = prof.dynamic
    datasets, problems, splits = inputs.datasets, inputs.problems, inputs.splits
    if policy_name == "ioa" and inputs.ioa is None:
        raise ValueError("dynamic.policies: ioa needs IOA's probe "
                         "(PolicyInputs.ioa = dynamic_selection.ioa_probe(...)); build it, or remove ioa from "
                         "dynamic.policies")
    scored = choice_datasets(datasets, d.datasets)  # DMC is measured on each one's scoring slice (score_student)...
    # ...and the phases train on training slices only (a dataset with none cannot be trained on, or chosen)
    datasets = dmc.slice_rows(datasets, prof, "training")
    choosable = {name: rows for name, rows in datasets.items() if name in scored}
    first_teaching = ioa_dataset(datasets, inputs.selected_teacher)
    policy = select.make_policy(policy_name, **policy_params(stage, policy_name, seed, first_teaching))
    current = StudentModel(student.spec, copy.deepcopy(student.model), student.tokenizer)
    levels = sorted({int(v) for rows in choosable.values() for v in rows["level"].dropna()})
    run = PolicyRun(policy_name, seed)
    training = distillation.sft_training(student.spec, prof.training)
    tokens = 0
    n_examples, phase_tokens = phase_budget(prof, current, problems, datasets)
    exclude = {p.text for p in problems.values()} | ({p.text for p in inputs.ioa.items} if inputs.ioa else set())
    heldout_modules = pd.Series({p.id: p.module for p in splits.heldout})
    optimizer_state, previous, after = None, None, None
    written: set[str] = set()  # the problems IOA has written in this run: each new set is new to the run
    # IOA may fine-tune each phase on a schedule of its own (dynamic.ioa.own_schedule); the others continue one
    carry = d.carry_optimizer and not (policy_name == "ioa" and d.ioa.own_schedule)
    for phase in track(range(d.phases), f"{policy_name} seed {seed} phases"):
        dmc_now: dict[str, float] = {}
        items = None
        if policy_name == "dmc_dynamic" or (policy_name == "dmc_static" and phase == 0):
            items = dmc.score_student(stage, current, scored, problems, splits.probe, seed=stage.seed)
            table = dmc.dataset_scores(items).assign(policy=policy_name, seed=seed, phase=phase)
            bounds = dmc.factor_intervals(items, {"dmc": "compat"}).drop(columns="factor")
            table = table.merge(bounds.rename(columns={"lo": "dmc_lo", "hi": "dmc_hi"}), on=["student", "dataset"],
                                how="left")
            # lock-in, made visible: DMC in sample, on a sample of the training slice (what phases train on)
            inside = dmc.dataset_scores(dmc.score_student(
                stage, current, scored, problems, splits.probe, seed=stage.seed, part="training_sample"))
            table["dmc_in_sample"] = table["dataset"].map(dict(zip(inside["dataset"], inside["dmc"])))
            table["rel_difficulty_in_sample"] = table["dataset"].map(
                dict(zip(inside["dataset"], inside["rel_difficulty"])))
            run.dmc.append(table)
            dmc_now = dict(zip(table["dataset"], table["dmc"]))
        module_scores: dict[str, float] = {}
        if policy_name == "ioa":
            module_scores = generation.module_accuracy(current, inputs.ioa.items, prof=prof, seed=stage.seed,
                                                       cache_dir=stage.run.cache).to_dict()
        # IOA chooses its own data; the others choose among dynamic.datasets, and a dataset whose scoring
        # slice is empty has no DMC, so a DMC policy cannot choose it
        names = sorted(datasets) if policy_name == "ioa" else sorted(n for n in choosable if not dmc_now or n in dmc_now)
        state = select.SelectionState(datasets=names, n_phases=d.phases, dmc=dmc_now,
                                      student_scores=module_scores, teacher_scores=inputs.teacher_scores,
                                      prerequisites=inputs.prerequisites, levels=levels,
                                      module_items=inputs.ioa.item_counts if inputs.ioa else {})
        choice = policy.choose(phase, state)
        margin = dmc_margin(items, choice, dmc_now) if items is not None else {}
        pool, known = datasets, problems
        if choice.remedial:  # IOA's remediation: new problems of the weak modules (dynamic.ioa.remedial_form)
            rows, new = remedial_data(prof, choice.remedial, inputs.selected_teacher, [seed, phase, *choice.remedial],
                                      exclude | written, datasets[first_teaching])
            written |= {p.text for p in new.values()}
            if len(rows):
                pool, known = {**datasets, REMEDIAL: rows}, {**problems, **new}
                choice = dataclasses.replace(choice, weights={REMEDIAL: 1.0}, modules=None)
        elif policy_name == "ioa" and choice.stage is not None and choice.modules:  # a stage's first teaching
            made = stage_data(prof, splits, choice.modules, inputs.selected_teacher, [seed, phase, *choice.modules],
                              exclude | written)
            if made is not None and len(made[0]):
                rows, new = made
                written |= {p.text for p in new.values()}
                pool, known = {**datasets, STAGE_NEW: rows}, {**problems, **new}
                choice = dataclasses.replace(choice, weights={STAGE_NEW: 1.0})
        rng = phase_rng(prof, seed, phase)  # common random numbers: the same draws for every policy
        if phase_tokens is None:
            batch = draw_examples(choice, pool, n_examples, rng)
            examples = distillation.sft_examples(current, known, dmc.traces_of(batch))
        else:
            batch, examples = draw_to_token_budget(current, known, choice, pool, phase_tokens, n_examples,
                                                   rng, training.max_seq_len)
        sft_seed = phase_sft_seed(seed, phase)
        steps = d.steps_per_phase if phase_tokens is None else None
        span = phase_span(phase, d.phases) if carry else None
        # The checkpoint folder is named by what the phase trains (start weights, the phases before it, whose
        # optimizer state it continues, examples, settings) and by nothing else, not the policy: a changed input
        # trains a new phase, a killed phase resumes, a finished one is read back, and two policies that have
        # made the same choices so far (dmc_static and dmc_dynamic when the latter keeps its first pick) share
        # their phases instead of training them twice. phase.json names the phase it starts from.
        key = hash_obj({"start": current.fingerprint(), "examples": examples, "steps": steps,
                        "training": training.key_dump(), "seed": sft_seed,
                        **({"span": list(span), "after": previous} if span else {})})[:12]
        out_dir = phase_dir(stage, student, seed, phase, key)
        with exclusive(out_dir.parent / f"{out_dir.name}.lock"):  # a worker training it now: wait, read it back
            result = launch.sft(current.model, current.tokenizer, examples, steps=steps, cfg=training,
                                seed=sft_seed, out_dir=out_dir, resume=True, single_pass=phase_tokens is not None,
                                optimizer_state=optimizer_state, schedule_span=span,
                                processes=prof.parallel.sft_processes, sharding=prof.parallel.sft_sharding)
        atomic_write_json(out_dir / "phase.json", {"phase": phase, "seed": seed, "after": after})
        after = out_dir.name
        if carry:
            optimizer_state, previous = result.optimizer_state, key
        current.model.eval()
        tokens += result.tokens_seen
        outcomes = generation.pass_rates(current, splits.heldout, k=1, prof=prof, seed=stage.seed,
                                         cache_dir=stage.run.cache)
        run.final_outcomes = outcomes
        acc = float(outcomes.mean())
        run.curve.append({"policy": policy_name, "seed": seed, "phase": phase + 1, "tokens": tokens, "accuracy": acc})
        for module, value in outcomes.groupby(heldout_modules.reindex(outcomes.index)).mean().items():
            run.module_curve.append({"policy": policy_name, "seed": seed, "phase": phase + 1, "module": module,
                                     "accuracy": float(value)})
        mix = batch["dataset"].value_counts().to_dict()
        run.choices.append({"policy": policy_name, "seed": seed, "phase": phase, "reason": choice.reason,
                            "chosen": ", ".join(sorted(k for k, v in choice.weights.items() if v > 0)),
                            "weights": {k: round(v, 4) for k, v in choice.weights.items() if v > 0},
                            "modules": list(choice.modules) if choice.modules else None,
                            "levels": list(choice.levels) if choice.levels else None,
                            "drawn": dict(sorted(mix.items())), "n_examples": len(batch),
                            "new_problems": int((~batch["problem_id"].isin(list(problems))).sum()), **margin})
        if policy_name == "ioa":
            run.ioa_plan += ioa_plan_rows(policy, state, phase, seed)
    if d.final_seeds == "all" or seed == d.seeds[0]:
        run.final_model = save_final(stage, current, policy_name, seed)
    return run


def ioa_plan_rows(policy: select.IOAPolicy, state: select.SelectionState, phase: int, seed: int) -> list[dict]:
    """IOA's plan at one phase, one row per module: P_S and P_T on the same items, the gap, severity and
    targets of the latest diagnosis, the stage taught and the gate's outcome at this phase."""
    plan = policy.plan
    gaps = select.module_gaps(state.student_scores, state.teacher_scores, policy.tau_gap)
    diagnosis = plan["diagnosis"]
    stage = None if plan["current"] is None else plan["stages"][plan["current"]]
    gates = {k: (e, g) for e in plan["log"] if e["phase"] == phase for k, g in e["gate"].items()}
    rows = []
    for k, g in gaps.items():
        entry, gate = gates.get(k, (None, None))
        rows.append({"seed": seed, "phase": phase, "module": k, "p_s": g["student"], "p_t": g["teacher"],
                     "n_items": int(state.module_items.get(k, 0)), "gap": g["gap"], "deficient": g["deficient"],
                     "severity": diagnosis["gaps"][k].get("severity"), "diagnosed_at": diagnosis["phase"],
                     "target": k in diagnosis["targets"],
                     "prerequisite_added": k in diagnosis.get("prerequisites_added", ()), "in_stage": bool(stage and k in stage),
                     "stage": None if plan["current"] is None else plan["current"] + 1,
                     "gate_target": gate["target"] if gate else None, "gate_bound": gate["bound"] if gate else None,
                     "gate": entry["outcome"] if entry else None, "not_mastered": k in plan["not_mastered"]})
    return rows


def _worker_stage(job: dict) -> SimpleNamespace:
    return SimpleNamespace(params=job["params"], run=RunDir(job["run_root"]), seed=job["eval_seed"], notes={})


def policy_job(job: dict) -> tuple[PolicyRun, dict]:
    """A worker's (policy, seed) run, with every phase's checkpoint, pass rates and scores in the run's
    caches (and its final student saved, for the first seed or, with ``final_seeds: all``, every seed); returned
    whole with the scoring counts it noted."""
    prof = job["params"]
    student = sft_cells.worker_student(job["student_file"], prof.device, prof.threads)
    stage = _worker_stage(job)
    run = run_policy(stage, student, job["policy"], job["seed"], job["inputs"])
    return run, stage.notes


def run_policies(stage: Stage, student: StudentModel, inputs: PolicyInputs) -> list[PolicyRun]:
    """Every (policy, seed) run of the profile, in the profile's order. With ``parallel.workers`` > 1 (or
    Slurm) the runs go to the executor and come back whole: the same computation in another process,
    so the runs (and the tables) are the same whatever the number of workers."""
    prof = stage.params
    pairs = [(policy, seed) for policy in prof.dynamic.policies for seed in prof.dynamic.seeds]
    if executor.spreads(prof):
        student_file = str(sft_cells.student_file(stage, student))
        # dmc_dynamic rescores DMC every phase and takes longest: started first, it does not leave one worker
        # busy at the end; dmc_static goes last, when the phases it shares with dmc_dynamic (the same choices
        # so far: the same phase folders) are finished and are read back instead of trained again alongside
        costly_first = sorted(pairs, key=lambda pair: {"dmc_dynamic": 0, "dmc_static": 2}.get(pair[0], 1))
        jobs = [{"params": prof, "run_root": str(stage.run.root), "eval_seed": stage.seed,
                 "student_file": student_file, "policy": policy, "seed": seed, "inputs": inputs}
                for policy, seed in costly_first]
        done = {}
        for run, notes in executor.for_profile(prof, stage.run.cache / "jobs").map(policy_job, jobs):
            dmc.note_scoring(stage, notes.get("scoring", {}))  # the manifest's counts, as in one process
            done[(run.policy, run.seed)] = run
        return [done[pair] for pair in pairs]
    return [run_policy(stage, student, policy, seed, inputs) for policy, seed in track(pairs, "policy x seed runs")]


def lock_in_table(trajectories: pd.DataFrame, choices: pd.DataFrame, policy: str = "dmc_dynamic") -> pd.DataFrame:
    """What one phase of training on a dataset did to its DMC: per (seed, phase >= 1), the dataset the
    policy trained on in the phase before, and its relative difficulty and DMC before and after that phase,
    in sample (a hash sample of its training slice: items just trained on) and out of sample (its scoring slice).
    Training lowers the NLL of the items it fits, so in-sample r falls and in-sample DMC rises by
    construction; the out-of-sample columns show whether the student really got closer to the data."""
    dyn = trajectories[trajectories["policy"] == policy]
    chosen = choices[choices["policy"] == policy].set_index(["seed", "phase"])["chosen"]
    rows = []
    for (seed, phase), now in dyn.groupby(["seed", "phase"], sort=True):
        trained = chosen.get((seed, phase - 1))
        before = dyn[(dyn["seed"] == seed) & (dyn["phase"] == phase - 1)].set_index("dataset")
        now = now.set_index("dataset")
        if phase == 0 or trained not in before.index or trained not in now.index:
            continue
        rows.append({"seed": seed, "phase": phase, "trained_on": trained,
                     "r_in_sample_before": before.at[trained, "rel_difficulty_in_sample"],
                     "r_in_sample_after": now.at[trained, "rel_difficulty_in_sample"],
                     "r_out_of_sample_before": before.at[trained, "rel_difficulty"],
                     "r_out_of_sample_after": now.at[trained, "rel_difficulty"],
                     "dmc_in_sample_before": before.at[trained, "dmc_in_sample"],
                     "dmc_in_sample_after": now.at[trained, "dmc_in_sample"],
                     "dmc_out_of_sample_before": before.at[trained, "dmc"],
                     "dmc_out_of_sample_after": now.at[trained, "dmc"],
                     "chosen_next": chosen.get((seed, phase))})
    return pd.DataFrame(rows)


def dmc_margin(items: pd.DataFrame, choice: select.Choice, dmc_now: Mapping[str, float]) -> dict[str, Any]:
    """How far a DMC policy's single pick led the runner-up (the best candidate not picked) in the DMC just
    measured, with a paired 95% interval: whole problems resampled for both datasets at once
    (``stats.paired_clustered_mean_difference``), since the candidates' traces answer the same problems and a
    problem's capability factor is shared. Empty for a mixture or a single candidate."""
    picked = [name for name, w in choice.weights.items() if w > 0]
    others = {name: v for name, v in dmc_now.items() if name not in picked}
    if len(picked) != 1 or picked[0] not in dmc_now or not others:
        return {}
    runner = max(sorted(others), key=others.get)
    a, b = items[items["dataset"] == picked[0]], items[items["dataset"] == runner]
    lead = stats.paired_clustered_mean_difference(a["compat"], a["problem_id"], b["compat"], b["problem_id"])
    return {"runner_up": runner, "dmc_margin": lead["diff"], "dmc_margin_lo": lead["lo"], "dmc_margin_hi": lead["hi"]}


def choice_margins(choices: pd.DataFrame, policy: str = "dmc_dynamic") -> pd.DataFrame:
    """Per (seed, phase) of a DMC policy: its pick, the runner-up, the DMC margin between them with its paired
    95% interval, and ``shown`` where that interval excludes 0 (else the pick was within the noise of DMC's
    estimate). Empty when the choices carry no margins."""
    if "dmc_margin" not in choices.columns:
        return pd.DataFrame()
    rows = choices[(choices["policy"] == policy) & choices["dmc_margin"].notna()]
    out = rows[["seed", "phase", "chosen", "runner_up", "dmc_margin", "dmc_margin_lo", "dmc_margin_hi"]].copy()
    out["shown"] = stats.excludes_zero(out["dmc_margin_lo"], out["dmc_margin_hi"])
    return out.reset_index(drop=True)


def run_tables(runs: list[PolicyRun]) -> dict[str, pd.DataFrame]:
    """The stage's tables from the runs: learning curves (without phase 0), per-module curves, every
    policy's choices with their reasons, DMC trajectories and IOA's plan per phase."""
    choices = pd.DataFrame([c for r in runs for c in r.choices])
    for column in ("weights", "modules", "levels", "drawn"):
        choices[column] = choices[column].map(lambda v: json.dumps(v, sort_keys=True))
    plan = pd.DataFrame([row for r in runs for row in r.ioa_plan])
    traj = [t for r in runs for t in r.dmc]
    return {"curve": pd.DataFrame([c for r in runs for c in r.curve]),
            "module_curves": pd.DataFrame([c for r in runs for c in r.module_curve]),
            "choices": choices, "ioa_plan": plan,
            "dmc_trajectories": pd.concat(traj, ignore_index=True) if traj else pd.DataFrame()}


def outcomes_table(runs: list[PolicyRun]) -> pd.DataFrame:
    """Per (policy, seed, problem): the held-out outcome after the last phase."""
    return pd.concat([pd.DataFrame({"policy": r.policy, "seed": r.seed, "problem_id": r.final_outcomes.index,
                                    "correct": r.final_outcomes.to_numpy()}) for r in runs], ignore_index=True)


def compare_policies(outcomes: pd.DataFrame, start: pd.Series, references=("random", "dmc_static")) -> pd.DataFrame:
    """Every policy's final accuracy, its gain over the starting student, and its paired difference
    against each reference policy (seed with seed: the phases' draws share random numbers), each with a
    95% CI (``stats.paired_difference``); ``shown`` says whether the interval excludes 0. Where it does
    not, ``..._seeds_needed`` and ``..._problems_needed`` are the seeds (the problems kept) and the
    problems (the seeds kept) that would show a difference as large as the one measured (95%, 80% power;
    ``stats.needed_sample``; inf: that alone would not do), ``..._joint_seeds_needed`` and
    ``..._joint_problems_needed`` the two grown together."""
    wide = {p: g.pivot(index="seed", columns="problem_id", values="correct").sort_index()[list(start.index)]
            for p, g in outcomes.groupby("policy", sort=False)}
    rows = []
    for policy, a in wide.items():
        gain = stats.paired_gain(start.to_numpy(), a.to_numpy())
        row = {"policy": policy, "seeds": len(a), "final_accuracy": float(a.to_numpy().mean()),
               "gain": gain["gain"], "gain_lo": gain["gain_lo"], "gain_hi": gain["gain_hi"],
               "seed_sd": gain["seed_sd"], **{f"gain_{k}": v for k, v in stats.needed_sample(gain).items()}}
        for ref in references:
            if ref in wide and ref != policy and list(wide[ref].index) == list(a.index):
                d = stats.paired_difference(a.to_numpy(), wide[ref].to_numpy())
                row.update({f"vs_{ref}": d["gain"], f"vs_{ref}_lo": d["gain_lo"], f"vs_{ref}_hi": d["gain_hi"],
                            f"vs_{ref}_shown": stats.shown(d),
                            **{f"vs_{ref}_{k}": v for k, v in stats.needed_sample(d).items()}})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("final_accuracy", ascending=False, kind="mergesort").reset_index(drop=True)


def start_curve(stage: Stage, student: StudentModel, heldout: list[Problem], policies: list[str],
                seeds: list[int]) -> list[dict[str, Any]]:
    """Phase 0 of every learning curve: the undistilled student."""
    acc = generation.accuracy(student, heldout, prof=stage.params, seed=stage.seed, cache_dir=stage.run.cache)
    return [{"policy": p, "seed": s, "phase": 0, "tokens": 0, "accuracy": acc} for p in policies for s in seeds]


def start_module_curve(start: pd.Series, heldout: list[Problem], policies: list[str], seeds: list[int]) -> pd.DataFrame:
    """Phase 0 of every per-module curve: the undistilled student's held-out accuracy per module."""
    modules = pd.Series({p.id: p.module for p in heldout})
    per = start.loc[list(modules.index)].groupby(modules).mean()
    return pd.DataFrame([{"policy": p, "seed": s, "phase": 0, "module": m, "accuracy": float(v)}
                         for p in policies for s in seeds for m, v in per.items()])


def save_final(stage: Stage, student: StudentModel, policy: str, seed: int) -> dict[str, str]:
    """Save a policy's final student as a model directory (LoRA merged) for stage 6.

    Returns its path relative to the run folder (tables hold no absolute paths: two run folders give
    identical tables) and the weights' fingerprint, so that stage 6's cache key changes whenever the
    weights do, even if the path stays the same.
    """
    target = stage.run.cache / "final_models" / f"{student.name}-{policy}-seed{seed}"
    models.save_model(student.model, student.tokenizer, target, info={"student": student.name, "policy": policy,
                                                                      "seed": seed})
    return {"model_dir": target.relative_to(stage.run.root).as_posix(), "weights": model_fingerprint(student.model)}


# --------------------------------------------------------------------------- the stage, as the notebook runs it
def policy_inputs(stage: Stage, splits: Splits, datasets: dict[str, pd.DataFrame],
                  selected: str) -> tuple[PolicyInputs, dict[str, float]]:
    """What every (policy, seed) run reads besides the student, checked before any training, and IOA's
    P_T(k): on IOA's probe items when ``ioa`` is among the policies, else the selected teacher's accuracy
    per module over its raw stage-2 traces (the modules the probe set has problems of)."""
    policies = stage.params.dynamic.policies
    raw = stage.read_table("02_trace_curation", "traces")
    probe = ioa_probe(stage, splits, selected) if "ioa" in policies else None
    teacher_scores = (probe.teacher_scores if probe else
                      teacher_module_scores(raw, selected, measurable={p.module for p in splits.probe}))
    graph = prerequisites(teacher_scores)
    check_policies(policies, datasets, teacher_scores)
    return PolicyInputs(datasets, splits.by_id(), splits, graph, selected, probe), teacher_scores


def module_table(inputs: PolicyInputs, teacher_scores: dict[str, float]) -> pd.DataFrame:
    """Per module: P_T, IOA's probe items (when measured there) and the prerequisites."""
    return pd.DataFrame({"P_T": teacher_scores, "items": inputs.ioa.item_counts if inputs.ioa else None,
                         "prerequisites": {m: ", ".join(p) for m, p in inputs.prerequisites.items()}})


def stage_tables(stage: Stage, student: StudentModel, inputs: PolicyInputs, runs: list[PolicyRun],
                 start: pd.Series) -> dict[str, pd.DataFrame]:
    """The stage's tables by name: ``learning_curves`` and ``module_curves`` from phase 0 (the undistilled
    student, whose held-out pass rates are ``start``), ``choices``, ``final_models`` (each policy's final
    student of the first seed, or of every seed with ``dynamic.final_seeds: all``, saved for stage 6 by
    ``save_final``), ``final_outcomes``,
    ``dmc_trajectories`` and ``ioa_plan`` (empty when no run made any)."""
    d, heldout = stage.params.dynamic, inputs.splits.heldout
    tables = run_tables(runs)
    starts = pd.DataFrame(start_curve(stage, student, heldout, d.policies, d.seeds))
    finals = [{"student": student.name, "policy": r.policy, "seed": r.seed, **r.final_model}
              for r in runs if r.final_model]
    return {"learning_curves": pd.concat([starts, tables["curve"]], ignore_index=True),
            "module_curves": pd.concat([start_module_curve(start, heldout, d.policies, d.seeds),
                                        tables["module_curves"]], ignore_index=True),
            "choices": tables["choices"], "final_models": pd.DataFrame(finals),
            "final_outcomes": outcomes_table(runs),
            "dmc_trajectories": tables["dmc_trajectories"], "ioa_plan": tables["ioa_plan"]}


def curve_lines(runs: list[PolicyRun]) -> str:
    """One line per (policy, seed): held-out accuracy after each phase."""
    return "\n".join(f"{r.policy:>13} seed {r.seed}: held-out accuracy "
                     + " -> ".join(f"{c['accuracy']:.3f}" for c in r.curve) for r in runs)


PLANTED_SKILL_COLUMNS = ["module", "seen_in_warmup", "heldout_problems", "start_accuracy", "start_lo", "start_hi",
                         "ioa_p_s", "ioa_deficient"]


def planted_skill_check(prof, spec, start: pd.Series, heldout: list[Problem], ioa_plan: pd.DataFrame) -> pd.DataFrame:
    """Planted truth of stage 5 (lab task): the student was warm-started on some modules only
    (``problems.warmup_modules``). Per module: whether its warm-up saw it, the student's held-out accuracy
    at the start (``start``: pass rates by problem id) with a 95% Wilson interval, and, when IOA ran, its
    P_S at the first diagnosis and whether it found the module deficient. Empty off the lab task."""
    if prof.data.task != "lab":
        return pd.DataFrame(columns=PLANTED_SKILL_COLUMNS)
    seen = set(warmup_modules(prof, spec))
    first = ioa_plan[ioa_plan["phase"] == ioa_plan["phase"].min()] if len(ioa_plan) else ioa_plan
    rows = []
    for module in lab_modules_in_order({p.module for p in heldout}):
        ok = start.loc[[p.id for p in heldout if p.module == module]]
        lo, hi = stats.wilson(float(ok.sum()), len(ok))
        diag = first[first["module"] == module] if len(first) else first
        rows.append({"module": module, "seen_in_warmup": module in seen, "heldout_problems": len(ok),
                     "start_accuracy": float(ok.mean()), "start_lo": lo, "start_hi": hi,
                     "ioa_p_s": float(diag["p_s"].mean()) if len(diag) else float("nan"),
                     "ioa_deficient": bool(diag["deficient"].any()) if len(diag) else None})
    return pd.DataFrame(rows, columns=PLANTED_SKILL_COLUMNS)


def planted_skill_summary(check: pd.DataFrame) -> str:
    """The planted-skill check in two sentences: are the modules the warm-up never showed the weak ones at
    the start, and which of them does IOA's first diagnosis find deficient."""
    if check.empty:
        return "no planted partial skill (not the lab task)"
    seen, unseen = check[check["seen_in_warmup"]], check[~check["seen_in_warmup"]]
    if seen.empty or unseen.empty:
        return "the warm-up saw every module, or none: no partial skill planted"
    below = bool(unseen["start_accuracy"].max() < seen["start_accuracy"].min())
    text = (f"At the start the {len(unseen)} modules the warm-up never showed score "
            f"{unseen['start_accuracy'].min():.2f}-{unseen['start_accuracy'].max():.2f}, the {len(seen)} it showed "
            f"{seen['start_accuracy'].min():.2f}-{seen['start_accuracy'].max():.2f}: "
            + ("every unseen module below every seen one." if below else "the two ranges overlap."))
    if check["ioa_deficient"].notna().any():
        flagged_unseen = unseen.loc[unseen["ioa_deficient"].astype(bool), "module"].tolist()
        flagged_seen = seen.loc[seen["ioa_deficient"].astype(bool), "module"].tolist()
        text += (f" IOA's first diagnosis finds {len(flagged_unseen)} of the {len(unseen)} unseen modules deficient"
                 f" ({', '.join(flagged_unseen) or 'none'}) and {len(flagged_seen)} of the {len(seen)} seen ones"
                 f" ({', '.join(flagged_seen) or 'none'}).")
    return text
