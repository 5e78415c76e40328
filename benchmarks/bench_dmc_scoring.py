"""DMC scoring throughput: the batched scorer against the naive one-example-at-a-time loop.

Same student, same (prompt, target) pairs, side by side; each batched setting runs twice, with the
traces of one problem sharing one forward pass over its prompt (``share_prompts``, the default path)
and without (every pair in full, the path before prompt sharing). Three workloads:

- ``lab`` (default): what stage 3 scores in the default ``tiny`` profile - the profile's first lab
  student (its architecture and word-level tokenizer, built by the project's own code) and traces
  written by the four lab teachers for lab problems, several per problem, as in the candidates;
- ``gsm8k``: a larger case - a small Llama with a BPE tokenizer trained on GSM8K text, scoring the
  GSM8K test problems with five traces each, as the smol profile's candidates: the reference
  solution and the four GPT-3 solutions of ``gsm8k/example_model_solutions.jsonl``;
- ``gsm8k-train``: the same model on GSM8K train questions with one trace each (their reference
  solutions), so no prompt is shared.

Weights are random (throughput and agreement do not depend on training). Prints examples/s and
target tokens/s of both paths (each scores every pair with and without its prompt, for IFD), their
ratio (target >= 3x), the largest absolute difference of any score (target <= 1e-5), and the cost
of re-scoring through the cache.

    PYTHONPATH=src python benchmarks/bench_dmc_scoring.py [--workload lab|gsm8k|gsm8k-train] [--pairs 512] [--threads 2]

Wall times on a shared machine are noisy; the CPU time of the process (best of ``--repeats``) is
the steadier figure with one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from syllabus import lab, params, prompts
from syllabus.problems import pretrain_texts, tokenizer_texts
from syllabus import models as syllabus_models
from syllabus.prompts import question_prompt, target_text
from syllabus.scoring import cached_scores, score_pairs, score_pairs_naive

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = ["nll", "entropy", "nll_unconditional", "ifd", "rank"]


GPT3_SOLUTIONS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def gsm8k_rows(data_dir: Path, n: int, file: str = "train.jsonl") -> list[dict]:
    path = data_dir / "gsm8k" / file
    if not path.is_file():
        raise SystemExit(f"{path} not found; pass --data-dir or set SYLLABUS_DATA_DIR to the folder holding gsm8k/")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


def bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def student(tokenizer, hidden: int, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def lab_workload(profile: str, n_pairs: int):
    """The profile's first lab student (random weights) and lab-teacher traces in its prompt format."""
    prof = params.load_profile(profile)
    spec = next(s for s in prof.students if s.source == "lab")
    pre = pretrain_texts(prof, spec)
    tok = syllabus_models.lab_tokenizer(tokenizer_texts(prof, pre))
    model = syllabus_models.build_lab_model(spec.arch, tok, seed=0)
    cfg = prof.data.lab
    per_problem = 8  # 4 teacher styles x 2 samples, like keep_per_problem=2 in the tiny candidates
    problems = lab.generate_problems(-(-n_pairs // per_problem), seed=5, modules=cfg.modules,
                                     min_steps=cfg.min_steps, max_steps=cfg.max_steps, max_operand=cfg.max_operand)
    rng = __import__("random").Random(0)
    pairs = [(prompts.build_prompt(p.text), prompts.build_target(lab.write_trace(p, style, error_rate=0.1, rng=rng),
                                                                 eos=tok.eos_token))
             for p in problems for style in ("equations", "prose", "selfcheck", "sloppy") for _ in range(2)]
    return model, tok, pairs[:n_pairs], f"lab student '{spec.name}' of profile {prof.name}"


def gsm8k_workload(args):
    rows = gsm8k_rows(args.data_dir, 2000)
    tok = bpe_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], args.vocab)
    model = student(tok, args.hidden, args.layers)
    if args.workload == "gsm8k-train":
        pairs = [(question_prompt(r["question"]), target_text(r["answer"])) for r in rows[: args.pairs]]
    else:
        solved = gsm8k_rows(args.data_dir, -(-args.pairs // 5), "example_model_solutions.jsonl")
        pairs = [(question_prompt(r["question"]), target_text(text)) for r in solved
                 for text in [r["ground_truth"]] + [r[k]["solution"] for k in GPT3_SOLUTIONS]][: args.pairs]
    return model, tok, pairs, f"Llama (hidden {args.hidden}, {args.layers} layers) with a GSM8K BPE tokenizer"


def timed(fn, repeats: int):
    """Best of ``repeats`` runs: (result, wall seconds, CPU seconds of this process)."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    return out, best_wall, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=["lab", "gsm8k", "gsm8k-train"], default="lab")
    ap.add_argument("--profile", default="tiny", help="lab workload: the profile whose student is used")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--batched", nargs="+", default=["16", "64/2048", "64/1024"],
                    help="batched settings to compare, each ROWS or ROWS/MAX_BATCH_TOKENS")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("SYLLABUS_DATA_DIR", ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.workload == "lab":
        model, tok, pairs, what = lab_workload(args.profile, args.pairs)
    else:
        model, tok, pairs, what = gsm8k_workload(args)
    n_params = sum(p.numel() for p in model.parameters())

    score_pairs(model, tok, pairs[:8], batch_size=8)  # warm-up (first-call allocations), both paths
    score_pairs_naive(model, tok, pairs[:2])
    naive, naive_wall, naive_cpu = timed(lambda: score_pairs_naive(model, tok, pairs), args.repeats)
    runs = []
    for setting in args.batched:
        rows_, _, tokens = setting.partition("/")
        for share in (False, True):
            kw = {"batch_size": int(rows_), "max_batch_tokens": int(tokens) if tokens else None, "share_prompts": share}
            fast, wall, cpu = timed(lambda: score_pairs(model, tok, pairs, **kw), args.repeats)
            diff = float((fast[NUMERIC] - naive[NUMERIC]).abs().to_numpy().max())
            runs.append((f"{'shared' if share else 'batched'} {setting}", wall, cpu, diff))
    with tempfile.TemporaryDirectory() as cache:
        cached_scores(model, tok, pairs, cache_dir=cache)
        again, cached_wall, cached_cpu = timed(lambda: cached_scores(model, tok, pairs, cache_dir=cache), 1)

    n_target = int(naive["n_tokens"].sum())
    print(f"student: {what}, {n_params / 1e6:.2f}M params, vocab {len(tok)}, "
          f"{torch.get_num_threads()} thread(s), cpu; best of {args.repeats} runs per path")
    n_prompts = len({p for p, _ in pairs})
    print(f"data: {len(pairs)} {args.workload} pairs, {n_prompts} distinct prompts; prompt tokens mean {naive['n_prompt_tokens'].mean():.0f} "
          f"(min {naive['n_prompt_tokens'].min()}, max {naive['n_prompt_tokens'].max()}); target tokens mean "
          f"{naive['n_tokens'].mean():.0f} (min {naive['n_tokens'].min()}, max {naive['n_tokens'].max()}); "
          "every pair scored with and without its prompt")
    print(f"{'path (rows/max tokens)':<26}{'wall s':>8}{'cpu s':>8}{'examples/s':>12}{'target tok/s':>14}"
          f"{'x naive (wall)':>16}{'x naive (cpu)':>15}{'max |diff|':>12}")
    for name, wall, cpu, diff in [("naive (one at a time)", naive_wall, naive_cpu, 0.0), *runs,
                                  ("cached re-score", cached_wall, cached_cpu, float("nan"))]:
        print(f"{name:<26}{wall:>8.2f}{cpu:>8.2f}{len(pairs) / wall:>12.1f}{n_target / wall:>14.0f}"
              f"{naive_wall / wall:>16.2f}{naive_cpu / cpu:>15.2f}{diff:>12.1e}")
    print("batched: every pair in full; shared: the traces of a prompt share its forward pass (the default)")
    print("targets: shared >= 3x the naive loop; max |diff| of nll, entropy, nll_unconditional, ifd, rank <= 1e-5")
    print(f"cached re-score: {again.attrs['n_scored']} pairs scored, {again.attrs['n_cached']} served from the cache")

if __name__ == "__main__":
    main()
