"""Independent jobs of a stage, run side by side: the local executor.

``LocalExecutor(workers).map(fn, jobs)`` returns ``[fn(job) for job in jobs]`` in input order: in
this process when ``workers == 1``, else in ``workers`` spawned processes, each pinned to one GPU
(``CUDA_VISIBLE_DEVICES``, round robin) when the profile runs on GPUs. ``fn`` and the jobs must be
picklable (module-level functions, plain data). The stages use it to fill the run's caches (SFT
checkpoints, pass rates) in parallel, then assemble their tables with the usual sequential loop,
which finds every result cached: the tables are the same whatever the number of workers.

``SlurmExecutor`` has the same ``map``: one Slurm job per item through submitit (an optional
package, imported only when used), at most ``workers`` in flight; the jobs must see the run folder
(a shared file system). A job of either executor is one whole SFT run on one device; one SFT run over
several GPUs (replicated or FSDP-sharded weights) is ``syllabus.launch``'s.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .devices import resolve_device
from .runs import environment


# Progress bars in a worker would only fill its log (below): off.
QUIET_WORKER_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _start_worker(slots, log_dir: str | None) -> None:
    """Worker initialiser: take a GPU slot (None on the CPU) before anything initialises CUDA, and send the
    worker's stdout and stderr (the libraries' warnings and bars) to ``log_dir/worker-<pid>.log`` rather than
    the terminal of `syllabus run`. A job's exception still reaches the caller, with its traceback."""
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a", buffering=1)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            os.dup2(log.fileno(), stream.fileno())


class LocalExecutor:
    """Runs jobs in this process (1 worker) or in spawned worker processes (see the module docstring)."""

    def __init__(self, workers: int = 1, gpus: Sequence[str] | None = None, log_dir: str | os.PathLike | None = None):
        if workers < 1:
            raise ValueError(f"executor: workers must be >= 1, got {workers}")
        self.workers, self.gpus = workers, list(gpus or [])
        self.log_dir = None if log_dir is None else str(log_dir)

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        if self.workers == 1 or len(jobs) <= 1:
            return [fn(job) for job in jobs]
        workers = min(self.workers, len(jobs))
        context = multiprocessing.get_context("spawn")  # no forked torch state, no inherited threads
        slots = context.Manager().Queue()
        for w in range(workers):
            slots.put(self.gpus[w % len(self.gpus)] if self.gpus else None)
        with environment(QUIET_WORKER_ENV), \
                ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                    initargs=(slots, self.log_dir)) as pool:
            return list(pool.map(fn, jobs))


class SlurmExecutor:
    """One Slurm job per item through submitit (see the module docstring); results in input order."""

    def __init__(self, folder: str | os.PathLike, *, workers: int, partition: str | None, timeout_min: int,
                 gpus_per_job: int, cpus_per_job: int):
        try:
            import submitit
        except ImportError:
            raise ImportError("parallel.executor 'slurm' needs submitit, which is not installed: pip install submitit "
                              "(on the cluster's login node), or set parallel.executor: local") from None
        self._executor = submitit.AutoExecutor(folder=str(folder))
        self._executor.update_parameters(
            timeout_min=timeout_min, gpus_per_node=gpus_per_job, cpus_per_task=cpus_per_job, slurm_array_parallelism=workers,
            **({"slurm_partition": partition} if partition else {}))

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        if not jobs:
            return []
        return [job.result() for job in self._executor.map_array(fn, list(jobs))]


def spreads(prof) -> bool:
    """Whether the profile sends a stage's independent runs out of this process (several local workers,
    or Slurm jobs); the stages then fill their caches through ``for_profile`` first."""
    return prof.parallel.workers > 1 or prof.parallel.executor != "local"


def for_profile(prof, folder: str | os.PathLike | None = None):
    """The executor a profile's ``parallel`` section asks for: local processes (spread over the visible
    GPUs when the profile's device resolves to one), or Slurm jobs; their logs go to ``folder`` (the
    stages pass the run's ``cache/jobs``): Slurm's job logs, or one file per local worker."""
    par = prof.parallel
    if par.executor == "slurm":
        if folder is None:
            raise ValueError("executor: a Slurm executor needs a folder for its job logs (the run's cache)")
        return SlurmExecutor(folder, workers=par.workers, partition=par.slurm_partition,
                             timeout_min=par.slurm_timeout_min, gpus_per_job=par.slurm_gpus_per_job,
                             cpus_per_job=prof.threads)
    gpus: list[str] = []
    if par.workers > 1 and resolve_device(prof.device).type == "cuda":
        gpus = visible_gpu_ids(torch.cuda.device_count())
    return LocalExecutor(par.workers, gpus, log_dir=folder)


def visible_gpu_ids(count: int) -> list[str]:
    """What a worker's ``CUDA_VISIBLE_DEVICES`` must say to reach this process's GPUs 0..count-1: the entries
    of this process's own ``CUDA_VISIBLE_DEVICES`` when it sets one (physical indices, UUIDs or MIG ids; with
    ``CUDA_VISIBLE_DEVICES=2,3`` this process's GPU 0 is physical GPU 2), else ``0..count-1``."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]
