"""Write docs/verifier-report.md: the verifier's agreement with the real data, every exception listed.

    SYLLABUS_DATA_DIR=../shared/data python benchmarks/verifier_report.py [--out docs/verifier-report.md]

The same checks are tests (tests/test_verify.py); this script keeps their lists in a readable file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from syllabus.data import load_model_solutions, load_problems
from syllabus.runs import atomic_write_text
from syllabus.verify import _is_plain_number, extract_answer, is_correct, verify

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "verifier-report.md"))
    out = Path(ap.parse_args().out)

    lines = ["# Verifier report", "",
             "Written by `benchmarks/verifier_report.py` from the files in the data directory; the same checks run in",
             "`tests/test_verify.py`. Every exception and disagreement is listed here.", ""]

    lines += ["## GSM8K gold solutions", "", "| split | solutions | verify against their own answer | exceptions |",
              "| --- | --- | --- | --- |"]
    for split in ("train", "test"):
        problems = load_problems("gsm8k", split)
        bad = [p.id for p in problems if not verify(p, p.solution)]
        lines.append(f"| {split} | {len(problems)} | {len(problems) - len(bad)} | {', '.join(bad) or 'none'} |")

    math500 = load_problems("math500")
    exceptions = [p for p in math500 if not verify(p, p.solution)]
    fast = sum(_is_plain_number(p.answer) and _is_plain_number(extract_answer("math", p.solution) or "x")
               for p in math500)
    pairs = [(a, b) for a, b in zip(math500, math500[1:]) if a.answer != b.answer]
    accepted = [(a.id, b.id, a.answer, b.answer) for a, b in pairs if is_correct("math", a.solution, b.answer)]
    lines += ["", "## MATH-500 reference solutions", "",
              f"{len(math500) - len(exceptions)} of {len(math500)} reference solutions verify against their `answer` "
              f"field ({100 * (len(math500) - len(exceptions)) / len(math500):.1f}%; target 99.5%). "
              f"{fast} verdicts took the exact plain-number path, the rest math-verify (gold first).", ""]
    if exceptions:
        lines += ["| id | answer | extracted from the solution |", "| --- | --- | --- |"]
        lines += [f"| {p.id} | `{p.answer}` | `{extract_answer('math', p.solution)}` |" for p in exceptions]
    else:
        lines.append("Exceptions: none.")
    lines += ["",
              "History: the first version wrapped gold answers containing `$` as they were, so the three "
              "currency answers `\\$32,\\!348`, `\\$18.90` and `\\$36` failed to parse and did not verify; gold "
              "answers are now always parsed as `\\boxed{<answer>}`, which fixed all three.", "",
              f"Negative control: each solution against the next problem's (different) answer: "
              f"{len(accepted)} of {len(pairs)} accepted."]
    if accepted:
        lines += ["", "| solution of | answer of | its answer | other answer |", "| --- | --- | --- | --- |"]
        lines += [f"| {a} | {b} | `{x}` | `{y}` |" for a, b, x, y in accepted]
        lines.append("math-verify judges these pairs equivalent (for example it reads an equation `x=5` by its "
                     "right-hand side when the gold is a bare value).")

    rows = load_model_solutions()
    dis = [r for r in rows if is_correct("gsm8k", r["solution"], r["gold"]) != r["is_correct"]]
    lines += ["", "## GSM8K correctness labels (example_model_solutions.jsonl, four GPT-3 variants)", "",
              f"The verifier agrees with {len(rows) - len(dis)} of {len(rows)} labels "
              f"({100 * (len(rows) - len(dis)) / len(rows):.2f}%; target 99%); "
              f"{sum(r['is_correct'] for r in rows)} are labelled correct.", ""]
    if dis:
        lines += ["| problem | model | label | gold | extracted |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['problem_id']} | {r['model']} | {r['is_correct']} | {r['gold']} | "
                  f"{extract_answer('gsm8k', r['solution'])} |" for r in dis]
    else:
        lines.append("Disagreements: none. The solutions end with `A: <number>`, which the verifier reads as the final "
                     "answer, so its verdict is the labels' exact numeric match.")
    atomic_write_text(out, "\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
