"""Stage 5's per-phase bookkeeping: drawing a phase's examples and counting their tokens, present vs before.

    PYTHONPATH=src python benchmarks/bench_draws.py [--problems 1000] [--phases 4] [--examples 1792] [--repeats 3]

A stage-5 run draws, before every phase, twice the phase's examples from the chosen candidate datasets
(``dynamic_selection.draw_examples``), tokenizes them to find where the token budget is reached, and
tokenizes the kept ones again to train. On lab data (three teacher styles of ``--problems`` problems)
this times, over ``--phases`` phases:

* draws: the present ``draw_examples`` (one index into the candidates' rows) vs the one before
  2026-12-05 (one ``DataFrame.iloc`` per drawn example, then a frame built from the rows);
* token counts: ``train.tokenize_examples`` with ``tokens``' per-tokenizer memo vs the encoding it
  did before (``tokenizer.encode`` for every prompt and target, every time).

Prints the best-of-``--repeats`` seconds of each, the ratios, and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import random
import time

import pandas as pd

from syllabus import lab, models, select, tokens, train
from syllabus.prompts import question_prompt, target_text
from syllabus.stages import dynamic_selection


def draw_before(choice, datasets, n, rng):
    """``draw_examples`` before 2026-12-05 (without its module/level filter, unused here)."""
    pools = {name: (w, datasets[name].reset_index(drop=True)) for name, w in choice.weights.items() if w > 0}
    names = sorted(pools)
    weights = [pools[k][0] for k in names]
    picks = []
    for _ in range(n):
        name = rng.choices(names, weights=weights)[0]
        rows = pools[name][1]
        picks.append(rows.iloc[rng.randrange(len(rows))])
    return pd.DataFrame(picks).reset_index(drop=True)


def tokenize_before(tokenizer, examples, max_seq_len):
    """``train.tokenize_examples`` before 2026-12-05 (target loss): every text encoded afresh."""
    out = []
    for prompt, target in examples:
        p_ids = tokenizer.encode(prompt, add_special_tokens=True)
        t_ids = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids = (p_ids + t_ids)[:max_seq_len]
        out.append((ids, ([-100] * len(p_ids) + t_ids)[:max_seq_len]))
    return out


def best(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=1000)
    ap.add_argument("--phases", type=int, default=4)
    ap.add_argument("--examples", type=int, default=1792, help="a phase's examples (tiny: 112 steps x batch 16)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    problems = lab.generate_problems(args.problems, 0, max_operand=10, max_value=50, min_steps=1, max_steps=2)
    rng = random.Random(0)
    datasets = {f"teacher={style}": pd.DataFrame([
        {"dataset": f"teacher={style}", "problem_id": p.id, "teacher": style, "text": lab.write_trace(p, style, error_rate=0.0, rng=rng),
         "sample": 0, "correct": True, "module": p.module, "level": p.level} for p in problems])
        for style in ("equations", "prose", "selfcheck")}
    by_id = {p.id: p for p in problems}
    tokenizer = models.lab_tokenizer([question_prompt(p.text) for p in problems]
                                     + [t for rows in datasets.values() for t in rows["text"]])
    choices = [select.Choice(weights={name: 1.0}, reason="") for name in sorted(datasets)]
    choices.append(select.Choice(weights={name: 1 / 3 for name in datasets}, reason=""))

    def draws(draw):
        return [draw(choices[k % len(choices)], datasets, 2 * args.examples, random.Random(k)) for k in range(args.phases)]

    t_before, frames_before = best(lambda: draws(draw_before), args.repeats)
    t_now, frames_now = best(lambda: draws(dynamic_selection.draw_examples), args.repeats)
    same_draws = all(a.equals(b) for a, b in zip(frames_before, frames_now))
    print(f"draws, {args.phases} phases x {2 * args.examples} examples: present {t_now:.3f} s, before {t_before:.3f} s, "
          f"{t_before / t_now:.1f}x; identical rows: {same_draws}")

    examples = [[(question_prompt(by_id[r["problem_id"]].text), target_text(r["text"])) for r in f.to_dict("records")]
                for f in frames_now]

    def count(tokenize):  # per phase: the budget's count over the draws, then the kept half again to train
        return [(tokenize(tokenizer, ex, 160), tokenize(tokenizer, ex[:args.examples], 160)) for ex in examples]

    t_before, ids_before = best(lambda: count(tokenize_before), args.repeats)
    tokens._memos.clear()  # the memo's first filling is counted in the first repeat
    t_now, ids_now = best(lambda: count(lambda tok, ex, n: train.tokenize_examples(tok, ex, n, "target")), 1)
    t_warm, _ = best(lambda: count(lambda tok, ex, n: train.tokenize_examples(tok, ex, n, "target")), args.repeats)
    print(f"token counts, same phases: present {t_now:.3f} s with the memo filled on the way ({t_warm:.3f} s once "
          f"filled, as in a run's later phases), before {t_before:.3f} s: {t_before / t_now:.1f}x ({t_before / t_warm:.1f}x); "
          f"identical ids: {ids_before == ids_now}")


if __name__ == "__main__":
    main()
