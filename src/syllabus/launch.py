"""One SFT run over several processes (data parallel), started with ``accelerate launch``.

``sft(model, tokenizer, examples, processes=N, ...)`` is ``train.sft`` for ``N > 1``: it pickles the
model (LoRA adapters included), the examples and the settings into ``out_dir/launch/``, runs
``accelerate launch --multi_gpu --num_processes N -m syllabus.launch <job>`` and waits. Every process
joins one ``torch.distributed`` group (NCCL on GPUs, one GPU per process; gloo on the CPU), takes its
share of each optimizer step's examples and all-reduces the gradients (``train.sft``), so every process
takes the step one process would take on the whole batch; the first process writes the checkpoint.
The caller's model then resumes from that finished checkpoint, which loads its final weights without
training again. On the CPU this is what the tests run; on a GPU node it spreads one SFT run over the
node's GPUs. Not here: FSDP (sharded weights) for students that do not fit one GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import params as P
from . import train
from .errors import SyllabusError
from .runs import atomic_path


class LaunchError(SyllabusError, RuntimeError):
    """A data-parallel SFT run that failed; the message names the log to read."""


def sft(model, tokenizer, examples: Sequence[tuple[str, str]], *, steps: int | None, cfg: P.Training, seed: int,
        out_dir: str | os.PathLike, processes: int, **kwargs) -> train.TrainResult:
    """``train.sft`` over ``processes`` processes (see the module docstring); in this process when 1."""
    if processes <= 1:
        return train.sft(model, tokenizer, examples, steps=steps, cfg=cfg, seed=seed, out_dir=out_dir, **kwargs)
    kwargs.pop("resume", None)  # a launched run always resumes what is there (its key must match)
    out = Path(out_dir)
    if not _finished(out):
        job = out / "launch" / "job.pt"
        job.parent.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        with atomic_path(job) as tmp:
            torch.save({"model": model.to("cpu"), "tokenizer": tokenizer, "examples": list(examples), "steps": steps,
                        "cfg": cfg, "seed": seed, "out_dir": str(out), "kwargs": kwargs}, tmp)
        model.to(device)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "syllabus.launch", str(job)]
        log = out / "launch" / "launch.log"
        with open(log, "w") as handle:
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise LaunchError(f"data-parallel SFT over {processes} processes failed (exit {done.returncode}); "
                              f"see {log}")
    return train.sft(model, tokenizer, examples, steps=steps, cfg=cfg, seed=seed, out_dir=out, resume=True, **kwargs)


def _finished(out: Path) -> bool:
    """Whether ``out`` holds a finished run (its summary says every step is done)."""
    summary = out / "train_summary.json"
    if not ((out / train.CHECKPOINT).is_file() and summary.is_file()):
        return False
    record = json.loads(summary.read_text())
    return record.get("steps_done") == record.get("steps")


def _run(job_file: str) -> None:
    """One process of the group: join it, train its share, leave."""
    job = torch.load(job_file, weights_only=False)
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    try:
        model = job["model"].to(f"cuda:{local}" if cuda else "cpu")
        train.sft(model, job["tokenizer"], job["examples"], steps=job["steps"], cfg=job["cfg"], seed=job["seed"],
                  out_dir=job["out_dir"], resume=True, **job["kwargs"])
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _run(sys.argv[1])
