"""DMC measured out of sample: SFT on a dataset's training slice makes the trained items likelier, and the
scoring slice, which it never sees, does not rise with them (issue 13, the lock-in of the first DMC)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import torch

from syllabus import dmc_factors, models, params, train
from syllabus.scoring import score_pairs
from tiny_lm import tiny_llama

WORDS = ("apple river stone cloud maple tiger lemon piano candle forest marble rocket "
         "violet harbor pepper silver garden falcon copper meadow lantern canyon walnut ember").split()


def _trace(rng: random.Random, answer: int) -> str:
    """A trace whose body is arbitrary per problem: what SFT can learn beyond the shared format is the item itself."""
    return " ".join(rng.choice(WORDS) for _ in range(10)) + f" #### {answer}"


def _pairs(rows: pd.DataFrame) -> list[tuple[str, str]]:
    return [(f"Question {p}:", " " + t) for p, t in zip(rows["problem_id"], rows["text"])]


def _dmc(model, tok, rows: pd.DataFrame, nll_ref: float) -> float:
    """DMC under the first (one-sided) rule, discounting traces above half the reference NLL."""
    scores = score_pairs(model, tok, _pairs(rows), unconditional=False)
    items = rows.assign(dataset="D", correct=True, pass_rate=0.0, nll=scores["nll"].to_numpy())
    return float(dmc_factors.dmc_scores(dmc_factors.item_table(items, nll_ref, variant="excess", r0=0.5, lam=2.0))["D"])


def test_training_on_the_training_slice_does_not_raise_dmc_on_the_scoring_slice():
    rng = random.Random(0)
    rows = pd.DataFrame({"problem_id": [f"q{i}" for i in range(60)]})
    rows["text"] = [_trace(rng, i) for i in range(60)]
    training, scoring = dmc_factors.scoring_split(rows, 0.3, salt="0")
    assert len(scoring) >= 10 and len(training) >= 30
    assert set(training["problem_id"]).isdisjoint(scoring["problem_id"])

    warm = pd.DataFrame({"problem_id": [f"w{i}" for i in range(100)]})
    warm["text"] = [_trace(rng, i) for i in range(100)]
    tok = models.lab_tokenizer([f"{a} {b}" for a, b in _pairs(pd.concat([rows, warm]))])
    model = tiny_llama(tok, hidden=64, layers=2)
    cfg = params.Training(learning_rate=1e-2, batch_size=8, max_seq_len=64, lr_schedule="constant")
    # the student first learns the style (format, word frequencies) on other problems: what is left is the items
    train.sft(model, tok, _pairs(warm), steps=100, cfg=cfg, seed=0, resume=False)
    ref = float(np.median(score_pairs(model, tok, _pairs(scoring), unconditional=False)["nll"]))
    before_in, before_out = _dmc(model, tok, training, ref), _dmc(model, tok, scoring, ref)
    train.sft(model, tok, _pairs(training), steps=160, cfg=cfg, seed=1, resume=False)
    after_in, after_out = _dmc(model, tok, training, ref), _dmc(model, tok, scoring, ref)

    print(f"DMC in sample {before_in:.3f} -> {after_in:.3f}, out of sample {before_out:.3f} -> {after_out:.3f}")
    assert after_in - before_in > 0.05, (before_in, after_in)  # in sample: lock-in, DMC rises with the trained items
    assert after_out <= before_out + 0.01, (before_out, after_out)  # out of sample: it does not
