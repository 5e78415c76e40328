"""The sweep behind the tiny profile's sizes: how much does SFT on each teacher's traces teach a lab student?

    PYTHONPATH=src python benchmarks/calibrate_lab.py [--profile tiny] [--students lab-s] \
        [--styles gold,prose,equations,selfcheck] [--lrs 3e-4,1e-3,3e-3] [--steps 150,300 | --tokens 4e5,6e5] \
        [--batch-sizes 8,16] [--seeds 0] [--eval heldout|fresh] [--out calibration.csv]
    PYTHONPATH=src python benchmarks/calibrate_lab.py --candidates results/tiny [--datasets 'teacher=*,all'] ...

For each student of the profile (warm-started exactly as the pipeline does it, cached under
``--cache``): its greedy accuracy on the profile's held-out problems (``--eval fresh``: on as many fresh
lab problems apart from every split, to choose a recipe on problems the run never reports on), overall
and per module; then,
for every (trace style, learning rate, batch size, budget, seed), a copy of it fine-tuned on that style's traces of
the pool problems (``gold``: the reference solutions; a lab teacher's style at its profile error rate
otherwise, 5% when the profile has no such teacher) and evaluated again. With ``--candidates RUN_DIR`` the traces are instead the candidate datasets that
stage 2 of that run curated (``--datasets``: glob patterns, default the profile's ``correlation.datasets``),
each dataset's training slice exactly as stage 4 trains on it, so that a recipe is calibrated on the data
the study uses (a calibration on one style's traces of every pool problem did not carry over to them:
benchmarks/README.md, "Batch size"). A budget is a number of
steps (``--steps``) or of training tokens (``--tokens``, turned into steps as stages 1 and 4 do it:
``distillation.budget_steps``, tokens / (batch x the examples' mean length)). One row per cell, printed as
it finishes and written to ``--out``: accuracy, gain, tokens trained, per-module accuracy, seconds (column
``style``: the trace style, or the candidate dataset with ``--candidates``).

It answers the calibration questions of the tiny study: is the student's skill partial (some modules
learned, others not), does SFT teach it the rest, at which learning rate and budget, and do teacher
styles differ. The measured sweep and the sizes chosen from it are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from syllabus import distillation, lab, models, params as P, prompts, students, train
from syllabus.problems import pretrain_texts, problem_splits, tokenizer_texts
from syllabus.stages import dmc, trace_curation
from syllabus.verify import verify


def accuracy_by_module(student: students.StudentModel, problems, prof: P.Profile) -> dict[str, float]:
    outs = models.generate(student.model, student.tokenizer, [student.prompt(p) for p in problems],
                           max_new_tokens=prof.student_generation.max_new_tokens,
                           batch_size=prof.student_generation.batch_size)
    ok = pd.Series([float(verify(p, g[0].text)) for p, g in zip(problems, outs)])
    modules = pd.Series([p.module for p in problems])
    return {"accuracy": float(ok.mean()), **{f"acc_{m}": float(v) for m, v in ok.groupby(modules).mean().items()}}


def fresh_problems(prof: P.Profile, splits) -> list:
    """As many lab problems as the held-out split, drawn like it but from another seed and sharing no text
    with any split: a calibration set the run never trains, scores or reports on."""
    if prof.data.task != "lab":
        raise SystemExit(f"--eval fresh draws lab problems; profile {prof.name!r} has task {prof.data.task!r}")
    L = prof.data.lab
    taken = {p.text for p in splits.pool + splits.probe + splits.heldout}
    return lab.generate_problems(len(splits.heldout), seed=prof.seed + 7919, min_steps=L.min_steps,
                                 max_steps=L.max_steps, max_operand=L.max_operand, max_value=L.max_value,
                                 modules=L.modules, id_prefix="lab-calibration", exclude=taken)


def style_examples(student: students.StudentModel, pool, style: str, prof: P.Profile) -> list[tuple[str, str]]:
    if style == "gold":
        return [(student.prompt(p), student.target(p.solution)) for p in pool]
    rate = next((t.error_rate for t in prof.teachers if t.backend == "lab" and t.style == style), 0.05)
    rng = random.Random(0)
    return [(student.prompt(p), student.target(lab.write_trace(p, style, error_rate=rate, rng=rng))) for p in pool]


def candidate_examples(run_dir: Path, prof: P.Profile, patterns: list[str] | None, splits
                       ) -> dict[str, list]:
    """Stage 2's candidate datasets of a run (those matching ``patterns``), each its training slice as stage 4
    trains on it: {name: traces}. The run must have been made with this profile's splits."""
    path = run_dir / "02_trace_curation" / "tables" / "candidates.parquet"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --candidates needs a run folder whose stage 2 has run "
                         f"(syllabus run --profile {prof.name} --run-dir {run_dir} --stages 01,02)")
    table = pd.read_parquet(path)
    missing = sorted(set(table["problem_id"]) - {p.id for p in splits.pool})
    if missing:
        raise SystemExit(f"{path}: {len(missing)} candidate problem(s) (e.g. {missing[0]!r}) are not in profile "
                         f"{prof.name!r}'s pool; pass the --profile (and seed) the run was made with")
    datasets = trace_curation.matching_datasets(trace_curation.datasets_from_table(table), patterns, "--datasets")
    return {name: dmc.traces_of(rows) for name, rows in dmc.training_rows(datasets, prof).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--students", default=None, help="comma-separated student names (default: all of the profile)")
    ap.add_argument("--styles", default="gold,prose,equations,selfcheck")
    ap.add_argument("--candidates", type=Path, default=None,
                    help="a run folder: train on its stage-2 candidate datasets instead of --styles")
    ap.add_argument("--datasets", default=None,
                    help="with --candidates: comma-separated globs of dataset names (default: correlation.datasets)")
    ap.add_argument("--lrs", default="3e-3")
    ap.add_argument("--steps", default="300")
    ap.add_argument("--tokens", default=None, help="comma-separated token budgets (e.g. 4e5,6e5); replaces --steps")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default: the profile's)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--cache", default=None, help="where warm-started students are cached (default: the "
                    "--candidates run's cache, whose students are the run's own, else /tmp/syllabus-calibration)")
    ap.add_argument("--out", default="calibration.csv")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's)")
    ap.add_argument("--eval", choices=("heldout", "fresh"), default="heldout",
                    help="evaluate on the profile's held-out problems, or on as many fresh lab problems drawn "
                         "apart from every split (to choose a recipe on problems the run never reports on)")
    a = ap.parse_args()
    prof = P.load_profile(a.profile)
    threads = a.threads or prof.threads
    torch.set_num_threads(threads)
    splits = problem_splits(prof)
    evaluation = splits.heldout if a.eval == "heldout" else fresh_problems(prof, splits)
    batch_sizes = [int(x) for x in a.batch_sizes.split(",")] if a.batch_sizes else [prof.training.batch_size]
    budgets = [float(x) for x in (a.tokens or a.steps).split(",")]
    wanted = a.students.split(",") if a.students else [s.name for s in prof.students]
    candidates = None
    if a.candidates:
        patterns = a.datasets.split(",") if a.datasets else prof.correlation.datasets
        candidates = candidate_examples(a.candidates, prof, patterns, splits)
    sources = list(candidates) if candidates else a.styles.split(",")
    by_id = {p.id: p for p in splits.pool}
    cache = a.cache or (str(a.candidates / "cache") if a.candidates else "/tmp/syllabus-calibration")
    rows = []
    for spec in [s for s in prof.students if s.name in wanted]:
        pre = pretrain_texts(prof, spec, splits.probe + splits.heldout)
        start = time.perf_counter()
        model, tok = models.load_student(spec, cache_dir=cache, training=prof.training, pretrain_texts=pre,
                                         vocab_texts=tokenizer_texts(prof, pre), threads=threads,
                                         seed=prof.seed)
        student = students.StudentModel(spec, model.eval(), tok)
        base = accuracy_by_module(student, evaluation, prof)
        print(f"{spec.name}: warm-started ({time.perf_counter() - start:.0f} s), held-out "
              f"{base['accuracy']:.3f}  " + " ".join(f"{k[4:]} {v:.2f}" for k, v in base.items() if k != "accuracy"),
              flush=True)
        rows.append({"student": spec.name, "style": "(none)", "lr": 0.0, "batch": 0, "steps": 0, "seed": -1,
                     "tokens": 0, "seconds": 0.0, **base, "gain": 0.0})
        for style in sources:
            examples = (distillation.sft_examples(student, by_id, candidates[style]) if candidates
                        else style_examples(student, splits.pool, style, prof))
            for lr, batch, budget in itertools.product((float(x) for x in a.lrs.split(",")), batch_sizes, budgets):
                cfg = prof.training.model_copy(update={"learning_rate": lr, "batch_size": batch})
                steps = (distillation.budget_steps(student, examples, cfg, tokens=int(budget), steps=0)
                         if a.tokens else int(budget))
                for seed in (int(x) for x in a.seeds.split(",")):
                    trained = copy.deepcopy(student.model)
                    start = time.perf_counter()
                    result = train.sft(trained, tok, examples, steps=steps, cfg=cfg, seed=seed)
                    after = accuracy_by_module(students.StudentModel(spec, trained.eval(), tok), evaluation,
                                               prof)
                    row = {"student": spec.name, "style": style, "lr": lr, "batch": batch, "steps": steps,
                           "seed": seed, "tokens": result.tokens_seen, "seconds": round(time.perf_counter() - start, 1),
                           **after, "gain": after["accuracy"] - base["accuracy"]}
                    rows.append(row)
                    print(f"  {style:>26} lr {lr:g} batch {batch} steps {steps:>4} seed {seed}: "
                          f"{after['accuracy']:.3f} "
                          f"(gain {row['gain']:+.3f}, {result.tokens_seen:,} tokens, {row['seconds']} s)",
                          flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(a.out, index=False)
    cells = table[table["steps"] > 0]
    if len(cells):
        summary = cells.groupby(["student", "style", "lr", "batch", "steps"])["gain"].agg(["mean", "std", "count"])
        summary["se"] = summary["std"] / np.sqrt(summary["count"])
        print("\nmean gain per setting:\n" + summary.round(3).to_string())
    print(f"\nwrote {a.out} ({len(table)} rows); evaluated on {len(evaluation)} {a.eval} problems, "
          f"binomial SE of one accuracy near 0.6: {np.sqrt(0.24 / len(evaluation)):.3f}")


if __name__ == "__main__":
    main()
