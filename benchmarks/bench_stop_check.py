"""The stop-string check of generation: the present check vs decoding every running row each step.

    PYTHONPATH=src python benchmarks/bench_stop_check.py [--prompts 128] [--samples 4] [--warmup-steps 300]

A lab student of the tiny profile's lab-s size, warm-started briefly on lab solutions, writes
``--samples`` solutions at temperature 1 (what stage 3 and stage 5 sample for DMC) for lab
problems, up to 128 new tokens, batches of 128, through ``models.generate`` with

* baseline: the check before 2026-12-04, which decoded the tail of every running row at every step;
* present: ``models._StopOnStrings``, which decodes only rows whose newest token can end a stop
  string.

Prints the wall time of each (best of ``--repeats``, alternating), the ratio, and whether the
generations are identical.
"""

from __future__ import annotations

import argparse
import time

import torch

from syllabus import lab, models, params as P, train
from syllabus.prompts import question_prompt


class DecodeEveryRow:
    """The check before 2026-12-04 (stateful, skips rows that ended, decodes every other row)."""

    def __init__(self, tokenizer, stops, prompt_len, eos_id=None):
        self.tokenizer, self.stops, self.prompt_len, self.eos_id = tokenizer, [s for s in stops if s], prompt_len, eos_id
        self.tail = max((len(s) for s in self.stops), default=0) + 2
        self.done = None

    def __call__(self, input_ids, scores=None, **kwargs):
        if self.done is None or self.done.shape[0] != input_ids.shape[0]:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        ended = self.done | (input_ids[:, -1] == self.eos_id) if self.eos_id is not None else self.done
        tails = input_ids[:, self.prompt_len:][:, -self.tail:].tolist()
        for row in (~ended).nonzero()[:, 0].tolist():
            text = self.tokenizer.decode(tails[row], skip_special_tokens=True)
            self.done[row] = any(s in text for s in self.stops)
        return self.done.clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--warmup-steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = lab.pretrain_corpus(2000, 7, max_operand=10, max_value=50)
    problems = lab.generate_problems(args.prompts, seed=11, max_operand=10, max_value=50)
    tok = models.lab_tokenizer(texts + [question_prompt(p.text) for p in problems])
    tok.padding_side = "left"
    model = models.build_lab_model(P.LabArch(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256), tok, 0)
    train.sft(model, tok, [("", t) for t in texts], steps=args.warmup_steps,
              cfg=P.Training(batch_size=16, max_seq_len=160, learning_rate=3e-3, warmup_ratio=0.1), seed=0, loss_on="all")
    model.eval()
    prompts = [question_prompt(p.text) for p in problems]
    checks = {"decode every running row": DecodeEveryRow, "present check": models._StopOnStrings}
    times: dict[str, list[float]] = {k: [] for k in checks}
    outputs = {}
    for _ in range(args.repeats):
        for label, check in checks.items():
            saved = models._StopOnStrings
            models._StopOnStrings = check
            try:
                start = time.perf_counter()
                outputs[label] = models.generate(model, tok, prompts, max_new_tokens=128, temperature=1.0,
                                                 num_samples=args.samples, batch_size=128, seed=1)
                times[label].append(time.perf_counter() - start)
            finally:
                models._StopOnStrings = saved
    stopped = sum(not g.truncated for gens in outputs["present check"] for g in gens)
    total = sum(len(gens) for gens in outputs["present check"])
    print(f"{args.prompts} lab prompts x {args.samples} samples at T=1, 128 new tokens, batch 128, threads "
          f"{args.threads}, lab-s-sized student after {args.warmup_steps} warm-up steps; {stopped}/{total} "
          f"samples ended at a stop string or EOS")
    base = min(times["decode every running row"])
    for label in checks:
        print(f"{label:<26} {min(times[label]):>7.2f} s {base / min(times[label]):>6.2f}x")
    print("identical generations:", outputs["present check"] == outputs["decode every running row"])


if __name__ == "__main__":
    main()
