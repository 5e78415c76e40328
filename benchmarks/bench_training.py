"""Training throughput: syllabus.train.sft vs transformers' Trainer, same model, data, batch and steps.

    PYTHONPATH=src python benchmarks/bench_training.py [--steps 32] [--batch 16] [--examples 256] [--model DIR]

Both train a copy of the same initial model on the same (prompt, target) pairs with target-only
loss, AdamW, cosine schedule, gradient clipping 1.0 and dynamic padding. ``steps * batch`` is a
multiple of ``examples``, so both see exactly the same tokens (whole epochs). Each trainer runs
``--repeats`` times, alternating; the table shows the best and the median tokens per second.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from _common import gsm8k_pairs, model_and_tokenizer
from syllabus import models, params as P, train


def run_sft(model, tok, pairs, steps, cfg, seed) -> tuple[float, int]:
    start = time.perf_counter()
    res = train.sft(model, tok, pairs, steps=steps, cfg=cfg, seed=seed)
    return time.perf_counter() - start, res.tokens_seen


def run_trainer(model, tok, pairs, steps, cfg, seed) -> tuple[float, int]:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    data = train.tokenize_examples(tok, pairs, cfg.max_seq_len, "target")
    ds = Dataset.from_list([{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": lab} for ids, lab in data])
    tok.padding_side = "right"
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=steps,
                                 learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                 lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, use_cpu=True,
                                 report_to=[], save_strategy="no", logging_strategy="no", seed=seed,
                                 dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    tok.padding_side = "left"
    per_epoch = sum(len(ids) for ids, _ in data)
    return wall, per_epoch * steps * cfg.batch_size // len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="1 while other jobs share the CPU")
    ap.add_argument("--model", help="a local model directory (default: a lab model of the tiny profile's lab-m size)")
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    if (args.steps * args.batch) % args.examples:
        raise SystemExit("--steps * --batch must be a multiple of --examples (whole epochs, equal tokens)")
    torch.set_num_threads(args.threads)
    pairs = gsm8k_pairs(args.examples, args.data_dir)
    arch = P.LabArch(hidden_size=128, num_layers=3, num_heads=4, intermediate_size=384, max_position_embeddings=1024)
    base, tok = model_and_tokenizer(args.model, pairs, arch)
    cfg = P.Training(batch_size=args.batch, max_seq_len=args.max_seq_len, learning_rate=1e-3)
    print(f"model: {args.model or 'lab h128 L3'} ({models.count_parameters(base):,} params, vocab {len(tok)}), "
          f"{args.examples} GSM8K examples, batch {args.batch}, {args.steps} steps, max_seq_len {args.max_seq_len}, "
          f"threads {args.threads}, {args.repeats} repeats alternating")
    runners = {"syllabus.train.sft": run_sft, "transformers.Trainer": run_trainer}
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            wall, n_tok = run(copy.deepcopy(base), tok, pairs, args.steps, cfg, 0)
            speeds[name].append(n_tok / wall)
            tokens[name] = n_tok
    ref = statistics.median(speeds["transformers.Trainer"])
    print(f"{'trainer':<22} {'tokens':>8} {'best tok/s':>11} {'median tok/s':>13} {'median vs Trainer':>18}")
    for name, values in speeds.items():
        med = statistics.median(values)
        print(f"{name:<22} {tokens[name]:>8} {max(values):>11.0f} {med:>13.0f} {med / ref:>17.2f}x")


if __name__ == "__main__":
    main()
