"""The check before any stage starts: what a profile file alone cannot show.

``params`` validates a profile's keys, types and ranges; ``check_runnable`` then looks at what the
profile names - the device, vLLM, teacher files, the data and its sizes - so that ``syllabus run`` and
``syllabus check`` fail in seconds with every problem listed instead of hours into a stage.
"""

from __future__ import annotations

import importlib.util

from . import models, teachers
from .problems import problem_splits
from .data import LOCAL_FILES, DataError, find_local_file, hub_offline, load_problems
from .devices import DeviceError, resolve_device
from .params import DATA_DIR_ENV, ParamsError, Profile

LOCAL_SOURCES = {source for source, _ in LOCAL_FILES}  # read from a data folder, else the hub


def check_runnable(prof: Profile) -> None:
    """Check what the file alone cannot show, before any stage starts: the files the profile names, that
    the data holds as many problems as asked, and that it can serve the chosen stage-5 policies.

    Raises ParamsError listing every problem with its key (the stages would fail on each, hours in).
    """
    problems: list[tuple[str, str]] = []
    try:
        resolve_device(prof.device)
    except DeviceError as exc:
        problems.append(("device", str(exc).removeprefix("key 'device' ")))
    for i, spec in enumerate(prof.students):  # every student is distilled (stages 1 and 4)
        if spec.source == "dir" and (why := models.model_dir_problem(spec.model)):
            problems.append((f"students.{i}.model", f"student '{spec.name}': {why}"))
        if spec.source == "gguf" and (why := models.gguf_problem(spec.model, spec.gguf_file)):
            problems.append((f"students.{i}.model", f"student '{spec.name}': {why}"))
        if spec.dtype == "float16":
            problems.append((f"students.{i}.dtype", f"is float16 (student '{spec.name}'), which SFT cannot "
                                                    "train without loss scaling; use bfloat16 (GPUs since Ampere) "
                                                    "or float32"))
    vllm_users = [key for key, backend in (("student_generation.backend", prof.student_generation.backend),
                                           ("benchmark.backend", prof.benchmark.backend)) if backend == "vllm"]
    vllm_users += [f"teachers.{i}.backend" for i, t in enumerate(prof.teachers) if t.backend == "vllm"]
    if vllm_users and importlib.util.find_spec("vllm") is None:
        problems += [(key, "is 'vllm' but vLLM is not installed: pip install 'syllabus[vllm]' on a GPU machine, "
                           "or set it to hf") for key in vllm_users]
    data_dir = prof.data.resolved_data_dir()
    trace_files = {}  # teachers.i -> the file teacher, read: its file exists and parses
    for i, teacher in enumerate(prof.teachers):
        if teacher.backend == "file":
            try:
                trace_files[i] = teachers.FileTeacher(teacher, data_dir)
            except teachers.TeacherError as exc:
                problems.append((f"teachers.{i}.path", str(exc)))
    try:
        splits = problem_splits(prof)
    except DataError as exc:
        problems.append((f"data (task '{prof.data.task}')", str(exc)))
    else:
        d = prof.data
        short = [(split, getattr(d, f"n_{split}"), len(getattr(splits, split))) for split in ("heldout", "probe", "pool")
                 if len(getattr(splits, split)) < getattr(d, f"n_{split}")]
        for split, asked, have in short[:1]:  # the later splits are short because this one took their problems
            problems.append((f"data.n_{split}", f"asks for {asked} problems, the '{d.task}' data has only {have} left "
                                                "(held-out problems are taken first, then probe, then pool); lower it "
                                                "or the sizes before it"))
        probe_size = prof.teacher_selection.probe_size
        if not short and probe_size > len(splits.pool):
            problems.append(("teacher_selection.probe_size", f"{probe_size} probe problems are taken from a pool of "
                                                             f"{len(splits.pool)}; lower it to {len(splits.pool)}"))
        for i, teacher in trace_files.items():
            problems += file_teacher_coverage(i, teacher, splits.pool, d.task)
        needs = {"easy_to_hard": ("level", "problem levels"), "ioa": ("module", "problem modules (IOA's skills)")}
        for policy, (attribute, what) in needs.items():
            if splits.pool and policy in prof.dynamic.policies and not any(getattr(p, attribute) is not None for p in splits.pool):
                problems.append(("dynamic.policies", f"{policy} needs {what} and no pool problem of the '{d.task}' "
                                                     f"data has one; remove {policy} from dynamic.policies"))
    problems += benchmark_data_problems(prof)
    if problems:
        lines = [f"{prof.source_file or prof.name}: the profile cannot run ({len(problems)} problem(s)); "
                 "nothing was started:"]
        lines += [f"  - key '{key}': {why}" for key, why in problems]
        raise ParamsError("\n".join(lines))


# Stage 6's tasks that read a problem source through ``syllabus.data`` (``eval_tasks``: the default hub ids).
TASK_SOURCES = {"syllabus_gsm8k": "gsm8k", "syllabus_math500": "math500", "syllabus_humaneval": "humaneval"}


def benchmark_data_problems(prof: Profile) -> list[tuple[str, str]]:
    """The benchmark sets stage 2 decontaminates against (``data.eval_sets``) and stage 6's tasks
    (``benchmark.tasks``) must find their problems. Checked as far as this machine can know: a local file is read
    as the stages read it; without one, the hub is asked only of its local cache when it is off
    (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``), and otherwise left to the stage. lm-eval's own ``gsm8k`` and
    ``minerva_math500`` read local files only. (Key, reason) pairs, as ``check_runnable``'s."""
    from .stages.trace_curation import loaded_eval_sets  # the rule stage 2 loads them by

    d = prof.data
    problems = []
    for i, name in enumerate(d.eval_sets):
        if name in loaded_eval_sets(prof) and (why := _source_problem(name, prof, d.hub.get(name))):
            problems.append((f"data.eval_sets.{i}", f"eval set '{name}': {why}"))
    for i, task in enumerate(prof.benchmark.tasks):
        if task in TASK_SOURCES and (why := _source_problem(TASK_SOURCES[task], prof, None)):
            problems.append((f"benchmark.tasks.{i}", f"task '{task}': {why}"))
        elif task in ("gsm8k", "minerva_math500"):
            from .evaluate import BUILTIN_LOCAL_TASKS  # lazy: lm-eval, only when one of its tasks is asked for

            folder = d.resolved_data_dir()
            for rel in BUILTIN_LOCAL_TASKS[task].values():
                if folder is None or not (folder / rel).is_file():
                    where = f"{folder / rel} does not exist" if folder else "no data folder is set"
                    other = f"syllabus_{task.split('_')[-1]}"
                    problems.append((f"benchmark.tasks.{i}", f"task '{task}' (lm-eval's own, on local files) needs "
                                                             f"{rel}: {where}; set data.data_dir or ${DATA_DIR_ENV} "
                                                             f"to the folder holding it, or use {other}"))
                    break
    return problems


def _source_problem(source: str, prof: Profile, hub_id: str | None) -> str | None:
    """Why the test problems of ``source`` cannot be loaded (``data.load_problems``' error), or None when they
    load, or might come from the reachable hub."""
    data_dir = prof.data.resolved_data_dir()
    if source in LOCAL_SOURCES and find_local_file(LOCAL_FILES[(source, "test")], data_dir)[0] is None \
            and not hub_offline():
        return None  # the stage downloads it (or says why not)
    try:
        load_problems(source, "test", data_dir=data_dir, hub_id=hub_id)
    except DataError as exc:
        return str(exc)
    return None


def file_teacher_coverage(index: int, teacher: teachers.FileTeacher, pool, task: str) -> list[tuple[str, str]]:
    """A ``file`` teacher's traces are matched to problems by question text: its file must hold a trace for at
    least one pool problem, else every dataset it makes is empty. (Key, reason) pairs, as above."""
    if not pool or any(teachers.normalise_question(p.text) in teacher.by_question for p in pool):
        return []
    file_question = next(iter(teacher.by_question), "")
    return [(f"teachers.{index}.path",
             f"teacher '{teacher.name}': none of the {len(teacher.by_question)} questions in {teacher.path} is one "
             f"of the {len(pool)} pool problems of the '{task}' data (questions are matched by their text, case "
             f"and whitespace aside; the file's first: {file_question[:60]!r}, a pool problem: "
             f"{teachers.normalise_question(pool[0].text)[:60]!r}); write the traces of this data's problems "
             "with their questions, or choose the split they solved with data.pool_split")]
