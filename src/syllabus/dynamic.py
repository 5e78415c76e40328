"""Stage 5 composed: phased training where a policy picks the data before every phase.

Each (policy, seed) run starts from the same student and gets the same compute per phase: with
``budget: tokens`` (default) one pass over examples drawn until they hold the phase's token budget
(``steps_per_phase`` x batch examples of the candidates' mean length), so every policy trains on the
same number of tokens within one example; with ``budget: steps`` ``steps_per_phase`` optimizer steps
on ``steps_per_phase`` x batch examples, whatever their length. Before each phase the policy sees a
``select.SelectionState`` measured on the current checkpoint: the DMC of every candidate dataset
(recomputed, for the DMC policies), the student's per-module accuracy on the probe set (IOA's P_S)
and the teacher's (P_T). The phase's examples are drawn from the chosen mixture.

Every piece is cached by content (pass rates and scores by model fingerprint, each phase's SFT as a
resumable checkpoint), so an interrupted run continues where it stopped and a finished one replays
from the cache without training again.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import compatibility, select, stats, train, workflow
from .progress import track
from .records import Problem
from .runs import Stage, hash_obj

DMC_POLICIES = ("dmc_dynamic", "dmc_static")


@dataclass
class PolicyRun:
    """What one (policy, seed) run produced."""

    policy: str
    seed: int
    curve: list[dict[str, Any]] = field(default_factory=list)
    choices: list[dict[str, Any]] = field(default_factory=list)
    dmc: list[pd.DataFrame] = field(default_factory=list)
    model: Any = None
    final_outcomes: pd.Series | None = None  # held-out pass (0/1) per problem after the last phase


def prerequisites(modules) -> dict[str, list[str]]:
    """IOA's module graph: the lab task's own graph for lab modules; for GSM8K's ``steps-<k>`` modules
    an estimated chain (k steps require k-1); no prerequisites for any other module (e.g. MATH subjects)."""
    from . import lab

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
        return {"tau_gap": d.ioa.tau_gap, "tau_mastery": d.ioa.tau_mastery, "tau_zpd": d.ioa.tau_zpd,
                "max_remedial_rounds": d.ioa.max_remedial_rounds, "dataset": ioa_dataset}
    return {}


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
    if not pools:  # the filter left nothing: fall back to the unfiltered mixture, and say so in the record
        pools = {name: (w, datasets[name]) for name, w in choice.weights.items() if w > 0}
    names = sorted(pools)
    weights = [pools[k][0] for k in names]
    picks = []
    for _ in range(n):
        name = rng.choices(names, weights=weights)[0]
        rows = pools[name][1]
        picks.append(rows.iloc[rng.randrange(len(rows))])
    return pd.DataFrame(picks).reset_index(drop=True)


def example_tokens(student: workflow.StudentModel, examples: list[tuple[str, str]], max_seq_len: int) -> list[int]:
    """Tokens each (prompt, target) example feeds the student in training (after truncation)."""
    return [len(ids) for ids, _ in train.tokenize_examples(student.tokenizer, examples, max_seq_len, "target")]


def mean_example_tokens(student: workflow.StudentModel, problems: dict[str, Problem],
                        datasets: dict[str, pd.DataFrame], max_seq_len: int) -> float:
    """Mean training tokens of a candidate example, over the distinct traces of all candidate datasets:
    the same for every policy, so ``budget: tokens`` gives every policy the same tokens per phase."""
    rows = pd.concat(list(datasets.values())).drop_duplicates(["problem_id", "text"])
    examples = workflow.sft_examples(student, problems, compatibility.traces_of(rows))
    return float(np.mean(example_tokens(student, examples, max_seq_len)))


def draw_to_token_budget(student: workflow.StudentModel, problems: dict[str, Problem], choice: select.Choice,
                         datasets: dict[str, pd.DataFrame], budget: float, n_hint: int, rng: random.Random,
                         max_seq_len: int) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Examples drawn one after another from the choice (as ``draw_examples``) until their training tokens
    reach ``budget``: the first draws are the same whatever the budget, so the overshoot is under one example."""
    state = rng.getstate()
    n = max(1, n_hint)
    while True:
        rng.setstate(state)
        batch = draw_examples(choice, datasets, 2 * n, rng)
        examples = workflow.sft_examples(student, problems, compatibility.traces_of(batch))
        reached = np.flatnonzero(np.cumsum(example_tokens(student, examples, max_seq_len)) >= budget)
        if len(reached):
            m = int(reached[0]) + 1
            return batch.iloc[:m].reset_index(drop=True), examples[:m]
        n *= 2


def run_policy(stage: Stage, student: workflow.StudentModel, policy_name: str, seed: int,
               datasets: dict[str, pd.DataFrame], problems: dict[str, Problem], splits: workflow.Splits,
               teacher_scores: dict[str, float], prerequisites: dict[str, list[str]], selected_teacher: str) -> PolicyRun:
    prof = stage.params
    d = prof.dynamic
    policy = select.make_policy(policy_name, **policy_params(stage, policy_name, seed, ioa_dataset(datasets, selected_teacher)))
    scored = datasets  # DMC is measured on each dataset's scoring slice (score_student)...
    # ...and the phases train on its training slice only (a dataset with none cannot be trained on, or chosen)
    datasets = compatibility.slice_rows(datasets, prof, "training")
    current = workflow.StudentModel(student.spec, copy.deepcopy(student.model), student.tokenizer)
    levels = sorted({int(v) for rows in datasets.values() for v in rows["level"].dropna()})
    run = PolicyRun(policy_name, seed)
    tokens = 0
    n_examples = d.steps_per_phase * prof.training.batch_size * prof.training.grad_accum
    phase_tokens = None  # budget: steps
    if d.budget == "tokens":  # the same for every policy: the candidates' mean example length
        phase_tokens = n_examples * mean_example_tokens(current, problems, datasets, prof.training.max_seq_len)
    for phase in track(range(d.phases), f"{policy_name} seed {seed} phases"):
        dmc_now: dict[str, float] = {}
        if policy_name == "dmc_dynamic" or (policy_name == "dmc_static" and phase == 0):
            items = compatibility.score_student(stage, current, scored, problems, splits.probe, seed=stage.seed)
            table = compatibility.dataset_scores(items).assign(policy=policy_name, seed=seed, phase=phase)
            # lock-in, made visible: DMC of the training slice (what earlier phases trained on), in sample
            inside = compatibility.dataset_scores(compatibility.score_student(
                stage, current, scored, problems, splits.probe, seed=stage.seed, part="training"))
            table["dmc_in_sample"] = table["dataset"].map(dict(zip(inside["dataset"], inside["dmc"])))
            table["rel_difficulty_in_sample"] = table["dataset"].map(
                dict(zip(inside["dataset"], inside["rel_difficulty"])))
            run.dmc.append(table)
            dmc_now = dict(zip(table["dataset"], table["dmc"]))
        module_scores = {}
        if policy_name == "ioa":
            module_scores = workflow.module_accuracy(current, splits.probe, prof=prof, seed=stage.seed,
                                                     cache_dir=stage.run.cache).to_dict()
        # a dataset whose scoring slice is empty has no DMC, so a DMC policy cannot choose it
        choosable = sorted(n for n in datasets if not dmc_now or n in dmc_now)
        state = select.SelectionState(datasets=choosable, n_phases=d.phases, dmc=dmc_now,
                                      student_scores=module_scores, teacher_scores=teacher_scores,
                                      prerequisites=prerequisites, levels=levels)
        choice = policy.choose(phase, state)
        # Common random numbers: the draw depends on (seed, phase), not on the policy, so two policies
        # that choose the same mixture train on the same examples and differ only by their choices.
        rng = random.Random(hash_obj([prof.seed, seed, phase]))
        if phase_tokens is None:
            batch = draw_examples(choice, datasets, n_examples, rng)
            examples = workflow.sft_examples(current, problems, compatibility.traces_of(batch))
        else:
            batch, examples = draw_to_token_budget(current, problems, choice, datasets, phase_tokens, n_examples,
                                                   rng, prof.training.max_seq_len)
        sft_seed = int(hash_obj([seed, phase])[:8], 16)
        steps = d.steps_per_phase if phase_tokens is None else None
        # The checkpoint folder is named by what the phase trains (start weights, examples, settings), so a
        # changed input trains a new phase instead of meeting another run's checkpoint; a killed phase resumes.
        key = hash_obj({"start": current.fingerprint(), "examples": examples, "steps": steps,
                        "training": prof.training.model_dump(mode="json"), "seed": sft_seed})[:12]
        out_dir = stage.run.cache / "dynamic" / student.name / policy_name / f"seed{seed}" / f"phase{phase}-{key}"
        result = train.sft(current.model, current.tokenizer, examples, steps=steps, cfg=prof.training,
                           seed=sft_seed, out_dir=out_dir, resume=True, single_pass=phase_tokens is not None)
        current.model.eval()
        tokens += result.tokens_seen
        outcomes = workflow.pass_rates(current, splits.heldout, k=1, prof=prof, seed=stage.seed,
                                       cache_dir=stage.run.cache)
        run.final_outcomes = outcomes
        acc = float(outcomes.mean())
        run.curve.append({"policy": policy_name, "seed": seed, "phase": phase + 1, "tokens": tokens, "accuracy": acc})
        mix = batch["dataset"].value_counts().to_dict()
        run.choices.append({"policy": policy_name, "seed": seed, "phase": phase, "reason": choice.reason,
                            "weights": {k: round(v, 4) for k, v in choice.weights.items() if v > 0},
                            "modules": list(choice.modules) if choice.modules else None,
                            "levels": list(choice.levels) if choice.levels else None,
                            "drawn": dict(sorted(mix.items()))})
    run.model = current
    return run


def outcomes_table(runs: list[PolicyRun]) -> pd.DataFrame:
    """Per (policy, seed, problem): the held-out outcome after the last phase."""
    return pd.concat([pd.DataFrame({"policy": r.policy, "seed": r.seed, "problem_id": r.final_outcomes.index,
                                    "correct": r.final_outcomes.to_numpy()}) for r in runs], ignore_index=True)


def compare_policies(outcomes: pd.DataFrame, start: pd.Series, references=("random", "dmc_static")) -> pd.DataFrame:
    """Every policy's final accuracy, its gain over the starting student, and its paired difference
    against each reference policy (seed with seed: the phases' draws share random numbers), each with a
    95% CI (``stats.paired_difference``); ``shown`` says whether the interval excludes 0."""
    wide = {p: g.pivot(index="seed", columns="problem_id", values="correct").sort_index()[list(start.index)]
            for p, g in outcomes.groupby("policy", sort=False)}
    rows = []
    for policy, a in wide.items():
        gain = stats.paired_gain(start.to_numpy(), a.to_numpy())
        row = {"policy": policy, "seeds": len(a), "final_accuracy": float(a.to_numpy().mean()),
               "gain": gain["gain"], "gain_lo": gain["gain_lo"], "gain_hi": gain["gain_hi"],
               "seed_sd": gain["seed_sd"]}
        for ref in references:
            if ref in wide and ref != policy and list(wide[ref].index) == list(a.index):
                d = stats.paired_difference(a.to_numpy(), wide[ref].to_numpy())
                row.update({f"vs_{ref}": d["gain"], f"vs_{ref}_lo": d["gain_lo"], f"vs_{ref}_hi": d["gain_hi"],
                            f"vs_{ref}_shown": bool(d["gain_lo"] > 0 or d["gain_hi"] < 0)})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("final_accuracy", ascending=False, kind="mergesort").reset_index(drop=True)


def start_curve(stage: Stage, student: workflow.StudentModel, heldout: list[Problem], policies: list[str],
                seeds: list[int]) -> list[dict[str, Any]]:
    """Phase 0 of every learning curve: the undistilled student."""
    acc = workflow.accuracy(student, heldout, prof=stage.params, seed=stage.seed, cache_dir=stage.run.cache)
    return [{"policy": p, "seed": s, "phase": 0, "tokens": 0, "accuracy": acc} for p in policies for s in seeds]


def save_final(stage: Stage, run: PolicyRun) -> dict[str, str]:
    """Save a policy's final student as a model directory (LoRA merged) for stage 6.

    Returns its path relative to the run folder (tables hold no absolute paths: two run folders give
    identical tables) and the weights' fingerprint, so that stage 6's cache key changes whenever the
    weights do, even if the path stays the same.
    """
    from . import models
    from .scoring import model_fingerprint

    target = stage.run.cache / "final_models" / f"{run.model.name}-{run.policy}-seed{run.seed}"
    models.save_model(run.model.model, run.model.tokenizer, target,
                      info={"student": run.model.name, "policy": run.policy, "seed": run.seed})
    return {"model_dir": target.relative_to(stage.run.root).as_posix(), "weights": model_fingerprint(run.model.model)}
