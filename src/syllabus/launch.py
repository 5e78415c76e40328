"""One SFT run over several processes (data parallel), started with ``accelerate launch``.

``sft(model, tokenizer, examples, processes=N, ...)`` is ``train.sft`` for ``N > 1``: it pickles the
model (LoRA adapters included), the examples and the settings into ``out_dir/launch/``, runs
``accelerate launch --multi_gpu --num_processes N -m syllabus.launch <job>`` and waits. While the
processes train, the caller's model waits on the CPU (it returns to its device afterwards), so this
process does not hold it on the GPU the first process trains on; on a GPU machine N may not exceed the
visible GPUs. accelerate's own mixed precision is off: ``train.sft`` applies the student's compute dtype
(the mark travels with the pickled model). Every process
joins one ``torch.distributed`` group (NCCL on GPUs, one GPU per process; gloo on the CPU), takes its
share of each optimizer step's examples and all-reduces the gradients (``train.sft``), so every process
takes the step one process would take on the whole batch; the first process writes the checkpoint.
The caller's model then resumes from that finished checkpoint, which loads its final weights without
training again. On the CPU this is what the tests run; on a GPU node it spreads one SFT run over the
node's GPUs.

``sharding="fsdp"`` (``parallel.sft_sharding``) shards the weights, gradients and optimizer moments over
the processes instead of replicating them (PyTorch's FSDP2 ``fully_shard``: each decoder layer, then the
whole model), for students whose full fine-tuning does not fit one GPU. The steps are the same as one
process's (``train.sft`` keeps the processes' passes in step); checkpoints hold whole weights.
"""

from __future__ import annotations

import json
import os
import shutil
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


SHARDINGS = ("replicate", "fsdp")


def sft(model, tokenizer, examples: Sequence[tuple[str, str]], *, steps: int | None, cfg: P.Training, seed: int,
        out_dir: str | os.PathLike, processes: int, sharding: str = "replicate", **kwargs) -> train.TrainResult:
    """``train.sft`` over ``processes`` processes (see the module docstring); in this process when 1."""
    if sharding not in SHARDINGS:
        raise LaunchError(f"sharding must be one of {SHARDINGS}, got {sharding!r} (parallel.sft_sharding)")
    if processes <= 1:
        return train.sft(model, tokenizer, examples, steps=steps, cfg=cfg, seed=seed, out_dir=out_dir, **kwargs)
    kwargs.pop("resume", None)  # a launched run always resumes what is there (its key must match)
    out = Path(out_dir)
    if not _finished(out):
        gpus = visible_gpus()
        if gpus and processes > gpus:
            raise LaunchError(f"parallel.sft_processes is {processes} but this machine shows {gpus} GPU(s) (one "
                              f"process per GPU); set parallel.sft_processes to at most {gpus} (e.g. -p "
                              f"parallel.sft_processes={gpus}), or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
        job = out / "launch" / "job.pt"
        job.parent.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        # The model goes to the CPU for the job file and stays there while the processes train, so this process
        # holds no copy of it on the GPU that the first process trains on; it comes back once they are done.
        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand the freed blocks back, for the launched processes
        try:
            with atomic_path(job) as tmp:
                torch.save({"model": model, "tokenizer": tokenizer, "examples": list(examples), "steps": steps,
                            "cfg": cfg, "seed": seed, "out_dir": str(out), "sharding": sharding, "kwargs": kwargs},
                           tmp)
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                       str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "-m", "syllabus.launch", str(job)]
            log = out / "launch" / "launch.log"
            scratch = out / "launch" / "tmp"  # torchelastic's per-launch log folders, not the system's /tmp
            scratch.mkdir(exist_ok=True)
            with open(log, "w") as handle:
                done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)})
        finally:
            model.to(device)
        if done.returncode != 0:
            raise LaunchError(f"data-parallel SFT over {processes} processes failed (exit {done.returncode}); "
                              f"see {log} (and the processes' own logs under {scratch})")
        shutil.rmtree(scratch, ignore_errors=True)
    return train.sft(model, tokenizer, examples, steps=steps, cfg=cfg, seed=seed, out_dir=out, resume=True, **kwargs)


def visible_gpus() -> int:
    """GPUs the launched processes can take, one each (``_run`` uses CUDA whenever it is available); 0 without."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _finished(out: Path) -> bool:
    """Whether ``out`` holds a finished run (its summary says every step is done)."""
    summary = out / "train_summary.json"
    if not ((out / train.CHECKPOINT).is_file() and summary.is_file()):
        return False
    record = json.loads(summary.read_text())
    return record.get("steps_done") == record.get("steps")


def shard(model, device: torch.device):
    """Shard ``model`` in place over the running process group (FSDP2): every module of a class the
    model lists as not to be split (its decoder layers: ``_no_split_modules``), then the whole model,
    gradients summed rather than averaged (``train.sft`` divides each share's loss by the whole step's
    target tokens)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's base
    layer_classes = set(getattr(base, "_no_split_modules", None) or ())
    if not layer_classes:
        raise LaunchError(f"fsdp: {type(base).__name__} names no layer class to shard (_no_split_modules); "
                          "use parallel.sft_sharding: replicate")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain sums (gloo has no pre-multiplied sum)
    return model


def _run(job_file: str) -> None:
    """One process of the group: join it, train its share, leave."""
    job = torch.load(job_file, weights_only=False)
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    try:
        device = torch.device(f"cuda:{local}" if cuda else "cpu")
        model = job["model"].to(device)
        if job.get("sharding") == "fsdp":
            shard(model, device)
        train.sft(model, job["tokenizer"], job["examples"], steps=job["steps"], cfg=job["cfg"], seed=job["seed"],
                  out_dir=job["out_dir"], resume=True, **job["kwargs"])
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _run(sys.argv[1])
