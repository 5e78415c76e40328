"""Shared set-up of the benchmarks: GSM8K (question, solution) pairs and a lab-sized model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from syllabus import models, params as P
from syllabus.prompts import question_prompt, target_text

ROOT = Path(__file__).resolve().parents[1]


def gsm8k_pairs(n: int, data_dir: str | None = None) -> list[tuple[str, str]]:
    """(prompt, target) pairs from GSM8K train (data dir: argument, $SYLLABUS_DATA_DIR, or ../shared/data)."""
    base = Path(data_dir or os.environ.get("SYLLABUS_DATA_DIR") or ROOT.parent / "shared" / "data")
    path = base / "gsm8k" / "train.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found; pass --data-dir or set $SYLLABUS_DATA_DIR to the folder holding gsm8k/")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [(question_prompt(r["question"]), target_text(r["answer"])) for r in rows]


def model_and_tokenizer(model_dir: str | None, pairs, arch: P.LabArch, seed: int = 0):
    """A local model directory when given, else a lab model (lab tokenizer built from the pairs)."""
    if model_dir:
        model, tok = models.load_pretrained("dir", model_dir)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok
    tok = models.lab_tokenizer([p + t for p, t in pairs], model_max_length=arch.max_position_embeddings)
    return models.build_lab_model(arch, tok, seed), tok
