"""Stage-2 funnel on real GSM8K data: counts, throughput, and the indexed near-duplicate search
against a naive pairwise baseline (same answers, side by side).

    PYTHONPATH=src python benchmarks/bench_curate.py [--data-dir ../shared/data] [--baseline-n 1500]

Traces: the four GPT-3 variants of ``gsm8k/example_model_solutions.jsonl`` (1,319 test problems x 4).
Verifier: a small numeric check of the closing ``A: N`` / ``#### N`` line (syllabus.verify replaces it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from itertools import combinations
from pathlib import Path

from syllabus import curate as C
from syllabus import overlap as O
from syllabus.params import Curation
from syllabus.records import Problem, Trace

TEACHERS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def numeric_verify(problem: Problem, response: str) -> bool:
    found = re.findall(r"(?:####|^A:)\s*\$?(-?[\d,]*\.?\d+)", response, re.MULTILINE)
    try:
        return bool(found) and float(found[-1].replace(",", "")) == float(problem.answer.replace(",", ""))
    except ValueError:
        return False


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def timed(fn, *args, **kw):
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


def naive_near_duplicates(problems: list[Problem], n: int, threshold: float) -> set[str]:
    """Baseline: every pair's Jaccard, keep-first by id (what the index must reproduce)."""
    ordered = sorted(problems, key=lambda p: p.id)
    sh = {p.id: O.shingles(p.text, n) for p in ordered}
    hashes = {p.id: O.text_hash(p.text) for p in ordered}
    dropped: set[str] = set()
    for a, b in combinations(ordered, 2):
        if a.id in dropped or b.id in dropped:
            continue
        if hashes[a.id] == hashes[b.id] or O.jaccard(sh[a.id], sh[b.id]) >= threshold:
            dropped.add(b.id)
    return dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("SYLLABUS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--baseline-n", type=int, default=1500, help="problems for the naive pairwise baseline")
    args = ap.parse_args()
    d = args.data_dir

    rows = read_jsonl(d / "gsm8k" / "example_model_solutions.jsonl")
    problems = [Problem(id=f"gsm8k-test-{i}", task="gsm8k", source="gsm8k", text=r["question"],
                        answer=r["ground_truth"].split("A:")[-1].strip()) for i, r in enumerate(rows)]
    traces = [Trace(problem_id=p.id, teacher=t, text=r[t]["solution"], sample=0)
              for p, r in zip(problems, rows) for t in TEACHERS]
    train = read_jsonl(d / "gsm8k" / "train.jsonl")
    train_problems = [Problem(id=f"gsm8k-train-{i}", task="gsm8k", source="gsm8k", text=r["question"],
                              answer=r["answer"].split("####")[-1].strip()) for i, r in enumerate(train)]
    math500 = [r["problem"] for r in read_jsonl(d / "math500" / "test.jsonl")]
    gsm_test = [p.text for p in problems]

    print(f"data: {d}  ({len(problems)} problems, {len(traces)} traces, {len(train_problems)} train problems)")
    label_agree = sum(numeric_verify(p, r[t]["solution"]) == r[t]["is_correct"]
                      for p, r in zip(problems, rows) for t in TEACHERS)
    print(f"numeric check vs is_correct labels: {label_agree}/{len(traces)} agree")

    for per_teacher in (True, False):
        cfg = Curation(max_trace_tokens=400, keep_per_problem=2, adapter=True, per_teacher=per_teacher)
        result, secs = timed(C.run_funnel, problems, traces, cfg, verify=numeric_verify,
                             eval_sets={"math500": math500}, pass_rates=None)
        print(f"\nfull funnel (4 teachers x 1 sample, P=2, eval set math500, per_teacher={per_teacher}): {secs:.2f} s")
        print(result.funnel.wide().to_string(index=False))
    print(result.funnel.reasons().to_string(index=False))

    _, secs = timed(C.filter_format, traces, problems, max_tokens=400)
    print(f"\nformat filter: {len(traces) / secs:,.0f} traces/s")
    kept, secs = timed(C.filter_correct, traces, problems, numeric_verify)
    print(f"correctness (numeric check): {len(traces) / secs:,.0f} traces/s")
    _, secs = timed(C.select_diverse, traces, keep_per_problem=2)
    print(f"diversity (rapidfuzz cdist, 4 -> 2 per problem): {len(traces) / secs:,.0f} traces/s")
    (adapted, drops), secs = timed(C.adapt_traces, kept[0], problems, numeric_verify)
    print(f"adapter (rules) on {len(kept[0])} verified traces: {len(adapted)} re-verified, {len(drops)} dropped, "
          f"{len(kept[0]) / secs:,.0f} traces/s")
    gold = [Trace(problem_id=p.id, teacher="gold", text=r["answer"]) for p, r in zip(train_problems, train)]
    (adapted, drops), secs = timed(C.adapt_traces, gold, train_problems, numeric_verify)
    print(f"adapter (rules) on {len(gold)} GSM8K train gold solutions: {len(adapted)} re-verified "
          f"({len(adapted) / len(gold):.2%}), {len(gold) / secs:,.0f} traces/s")

    found, secs = timed(O.find_contamination, train_problems, {"gsm8k_test": gsm_test, "math500": math500})
    print(f"\ndecontamination, 13-gram: {len(train_problems)} train problems vs gsm8k test + math500: "
          f"{len(found)} matches, {secs:.2f} s ({len(train_problems) / secs:,.0f} problems/s)")
    for c in found[:5]:
        print(f"  {c.problem_id} ~ {c.eval_set}:{c.eval_id} ({c.match}) '{c.text}'")
    found, secs = timed(O.find_contamination, problems, {"gsm8k_test": gsm_test})
    print(f"sanity: gsm8k test vs itself: {len({c.problem_id for c in found})}/{len(problems)} flagged")

    (kept_p, dropped_p), secs = timed(C.dedup_problems, train_problems, ngram=5, threshold=0.8)
    print(f"\nproblem dedup (5-gram Jaccard >= 0.8), {len(train_problems)} train problems: "
          f"{len(dropped_p)} dropped, {secs:.2f} s")
    for x in dropped_p[:3]:
        print(f"  {x.item}: {x.reason} ({x.detail})")
    sub = train_problems[:args.baseline_n]
    (_, indexed_drops), t_index = timed(C.dedup_problems, sub, ngram=5, threshold=0.8)
    naive, t_naive = timed(naive_near_duplicates, sub, 5, 0.8)
    same = {x.item for x in indexed_drops} == naive
    print(f"baseline on {len(sub)} problems: naive pairwise {t_naive:.2f} s, indexed {t_index:.3f} s, "
          f"speed-up x{t_naive / t_index:.0f}, same drops: {same}")


if __name__ == "__main__":
    main()
