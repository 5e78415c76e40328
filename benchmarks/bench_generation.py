"""Generation throughput: batched (left padding, length-sorted) vs one prompt at a time, same model and prompts.

    PYTHONPATH=src python benchmarks/bench_generation.py [--prompts 32] [--max-new-tokens 64] [--model DIR]
        [--batch-sizes 1 8 16] [--token-budgets 4096 8192 --budget-rows 64]

Prints generated tokens per second (tokens kept, up to EOS) for each batch size, the speed-up over
batch size 1, and how many completions equal the batch-size-1 ones (greedy decoding). With
``--token-budgets B ...`` it also runs batches sized by a token budget (``models.generation_batches``:
at most B prompt and new tokens per batch, at most ``--budget-rows`` rows); the ``largest batch``
column is the most tokens one batch's KV cache holds (rows x (longest prompt + max_new_tokens)), the
memory a batch size must be chosen for.
Use --threads 1 while other jobs share the CPU: oversubscribed OpenMP threads are many times slower.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import gsm8k_pairs, model_and_tokenizer
from syllabus import models, params as P


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--token-budgets", type=int, nargs="*", default=[],
                    help="also run batches of at most this many prompt + new tokens (and --budget-rows rows)")
    ap.add_argument("--budget-rows", type=int, default=64, help="the row cap of the token-budget runs")
    ap.add_argument("--threads", type=int, default=1, help="1 while other jobs share the CPU (see report)")
    ap.add_argument("--model", help="a local model directory (default: a lab model of the tiny profile's lab-m size)")
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pairs = gsm8k_pairs(2000, args.data_dir)
    arch = P.LabArch(hidden_size=128, num_layers=3, num_heads=4, intermediate_size=384, max_position_embeddings=1024)
    model, tok = model_and_tokenizer(args.model, pairs, arch)
    prompts = [p for p, _ in pairs[:args.prompts]]
    print(f"model: {args.model or 'lab h128 L3'} ({models.count_parameters(model):,} params, vocab {len(tok)}), "
          f"{len(prompts)} prompts, max_new_tokens {args.max_new_tokens}, threads {args.threads}, greedy, "
          "tokens counted up to EOS")
    models.generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=2, stop=())  # warm-up
    lengths = [len(models.encode_prompt(tok, p)) for p in prompts]
    runs = [(f"batch {bs}", bs, None) for bs in args.batch_sizes]
    runs += [(f"<= {b} tokens, <= {args.budget_rows} rows", args.budget_rows, b) for b in args.token_budgets]
    rows, texts = [], {}
    for label, bs, budget in runs:
        batches = models.generation_batches(lengths, bs, new_tokens=args.max_new_tokens, token_budget=budget)
        largest = max(len(b) * (max(lengths[i] for i in b) + args.max_new_tokens) for b in batches)
        start = time.perf_counter()
        out = models.generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=bs, stop=(),
                              token_budget=budget)
        wall = time.perf_counter() - start
        n_tok = sum(g[0].n_tokens for g in out)
        texts[label] = [g[0].text for g in out]
        rows.append((label, len(batches), largest, n_tok, wall, n_tok / wall))
    base, first = rows[0][5], rows[0][0]
    print(f"{'batches':<28} {'n':>4} {'largest batch':>14} {'tokens':>7} {'wall s':>7} {'tok/s':>8} {'ratio':>7} "
          f"{'same text as ' + first:>20}")
    for label, n, largest, n_tok, wall, tps in rows:
        same = sum(a == b for a, b in zip(texts[label], texts[first]))
        print(f"{label:<28} {n:>4} {largest:>14,} {n_tok:>7} {wall:>7.2f} {tps:>8.1f} {tps / base:>6.2f}x "
              f"{same:>15}/{len(prompts)}")


if __name__ == "__main__":
    main()
