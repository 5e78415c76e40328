"""What a GPU run cost: per-stage wall time and GPU memory peak (from the stage manifests), training
tokens/s (from every SFT run's ``train_summary.json``), and scoring and generation tokens/s measured
here on the run's first undistilled student, on the profile's device.

    python benchmarks/gpu_report.py RUN_DIR [--pairs 512] [--prompts 256]

Used by ``benchmarks/gpu_check.sh`` after ``syllabus run --profile lab-gpu``; it also runs on a CPU
run folder (then the GPU columns are empty).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from syllabus import models, params as P, scoring
from syllabus.devices import resolve_device
from syllabus.prompts import question_prompt, target_text

STAGES = ("01_teacher_selection", "02_trace_curation", "03_dmc", "04_correlation", "05_dynamic_selection",
          "06_benchmark")


def stage_table(run: Path) -> pd.DataFrame:
    rows = []
    for stage in STAGES:
        path = run / stage / "manifest.json"
        if path.is_file():
            m = json.loads(path.read_text())
            rows.append({"stage": stage, "wall_s": m.get("wall_seconds"), "peak_gpu_mb": m.get("peak_gpu_mb"),
                         "peak_rss_mb": m.get("peak_rss_mb")})
        else:
            rows.append({"stage": stage, "wall_s": None, "peak_gpu_mb": None, "peak_rss_mb": None})
    return pd.DataFrame(rows)


def training_rate(run: Path) -> dict[str, float]:
    """Tokens per second over every SFT run of the run folder (smoke tests, grid cells, policy runs)."""
    summaries = [json.loads(p.read_text()) for p in (run / "cache").rglob("train_summary.json")]
    warm = [json.loads(p.read_text()) for p in (run / "cache" / "students").glob("*/syllabus_model.json")]
    tokens = sum(s["tokens_seen"] for s in summaries) + sum(w.get("warmup_tokens", 0) for w in warm)
    wall = sum(s["wall_s"] for s in summaries) + sum(w.get("warmup_wall_s", 0) for w in warm)
    return {"sft_runs": len(summaries) + len(warm), "tokens": tokens, "wall_s": round(wall, 1),
            "tokens_per_s": round(tokens / wall) if wall else float("nan")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def scoring_and_generation(run: Path, n_pairs: int, n_prompts: int) -> pd.DataFrame:
    """Tokens/s of batched teacher-forced scoring and of generation on the run's first student."""
    prof = P.Profile.model_validate(yaml.safe_load((run / "params.yaml").read_text()))
    spec = prof.students[0]
    device = resolve_device(prof.device)
    folder = run / "cache" / "final_models" / f"{spec.name}-undistilled"
    model, tok = models.load_pretrained("dir", str(folder), dtype=spec.dtype)
    model = model.to(device).eval()
    tok.padding_side = "left"
    rows = pd.read_parquet(run / "02_trace_curation" / "tables" / "candidates.parquet").head(n_pairs)
    pairs = [(question_prompt(q), target_text(t)) for q, t in zip(rows["question"], rows["text"])]
    out = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    scores = scoring.score_pairs(model, tok, pairs, batch_size=prof.dmc.score_batch_size,
                                 max_batch_tokens=prof.dmc.score_max_batch_tokens)
    _sync(device)
    wall = time.perf_counter() - start
    tokens = int((scores["n_prompt_tokens"] + 2 * scores["n_tokens"]).sum())  # conditional + unconditional pass
    out.append({"part": "scoring", "items": len(pairs), "tokens": tokens, "wall_s": round(wall, 2),
                "tokens_per_s": round(tokens / wall), "peak_gpu_mb": _peak(device)})
    prompts = [question_prompt(q) for q in rows["question"].drop_duplicates().head(n_prompts)]
    g = prof.student_generation
    start = time.perf_counter()
    gens = models.generate(model, tok, prompts, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                           top_p=g.top_p, num_samples=4, batch_size=g.batch_size, seed=0)
    _sync(device)
    wall = time.perf_counter() - start
    tokens = sum(x.n_tokens for gen in gens for x in gen)
    out.append({"part": f"generation (hf, 4 samples, batch {g.batch_size})", "items": len(prompts) * 4,
                "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall),
                "peak_gpu_mb": _peak(device)})
    return pd.DataFrame(out)


def _peak(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if device.type == "cuda" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=256)
    args = parser.parse_args()
    pd.set_option("display.width", 160)
    stages = stage_table(args.run_dir)
    print("per stage (wall time and peak memory of the stage's kernel):")
    print(stages.to_string(index=False))
    print(f"all stages: {stages['wall_s'].sum():.0f} s")
    print("\ntraining (every SFT run and warm-up of the run):")
    print(json.dumps(training_rate(args.run_dir)))
    print("\nscoring and generation, measured now on the first student:")
    print(scoring_and_generation(args.run_dir, args.pairs, args.prompts).to_string(index=False))


if __name__ == "__main__":
    main()
