"""``syllabus run``: execute the stage notebooks in order with papermill.

A stage whose inputs, params, notebook and package code are unchanged since its last successful
run is skipped ("up to date"); ``--force`` runs it again. The whole profile is checked before any
stage starts. A stage runs in a staging folder that replaces the stage folder only when the stage
has finished, so a failed or killed re-run keeps the previous results; a failing notebook is kept
beside them as ``<stage>.failed.ipynb``. One run works in a run folder at a time (a lock).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import papermill as pm
import yaml
from jupyter_client import AsyncKernelManager
from traitlets.config import Config

from .errors import SyllabusError
from .params import (
    PARAMS_DIR,
    PROJECT_ROOT,
    Profile,
    available_profiles,
    load_profile,
    parse_override,
)
from .progress import StageProgress, papermill_engine
from .runs import (
    STAGE_TABLE,
    STAGES,
    STAGING_ENV,
    RunDir,
    RunError,
    atomic_path,
    atomic_write_json,
    default_run_dir,
    hash_file,
    hash_obj,
    hash_path,
    load_json,
    normalise_stage,
    read_json,
    read_run_json,
    stage_params,
)

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
REPORT_FILES = ("report.html", "summary.md")  # syllabus.report.REPORT_FILE, SUMMARY_FILE
PACKAGE_DIR = Path(__file__).resolve().parent

EPILOG = f"""\
stages (run in this order; each reads the artifacts of the earlier ones from the run folder):
{chr(10).join('  ' + s for s in STAGES)}

examples:
  syllabus run                                  # tiny profile, all stages, results/tiny/
  syllabus run --profile ci --stages 01,02      # only stages 01 and 02
  syllabus run --profile params/my.yaml -p seed=7 -p training.learning_rate=1e-3
  syllabus run --run-dir results/tiny-seed7 -p seed=7
  syllabus status --profile tiny                # which stages are done, up to date, stale or missing
  syllabus report results/tiny                  # rebuild report.html and summary.md

profiles in {PARAMS_DIR}: {', '.join(available_profiles())}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syllabus",
        description="Student-centred reasoning distillation: run the stage notebooks with papermill.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="execute stage notebooks in order on a profile",
        description="Execute the stage notebooks in order on a profile, writing into a run folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    run.add_argument("--profile", default="tiny", help="profile name in params/ or a path to a YAML file (default: tiny)")
    run.add_argument("--stages", default="all", help="comma-separated stages, e.g. 01,03 or dmc (default: all)")
    run.add_argument("--run-dir", default=None, help="run folder (default: results/<profile name>)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a profile value, dotted keys (repeatable), "
                          "e.g. -p dmc.params.r0=8 or -p dynamic.seeds=[0,1]")
    run.add_argument("--force", action="store_true", help="re-run stages even when they are up to date")
    run.add_argument("--quiet", action="store_true",
                     help="no progress line on stderr (cells, loops, time left); the stage lines stay")
    run.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    status = sub.add_parser(
        "status", help="say which stages of a run folder are done, up to date, stale (and why) or missing",
        description="For each stage of a run folder: up to date (a run would reuse it), stale (a run would re-run "
                    "it, and which params section, input or code changed), done (finished outside syllabus run) "
                    "or missing, with its last wall time. Starts no work and changes nothing.")
    status.add_argument("--profile", default=None,
                        help="profile to compare with (default: the run folder's own, else tiny)")
    status.add_argument("--run-dir", default=None, help="run folder (default: results/<profile name>)")
    status.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="the overrides a run would get (repeatable)")
    status.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    rebuild = sub.add_parser("report", help="rebuild report.html and summary.md of a run folder",
                             description="Rebuild RUN_DIR/report.html (the executed notebooks on one page, code "
                                         "hidden) and RUN_DIR/summary.md (headline numbers with their CIs).")
    rebuild.add_argument("run_dir", metavar="RUN_DIR")
    check = sub.add_parser("check", help="validate a profile and print the resolved values")
    check.add_argument("--profile", default="tiny")
    check.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    return parser


def parse_stages(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(STAGES)
    chosen = {normalise_stage(part) for part in text.split(",") if part.strip()}
    if not chosen:
        raise RunError("--stages is empty; give e.g. 01,03 or all")
    return [s for s in STAGES if s in chosen]


def code_files() -> dict[str, str]:
    """Hash of every file of the package's source, by path relative to the package."""
    return {str(p.relative_to(PACKAGE_DIR)): hash_file(p)
            for p in sorted(PACKAGE_DIR.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def code_hash(files: dict[str, str] | None = None) -> str:
    """Hash of the package's source, so that a code change re-runs stages."""
    return hash_obj(code_files() if files is None else files)


def stage_key(run: RunDir, stage: str, notebook: Path, params: dict, src_hash: str) -> str:
    upstream = {}
    for earlier in STAGE_TABLE[stage].inputs:
        if run.is_complete(earlier):
            upstream[earlier] = run.manifest(earlier).get("outputs", {})
    return hash_obj({"stage": stage, "params": stage_params(params, stage), "notebook": hash_file(notebook),
                     "code": src_hash, "upstream": upstream})


def key_inputs(run: RunDir, stage: str, notebook: Path, params: dict, files: dict[str, str]) -> dict:
    """What went into a stage's key, part by part (kept in its manifest, so ``status`` can say what changed)."""
    return {
        "params": {section: hash_obj(value) for section, value in stage_params(params, stage).items()},
        "notebook": hash_file(notebook),
        "code": files,
        "upstream": {earlier: hash_obj(run.manifest(earlier).get("outputs", {}))
                     for earlier in STAGE_TABLE[stage].inputs if run.is_complete(earlier)},
    }


def _changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _names(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def why_stale(old: dict | None, new: dict) -> list[str]:
    """The parts of a stage's key that differ between its last run (``old``) and now (``new``)."""
    if not old:
        return ["its inputs changed (it ran under an older syllabus, which kept no record of which)"]
    reasons = []
    if sections := _changed(old.get("params", {}), new["params"]):
        reasons.append(f"params changed: {_names(sections)}")
    if old.get("notebook") != new["notebook"]:
        reasons.append("its notebook changed")
    if files := _changed(old.get("code", {}), new["code"]):
        reasons.append(f"code changed: {_names(files)}")
    for earlier in _changed(old.get("upstream", {}), new["upstream"]):
        reasons.append(f"{earlier} has not finished" if earlier not in new["upstream"]
                       else f"the outputs of {earlier} changed")
    return reasons or ["its cache key changed"]


def changed_outputs(run: RunDir, stage: str, manifest: dict) -> list[str]:
    """The recorded outputs of a finished stage that are missing or differ on disk."""
    return [rel for rel, digest in manifest.get("outputs", {}).items()
            if not (run.stage_dir(stage) / rel).exists() or hash_path(run.stage_dir(stage) / rel) != digest]


def stage_status(run: RunDir, stage: str, notebook: Path, params: dict, files: dict[str, str]) -> dict:
    """``{"stage", "state", "why", "wall_seconds"}``: state is "up to date" (a run reuses it), "stale" (a run
    re-runs it; ``why`` says what changed), "done" (finished outside ``syllabus run``) or "missing"."""
    manifest, damage = run.read_manifest(stage)
    if damage:
        return {"stage": stage, "state": "stale", "why": [f"{damage}; a run re-runs it"], "wall_seconds": None}
    if manifest is None:
        failed = run.stage_dir(stage) / f"{stage}.failed.ipynb"
        why = f"its last run failed ({failed.name} is kept)" if failed.is_file() else "not run yet"
        return {"stage": stage, "state": "missing", "why": [why], "wall_seconds": None}
    status = {"stage": stage, "state": "up to date", "why": [], "wall_seconds": manifest.get("wall_seconds")}
    if "cache_key" not in manifest:
        return status | {"state": "done", "why": ["finished outside syllabus run (no cache key); a run re-runs it"]}
    if manifest["cache_key"] != stage_key(run, stage, notebook, params, code_hash(files)):
        return status | {"state": "stale",
                         "why": why_stale(manifest.get("key_inputs"), key_inputs(run, stage, notebook, params, files))}
    if changed := changed_outputs(run, stage, manifest):
        return status | {"state": "stale", "why": [f"outputs changed on disk since it ran: {_names(changed)}"]}
    return status


def is_up_to_date(run: RunDir, stage: str, key: str) -> bool:
    manifest, _ = run.read_manifest(stage)  # a damaged manifest: not up to date, the stage re-runs
    if manifest is None or manifest.get("cache_key") != key:
        return False
    for rel, digest in manifest.get("outputs", {}).items():
        path = run.stage_dir(stage) / rel
        if not path.exists() or hash_path(path) != digest:
            return False
    return True


# The stage kernels talk to papermill over local IPC sockets, not TCP (ipykernel warns at every TCP
# start that the traffic is unencrypted, and a local run has no use for a network port).
KERNEL_CONFIG = Config({"KernelManager": {"transport": "ipc"}})


class StageKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, except that shutting a stage's kernel down does not interrupt it first.

    jupyter_client sends every kernel SIGINT before its shutdown request; when the signal lands while the
    kernel is still handling a message, ipykernel logs "ERROR | KeyboardInterrupt caught in kernel" after a
    stage that succeeded. A kernel that is still busy (a failed or aborted run) is killed instead once the
    shutdown wait (``shutdown_wait_time``, 5 s) has passed."""

    async def _async_interrupt_kernel(self) -> None:
        if not self.shutting_down:
            await super()._async_interrupt_kernel()


def execute_stage(run: RunDir, stage: str, notebook: Path, on_cell=None) -> None:
    """Run the notebook in the stage's staging folder; the stage folder is not touched. A failing notebook
    is moved beside the stage's previous results as ``<stage>.failed.ipynb``. ``on_cell(i, n)`` hears of
    each code cell."""
    staging = run.begin_staging(stage)
    failed = run.failed_notebook(stage)
    previous_env = os.environ.get(STAGING_ENV)
    os.environ[STAGING_ENV] = str(staging)  # the kernel inherits it: open_stage writes into the staging folder
    try:
        with atomic_path(staging / f"{stage}.ipynb") as tmp:
            try:
                pm.execute_notebook(
                    str(notebook), str(tmp), parameters={"profile": str(run.params_file), "run_dir": str(run.root)},
                    kernel_name="python3", cwd=str(PROJECT_ROOT), progress_bar=False, language="python",
                    config=KERNEL_CONFIG, kernel_manager_class=StageKernelManager, engine_name=papermill_engine(),
                    on_cell=on_cell,
                )
            except BaseException:
                if tmp.exists() and tmp.stat().st_size:
                    failed.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, failed)
                raise
    finally:
        if previous_env is None:
            os.environ.pop(STAGING_ENV, None)
        else:
            os.environ[STAGING_ENV] = previous_env
    if not (staging / "manifest.json").is_file():
        raise RunError(f"notebook {notebook.name} ran but did not call stage.finish(); no manifest in {staging}")


def previous_results(run: RunDir, stage: str) -> str:
    """What a failed run of ``stage`` left in place, in words."""
    if run.is_complete(stage):
        finished = run.manifest(stage).get("finished", "?")
        return f"the previous results of {stage} (finished {finished}) are kept unchanged in {run.stage_dir(stage)}"
    return f"{stage} has no earlier results"


def cmd_run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(p) for p in args.param)
    prof = load_profile(args.profile, overrides)
    stages = parse_stages(args.stages)
    notebooks_dir = Path(args.notebooks_dir)
    run = RunDir(args.run_dir) if args.run_dir else RunDir(default_run_dir(prof))
    for stage in stages:
        if not (notebooks_dir / f"{stage}.ipynb").is_file():
            raise RunError(f"notebook {notebooks_dir / (stage + '.ipynb')} is missing")
    from .preflight import check_runnable  # lazy: loads the ML stack; the command line starts fast without it

    check_runnable(prof)
    with run.lock(" ".join(["syllabus", *sys.argv[1:]])):
        return run_stages(args, prof, run, stages, notebooks_dir)


def run_stages(args: argparse.Namespace, prof, run: RunDir, stages: list[str], notebooks_dir: Path) -> int:
    run.prepare(prof)
    params = prof.to_dict()
    src_files = code_files()
    src_hash = code_hash(src_files)
    print(f"syllabus: profile '{prof.name}' -> {run.root}", flush=True)
    total = time.time()
    reused = 0
    for stage in stages:
        notebook = notebooks_dir / f"{stage}.ipynb"
        key = stage_key(run, stage, notebook, params, src_hash)
        if not args.force and is_up_to_date(run, stage, key):
            print(f"  {stage}: up to date, reused (nothing recomputed; --force to re-run)", flush=True)
            reused += 1
            continue
        start = time.time()
        inputs = key_inputs(run, stage, notebook, params, src_files)
        print(f"  {stage}: running ...", flush=True)
        try:
            with StageProgress(stage, enabled=not args.quiet, folder=run.root) as progress:
                execute_stage(run, stage, notebook, on_cell=progress.cell_started)
        except KeyboardInterrupt:
            print(f"syllabus: interrupted in {stage}; {previous_results(run, stage)}", file=sys.stderr)
            raise
        except Exception as exc:  # papermill wraps kernel errors; keep the first line readable
            reason = str(exc).strip().splitlines()
            last = [line for line in reason if line.strip()][-1] if reason else type(exc).__name__
            print(
                f"syllabus: stage {stage} failed: {last}\n"
                f"  the executed notebook is in {run.failed_notebook(stage)}; {previous_results(run, stage)}; "
                "earlier stages' results are kept",
                file=sys.stderr,
            )
            return 1
        staged_manifest = run.staging_dir(stage) / "manifest.json"
        manifest = read_json(staged_manifest)
        manifest["cache_key"] = key
        manifest["key_inputs"] = inputs
        manifest["wall_seconds"] = round(time.time() - start, 2)
        atomic_write_json(staged_manifest, manifest)
        run.commit_staging(stage)
        print(f"  {stage}: done in {time.time() - start:.1f} s", flush=True)
    print(f"syllabus: {len(stages)} stage(s) in {time.time() - total:.1f} s; results in {run.root}", flush=True)
    written = [run.root / name for name in REPORT_FILES]
    if reused == len(stages) and all(path.is_file() for path in written):
        print(f"syllabus: report unchanged in {written[0]} and {written[1]}", flush=True)
        return 0
    try:
        from . import report  # lazy, as check_runnable

        built = report.build(run)
    except Exception as exc:  # the stages' results are complete; only the report is missing
        print(f"syllabus: the report could not be built ({type(exc).__name__}: {exc}); the stages' results are "
              f"complete; rebuild it with: syllabus report {run.root}", file=sys.stderr)
        return 1
    print(f"syllabus: report in {built['html']} and {built['summary']}", flush=True)
    return 0


def status_target(args: argparse.Namespace) -> tuple[RunDir, Profile]:
    """The run folder and the profile ``syllabus status`` compares it with (what ``syllabus run`` would use)."""
    overrides = dict(parse_override(p) for p in args.param)
    if args.run_dir is None:
        prof = load_profile(args.profile or "tiny", overrides)
        return RunDir(default_run_dir(prof)), prof
    run = RunDir(args.run_dir)
    run_json = run.root / "run.json"
    check_run_folder(run)
    recorded = read_run_json(run_json).get("profile") if run_json.is_file() else None
    if args.profile is not None:
        prof = load_profile(args.profile, overrides)
        if recorded is not None and recorded != prof.name:
            raise RunError(f"run folder '{run.root}' belongs to profile '{recorded}', not '{prof.name}'; "
                           f"leave out --profile to compare it with its own")
    elif recorded is not None and recorded in available_profiles():
        prof = load_profile(recorded, overrides)
    elif run.params_file.is_file():
        prof = load_profile(str(run.params_file), overrides)
    else:
        prof = load_profile("tiny", overrides)
    return run, prof


def check_run_folder(run: RunDir) -> None:
    """Refuse a ``--run-dir`` that is a file, or a folder with files in it but neither a run.json nor a stage's
    manifest: not a run (every run writes run.json first), so "missing" for every stage would misread it. A
    folder that does not exist yet, or an empty one, is a run not started."""
    if run.root.exists() and not run.root.is_dir():
        raise RunError(f"'{run.root}' is a file, not a run folder; give the folder of a run with --run-dir, "
                       "e.g. results/tiny")
    if (run.root.is_dir() and any(run.root.iterdir()) and not (run.root / "run.json").is_file()
            and not any(run.manifest_path(stage).is_file() for stage in STAGES)):
        raise RunError(f"'{run.root}' is not a run folder (no run.json and no <stage>/manifest.json); give the folder "
                       "of a run with --run-dir, e.g. results/tiny, or a new or empty folder for a run not started")


def cmd_status(args: argparse.Namespace) -> int:
    run, prof = status_target(args)
    notebooks_dir = Path(args.notebooks_dir)
    for stage in STAGES:
        if not (notebooks_dir / f"{stage}.ipynb").is_file():
            raise RunError(f"notebook {notebooks_dir / (stage + '.ipynb')} is missing")
    params = prof.to_dict()
    files = code_files()
    where = "no run folder yet" if not run.root.is_dir() else "run folder"
    print(f"syllabus: {where} {run.root}, compared with profile '{prof.name}' ({prof.source_file})")
    rows = {}
    for stage in STAGES:
        row = stage_status(run, stage, notebooks_dir / f"{stage}.ipynb", params, files)
        waiting = [e for e in STAGE_TABLE[stage].inputs if rows[e]["state"] != "up to date"]
        if row["state"] == "up to date" and waiting:
            row["why"].append(f"re-runs if {_names(waiting)} change(s) its outputs when re-run")
        rows[stage] = row
    print(f"  {'stage':<22} {'state':<11} {'last wall time':>14}  why")
    for row in rows.values():
        wall = "-" if row["wall_seconds"] is None else f"{row['wall_seconds']:.1f} s"
        print(f"  {row['stage']:<22} {row['state']:<11} {wall:>14}  {'; '.join(row['why'])}".rstrip())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run = RunDir(args.run_dir)
    if not any(run.is_complete(stage) for stage in STAGES):
        damaged = [f"{stage}'s {why}" for stage in STAGES if (why := run.read_manifest(stage)[1])]
        if damaged:
            info, _ = load_json(run.root / "run.json") if (run.root / "run.json").is_file() else (None, None)
            profile = info.get("profile") if isinstance(info, dict) else None
            raise RunError(f"'{run.root}' holds no finished stage ({'; '.join(damaged)}); re-run the stage(s): "
                           f"syllabus run --run-dir {run.root} --profile {profile or '<its profile>'}")
        raise RunError(f"'{run.root}' holds no finished stage (no <stage>/manifest.json); "
                       "give the folder of a run, e.g. results/tiny")
    from . import report  # lazy, as check_runnable

    built = report.build(run)
    print(f"syllabus: report in {built['html']} and {built['summary']}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(p) for p in args.param)
    prof = load_profile(args.profile, overrides)
    from .preflight import check_runnable  # lazy: loads the ML stack; the command line starts fast without it

    check_runnable(prof)
    print(yaml.safe_dump(prof.to_dict(), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = {"run": cmd_run, "check": cmd_check, "status": cmd_status, "report": cmd_report}
        return commands[args.command](args)
    except SyllabusError as exc:  # every error the package raises on purpose: its message, no traceback
        print(f"syllabus: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("syllabus: interrupted; finished stages are kept, re-run to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
