"""Stage 6 composed: benchmark the undistilled students, each policy's final student and local-model
teachers with lm-evaluation-harness (``syllabus.evaluate``), into one tidy table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import evaluate, models, workflow
from .progress import track
from .runs import Stage


def models_to_evaluate(stage: Stage, splits: workflow.Splits, finals: pd.DataFrame) -> pd.DataFrame:
    """One row per model: name, kind (student / distilled / teacher) and a loadable model directory."""
    prof = stage.params
    rows = []
    for spec in prof.students:
        student = workflow.load_student(stage, spec, splits)
        target = stage.run.cache / "final_models" / f"{spec.name}-undistilled"
        if not (target / "config.json").is_file():
            models.save_model(student.model, student.tokenizer, target, info={"student": spec.name, "policy": None})
        rows.append({"model": f"{spec.name} (undistilled)", "kind": "student", "model_dir": str(target),
                     "chat_template": spec.chat_template})
    chat = {s.name: s.chat_template for s in prof.students}
    for r in finals.to_dict("records"):
        rows.append({"model": f"{r['student']} + {r['policy']}", "kind": "distilled",
                     "model_dir": str(stage.run.root / r["model_dir"]),  # stored relative to the run folder
                     "chat_template": chat.get(r["student"], False)})
    for t in prof.teachers:
        if t.backend == "hf" and t.model and Path(t.model).is_dir():
            rows.append({"model": f"teacher {t.name}", "kind": "teacher", "model_dir": t.model, "chat_template": False})
    return pd.DataFrame(rows)


def run_all(stage: Stage, entries: pd.DataFrame, splits: workflow.Splits) -> list[evaluate.EvalResult]:
    """lm-eval on every model and task of the profile; finished (model, task) pairs are read back, not re-run."""
    prof = stage.params
    b = prof.benchmark
    lab_file = evaluate.write_problems_jsonl(splits.heldout, stage.path("lm_eval/heldout_problems.jsonl"))
    results = []
    for row in track(entries.to_dict("records"), "lm-eval models"):
        slug = row["model"].replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
        results.append(evaluate.run_lm_eval(
            row["model_dir"], b.tasks, data_dir=prof.data.resolved_data_dir(), limit=b.limit,
            max_gen_toks=b.max_gen_toks, batch_size=b.batch_size,
            apply_chat_template=b.apply_chat_template and bool(row["chat_template"]), device=_device(prof),
            output_dir=stage.path(f"lm_eval/{slug}"), seed=prof.seed, lab_file=lab_file, model_name=row["model"]))
    return results


def _device(prof) -> str:
    if prof.device != "auto":
        return prof.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
