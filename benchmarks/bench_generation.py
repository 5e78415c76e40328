"""Generation throughput: batched (left padding, length-sorted) vs one prompt at a time, same model and prompts.

    PYTHONPATH=src python benchmarks/bench_generation.py [--prompts 32] [--max-new-tokens 64] [--model DIR]

Prints generated tokens per second (tokens kept, up to EOS) for each batch size, the speed-up over
batch size 1, and how many completions equal the batch-size-1 ones (greedy decoding).
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
    rows, texts = [], {}
    for bs in args.batch_sizes:
        start = time.perf_counter()
        out = models.generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=bs, stop=())
        wall = time.perf_counter() - start
        n_tok = sum(g[0].n_tokens for g in out)
        texts[bs] = [g[0].text for g in out]
        rows.append((bs, n_tok, wall, n_tok / wall))
    base = rows[0][3]
    print(f"{'batch':>6} {'tokens':>8} {'wall s':>8} {'tok/s':>8} {'vs bs1':>7} {'same text as bs1':>17}")
    for bs, n_tok, wall, tps in rows:
        same = sum(a == b for a, b in zip(texts[bs], texts[args.batch_sizes[0]]))
        print(f"{bs:>6} {n_tok:>8} {wall:>8.2f} {tps:>8.1f} {tps / base:>6.2f}x {same:>12}/{len(prompts)}")


if __name__ == "__main__":
    main()
