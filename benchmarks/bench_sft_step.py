"""One SFT step on the tiny profile's lab students: the present step vs one padded batch, side by side.

    PYTHONPATH=src python benchmarks/bench_sft_step.py [--steps 40] [--repeats 3] [--overheads 0,48,128]

The data are the tiny profile's kind: lab problems (operands <= 10, values <= 50) with the
teachers' traces (``--styles``: equations, prose and selfcheck mixed in every batch, like the
``all`` dataset, or one style, like ``teacher=prose``), batches of 16. Both paths train a copy of
the same model on the same batches:

* baseline: the whole batch padded to its longest example, logits at every position (the step
  before 2026-12-04);
* present: ``train.padding_groups`` (the batch sorted by length and cut where padding plus a
  per-pass overhead costs least) and ``train.target_loss`` (the LM head on target positions only).

Both compute the same gradient (the loss is summed over the step's target tokens), so the table
also prints the largest difference between the two paths' weights after the steps. With
``--overheads`` the present path runs once per per-pass overhead (in tokens), to choose
``train.PASS_OVERHEAD_TOKENS``.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

from syllabus import lab, models, params as P, train
from syllabus.prompts import question_prompt

STUDENTS = {"lab-s": P.LabArch(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
            "lab-m": P.LabArch(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=384)}


def lab_pairs(n: int, styles: tuple[str, ...], seed: int = 0) -> list[tuple[str, str]]:
    problems = lab.generate_problems(n, seed=seed, max_operand=10, max_value=50, min_steps=1, max_steps=2)
    rng = random.Random(seed)
    return [(question_prompt(p.text), lab.write_trace(p, styles[i % len(styles)], error_rate=0.05, rng=rng))
            for i, p in enumerate(problems)]


def baseline_loss(model, batch, n_target):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), shifted.reshape(-1),
                                             ignore_index=-100, reduction="sum") / n_target


def train_steps(model, data, batches, pad_id, overhead: int | None) -> float:
    """Run the steps; ``overhead`` None is the baseline. Returns the wall time."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    start = time.perf_counter()
    for chosen in batches:
        items = [data[i] for i in chosen]
        n_target = sum(sum(label != -100 for label in lab_[1:]) for _, lab_ in items)
        if overhead is None:
            baseline_loss(model, train.collate(items, pad_id), n_target).backward()
        else:
            for group in train.padding_groups([len(ids) for ids, _ in items], overhead):
                train.target_loss(model, train.collate([items[g] for g in group], pad_id), n_target).backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--styles", default="equations,prose,selfcheck",
                    help="teacher styles, mixed in every batch (one style: a single-teacher dataset)")
    ap.add_argument("--overheads", default=str(train.PASS_OVERHEAD_TOKENS),
                    help="comma-separated per-pass overheads (tokens) for the present path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    styles = tuple(args.styles.split(","))
    pairs = lab_pairs(args.steps * args.batch, styles)
    overheads = [int(x) for x in args.overheads.split(",")]
    print(f"{args.steps} steps of {args.batch} lab examples ({' / '.join(styles)} traces), "
          f"threads {args.threads}, {args.repeats} repeats alternating; median seconds")
    print(f"{'student':<8} {'path':<26} {'s':>7} {'ratio':>7} {'passes/step':>12} {'max |dw|':>10}")
    for name, arch in STUDENTS.items():
        tok = models.lab_tokenizer([p + t for p, t in pairs], model_max_length=arch.max_position_embeddings)
        base = models.build_lab_model(arch, tok, seed=0)
        data = train.tokenize_examples(tok, pairs, 160, "target")
        batches = [list(range(s * args.batch, (s + 1) * args.batch)) for s in range(args.steps)]
        paths = {"one padded batch": None, **{f"groups, overhead {o}": o for o in overheads}}
        times: dict[str, list[float]] = {k: [] for k in paths}
        weights = {}
        for _ in range(args.repeats):
            for label, overhead in paths.items():
                model = copy.deepcopy(base)
                times[label].append(train_steps(model, data, batches, tok.pad_token_id, overhead))
                weights[label] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        ref = statistics.median(times["one padded batch"])
        for label, overhead in paths.items():
            med = statistics.median(times[label])
            passes = (1.0 if overhead is None else statistics.mean(
                len(train.padding_groups([len(data[i][0]) for i in b], overhead)) for b in batches))
            diff = float((weights[label] - weights["one padded batch"]).abs().max())
            print(f"{name:<8} {label:<26} {med:>7.2f} {ref / med:>6.2f}x {passes:>12.1f} {diff:>10.1e}")


if __name__ == "__main__":
    main()
