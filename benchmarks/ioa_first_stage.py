"""Can any data pass IOA's first curriculum stage? One stage-5 phase from the start, several data choices.

    PYTHONPATH=src python benchmarks/ioa_first_stage.py --run-dir results/tiny [--profile tiny] \
        [--seeds 0,1,2] [--variants ioa,ioa-new,ioa~own,...] [--out ioa_first_stage.csv]

On the tiny profile IOA's first diagnosis makes {add} its first stage, and the mastery gate after the
first phase fails in every seed (docs/findings.md, stage 5). This script asks whether that is IOA's data or the
student: from stage 5's start (its student, ``dynamic.student``) it trains exactly one phase as
``dynamic_selection.run_policy`` does (phase 0's part of the one LR schedule, the phase's token budget,
the draws of seed s) on each of these choices, then measures the held-out accuracy per module and IOA's
P_S on its probe items, and applies IOA's gate to the stage's module:

* ``ioa``: IOA's first teaching with ``dynamic.ioa.first_teaching: pool``, the selected teacher's ``+adapted``
  set filtered to the module;
* ``ioa-new``: the same on new problems of the module (the selected teacher's pen, verified, adapted;
  IOA's Adapter synthesises its data, so this is the paper's choice and stage 5's default,
  ``first_teaching: new``; about one pass instead of ~20);
* ``teacher``: the selected teacher's traces (not adapted) filtered to the module;
* ``adapted-all``, ``teacher-all``: the same two sets over every module (``teacher-all`` is what the DMC
  policies chose for phase 1);
* ``gold-all``: the pool problems' reference solutions, the sentences of the student's own warm-up;
* ``rehearsal``: half IOA's first teaching, half the ``+adapted`` set over every module (the other
  modules rehearsed; not in the paper);
* ``remedial``: IOA's remediation as stage 5 writes it (new problems of the module and its prerequisites,
  ``--new-problems`` of them, the same for every seed), in the profile's ``dynamic.ioa.remedial_form`` or the one named
  after ``=`` (``remedial=one-step``, ``remedial=small-operands``, ``remedial=one-step-small``, ``remedial=as-data``);
* ``A>B`` (with ``--phases``): A in the first phase, B in every later one (``ioa-new>remedial``: a first
  teaching, then remedial rounds);
* ``ioa@1e-3``, ``ioa@3e-4``: IOA's first teaching at a lower peak learning rate (any variant takes ``@LR``);
* a ``~own`` suffix (``ioa~own``, ``ioa-new@1e-3~own``): the phase is a fine-tune of its own, warm-up and cosine
  decay to zero within it (``dynamic.ioa.own_schedule``, the paper's FineTune per stage), not phase 0's part of
  the run's one schedule, so the gate reads a student trained at a decayed rate.

Needs a run folder whose stages 01-02 are done (stage 5's inputs; the student comes from its cache).
Nothing is written to the run folder but cached start evaluations.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import pandas as pd

from syllabus import distillation, generation, select, stats, train
from syllabus.problems import warmup_modules
from syllabus.runs import open_stage, stable_seed
from syllabus.stages import dmc, dynamic_selection as ds, trace_curation
from syllabus.students import StudentModel, load_student

VARIANTS = ["ioa", "ioa-new", "teacher", "adapted-all", "teacher-all", "gold-all", "rehearsal", "ioa@1e-3",
            "ioa@3e-4"]


REMEDIAL_FORMS = ["one-step-small", "one-step", "small-operands", "as-data"]


def variant_pool(name: str, module: str, tr: dict, problems: dict, prof, splits, spec, adapted: str, exclude: set,
                 n_new: int, prerequisites: dict) -> tuple[select.Choice, dict, dict]:
    """The choice, the datasets and the problems one variant trains on."""
    plain = f"teacher={spec.name}"
    if name.split("=")[0] == "remedial":  # IOA's remediation as stage 5 writes it, n_new problems
        form = name.partition("=")[2] or prof.dynamic.ioa.remedial_form
        if form not in REMEDIAL_FORMS:
            raise SystemExit(f"unknown remedial form {form!r}; choose from {REMEDIAL_FORMS}")
        ioa = prof.dynamic.ioa.model_copy(update={"remedial_problems": n_new, "remedial_form": form})
        written = prof.model_copy(update={"dynamic": prof.dynamic.model_copy(update={"ioa": ioa})})
        targets = sorted({module, *prerequisites.get(module, ())}, key=lambda k: (k != module, k))
        rows, new = ds.remedial_data(written, targets, spec.name, ["ioa-first-stage", *targets], exclude, tr[adapted])
        return select.Choice({ds.REMEDIAL: 1.0}, name), {**tr, ds.REMEDIAL: rows}, {**problems, **new}
    if name == "ioa":
        return select.Choice({adapted: 1.0}, name, modules=(module,)), tr, problems
    if name == "teacher":
        return select.Choice({plain: 1.0}, name, modules=(module,)), tr, problems
    if name == "adapted-all":
        return select.Choice({adapted: 1.0}, name), tr, problems
    if name == "teacher-all":
        return select.Choice({plain: 1.0}, name), tr, problems
    if name == "rehearsal":
        stage_rows = tr[adapted][tr[adapted]["module"] == module].assign(dataset="stage")
        return select.Choice({"stage": 0.5, adapted: 0.5}, name), {**tr, "stage": stage_rows}, problems
    if name == "gold-all":
        ids = tr[plain]["problem_id"].drop_duplicates()
        rows = pd.DataFrame([{"dataset": "gold", "problem_id": i, "teacher": "gold", "text": problems[i].solution,
                              "sample": 0, "correct": True, "module": problems[i].module, "level": problems[i].level}
                             for i in ids])
        return select.Choice({"gold": 1.0}, name), {**tr, "gold": rows}, problems
    if name == "ioa-new":
        seed = stable_seed(prof.seed, "ioa-first-stage", module, bits=32, form="compact")
        new = ds.module_problems(prof, splits, module, n_new, seed, f"lab-new-{module}", exclude)
        rows = ds.adapted_teacher_rows(new, spec, seed, "new")
        return select.Choice({"new": 1.0}, name), {**tr, "new": rows}, {**problems, **{p.id: p for p in new}}
    raise SystemExit(f"unknown variant {name!r}; choose from {VARIANTS} (with @LR for another peak learning "
                     f"rate, ~own for a schedule of the phase's own)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a run folder with stages 01-02 done")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--module", default=None, help="the stage's module (default: IOA's first stage, if one module)")
    ap.add_argument("--new-problems", type=int, default=4000, help="new problems written for ioa-new")
    ap.add_argument("--phases", type=int, default=1,
                    help="train this many phases in a row on the same choice, each drawn as run_policy draws that "
                         "phase (fresh draws; the one optimizer and schedule carried on, or each phase a schedule "
                         "of its own with ~own), and measure after each: how much of stage 5's budget on the "
                         "stage's module alone would pass the gate")
    ap.add_argument("--out", default="ioa_first_stage.csv")
    args = ap.parse_args()

    stage = open_stage("05_dynamic_selection", args.profile, run_dir=args.run_dir)
    prof, splits = stage.params, stage.splits()
    datasets = trace_curation.datasets_from_table(stage.read_table("02_trace_curation", "candidates"))
    selected = stage.read_input_json("01_teacher_selection", "selected_teachers.json")["selected"][0]
    spec = next(t for t in prof.teachers if t.name == selected)
    student = load_student(stage, ds.stage_student(prof), splits)
    inputs, teacher_scores = ds.policy_inputs(stage, splits, datasets, selected)
    tr = dmc.slice_rows(inputs.datasets, prof, "training")
    adapted = ds.ioa_dataset(tr, selected)
    d, t = prof.dynamic, distillation.sft_training(student.spec, prof.training)
    n_examples, budget = ds.phase_budget(prof, student, inputs.problems, tr)
    if budget is None:
        raise SystemExit("ioa_first_stage.py trains a phase to its token budget; run it with dynamic.budget: tokens")
    exclude = {p.text for p in inputs.problems.values()} | {p.text for p in inputs.ioa.items}
    held_modules = pd.Series({p.id: p.module for p in splits.heldout})

    start_probe = generation.module_accuracy(student, inputs.ioa.items, prof=prof, seed=stage.seed,
                                             cache_dir=stage.run.cache)
    ioa = select.make_policy("ioa", **ds.policy_params(stage, "ioa", d.seeds[0], adapted))
    first = ioa.choose(0, select.SelectionState(
        datasets=sorted(tr), n_phases=d.phases, student_scores=start_probe.to_dict(), teacher_scores=teacher_scores,
        prerequisites=inputs.prerequisites, module_items=inputs.ioa.item_counts))
    module = args.module or (first.modules[0] if first.modules and len(first.modules) == 1 else None)
    if module is None:
        raise SystemExit(f"IOA's first stage is {first.modules}; name one module with --module")
    ceiling = ioa.plan["ceiling"]
    seen = set(warmup_modules(prof, student.spec))
    start = generation.pass_rates(student, splits.heldout, k=1, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)

    if not 1 <= args.phases <= d.phases:
        raise SystemExit(f"--phases must be between 1 and the profile's dynamic.phases ({d.phases}), got {args.phases}")

    def summary(name, lr, seed, phases, batch, held, probe, seconds):
        by_module = held.groupby(held_modules.reindex(held.index)).mean()
        gate = select.mastery_gate(probe.to_dict(), teacher_scores, inputs.ioa.item_counts, [module],
                                   tau_mastery=ioa.tau_mastery, ceiling=ceiling, confidence=ioa.gate_confidence,
                                   bound=ioa.gate_bound)
        others = [m for m in by_module.index if m != module]
        return {"variant": name, "lr": lr, "seed": seed, "phases": phases, "examples": len(batch),
                "problems": int(batch["problem_id"].nunique()),
                "passes": round(len(batch) / max(1, len(batch.drop_duplicates(["problem_id", "text"]))), 1),
                "heldout": float(held.mean()), f"heldout_{module}": float(by_module[module]),
                "heldout_other_seen": float(by_module[[m for m in others if m in seen]].mean()),
                "heldout_unseen": float(by_module[[m for m in others if m not in seen]].mean()),
                f"probe_{module}": float(probe[module]), "gate_target": gate["modules"][module]["target"],
                "gate_bound": gate["modules"][module]["bound"], "gate_passed": gate["passed"], "seconds": seconds}

    rows = [summary("start", None, None, 0, pd.DataFrame({"problem_id": [], "text": []}), start, start_probe, 0.0)]
    print(f"student {student.name}, first stage {{{module}}}, phase budget {budget:,.0f} tokens; gate target "
          f"{rows[0]['gate_target']:.2f}; start: held-out {rows[0]['heldout']:.3f}, {module} "
          f"{rows[0][f'heldout_{module}']:.2f}, probe {start_probe[module]:.2f}", flush=True)
    for variant in args.variants.split(","):
        own = variant.endswith("~own")
        name, _, lr_text = variant.removesuffix("~own").partition("@")
        lr = float(lr_text) if lr_text else t.learning_rate
        parts = [variant_pool(part, module, tr, inputs.problems, prof, splits, spec, adapted, exclude,
                              args.new_problems, inputs.prerequisites) for part in name.split(">")]
        for seed in [int(s) for s in args.seeds.split(",")]:
            current = StudentModel(student.spec, copy.deepcopy(student.model), student.tokenizer)
            optimizer_state = None
            for phase in range(args.phases):
                began = time.perf_counter()
                choice, pool, known = parts[min(phase, len(parts) - 1)]  # "a>b": a in phase 1, b after it
                rng = ds.phase_rng(prof, seed, phase)  # run_policy's draws for this phase
                batch, examples = ds.draw_to_token_budget(student, known, choice, pool, budget, n_examples, rng,
                                                          t.max_seq_len)
                with tempfile.TemporaryDirectory() as out_dir:
                    result = train.sft(current.model, current.tokenizer, examples, steps=None,
                                       cfg=t.model_copy(update={"learning_rate": lr}),
                                       seed=ds.phase_sft_seed(seed, phase), out_dir=out_dir, single_pass=True,
                                       optimizer_state=None if own else optimizer_state,
                                       schedule_span=None if own else ds.phase_span(phase, d.phases))
                optimizer_state = result.optimizer_state
                current.model.eval()
                held = generation.pass_rates(current, splits.heldout, k=1, prof=prof, seed=stage.seed)
                probe = generation.module_accuracy(current, inputs.ioa.items, prof=prof, seed=stage.seed)
                rows.append(summary(variant, lr, seed, phase + 1, batch, held, probe, time.perf_counter() - began))
                r = rows[-1]
                print(f"{variant:<14} seed {seed} phase {phase + 1}: held-out {r['heldout']:.3f}, {module} "
                      f"{r[f'heldout_{module}']:.2f} (probe {r[f'probe_{module}']:.2f}, gate "
                      f"{'passed' if r['gate_passed'] else 'failed'}), other seen {r['heldout_other_seen']:.2f}, "
                      f"unseen {r['heldout_unseen']:.2f}; {r['problems']} problems x {r['passes']} passes, "
                      f"{r['seconds']:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    runs = table[table["variant"] != "start"]
    agg = runs.groupby(["variant", "phases"], sort=False).agg(
        seeds=("seed", "size"), passes=("passes", "mean"), heldout=("heldout", "mean"),
        module=(f"heldout_{module}", "mean"), module_max=(f"heldout_{module}", "max"),
        other_seen=("heldout_other_seen", "mean"), unseen=("heldout_unseen", "mean"),
        probe=(f"probe_{module}", "mean"), gate_passed=("gate_passed", "sum"))
    n_module = int((held_modules == module).sum())
    lo, hi = stats.wilson(rows[0][f"heldout_{module}"] * n_module, n_module)
    print(f"\nmeans over seeds ({module}: {n_module} held-out problems, start {rows[0][f'heldout_{module}']:.2f} "
          f"[{lo:.2f}, {hi:.2f}]; gate target {rows[0]['gate_target']:.2f})")
    print(agg.round(3).to_string())


if __name__ == "__main__":
    main()
