"""Stage 6 composed: benchmark the undistilled students, each policy's final student and local-model
teachers with lm-evaluation-harness (``syllabus.evaluate``), into one tidy table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import evaluate, executor, generation, models, stats, students
from ..devices import resolve_device
from ..progress import track
from ..records import Splits
from ..runs import Stage


def distilled_name(student: str, policy: str, seed: int | None = None) -> str:
    """A policy's final student's model name in stage 6's tables; ``seed`` named when stage 5 saved several."""
    return f"{student} + {policy}" + ("" if seed is None else f" (seed {seed})")


def final_names(finals: pd.DataFrame) -> dict[str, dict]:
    """Stage 5's saved final students by their stage-6 model name: the seed is in the name only where a
    (student, policy) has several (``dynamic.final_seeds: all``), so one seed's tables keep their names."""
    several = finals.groupby(["student", "policy"])["seed"].transform("nunique") > 1 if len(finals) else []
    return {distilled_name(r["student"], r["policy"], r["seed"] if many else None): r
            for r, many in zip(finals.to_dict("records"), several)}


def models_to_evaluate(stage: Stage, splits: Splits, finals: pd.DataFrame) -> pd.DataFrame:
    """One row per model: name, kind (student / distilled / teacher) and a loadable model directory."""
    prof = stage.params
    rows = []
    for spec in prof.students:
        student = students.load_student(stage, spec, splits)
        target = stage.run.cache / "final_models" / f"{spec.name}-undistilled"
        if not (target / "config.json").is_file():
            models.save_model(student.model, student.tokenizer, target, info={"student": spec.name, "policy": None})
        rows.append({"model": f"{spec.name} (undistilled)", "kind": "student", "model_dir": str(target),
                     "chat_template": spec.chat_template})
    chat = {s.name: s.chat_template for s in prof.students}
    for name, r in final_names(finals).items():
        rows.append({"model": name, "kind": "distilled",
                     "model_dir": str(stage.run.root / r["model_dir"]),  # stored relative to the run folder
                     "chat_template": chat.get(r["student"], False)})
    for t in prof.teachers:
        if t.backend == "hf" and t.model and Path(t.model).is_dir():
            rows.append({"model": f"teacher {t.name}", "kind": "teacher", "model_dir": t.model, "chat_template": False})
    return pd.DataFrame(rows)


def run_all(stage: Stage, entries: pd.DataFrame, splits: Splits) -> list[evaluate.EvalResult]:
    """lm-eval on every model and task of the profile; finished (model, task) pairs are read back, not re-run.

    With ``parallel.workers > 1`` (or Slurm) the models are evaluated side by side first (one per worker,
    one GPU each when there are GPUs); the loop then reads every result back, so the table is the same.
    """
    prof = stage.params
    lab_file = evaluate.write_problems_jsonl(splits.heldout, stage.path("lm_eval/heldout_problems.jsonl"))
    jobs = [eval_job(stage, row, lab_file) for row in entries.to_dict("records")]
    if len(jobs) > 1 and executor.spreads(prof):
        executor.for_profile(prof, stage.run.cache / "jobs").map(run_job, jobs)
    return [run_job(job) for job in track(jobs, "lm-eval models")]


def eval_job(stage: Stage, row: dict, lab_file) -> dict:
    """The ``evaluate.run_lm_eval`` arguments for one model, as plain picklable data (plus the thread count)."""
    prof = stage.params
    b = prof.benchmark
    device = _device(prof)
    slug = row["model"].replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
    return {"threads": prof.threads, "model_dir": row["model_dir"], "tasks": list(b.tasks),
            "data_dir": prof.data.resolved_data_dir(), "limit": b.limit, "max_gen_toks": b.max_gen_toks,
            "batch_size": b.batch_size, "apply_chat_template": b.apply_chat_template and bool(row["chat_template"]),
            "device": device, "output_dir": stage.path(f"lm_eval/{slug}"), "seed": prof.seed, "lab_file": lab_file,
            "model_name": row["model"], "dtype": _dtype(row["model_dir"], device), "backend": b.backend}


def run_job(job: dict) -> evaluate.EvalResult:
    """One model's lm-eval run (in this process or a worker), on the profile's thread count."""
    args = dict(job)
    torch.set_num_threads(args.pop("threads"))
    return evaluate.run_lm_eval(args.pop("model_dir"), args.pop("tasks"), **args)


def _device(prof) -> str:
    """The profile's device as lm-eval takes it (``auto`` resolved; ``cuda`` without a GPU is an error)."""
    return resolve_device(prof.device).type


def _dtype(model_dir: str, device: str) -> str:
    """float32 on the CPU (as before); on a GPU the dtype the model was saved in (a bf16 student stays bf16)."""
    if device == "cpu":
        return "float32"
    config = json.loads((Path(model_dir) / "config.json").read_text())
    saved = config.get("dtype") or config.get("torch_dtype") or "float32"
    return saved if saved in models.DTYPES else "float32"


OWN_CHECK_COLUMNS = ["model", "task", "n", "lm_eval_accuracy", "own_accuracy", "agree", "agreement", "same_settings",
                     "own_source"]


NOISE_FLOOR_COLUMNS = ["model", "task", "metric", "value", "stderr", "ci_lo", "ci_hi", "n", "truncation_rate",
                       "scored_seed", "seeds", "seed_sd"]


def noise_floor(tidy: pd.DataFrame, finals: pd.DataFrame, final_accuracy: pd.DataFrame) -> pd.DataFrame:
    """Each score with its 95% interval (``stats.with_score_ci``: the problems' part of the noise) and, for a
    policy's final student on the run's own held-out problems (``evaluate.FILE_TASKS``), the seeds' part:
    lm-eval scores the student of one seed (``scored_seed``), and stage 5's ``final_accuracy`` gives the SD
    of that policy's held-out accuracy over its ``seeds`` (``seed_sd``; NaN with one seed, for an
    undistilled student, a teacher and any other task, whose problems stage 5 did not score)."""
    scored = finals.merge(final_accuracy[["policy", "seeds", "seed_sd"]], on="policy", how="left", validate="many_to_one")
    by_model = final_names(scored)
    out = stats.with_score_ci(tidy)
    rows = [by_model.get(m) if t in evaluate.FILE_TASKS else None for m, t in zip(out["model"], out["task"])]
    out["scored_seed"] = pd.array([r["seed"] if r else None for r in rows], dtype="Int64")
    out["seeds"] = pd.array([r["seeds"] if r else None for r in rows], dtype="Int64")
    out["seed_sd"] = [float(r["seed_sd"]) if r else float("nan") for r in rows]
    return out[NOISE_FLOOR_COLUMNS]


def final_rows(tidy: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``tidy`` that score a stage-5 final student, with its ``student`` and ``policy`` (index kept)."""
    names = final_names(finals)
    scored = tidy[tidy["model"].isin(names)]
    return scored.assign(student=[names[m]["student"] for m in scored["model"]],
                         policy=[names[m]["policy"] for m in scored["model"]])


POLICY_MEANS_COLUMNS = ["student", "policy", "task", "metric", "seeds", "mean", "seed_sd", "problems_se", "se", "ci_lo",
                        "ci_hi"]


def policy_means(tidy: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """Each policy's score on each task and metric averaged over the seeds whose final students lm-eval scored
    (``dynamic.final_seeds: all``; policies with one scored seed are left out), with its 95% interval.

    Two parts of noise, added in quadrature on each side: the problems' part, the interval of the mean
    score on the ``n`` problems (``stats.score_interval``: Wilson for a share, so it stays in [0, 1] and is
    not empty at 0; ``problems_se`` is the root mean square of the seeds' lm-eval standard errors), which does
    not average out over seeds that answer the same problems; and the seeds' part, t x seed SD / sqrt(seeds), t
    the Student quantile at seeds - 1 df (4.30 for 3 seeds: ``stats.t_quantile``). ``se`` is
    sqrt(seed SD^2 / seeds + problems_se^2), for reference."""
    rows = []
    for (student, policy, task, metric), g in final_rows(tidy, finals).groupby(["student", "policy", "task", "metric"],
                                                                             sort=True):
        if len(g) < 2:
            continue
        mean, sd = float(g["value"].mean()), float(g["value"].std(ddof=1))
        problems_se = float(np.sqrt(np.mean(np.square(g["stderr"].astype(float)))))
        n = g["n"].min() if "n" in g else None
        lo, hi = stats.score_interval({"value": mean, "stderr": problems_se, "n": n})
        seed_half = stats.t_quantile(len(g) - 1) * sd / np.sqrt(len(g))
        lo, hi = mean - np.hypot(mean - lo, seed_half), mean + np.hypot(hi - mean, seed_half)
        if n is not None and not pd.isna(n) and g["value"].between(0, 1).all():  # a share of problems
            lo, hi = max(0.0, lo), min(1.0, hi)
        rows.append({"student": student, "policy": policy, "task": task, "metric": metric, "seeds": len(g),
                     "mean": mean, "seed_sd": sd, "problems_se": problems_se,
                     "se": float(np.sqrt(sd ** 2 / len(g) + problems_se ** 2)), "ci_lo": float(lo), "ci_hi": float(hi)})
    return pd.DataFrame(rows, columns=POLICY_MEANS_COLUMNS)


def figure_rows(tidy: pd.DataFrame, means: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """The rows stage 6's figure draws (each task's first metric), each with its 95% interval (``ci_lo``,
    ``ci_hi``): every model's score (``stats.with_score_ci``), except that a policy whose seeds were all
    scored (``policy_means``) is one row, its mean over them ("lab-s + random (mean of 3 seeds)", ``seeds``
    3) with both parts of its interval, in place of one bar per seed's student."""
    averaged = set(zip(means["student"], means["policy"], means["task"], means["metric"]))
    seeds = final_rows(tidy, finals)
    seed_rows = seeds.index[[key in averaged for key in zip(seeds["student"], seeds["policy"], seeds["task"],
                                                              seeds["metric"])]]
    kept = stats.with_score_ci(tidy.drop(index=seed_rows))
    mean_rows = means.assign(model=[f"{distilled_name(s, p)} (mean of {k} seeds)"
                                    for s, p, k in zip(means["student"], means["policy"], means["seeds"])],
                             value=means["mean"], stderr=means["se"])
    columns = ["model", "task", "metric", "value", "stderr", "ci_lo", "ci_hi", "seeds"]
    kept = kept.assign(seeds=pd.array([None] * len(kept), dtype="Int64"))
    mean_rows = mean_rows.assign(seeds=mean_rows["seeds"].astype("Int64"))
    rows = pd.concat([kept[columns], mean_rows[columns]], ignore_index=True)
    main = tidy.groupby("task", sort=False)["metric"].first()
    return rows[rows["metric"] == rows["task"].map(main)].reset_index(drop=True)


def own_evaluation_check(stage: Stage, entries: pd.DataFrame, results: list[evaluate.EvalResult],
                         splits: Splits) -> pd.DataFrame:
    """Does lm-eval score the run's held-out problems as the package did? For each model and each task over
    the run's own held-out file (``evaluate.FILE_TASKS``): lm-eval's verdict per problem beside the package's
    own greedy verdict for the same weights - stage 5's recorded ``final_outcomes`` for a policy's final
    student, ``generation.pass_rates`` (cached by weights) for an undistilled one - on the problems lm-eval
    scored. ``same_settings``: the same generation budget and prompt format, where the two should agree
    problem by problem; elsewhere a difference measures the settings, not the harness."""
    prof = stage.params
    outcomes = stage.read_table("05_dynamic_selection", "final_outcomes")
    finals = final_names(stage.read_table("05_dynamic_selection", "final_models"))
    specs = {s.name: s for s in prof.students}
    rows = []
    by_name = {e["model"]: e for e in entries.to_dict("records")}
    for res in results:
        entry = by_name[res.model]
        for task, tr in res.tasks.items():
            if task not in evaluate.FILE_TASKS or entry["kind"] == "teacher":
                continue
            lm = evaluate.sample_scores(tr.samples_file)
            if entry["kind"] == "distilled":
                final = finals[entry["model"]]
                student = final["student"]
                mine = outcomes[(outcomes["policy"] == final["policy"]) & (outcomes["seed"] == final["seed"])]
                own, source = dict(zip(mine["problem_id"], mine["correct"].astype(float))), f"stage 5, seed {final['seed']}"
            else:
                student = entry["model"].removesuffix(" (undistilled)")
                loaded = students.load_student(stage, specs[student], splits)
                rates = generation.pass_rates(loaded, splits.heldout, k=1, prof=prof, seed=stage.seed,
                                              cache_dir=stage.run.cache)
                own, source = rates.to_dict(), "greedy, package"
            ids = [i for i in lm if i in own]
            agree = sum(lm[i] == own[i] for i in ids)
            # the package prompts with the chat template iff the student has one; lm-eval iff asked to as well
            same = (prof.benchmark.max_gen_toks == prof.student_generation.max_new_tokens
                    and (prof.benchmark.apply_chat_template or not specs[student].chat_template))
            rows.append({"model": entry["model"], "task": task, "n": len(ids),
                         "lm_eval_accuracy": sum(lm[i] for i in ids) / len(ids) if ids else float("nan"),
                         "own_accuracy": sum(own[i] for i in ids) / len(ids) if ids else float("nan"),
                         "agree": agree, "agreement": agree / len(ids) if ids else float("nan"),
                         "same_settings": same, "own_source": source})
    return pd.DataFrame(rows, columns=OWN_CHECK_COLUMNS)
