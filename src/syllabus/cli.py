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

from traitlets.config import Config

from .params import (
    PARAMS_DIR,
    PROJECT_ROOT,
    ParamsError,
    available_profiles,
    check_runnable,
    load_profile,
    parse_override,
)
from .runs import (
    STAGES,
    STAGE_INPUTS,
    STAGING_ENV,
    RunDir,
    RunError,
    atomic_path,
    atomic_write_json,
    default_run_dir,
    hash_file,
    hash_obj,
    hash_path,
    normalise_stage,
    read_json,
)

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PACKAGE_DIR = Path(__file__).resolve().parent

EPILOG = f"""\
stages (run in this order; each reads the artifacts of the earlier ones from the run folder):
{chr(10).join('  ' + s for s in STAGES)}

examples:
  syllabus run                                  # tiny profile, all stages, results/tiny/
  syllabus run --profile ci --stages 01,02      # only stages 01 and 02
  syllabus run --profile params/my.yaml -p seed=7 -p training.learning_rate=1e-3
  syllabus run --run-dir results/tiny-seed7 -p seed=7

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
                     help="override a profile value, dotted keys (repeatable), e.g. -p dmc.lam=2")
    run.add_argument("--force", action="store_true", help="re-run stages even when they are up to date")
    run.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
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


def code_hash() -> str:
    """Hash of the package's source, so that a code change re-runs stages."""
    return hash_obj({str(p.relative_to(PACKAGE_DIR)): hash_file(p)
                     for p in sorted(PACKAGE_DIR.rglob("*")) if p.is_file() and "__pycache__" not in p.parts})


# Profile sections a stage does not read (directly or through its inputs): changing them leaves the
# stage up to date. Everything else, the notebook, the package code and upstream outputs are in its key.
UNUSED_SECTIONS = {
    "01_teacher_selection": ("curation", "dmc", "correlation", "dynamic", "benchmark"),
    "02_trace_curation": ("teacher_selection", "dmc", "correlation", "dynamic", "benchmark"),
    "03_dmc": ("teacher_selection", "curation", "correlation", "dynamic", "benchmark"),
    "04_correlation": ("teacher_selection", "curation", "dynamic", "benchmark"),
    "05_dynamic_selection": ("teacher_selection", "curation", "correlation", "benchmark"),
    "06_benchmark": ("teacher_selection", "curation", "dmc", "correlation", "dynamic"),
}


def stage_params(params: dict, stage: str) -> dict:
    """The part of the resolved profile that a stage depends on."""
    return {k: v for k, v in params.items() if k not in UNUSED_SECTIONS[stage] and k != "description"}


def stage_key(run: RunDir, stage: str, notebook: Path, params: dict, src_hash: str) -> str:
    upstream = {}
    for earlier in STAGE_INPUTS[stage]:
        if run.is_complete(earlier):
            upstream[earlier] = read_json(run.manifest_path(earlier)).get("outputs", {})
    return hash_obj({"stage": stage, "params": stage_params(params, stage), "notebook": hash_file(notebook),
                     "code": src_hash, "upstream": upstream})


def is_up_to_date(run: RunDir, stage: str, key: str) -> bool:
    if not run.is_complete(stage):
        return False
    manifest = read_json(run.manifest_path(stage))
    if manifest.get("cache_key") != key:
        return False
    for rel, digest in manifest.get("outputs", {}).items():
        path = run.stage_dir(stage) / rel
        if not path.exists() or hash_path(path) != digest:
            return False
    return True


# The stage kernels talk to papermill over local IPC sockets, not TCP (ipykernel warns at every TCP
# start that the traffic is unencrypted, and a local run has no use for a network port).
KERNEL_CONFIG = Config({"KernelManager": {"transport": "ipc"}})


def execute_stage(run: RunDir, stage: str, notebook: Path) -> None:
    """Run the notebook in the stage's staging folder; the stage folder is not touched. A failing notebook
    is moved beside the stage's previous results as ``<stage>.failed.ipynb``."""
    import papermill as pm

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
                    config=KERNEL_CONFIG,
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
        finished = read_json(run.manifest_path(stage)).get("finished", "?")
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
    check_runnable(prof)
    with run.lock(" ".join(["syllabus", *sys.argv[1:]])):
        return run_stages(args, prof, run, stages, notebooks_dir)


def run_stages(args: argparse.Namespace, prof, run: RunDir, stages: list[str], notebooks_dir: Path) -> int:
    run.prepare(prof)
    params = prof.to_dict()
    src_hash = code_hash()
    print(f"syllabus: profile '{prof.name}' -> {run.root}", flush=True)
    total = time.time()
    for stage in stages:
        notebook = notebooks_dir / f"{stage}.ipynb"
        key = stage_key(run, stage, notebook, params, src_hash)
        if not args.force and is_up_to_date(run, stage, key):
            print(f"  {stage}: up to date, reused (nothing recomputed; --force to re-run)", flush=True)
            continue
        start = time.time()
        print(f"  {stage}: running ...", flush=True)
        try:
            execute_stage(run, stage, notebook)
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
        manifest["wall_seconds"] = round(time.time() - start, 2)
        atomic_write_json(staged_manifest, manifest)
        run.commit_staging(stage)
        print(f"  {stage}: done in {time.time() - start:.1f} s", flush=True)
    print(f"syllabus: {len(stages)} stage(s) in {time.time() - total:.1f} s; results in {run.root}", flush=True)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import yaml

    overrides = dict(parse_override(p) for p in args.param)
    prof = load_profile(args.profile, overrides)
    check_runnable(prof)
    print(yaml.safe_dump(prof.to_dict(), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        return cmd_check(args)
    except (ParamsError, RunError) as exc:
        print(f"syllabus: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("syllabus: interrupted; finished stages are kept, re-run to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
