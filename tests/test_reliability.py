"""Reliability (issue 8): bad input, secrets, the sandbox through HumanEval scoring, and - on real
``syllabus run`` executions (slow) - determinism, interrupt and resume, and caching.

The slow tests share two pipeline runs of a shrunk ci profile (``SHRINK``; module-scoped fixture):
``reference`` (uninterrupted, an API key in the environment) and ``interrupted`` (another folder,
SIGKILLed at each of ``KILL_POINTS`` and resumed each time); the last test re-runs the reference
folder unchanged, with a forced stage 3, and with changed correlation, benchmark and stage-5 parameters.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from syllabus.cli import main
from syllabus.params import PARAMS_DIR
from syllabus.runs import STAGES, RunDir, RunError, hash_file, open_stage

ROOT = Path(__file__).resolve().parents[1]
SECRET_ENV_KEY = "sk-test-SECRET-reliability-4f2a9c0e7b"


# --------------------------------------------------------------------------- helpers
def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: relative path -> (sha256, mtime in ns)."""
    return {str(p.relative_to(folder)): (hash_file(p), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def files_containing(folder: Path, needle: str) -> list[str]:
    data = needle.encode()
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and data in p.read_bytes()]


@pytest.fixture
def small_run(tmp_path) -> Path:
    """A real (small) run folder of the ci profile: run.json, params.yaml, a finished stage with a table."""
    run_dir = tmp_path / "run"
    stage = open_stage("01_teacher_selection", "ci", run_dir=run_dir)
    stage.save_table(pd.DataFrame({"teacher": ["a", "b"], "gain": [0.1, 0.2]}), "leaderboard")
    stage.save_json({"selected": ["b"]}, "selected_teachers.json")
    stage.finish()
    return run_dir


def ci_profile_with(tmp_path: Path, **sections) -> Path:
    """A copy of params/ci.yaml (same profile name) with some sections replaced."""
    raw = yaml.safe_load((PARAMS_DIR / "ci.yaml").read_text())
    raw.update(sections)
    path = tmp_path / "ci-edited.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --------------------------------------------------------------------------- bad input: clear message, nothing lost
def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], list[str]]]:
    """(arguments after ``run --run-dir R``, words the error must contain)."""
    typo = ci_profile_with(tmp_path, dmc={"lamda": 2.0})
    ci_text = (PARAMS_DIR / "ci.yaml").read_text()
    twice = tmp_path / "ci-seed-twice.yaml"
    twice.write_text(ci_text + "seed: 8\n")
    first_seed = ci_text.splitlines().index("seed: 7") + 1
    return [
        # issue 20: these four used to pass validation and fail inside a stage (or silently re-run everything)
        (["--profile", str(twice)], [str(twice), "key 'seed' is given twice",
                                     f"lines {first_seed} and {len(ci_text.splitlines()) + 1}"]),
        (["--profile", "ci", "-p", "dmc.variant=nonexistent_rule"], ["dmc.variant", "'nonexistent_rule'", "'window'"]),
        (["--profile", "ci", "-p", "dynamic.seeds=[]"], ["dynamic.seeds", "at least 1 item"]),
        (["--profile", "ci", "-p", "teachers.prose.backend=file", "-p", "teachers.prose.path=/nonexistent/traces.jsonl"],
         ["teachers.1.path", "/nonexistent/traces.jsonl", "does not exist", "nothing was started"]),
        (["--profile", str(typo)], [str(typo), "dmc.lamda", "unknown key"]),
        (["--profile", "ci", "-p", "seed=many"], ["key 'seed'", "valid integer", "'many'"]),
        (["--profile", "ci", "-p", "training.batch_size=eight"], ["training.batch_size", "'eight'"]),
        (["--profile", "ci", "-p", "correlation.sft_steps=-5"], ["correlation.sft_steps", "greater than or equal to 1"]),
        (["--profile", "ci", "-p", "dynamic.steps_per_phase=-1"], ["dynamic.steps_per_phase", "greater than"]),
        (["--profile", "ci", "-p", "benchmark.limit=-3"], ["benchmark.limit", "greater than"]),
        (["--profile", "ci", "-p", "data.data_dir=/nonexistent/syllabus-data"],
         ["data.data_dir", "/nonexistent/syllabus-data", "is not a directory", "SYLLABUS_DATA_DIR"]),
        (["--profile", "ci", "-p", "students.lab-xs.source=dir", "-p", "students.lab-xs.model=/nonexistent/model"],
         ["students.0", "/nonexistent/model", "does not exist"]),
        (["--profile", "ci", "-p", "teachers.prose.backend=hf", "-p", "teachers.prose.model=./no/such/model_dir"],
         ["teachers.1", "no/such/model_dir", "does not exist"]),
        (["--profile", "tiny"], ["belongs to profile 'ci'", "nothing was changed"]),
    ]


def test_bad_input_is_refused_before_anything_in_the_run_folder_changes(small_run, tmp_path, capsys):
    before = snapshot(small_run)
    for args, words in _bad_inputs(tmp_path):
        assert main(["run", "--run-dir", str(small_run), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("syllabus: error:"), (args, err)
        for word in words:
            assert word in err, (args, word, err)
        assert snapshot(small_run) == before, args


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_first(small_run, capsys):
    """The lock of ``syllabus run`` held by another process refuses a second run (and a notebook opened by
    hand) at once; killing the holder releases it, and the next run takes over its lock file."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from syllabus.runs import RunDir; "
         "lock = RunDir(sys.argv[1]).lock('syllabus run --profile ci (the first run)').__enter__(); "
         "print('held', flush=True); time.sleep(300)", str(small_run)],
        stdout=subprocess.PIPE, text=True)
    lock_file = small_run / ".syllabus-run.lock"
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(small_run)
        assert main(["run", "--profile", "ci", "--run-dir", str(small_run)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("syllabus: error: run folder"), err
        assert f"in use by another syllabus run (pid {holder.pid} on" in err and "(the first run)" in err, err
        with pytest.raises(RunError, match=f"pid {holder.pid}"):
            open_stage("01", "ci", run_dir=small_run)  # would rewrite params.yaml under the running stages
        assert snapshot(small_run) == before
    finally:
        holder.kill()
        holder.wait()
    assert json.loads(lock_file.read_text())["pid"] == holder.pid  # left behind by a killed holder ...
    with RunDir(small_run).lock("syllabus run (the next run)"):  # ... and taken over: its pid is dead
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()


def test_run_folder_from_another_params_version_is_refused_and_kept(small_run, capsys):
    run_json = small_run / "run.json"
    run_json.write_text(json.dumps({"profile": "ci", "params_version": 0}))
    before = snapshot(small_run)
    assert main(["run", "--profile", "ci", "--run-dir", str(small_run)]) == 2
    err = capsys.readouterr().err
    assert "params_version 0" in err and "use a new --run-dir" in err
    assert snapshot(small_run) == before


def _write_gsm8k(data_dir: Path, lines: list[str]) -> Path:
    path = data_dir / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_data_file_without_usable_rows_names_the_file_and_why(tmp_path):
    from syllabus.data import DataError, load_problems

    path = _write_gsm8k(tmp_path, [])
    with pytest.raises(DataError, match=f"{path}.*is empty"):
        load_problems("gsm8k", "test", data_dir=tmp_path)
    no_answers = [json.dumps({"question": f"What is {i} + 1?"}) for i in range(3)]
    path = _write_gsm8k(tmp_path, no_answers)
    os.utime(path, ns=(1, 1))  # a new modification time: the parse cache must notice
    with pytest.warns(UserWarning, match="skipped malformed row"):
        with pytest.raises(DataError, match=rf"{path}.*none of its 3 rows.*line 1: RowError: field 'answer' missing"):
            load_problems("gsm8k", "test", data_dir=tmp_path)


def test_data_file_with_some_malformed_rows_keeps_the_good_ones(tmp_path):
    from syllabus.data import load_problems

    good = json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"})
    _write_gsm8k(tmp_path, [good, "{torn", json.dumps({"question": "no answer"})])
    with pytest.warns(UserWarning) as caught:
        problems = load_problems("gsm8k", "test", data_dir=tmp_path)
    assert [p.answer for p in problems] == ["5"] and problems.meta["n_skipped"] == 2
    assert [str(w.message).split(": skipped")[0][-12:] for w in caught] == ["test.jsonl:2", "test.jsonl:3"]


# --------------------------------------------------------------------------- secrets
def test_an_openai_teacher_run_writes_no_key_into_the_run_folder(monkeypatch, tmp_path, data_dir):
    """The openai teacher through the stage machinery (generation cache, tables, manifest) against the
    loopback fake endpoint of test_teachers: the key is sent to the endpoint and written nowhere."""
    from test_teachers import SECRET, FakeEndpoint

    from syllabus import generation
    from syllabus.problems import problem_splits
    from syllabus.stages.teacher_selection import traces_table

    profile = ci_profile_with(tmp_path, teachers=[{"name": "api", "backend": "openai", "model": "fake-model",
                                                   "sampling": {"temperature": 0.5, "max_new_tokens": 64}}],
                              data={"task": "gsm8k", "n_pool": 3, "n_probe": 2, "n_heldout": 2,
                                    "eval_sets": ["gsm8k"], "pool_split": "test", "data_dir": str(data_dir)})
    run_dir = tmp_path / "run"
    with FakeEndpoint() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        stage = open_stage("01_teacher_selection", profile, run_dir=run_dir)
        splits = problem_splits(stage.params)
        runs = generation.teacher_traces(stage, splits.pool, 2)
        stage.save_table(traces_table(runs), "traces")
        stage.note(teachers={name: run.n_generated for name, run in runs.items()})
        stage.finish()
    assert fake.requests and all(r["auth"] == f"Bearer {SECRET}" for r in fake.requests)  # the key was used
    assert len(runs["api"].traces) == 6
    assert list((run_dir / "cache" / "generations").rglob("shard-*.jsonl"))
    assert files_containing(run_dir, SECRET) == []


# --------------------------------------------------------------------------- sandbox through HumanEval scoring
HOSTILE_BODIES = {
    "loops forever": "    while True:\n        pass\n",
    "forks": "    import os\n    while True:\n        if os.fork() == 0:\n            os.execv('/bin/sleep', ['sleep', '{mark}'])\n",
    "allocates without bound": "    blocks = []\n    while True:\n        blocks.append(bytearray(64 * 2**20))\n",
    "deletes files": "    import os, shutil\n    os.remove({victim_file!r})\n    shutil.rmtree({victim_dir!r})\n    return True\n",
    "opens a connection": "    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n"
                          "    return True\n",
}


@pytest.fixture(scope="module")
def humaneval_task():
    """The shipped ``syllabus_humaneval`` lm-eval task, loaded as lm-eval loads it (3 s per program)."""
    from lm_eval.tasks import TaskManager

    from syllabus import evaluate

    manager = TaskManager(include_path=str(evaluate.TASKS_DIR), include_defaults=False,
                          metadata={"code_timeout_s": 3, "code_memory_mb": 256})
    task = manager.load(["syllabus_humaneval"])["tasks"]["syllabus_humaneval"]
    return task, list(task.test_docs())[0]


def test_model_written_code_is_contained_and_fails_through_the_humaneval_scorer(humaneval_task, tmp_path):
    from test_sandbox import _processes_with

    from syllabus.evaluate import code_eval_allowed

    task, doc = humaneval_task
    assert doc["entry_point"] == "has_close_elements" and doc["timeout_s"] == 3
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim_file = tmp_path / "keep.txt"
    victim_file.write_text("host data")
    (victim_dir / "inner.txt").write_text("host data")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    mark = f"77{os.getpid()}.25"
    fill = {"victim_file": str(victim_file), "victim_dir": str(victim_dir), "port": listener.getsockname()[1],
            "mark": mark}
    with code_eval_allowed(True):
        assert task.process_results(doc, [doc["solution"]]) == {"pass@1": 1.0}  # the path does pass good code
        for what, body in HOSTILE_BODIES.items():
            start = time.monotonic()
            assert task.process_results(doc, [body.format(**fill)]) == {"pass@1": 0.0}, what
            assert time.monotonic() - start < 30, what
    with pytest.raises(socket.timeout):
        listener.accept()  # no connection ever reached the host
    listener.close()
    assert victim_file.read_text() == "host data" and (victim_dir / "inner.txt").is_file()
    assert _processes_with(f"sleep {mark}") == []


# =========================================================================== real pipeline runs (slow)
# The ci profile, shrunk further so that the three runs of this file fit in about ten minutes.
ONE_STUDENT = "[{name: lab-xs, source: lab, arch: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}, " \
              "warmup_steps: 20}]"
SHRINK = ("-p", "data.n_pool=30", "-p", "data.n_heldout=16", "-p", "data.n_probe=12", "-p", "curation.adapter=false",
          "-p", f"students={ONE_STUDENT}", "-p", "dynamic.policies=[dmc_dynamic,random]", "-p", "benchmark.limit=4",
          "-p", "benchmark.max_gen_toks=48", "-p", "student_generation.max_new_tokens=96")
TABLE_SUFFIXES = (".csv", ".parquet")


def syllabus_cmd(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "syllabus.cli", "run", "--profile", "ci", "--run-dir", str(run_dir), *SHRINK, *args]


def syllabus(run_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(syllabus_cmd(run_dir, *args), capture_output=True, text=True, cwd=ROOT, timeout=1200,
                         env=env)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    return out


def tables(run_dir: Path) -> dict[str, str]:
    """Every result table of every stage: relative path -> sha256."""
    return {str(p.relative_to(run_dir)): hash_file(p) for stage in STAGES
            for p in sorted((run_dir / stage / "tables").glob("*")) if p.suffix in TABLE_SUFFIXES}


def is_temp_name(path: Path, root: Path) -> bool:
    """A hidden temporary name (``.name.XXXX.tmp``, ``.lm_eval-XXXX``, ...) or something inside one."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def unreadable_files(run_dir: Path) -> list[str]:
    """Files (outside hidden temporary names) that do not parse: json, ipynb, jsonl, parquet, csv, pt."""
    import torch

    bad = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not is_temp_name(p, run_dir)):
        try:
            if path.suffix in (".json", ".ipynb"):
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    if line.strip():
                        json.loads(line)
            elif path.suffix == ".parquet":
                pd.read_parquet(path)
            elif path.suffix == ".csv":
                pd.read_csv(path)
            elif path.suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=False)
            elif path.suffix == ".safetensors":
                from safetensors.torch import load_file

                load_file(path)
        except Exception as exc:  # noqa: BLE001 - any failure to parse is the finding
            bad.append(f"{path.relative_to(run_dir)}: {type(exc).__name__}: {exc}")
    return bad


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until the processes have exited; return those still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _alive(pid)]
    return alive


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_until_killed(run_dir: Path, ready, what: str, env: dict) -> dict:
    """Start ``syllabus run``, SIGKILL its whole process group as soon as ``ready(run_dir)``; report the state."""
    log = run_dir.parent / f"{run_dir.name}-{what}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(syllabus_cmd(run_dir), stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        deadline = time.monotonic() + 900
        while not ready(run_dir):
            assert proc.poll() is None, f"the run ended before '{what}': {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"'{what}' never happened"
            time.sleep(0.1)
        kernels = descendants(proc.pid)  # papermill's kernel runs in a process group of its own
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    orphans = wait_gone(kernels, 10.0)  # a kernel notices that its parent died and exits ...
    for pid in orphans:  # ... or is killed too, as in a machine crash
        os.kill(pid, signal.SIGKILL)
    wait_gone(orphans, 5.0)
    output = log.read_text()
    running = [line.split(":")[0].strip() for line in output.splitlines() if line.endswith("running ...")]
    return {"what": what, "killed_in": running[-1] if running else None, "output": output, "kernel_orphans": orphans,
            "unreadable": unreadable_files(run_dir),
            "temp_names": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*"))}


def _first_smoke_training(run_dir: Path) -> bool:
    return any((run_dir / "cache" / "sft").glob("smoke-*"))


class _DmcScoring:
    """True once stage 3 has written a new part of the scoring cache (stage 2 may have written some)."""

    def __init__(self):
        self.before: int | None = None

    def __call__(self, run_dir: Path) -> bool:
        parts = len(list((run_dir / "cache" / "scores").glob("*/part-*.parquet")))
        if self.before is None and RunDir(run_dir).staging_dir("03_dmc").is_dir():
            self.before = parts
        return self.before is not None and parts > self.before


def _second_dynamic_phase(run_dir: Path) -> bool:
    return any((run_dir / "cache" / "dynamic").glob("*/seed*/phase1-*"))


KILL_POINTS = (("stage 1 smoke training", _first_smoke_training, "01_teacher_selection"),
               ("stage 3 scoring", _DmcScoring(), "03_dmc"),
               ("stage 5 training", _second_dynamic_phase, "05_dynamic_selection"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run of all stages (API key in the environment). Tests that change a run folder
    copy it (``finished_copy``); only ``test_reruns_recompute_only_what_changed`` re-runs it in place."""
    root = tmp_path_factory.mktemp("pipeline")
    env = {**os.environ, "OPENAI_API_KEY": SECRET_ENV_KEY}
    reference = root / "reference"
    first = syllabus(reference, env=env)
    return {"root": root, "reference": reference, "reference_output": first.stdout + first.stderr,
            "reference_tables": tables(reference), "reference_files": snapshot(reference)}


@pytest.fixture(scope="module")
def pipeline(reference_run):
    """The reference run and, in another folder, a run killed at each of ``KILL_POINTS`` and resumed each
    time; both with the same seed."""
    env = {**os.environ, "OPENAI_API_KEY": SECRET_ENV_KEY}
    result = dict(reference_run)
    interrupted = reference_run["root"] / "interrupted"
    kills = []
    for what, ready, _stage in KILL_POINTS:
        kills.append(run_until_killed(interrupted, ready, what, env))
    final = syllabus(interrupted, env=env)
    result.update(interrupted=interrupted, kills=kills, final_output=final.stdout,
                  interrupted_tables=tables(interrupted), interrupted_unreadable=unreadable_files(interrupted))
    return result


@pytest.mark.slow
@pytest.mark.notebooks
def test_two_seeded_runs_in_two_folders_give_byte_identical_tables(pipeline):
    ref, other = pipeline["reference_tables"], pipeline["interrupted_tables"]
    assert len(ref) >= 2 * 6 and {Path(p).parts[0] for p in ref} == set(STAGES)
    differing = sorted(p for p in ref if ref[p] != other.get(p))
    assert sorted(other) == sorted(ref) and differing == [], differing


@pytest.mark.slow
@pytest.mark.notebooks
def test_killed_runs_resume_and_never_leave_a_half_written_artifact(pipeline):
    for kill, (what, _ready, stage) in zip(pipeline["kills"], KILL_POINTS):
        assert kill["killed_in"] == stage, (what, kill["output"][-2000:])
        assert kill["unreadable"] == [], (what, kill["unreadable"])
        # the killed stage's progress file was in the run folder (not in the system's /tmp), under a temporary name
        assert any(name.startswith(f".progress-{stage}.") for name in kill["temp_names"]), kill["temp_names"]
    # each restart reused the stages the killed run had finished and re-ran the one it was killed in
    assert "02_trace_curation: up to date" in pipeline["kills"][2]["output"]
    assert pipeline["final_output"].count("up to date") == 4 and "05_dynamic_selection: running" in pipeline["final_output"]
    assert pipeline["interrupted_unreadable"] == []
    leftovers = sorted(str(p.relative_to(pipeline["interrupted"])) for p in pipeline["interrupted"].rglob(".*"))
    assert leftovers == [], leftovers


@pytest.mark.slow
@pytest.mark.notebooks
def test_an_api_key_in_the_environment_is_written_nowhere(pipeline):
    assert files_containing(pipeline["reference"], SECRET_ENV_KEY) == []  # notebooks, manifests, caches, logs
    assert SECRET_ENV_KEY not in pipeline["reference_output"]


@pytest.mark.slow
@pytest.mark.notebooks
def test_reruns_recompute_only_what_changed(pipeline):
    """Extends test_cli's reuse check: unchanged inputs leave every file as it was; a forced stage 3
    re-scores nothing (inner caches); a changed correlation parameter re-runs stage 4 alone (stages 5-6 do not
    read it), and then one changed benchmark parameter re-runs stage 6 alone."""
    run_dir = pipeline["reference"]
    contents = lambda: {p: digest for p, (digest, _) in snapshot(run_dir).items()}  # noqa: E731
    before = contents()
    assert before == {p: d for p, (d, _) in pipeline["reference_files"].items()}

    again = syllabus(run_dir)
    assert again.stdout.count("up to date, reused") == len(STAGES), again.stdout
    assert contents() == before

    cache_files = {p for p in before if p.startswith("cache/")}
    forced = syllabus(run_dir, "--stages", "03", "--force")
    assert "03_dmc: running" in forced.stdout
    after_force = contents()
    assert {p for p in after_force if p.startswith("cache/")} == cache_files  # nothing new scored or sampled
    notes = json.loads((run_dir / "03_dmc" / "manifest.json").read_text())["notes"]
    assert notes["scoring"]["n_scored"] == 0 and notes["scoring"]["n_cached"] > 0, notes
    assert {p: d for p, d in after_force.items() if "/tables/" in p} == {p: d for p, d in before.items()
                                                                          if "/tables/" in p}
    stats_only = syllabus(run_dir, "-p", "correlation.permutations=50")  # stage 5 and 6 read nothing of stage 4
    assert stats_only.stdout.count("up to date, reused") == len(STAGES) - 1, stats_only.stdout
    assert "04_correlation: running" in stats_only.stdout
    changed = syllabus(run_dir, "-p", "correlation.permutations=50", "-p", "benchmark.limit=3")
    assert changed.stdout.count("up to date, reused") == len(STAGES) - 1, changed.stdout
    assert "06_benchmark: running" in changed.stdout
    results = pd.read_parquet(run_dir / "06_benchmark" / "tables" / "results.parquet")
    assert set(results["limit"]) == {3}
    # a changed stage-5 budget trains new phases beside the old checkpoints (it must never meet another run's
    # checkpoint in the same folder), and stage 6 follows because the final weights changed
    longer = syllabus(run_dir, "-p", "correlation.permutations=50", "-p", "benchmark.limit=3",
                      "-p", "dynamic.steps_per_phase=5")
    assert longer.stdout.count("up to date, reused") == len(STAGES) - 2, longer.stdout
    assert "05_dynamic_selection: running" in longer.stdout and "06_benchmark: running" in longer.stdout


def test_preparing_a_run_folder_removes_what_killed_writers_left_and_nothing_else(small_run):
    from syllabus.runs import RunDir, atomic_path, is_temp_name
    from syllabus.params import load_profile

    stage_dir = small_run / "01_teacher_selection"
    with pytest.raises(KeyboardInterrupt):  # a writer interrupted half-way cleans up after itself ...
        with atomic_path(stage_dir / "manifest.json") as tmp:
            tmp.write_text('{"half')
            raise KeyboardInterrupt
    assert json.loads((stage_dir / "manifest.json").read_text())["stage"] == "01_teacher_selection"
    assert not list(stage_dir.glob(".manifest.json.*"))
    # ... but one killed with SIGKILL cannot: its hidden temporary names stay behind
    leftovers = [stage_dir / ".01_teacher_selection.ipynb.k1l2ed.tmp.ipynb", small_run / "cache" / ".lab-xs.ab12cd.tmp",
                 stage_dir / "lm_eval" / "m" / ".lm_eval-zz9.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".tmp":
            path.mkdir()
            (path / "config.json").write_text("{")
        else:
            path.write_text("{")
    keep = [small_run / "cache" / ".gitignore", stage_dir / ".notes.json", stage_dir / "tables" / "leaderboard.csv"]
    keep[0].write_text("*\n")
    keep[1].write_text("{}")
    assert all(is_temp_name(p.name) for p in leftovers) and not any(is_temp_name(p.name) for p in keep)
    before = snapshot(small_run)
    RunDir(small_run).prepare(load_profile("ci"))
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)
    after = snapshot(small_run)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()
                                                   if not any(part.endswith((".tmp", ".tmp.ipynb"))
                                                              for part in Path(k).parts)}


# --------------------------------------------------------------------------- issue 20: a re-run never costs a result
CHANGED_CURATION = ("-p", "curation.keep_per_problem=1")  # stage 2's tables change; stages 1 and 2 stay cheap


def finished_copy(reference_run, tmp_path: Path) -> Path:
    """A copy of the finished reference run folder, to re-run stages in."""
    import shutil

    target = tmp_path / "run"
    shutil.copytree(reference_run["reference"], target, symlinks=True)
    return target


def stage_contents(run_dir: Path, stage: str) -> dict[str, str]:
    """Every file of a stage folder: relative path -> sha256."""
    return {str(p.relative_to(run_dir / stage)): hash_file(p) for p in sorted((run_dir / stage).rglob("*"))
            if p.is_file()}


def failing_notebooks(tmp_path: Path, stage: str) -> Path:
    """A notebooks folder whose ``stage`` raises after writing all its tables, just before ``stage.finish()``."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = json.loads((ROOT / "notebooks" / f"{stage}.ipynb").read_text())
    finish = next(i for i, c in enumerate(nb["cells"]) if "stage.finish()" in "".join(c["source"]))
    nb["cells"].insert(finish, {"cell_type": "code", "execution_count": None, "id": "injected-failure", "metadata": {},
                                "outputs": [], "source": ["raise RuntimeError('injected failure before stage.finish()')"]})
    (folder / f"{stage}.ipynb").write_text(json.dumps(nb))
    return folder


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_stage_that_fails_on_re_run_keeps_its_previous_results(reference_run, tmp_path):
    run_dir, stage = finished_copy(reference_run, tmp_path), "02_trace_curation"
    before = stage_contents(run_dir, stage)
    out = subprocess.run(syllabus_cmd(run_dir, "--stages", "02", *CHANGED_CURATION, "--notebooks-dir",
                                      str(failing_notebooks(tmp_path, stage))),
                         capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert "injected failure" in out.stderr and f"the previous results of {stage} (finished" in out.stderr, out.stderr
    after = stage_contents(run_dir, stage)
    assert after.pop(f"{stage}.failed.ipynb")  # the failed notebook, beside the previous results ...
    assert after == before  # ... which are byte for byte as they were: tables, figures, notebook, manifest
    staged = RunDir(run_dir).staging_dir(stage) / "tables" / "candidates.parquet"
    assert hash_file(staged) != before["tables/candidates.parquet"]  # the failed run did write other tables
    again = syllabus(run_dir, "--stages", "02")  # the old parameters: still up to date, nothing recomputed
    assert f"{stage}: up to date" in again.stdout, again.stdout


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_sigkill_during_a_re_run_of_a_finished_stage_keeps_its_previous_results(reference_run, tmp_path):
    run_dir, stage = finished_copy(reference_run, tmp_path), "02_trace_curation"
    before = stage_contents(run_dir, stage)
    staging = RunDir(run_dir).staging_dir(stage)
    started = time.time_ns()

    def new_table_written(_run_dir: Path) -> bool:
        tables_dir = staging / "tables"
        return any(entry.stat().st_mtime_ns > started for entry in os.scandir(tables_dir)
                   if entry.name.endswith(".parquet") and not entry.name.startswith(".")) if tables_dir.is_dir() else False

    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(syllabus_cmd(run_dir, "--stages", "02", *CHANGED_CURATION), stdout=fh,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 900
        while not new_table_written(run_dir):
            assert proc.poll() is None, f"the run ended before writing a table: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "stage 2 never wrote a table"
            time.sleep(0.05)
        kernels = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in wait_gone(kernels, 10.0):
        os.kill(pid, signal.SIGKILL)
    assert stage_contents(run_dir, stage) == before, log.read_text()[-2000:]
    assert unreadable_files(run_dir) == []
    again = syllabus(run_dir, "--stages", "02")  # the old parameters: still up to date, nothing recomputed
    assert f"{stage}: up to date" in again.stdout, again.stdout
