"""What a user sees around a run (issue 19): progress on stderr, ``syllabus status`` and the report.

Most tests share one real ``syllabus run`` (papermill, real kernels) of two small stand-in notebooks
for stages 01 and 02 (``--notebooks-dir``): each opens its stage, runs a reported loop, saves a table
and a figure. The report of a whole ci run is checked in test_cli's notebook test.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from syllabus import cli, progress, report
from syllabus.cli import main
from syllabus.runs import STAGES, RunDir, is_temp_name

ROOT = Path(__file__).resolve().parents[1]
LOOP = "stand-in loop"


def stand_in_notebook(stage: str) -> nbformat.NotebookNode:
    params = nbformat.v4.new_code_cell('profile = "ci"\nrun_dir = None')
    params.metadata["tags"] = ["parameters"]
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# Stand-in for {stage}"),
        params,
        nbformat.v4.new_code_cell(
            "import time\n\nimport matplotlib.pyplot as plt\nimport pandas as pd\n\n"
            "from syllabus import progress\nfrom syllabus.runs import open_stage\n\n"
            f'stage = open_stage("{stage}", profile, run_dir=run_dir)'),
        nbformat.v4.new_code_cell(
            f'for i in progress.track(range(3), "{LOOP}"):\n    time.sleep(0.7)\n'
            'stage.save_table(pd.DataFrame({"x": [1, 2, 3]}), "numbers")'),
        nbformat.v4.new_code_cell('fig, ax = plt.subplots()\nax.plot([1, 3, 2])\nstage.save_figure(fig, "line")'),
        nbformat.v4.new_markdown_cell("**What to notice.** The line goes up, then down."),
        nbformat.v4.new_code_cell("stage.finish();"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def syllabus(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "syllabus.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    notebooks = root / "notebooks"
    notebooks.mkdir()
    for stage in STAGES:
        nbformat.write(stand_in_notebook(stage), notebooks / f"{stage}.ipynb")
    run_dir = root / "run"
    common = ["--profile", "ci", "--run-dir", str(run_dir), "--notebooks-dir", str(notebooks)]
    fresh = syllabus("status", "--profile", "ci", "--run-dir", str(run_dir), "--notebooks-dir", str(notebooks))
    first = syllabus("run", *common, "--stages", "01,02")
    assert first.returncode == 0, first.stdout + first.stderr
    tables = {p: p.read_bytes() for p in sorted(run_dir.glob("*/tables/*"))}
    quiet = syllabus("run", *common, "--stages", "01", "--force", "--quiet")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    return {"root": root, "notebooks": notebooks, "run_dir": run_dir, "fresh": fresh, "first": first,
            "quiet": quiet, "tables": tables}


def status_rows(text: str) -> dict[str, str]:
    """stage -> the rest of its line in ``syllabus status`` output."""
    return {line.split()[0]: line.split(None, 1)[1] for line in text.splitlines() if line.strip()[:2].isdigit()}


def call_status(capsys, run: dict, *extra: str) -> dict[str, str]:
    assert main(["status", "--run-dir", str(run["run_dir"]), "--notebooks-dir", str(run["notebooks"]), *extra]) == 0
    return status_rows(capsys.readouterr().out)


# --------------------------------------------------------------------------- progress
def test_progress_goes_to_stderr_with_cells_and_loops_and_never_into_tables(stand_in):
    first = stand_in["first"]
    for stage in ("01_teacher_selection", "02_trace_curation"):
        lines = [line for line in first.stderr.splitlines() if line.strip().startswith(f"{stage}: ")]
        assert any(" cell " in line and "/6" in line for line in lines), first.stderr
        assert any(f"{LOOP} 3/3" in line for line in lines), first.stderr
    assert "cell " not in first.stdout and LOOP not in first.stdout  # stdout keeps the stage lines only
    assert "01_teacher_selection: running ..." in first.stdout
    for path, data in stand_in["tables"].items():
        assert LOOP.encode() not in data and b"cell" not in data, path
    # the quiet re-run: no progress at all, the same table bytes
    assert LOOP not in stand_in["quiet"].stderr and " cell " not in stand_in["quiet"].stderr
    assert {p: p.read_bytes() for p in stand_in["tables"]} == stand_in["tables"]
    assert not any(stand_in["run_dir"].rglob("events.jsonl"))  # the progress file is gone once the stage ends


def wait_for(condition, timeout: float = 20.0) -> None:
    """Poll until ``condition()`` holds (the display reads events in its own thread)."""
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.02)


def test_progress_line_counts_cells_and_estimates_time_left(tmp_path):
    out = io.StringIO()
    with progress.StageProgress("04_correlation", stream=out, interval=0.02, log_interval=60,
                                folder=tmp_path) as shown:
        events = Path(os.environ[progress.ENV_VAR])  # what the kernel will inherit
        assert events.is_file()
        # in the run folder under a temporary name: what a killed run leaves, the next run's prepare removes
        assert events.parent.parent == tmp_path and is_temp_name(events.parent.name)
        shown.cell_started(3, 9)
        with progress.task("grid cells", 4) as cells:
            for _ in range(2):
                time.sleep(0.1)
                cells.advance()
            wait_for(lambda: "grid cells 2/4" in shown.line())
            line = shown.line()
            cells.advance(2)
    assert progress.ENV_VAR not in os.environ and not events.parent.exists()
    assert line.startswith("  04_correlation: cell 3/9, ") and "grid cells 2/4, ~" in line and "s left" in line
    assert "grid cells 4/4 in " in out.getvalue()  # the finished loop is logged even within log_interval


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_redrawn_in_place_and_cleared_at_the_end():
    screen = Terminal()
    with progress.StageProgress("05_dynamic_selection", stream=screen, interval=0.02) as shown:
        shown.cell_started(2, 7)
        with progress.task("policy x seed runs", 6):
            wait_for(lambda: "policy x seed runs 0/6" in screen.getvalue())
    text = screen.getvalue()
    assert "\n" not in text and text.endswith("\r\x1b[K")
    assert re.search(r"\r\x1b\[K  05_dynamic_selection: cell 2/7, \d+s \| policy x seed runs 0/6", text), text


def test_loops_write_nothing_without_a_progress_file(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    assert list(progress.track(["a", "b"], "anything")) == ["a", "b"]
    with progress.StageProgress("01", enabled=False, stream=io.StringIO()) as off:
        assert progress.ENV_VAR not in os.environ and off.line()  # disabled (--quiet): the kernel gets no file


# --------------------------------------------------------------------------- status
def test_status_of_a_fresh_run_folder_says_every_stage_is_missing(stand_in):
    fresh = stand_in["fresh"]
    assert fresh.returncode == 0, fresh.stderr
    assert "no run folder yet" in fresh.stdout
    rows = status_rows(fresh.stdout)
    assert list(rows) == list(STAGES) and all(r.startswith("missing") and "not run yet" in r for r in rows.values())


def test_status_of_a_finished_run_says_up_to_date_with_wall_times_and_changes_nothing(stand_in, capsys):
    before = {p: p.stat().st_mtime_ns for p in stand_in["run_dir"].rglob("*")}
    rows = call_status(capsys, stand_in)
    for stage in ("01_teacher_selection", "02_trace_curation"):
        assert rows[stage].startswith("up to date") and " s" in rows[stage], rows
    assert rows["03_dmc"].startswith("missing")
    assert {p: p.stat().st_mtime_ns for p in stand_in["run_dir"].rglob("*")} == before


def test_status_of_a_partly_changed_run_says_what_changed(stand_in, capsys, monkeypatch, tmp_path):
    run = dict(stand_in)
    # a params section that stage 02 reads and stage 01 does not
    rows = call_status(capsys, run, "-p", "curation.easy_pass_rate=0.5")
    assert rows["01_teacher_selection"].startswith("up to date")
    assert rows["02_trace_curation"].startswith("stale") and "params changed: curation" in rows["02_trace_curation"]
    # a changed notebook: stage 01 stale, stage 02 waits on it
    notebooks = tmp_path / "notebooks"
    shutil.copytree(stand_in["notebooks"], notebooks)
    nb = nbformat.read(notebooks / "01_teacher_selection.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("one more remark"))
    nbformat.write(nb, notebooks / "01_teacher_selection.ipynb")
    run["notebooks"] = notebooks
    rows = call_status(capsys, run)
    assert rows["01_teacher_selection"].startswith("stale") and "its notebook changed" in rows["01_teacher_selection"]
    assert rows["02_trace_curation"].startswith("up to date") and "re-runs if 01_teacher_selection" in rows["02_trace_curation"]
    # changed package code, named by file
    files = cli.code_files()
    monkeypatch.setattr(cli, "code_files", lambda: {**files, "dmc_factors.py": "0" * 64})
    rows = call_status(capsys, stand_in)
    assert all(rows[s].startswith("stale") and "code changed: dmc_factors.py" in rows[s]
               for s in ("01_teacher_selection", "02_trace_curation")), rows


def test_status_notices_an_output_changed_on_disk_and_a_failed_stage(stand_in, capsys, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(stand_in["run_dir"], run_dir)
    (run_dir / "02_trace_curation" / "tables" / "numbers.csv").write_text("x\n9\n")
    (run_dir / "03_dmc").mkdir()
    (run_dir / "03_dmc" / "03_dmc.failed.ipynb").write_text("{}")
    rows = call_status(capsys, {**stand_in, "run_dir": run_dir})
    assert rows["02_trace_curation"].startswith("stale") and "tables/numbers.csv" in rows["02_trace_curation"]
    assert rows["03_dmc"].startswith("missing") and "failed" in rows["03_dmc"]


def test_status_refuses_a_profile_the_run_folder_does_not_belong_to(stand_in, capsys):
    assert main(["status", "--profile", "tiny", "--run-dir", str(stand_in["run_dir"])]) == 2
    assert "belongs to profile 'ci'" in capsys.readouterr().err


def test_a_damaged_manifest_is_reported_and_the_next_run_re_runs_the_stage(stand_in, capsys, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(stand_in["run_dir"], run_dir)
    manifest = run_dir / "01_teacher_selection" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:200])  # cut short, as a full disk or a copy outside syllabus leaves it
    tables = {p: p.read_bytes() for p in sorted((run_dir / "01_teacher_selection").rglob("tables/*"))}
    rows = call_status(capsys, {**stand_in, "run_dir": run_dir})
    assert rows["01_teacher_selection"].startswith("stale"), rows
    assert "damaged manifest.json: not valid JSON" in rows["01_teacher_selection"] and "a run re-runs it" in rows[
        "01_teacher_selection"]
    assert rows["02_trace_curation"].startswith("stale")  # what it read is no longer vouched for
    assert main(["report", str(run_dir)]) == 0  # stage 02's results are still reported
    capsys.readouterr()
    common = ["--profile", "ci", "--run-dir", str(run_dir), "--notebooks-dir", str(stand_in["notebooks"]), "--quiet"]
    assert main(["run", *common, "--stages", "01"]) == 0
    assert "01_teacher_selection: running ..." in capsys.readouterr().out
    assert json.loads(manifest.read_text())["stage"] == "01_teacher_selection"
    assert {p: p.read_bytes() for p in tables} == tables  # the seeded re-run wrote the same tables
    assert call_status(capsys, {**stand_in, "run_dir": run_dir})["01_teacher_selection"].startswith("up to date")


def test_a_damaged_run_json_is_one_clear_line_naming_it_and_the_fix(stand_in, capsys, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(stand_in["run_dir"], run_dir)
    (run_dir / "run.json").write_text('{"profile": "c')
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main(["status", "--run-dir", str(run_dir), "--notebooks-dir", str(stand_in["notebooks"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run_dir / 'run.json'} is damaged (not valid JSON" in err
    assert "delete it and run again with the run's profile" in err
    common = ["--profile", "ci", "--run-dir", str(run_dir), "--notebooks-dir", str(stand_in["notebooks"])]
    assert main(["run", *common]) == 2
    assert "run.json is damaged" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_report_of_a_folder_whose_only_stage_has_a_damaged_manifest_says_so(tmp_path, capsys):
    (tmp_path / "run.json").write_text('{"profile": "ci", "params_version": 1}')
    (tmp_path / "01_teacher_selection").mkdir()
    (tmp_path / "01_teacher_selection" / "manifest.json").write_text('{"stage": "01_tea')
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "01_teacher_selection's damaged manifest.json" in err and f"--run-dir {tmp_path} --profile ci" in err


def test_status_of_a_folder_that_is_not_a_run_says_so_instead_of_every_stage_missing(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x\n")
    assert main(["status", "--run-dir", str(notes)]) == 2
    err = capsys.readouterr().err
    assert err == (f"syllabus: error: '{notes}' is not a run folder (no run.json and no <stage>/manifest.json); give "
                   "the folder of a run with --run-dir, e.g. results/tiny, or a new or empty folder for a run not "
                   "started\n")
    assert main(["status", "--run-dir", str(notes / "todo.txt")]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    for fresh in (tmp_path / "empty", tmp_path / "new"):  # a run not started: every stage missing
        assert main(["status", "--run-dir", str(fresh)]) == 0
        assert status_rows(capsys.readouterr().out)["01_teacher_selection"].startswith("missing")


def test_why_stale_names_each_changed_part():
    old = {"params": {"seed": "a", "dmc": "b"}, "notebook": "n", "code": {"x.py": "1"}, "upstream": {"01": "o"}}
    new = {"params": {"seed": "a", "dmc": "c"}, "notebook": "m", "code": {"x.py": "1", "y.py": "2"}, "upstream": {}}
    assert cli.why_stale(old, new) == ["params changed: dmc", "its notebook changed", "code changed: y.py",
                                       "01 has not finished"]
    assert "older syllabus" in cli.why_stale(None, new)[0]


# --------------------------------------------------------------------------- report
def test_the_run_writes_a_report_with_every_figure_and_what_to_notice(stand_in):
    run_dir = stand_in["run_dir"]
    html = (run_dir / "report.html").read_text()
    for stage in ("01_teacher_selection", "02_trace_curation"):
        png = base64.b64encode((run_dir / stage / "figures" / "line.png").read_bytes()).decode()
        assert png in html and f'id="{stage}"' in html
    assert html.count("What to notice.") == 2 and "stage.save_figure" not in html  # code is hidden
    assert LOOP not in html  # no stderr, no progress
    summary = (run_dir / "summary.md").read_text()
    assert summary.startswith("# syllabus run `run` (profile ci)") and "| 03_dmc | not finished |" in summary


def test_report_files_are_the_ones_the_run_checks_before_skipping_an_unchanged_report():
    assert cli.REPORT_FILES == (report.REPORT_FILE, report.SUMMARY_FILE)


def test_report_command_rebuilds_the_same_files(stand_in, capsys):
    run_dir = stand_in["run_dir"]
    before = {name: (run_dir / name).read_bytes() for name in (report.REPORT_FILE, report.SUMMARY_FILE)}
    (run_dir / report.REPORT_FILE).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / report.REPORT_FILE) in capsys.readouterr().out
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_report_of_a_folder_without_finished_stages_is_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no finished stage" in capsys.readouterr().err


def test_wilson_interval():
    lo, hi = report.wilson(0, 20)
    assert lo == 0 and hi == pytest.approx(0.161, abs=1e-3)
    lo, hi = report.wilson(10, 20)
    assert (lo, hi) == pytest.approx((0.299, 0.701), abs=1e-3)


def test_headline_tables_format_with_intervals(tmp_path):
    """summary.md's stage 4 and 6 sections from tables shaped like the stages write them."""
    import pandas as pd

    tables = {
        ("04_correlation", "predictors"): pd.DataFrame([
            {"scope": "lab-s", "predictor": "dmc", "n": 5, "spearman": 0.9, "spearman_lo": 0.4, "spearman_hi": 1.0,
             "spearman_p": 0.083}]),
        ("04_correlation", "cells"): pd.DataFrame([
            {"student": "lab-s", "dataset": "teacher=prose", "gain": 0.21, "gain_lo": 0.17, "gain_hi": 0.25},
            {"student": "lab-s", "dataset": "all", "gain": 0.05, "gain_lo": 0.01, "gain_hi": 0.09}]),
        ("04_correlation", "noise_floor"): pd.DataFrame([{"student": "lab-s", "reliability": 0.93}]),
        ("06_benchmark", "results"): pd.DataFrame([
            {"model": "lab-m (undistilled)", "task": "syllabus_lab", "metric": "exact_match", "value": 0.1,
             "stderr": 0.03, "n": 100, "truncation_rate": 0.02}]),
    }
    run = RunDir(tmp_path)
    for (stage, name), table in tables.items():
        folder = tmp_path / stage
        (folder / "tables").mkdir(parents=True, exist_ok=True)
        table.to_parquet(folder / "tables" / f"{name}.parquet")
        (folder / "manifest.json").write_text(json.dumps({"stage": stage, "wall_seconds": 1.0}))
    text = report.summary_markdown(run)
    assert "| lab-s | dmc | 5 | 0.90 | [0.40, 1.00] | 0.083 |" in text
    assert "| lab-s | teacher=prose | +0.210 [0.17, 0.25] |" in text and "lab-s 0.93" in text
    assert "| lab-m (undistilled) | syllabus_lab | exact_match | 0.100 | [0.06, 0.17] | 100 | 0.02 |" in text


def test_summary_names_each_students_best_candidate_not_a_control(tmp_path):
    import pandas as pd

    from syllabus.runs import RunDir

    tables = tmp_path / "04_correlation" / "tables"
    tables.mkdir(parents=True)
    cells = pd.DataFrame({"student": ["s", "s", "s", "m", "m"],
                          "dataset": ["control:gold", "teacher=a", "teacher=b", "control:gold", "teacher=a"],
                          "control": [True, False, False, True, False], "gain": [0.30, 0.10, 0.20, 0.25, 0.15]})
    cells["gain_lo"], cells["gain_hi"] = cells["gain"] - 0.05, cells["gain"] + 0.05
    cells.to_parquet(tables / "cells.parquet")
    pd.DataFrame({"scope": ["s"], "predictor": ["dmc"], "n": [2], "spearman": [1.0], "spearman_lo": [1.0],
                  "spearman_hi": [1.0], "spearman_p": [0.5]}).to_parquet(tables / "predictors.parquet")
    lines = "\n".join(report._correlation(RunDir(tmp_path)))
    assert "| m | teacher=a | +0.150 [0.10, 0.20] | +0.250 [0.20, 0.30] |" in lines
    assert "| s | teacher=b | +0.200 [0.15, 0.25] | +0.300 [0.25, 0.35] |" in lines


def test_summary_adds_each_policys_seed_mean_when_every_seeds_student_was_scored(tmp_path):
    import pandas as pd

    from syllabus.runs import RunDir

    tables = tmp_path / "06_benchmark" / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame({"model": ["s + random (seed 0)", "s + random (seed 1)"], "task": "syllabus_lab",
                  "metric": "exact_match", "value": [0.3, 0.5], "stderr": 0.05, "n": 100,
                  "truncation_rate": 0.0}).to_parquet(tables / "results.parquet")
    plain = "\n".join(report._benchmark(RunDir(tmp_path)))
    assert "| s + random (seed 1) | syllabus_lab | exact_match | 0.500 |" in plain and "mean over the seeds" not in plain
    pd.DataFrame([{"student": "s", "policy": "random", "task": "syllabus_lab", "metric": "exact_match", "seeds": 2,
                   "mean": 0.4, "seed_sd": 0.141, "problems_se": 0.05, "se": 0.112, "ci_lo": 0.18, "ci_hi": 0.62}]
                 ).to_parquet(tables / "policy_means.parquet")
    lines = "\n".join(report._benchmark(RunDir(tmp_path)))
    assert "| s | random | syllabus_lab | exact_match | 2 | 0.400 | [0.18, 0.62] | 0.141 |" in lines


def test_summary_says_how_clear_dmc_dynamics_picks_were(tmp_path):
    import pandas as pd

    from syllabus.runs import RunDir

    tables = tmp_path / "05_dynamic_selection" / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame([{"policy": "dmc_dynamic", "final_accuracy": 0.7, "gain": 0.1, "gain_lo": 0.05, "gain_hi": 0.15,
                   "seeds": 3}]).to_parquet(tables / "final_accuracy.parquet")
    assert "runner-up" not in "\n".join(report._dynamic(RunDir(tmp_path)))  # no margins table: no line
    pd.DataFrame({"seed": [0, 0], "phase": [0, 1], "chosen": ["b", "b"], "runner_up": ["a", "a"],
                  "dmc_margin": [0.004, 0.02], "dmc_margin_lo": [-0.001, 0.01], "dmc_margin_hi": [0.01, 0.03],
                  "shown": [False, True]}).to_parquet(tables / "dmc_choice_margins.parquet")
    lines = "\n".join(report._dynamic(RunDir(tmp_path)))
    assert "picked b; its DMC lead over the runner-up was +0.004 to +0.020" in lines and "in 1 of 2" in lines
