"""Stage 6 composed: benchmark the undistilled students, each policy's final student and local-model
teachers with lm-evaluation-harness (``syllabus.evaluate``), into one tidy table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from .. import evaluate, executor, generation, models, stats, students
from ..devices import resolve_device
from ..progress import track
from ..records import Splits
from ..runs import Stage


def distilled_name(student: str, policy: str) -> str:
    """A policy's final student's model name in stage 6's tables."""
    return f"{student} + {policy}"


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
    for r in finals.to_dict("records"):
        rows.append({"model": distilled_name(r["student"], r["policy"]), "kind": "distilled",
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
    by_model = {distilled_name(r["student"], r["policy"]): r for r in scored.to_dict("records")}
    out = stats.with_score_ci(tidy)
    rows = [by_model.get(m) if t in evaluate.FILE_TASKS else None for m, t in zip(out["model"], out["task"])]
    out["scored_seed"] = pd.array([r["seed"] if r else None for r in rows], dtype="Int64")
    out["seeds"] = pd.array([r["seeds"] if r else None for r in rows], dtype="Int64")
    out["seed_sd"] = [float(r["seed_sd"]) if r else float("nan") for r in rows]
    return out[NOISE_FLOOR_COLUMNS]


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
    finals = {distilled_name(r["student"], r["policy"]): r
              for r in stage.read_table("05_dynamic_selection", "final_models").to_dict("records")}
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
