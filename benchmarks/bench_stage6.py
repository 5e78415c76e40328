"""Stage 6's per-model cost: ``syllabus.evaluate.run_lm_eval`` now, against the path before it, side by side.

    PYTHONPATH=src python benchmarks/bench_stage6.py [--models 4] [--problems 10] [--max-gen-toks 64] [--threads 1]

Like stage 6 of the ci profile: several lab-sized models (the ci profile's first lab student, random
weights, each saved to its own directory) benchmarked on ``syllabus_lab``. The previous path built
lm-eval's whole task index (thousands of YAMLs) for every model and task; the present one reads only
the shipped syllabus tasks (lm-eval's own only when one of them is asked for), builds that index once
per process and runs all tasks of a model in one evaluation. The "before" rows rebuild the full index
for every model, everything else equal. Prints seconds per model and checks both give the same
scores and responses.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from syllabus import evaluate, lab, models, params
from syllabus.problems import pretrain_texts, tokenizer_texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--problems", type=int, default=10)
    ap.add_argument("--max-gen-toks", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lm_eval.tasks import TaskManager

    prof = params.load_profile("ci")
    spec = next(s for s in prof.students if s.source == "lab")
    pre = pretrain_texts(prof, spec)
    tok = models.lab_tokenizer(tokenizer_texts(prof, pre))
    cfg = prof.data.lab
    problems = lab.generate_problems(args.problems, seed=7, modules=cfg.modules, min_steps=cfg.min_steps,
                                     max_steps=cfg.max_steps, max_operand=cfg.max_operand)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lab_file = evaluate.write_problems_jsonl(problems, tmp / "lab.jsonl")
        dirs = [models.save_model(models.build_lab_model(spec.arch, tok, seed=i), tok, tmp / f"model-{i}")
                for i in range(args.models)]
        kw = dict(data_dir=None, limit=None, max_gen_toks=args.max_gen_toks, batch_size=16, apply_chat_template=False,
                  seed=0, lab_file=lab_file)
        present = evaluate.task_manager

        def before(metadata, tasks):  # the previous path: the whole index, built again for every call
            return TaskManager(include_path=str(evaluate.TASKS_DIR), metadata=metadata)

        evaluate.run_lm_eval(dirs[0], ["syllabus_lab"], output_dir=tmp / "warm-up", **kw)  # imports, first load
        timings, responses = {}, {}
        for name, manager in (("before", before), ("now", present)):
            evaluate.task_manager = manager
            start = time.perf_counter()
            results = [evaluate.run_lm_eval(d, ["syllabus_lab"], output_dir=tmp / name / d.name, **kw) for d in dirs]
            timings[name] = (time.perf_counter() - start) / len(dirs)
            responses[name] = [(r.tasks["syllabus_lab"].metrics, [json.loads(line)["resps"] for line in
                                open(r.tasks["syllabus_lab"].samples_file)]) for r in results]
        evaluate.task_manager = present
    print(f"{args.models} lab models ({models.count_parameters(models.build_lab_model(spec.arch, tok, 0)):,} params), "
          f"syllabus_lab on {args.problems} problems, max_gen_toks {args.max_gen_toks}, {args.threads} thread(s)")
    print(f"before: {timings['before']:.1f} s per model; now: {timings['now']:.1f} s per model; "
          f"{timings['before'] / timings['now']:.2f}x; same scores and responses: {responses['before'] == responses['now']}")


if __name__ == "__main__":
    main()
