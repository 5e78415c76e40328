"""Generation of the lab students: the project's decoder against transformers' ``generate``.

    PYTHONPATH=src python benchmarks/bench_decoding.py [--prompts 128] [--samples 4] [--warmup-steps 300]

(Named ``bench_stop_check.py`` until 2026-12-07.) A lab student of the tiny profile's lab-s size,
warm-started briefly on lab solutions, writes solutions for lab problems through ``models.generate``,
up to 128 new tokens, batches of 128: greedily (one per problem, as held-out accuracy is measured)
and ``--samples`` per problem at temperature 1 (what stages 3 and 5 sample for DMC). Three paths:

* ``generate``, decode every row: transformers' ``generate`` with the stop check before 2026-12-04,
  which decoded the tail of every running row at every step;
* ``generate``, present check: the same with ``models._StopOnStrings``, which decodes only rows whose
  newest token can end a stop string (what ``models.generate`` ran until 2026-12-07, and still runs
  for models whose own generation settings only ``generate`` applies);
* decoder: ``decoding.decode``, where a row leaves the batch and its KV cache when it ends (the default).

Prints the wall time of each (best of ``--repeats``, alternating), the ratio to the first, and whether
the generations are identical.
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
    paths = {"generate, decode every row": DecodeEveryRow, "generate, present check": models._StopOnStrings,
             "decoder": None}
    print(f"{args.prompts} lab prompts, 128 new tokens, batch 128, threads {args.threads}, lab-s-sized student "
          f"after {args.warmup_steps} warm-up steps")
    for what, kw in [("greedy", {}), (f"{args.samples} samples at T=1", dict(temperature=1.0, num_samples=args.samples))]:
        times: dict[str, list[float]] = {k: [] for k in paths}
        outputs = {}
        for _ in range(args.repeats):
            for label, check in paths.items():
                saved = models._StopOnStrings, models.transformers_only_settings
                if check is not None:
                    models._StopOnStrings, models.transformers_only_settings = check, lambda model: ["forced"]
                try:
                    start = time.perf_counter()
                    outputs[label] = models.generate(model, tok, prompts, max_new_tokens=128, batch_size=128, seed=1, **kw)
                    times[label].append(time.perf_counter() - start)
                finally:
                    models._StopOnStrings, models.transformers_only_settings = saved
        gens = [g for row in outputs["decoder"] for g in row]
        print(f"{what}: {sum(not g.truncated for g in gens)}/{len(gens)} ended at a stop string or EOS, "
              f"{sum(g.n_tokens for g in gens)} tokens kept")
        base = min(times["generate, decode every row"])
        for label in paths:
            print(f"  {label:<28} {min(times[label]):>7.2f} s {base / min(times[label]):>6.2f}x"
                  f"  identical to the first: {outputs[label] == outputs['generate, decode every row']}")


if __name__ == "__main__":
    main()
