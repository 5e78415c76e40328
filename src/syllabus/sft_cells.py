"""SFT cells in worker processes: the equal-budget "train, then evaluate" runs of stages 1 and 4.

A cell is one SFT run of a student on a list of examples (``distillation.distil``) followed by its
greedy pass rates on a problem set (``generation.pass_rates``). Both are cached by content in the
run folder, so the stages fill the caches with ``fill(stage, jobs)`` - side by side through the
profile's executor when ``parallel.workers > 1`` (or on Slurm) - and then assemble their tables
with their usual sequential loop, which finds every cell cached: the tables are the same whatever
the number of workers.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from types import SimpleNamespace

import torch

from . import distillation, executor, generation
from .students import StudentModel
from .devices import resolve_device
from .records import Problem
from .runs import RunDir, Stage, atomic_path, hash_obj, package_versions


def job(stage: Stage, student: StudentModel, examples: list[tuple[str, str]], *, steps: int,
        seed: int, tag: str, eval_problems: list[Problem]) -> dict:
    """One cell as plain, picklable data, run exactly as the stage's own loop would run it."""
    return {"params": stage.params, "run_root": str(stage.run.root), "eval_seed": stage.seed,
            "student_file": str(student_file(stage, student)), "examples": examples, "heldout": eval_problems,
            "seed": seed, "tag": tag, "steps": steps}


def fill(stage: Stage, jobs: list[dict]) -> None:
    """Run the cells through the profile's executor (their results land in the run's caches)."""
    if jobs:
        executor.for_profile(stage.params, stage.run.cache / "jobs").map(run_cell, jobs)


# The packages whose classes a pickled student names: a pickle made under other versions of them may not load
# (transformers 5.25 -> 5.23 failed inside the ``kernels`` package while unpickling).
PICKLING_PACKAGES = ("torch", "transformers", "peft")


def student_file(stage: Stage, student: StudentModel) -> Path:
    """The student (model on the CPU, tokenizer, spec) pickled once per weights for the workers.

    The file name holds the student's weights fingerprint, the module that defines ``StudentModel`` and a
    key of the ``PICKLING_PACKAGES`` versions, so a run folder made under another layout or other package
    versions never hands workers a pickle they cannot load: the student is pickled again beside it."""
    module = StudentModel.__module__.rsplit(".", 1)[-1]
    versions = hash_obj(package_versions(PICKLING_PACKAGES))[:8]
    path = (stage.run.cache / "executor"
            / f"student-{student.name}-{student.fingerprint()[:16]}-{module}-pkg{versions}.pt")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        on_cpu = StudentModel(student.spec, copy.deepcopy(student.model).to("cpu"), student.tokenizer)
        with atomic_path(path) as tmp:
            torch.save(on_cpu, tmp)
    return path


@functools.lru_cache(maxsize=2)
def worker_student(path: str, device: str, threads: int) -> StudentModel:
    torch.set_num_threads(threads)
    student = torch.load(path, weights_only=False)
    student.model.to(resolve_device(device)).eval()
    return student


def run_cell(job: dict) -> str:
    """A worker's cell: the SFT run and the pass rates on the evaluation problems, into the run's caches."""
    prof = job["params"]
    student = worker_student(job["student_file"], prof.device, prof.threads)
    stage = SimpleNamespace(params=prof, run=RunDir(job["run_root"]), seed=job["eval_seed"])
    trained, _ = distillation.distil(student, job["examples"], steps=job["steps"], stage=stage, seed=job["seed"],
                                     tag=job["tag"])
    generation.pass_rates(trained, job["heldout"], k=1, prof=prof, seed=stage.seed, cache_dir=stage.run.cache)
    return job["tag"]
