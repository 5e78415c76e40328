"""The command line: help, bad input, and every notebook executed on the ci profile."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from syllabus.cli import main
from syllabus.runs import STAGES

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "syllabus.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_help_explains_run():
    out = run_cli("run", "--help")
    assert out.returncode == 0
    for word in ("--profile", "--stages", "--run-dir", "-p", "01_teacher_selection", "06_benchmark"):
        assert word in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--profile", "nope"], "unknown profile 'nope'"),
        (["run", "--profile", "ci", "--stages", "07"], "unknown stage '07'"),
        (["run", "--profile", "ci", "-p", "dmc.lamda=3"], "dmc.lamda"),
        (["run", "--profile", "ci", "-p", "seed"], "key=value"),
        (["check", "--profile", "ci", "-p", "seed=abc"], "key 'seed' (from -p seed=abc): Input should be a valid"),
    ],
)
def test_bad_input_one_clear_line_nonzero_exit(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("syllabus: error:")


def test_malformed_yaml_profile(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [x\n")
    assert main(["run", "--profile", str(bad)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_unwritable_run_dir_keeps_existing(tmp_path, capsys):
    target = "/proc/syllabus-run" if os.geteuid() == 0 else str(tmp_path)
    if os.geteuid() != 0:
        tmp_path.chmod(0o500)
    assert main(["run", "--profile", "ci", "--run-dir", target]) == 2
    assert "not writable" in capsys.readouterr().err


def test_every_package_error_is_one_line_without_a_traceback(tmp_path, monkeypatch, capsys):
    """A ModelError (or any SyllabusError) raised before papermill starts is printed as one line, exit 2."""
    from syllabus import cli, errors, preflight
    from syllabus.models import ModelError
    from syllabus.params import ParamsError

    def fail(prof):
        raise ModelError("student 'lab-s': no such model folder; point students.lab-s.model at one")

    monkeypatch.setattr(preflight, "check_runnable", fail)  # cli imports it when a run starts
    monkeypatch.setattr(cli.pm, "execute_notebook", lambda *a, **k: pytest.fail("papermill must not start"))
    assert main(["run", "--profile", "ci", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == "syllabus: error: student 'lab-s': no such model folder; point students.lab-s.model at one\n"
    for error in (ModelError, ParamsError, cli.RunError):
        assert issubclass(error, errors.SyllabusError), error


def test_every_error_class_derives_from_the_one_base():
    import importlib
    import inspect
    import pkgutil

    import syllabus
    from syllabus.errors import SyllabusError

    loose = []
    for info in pkgutil.walk_packages(syllabus.__path__, "syllabus."):  # the stage modules too
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            qual = f"{cls.__module__}.{cls.__qualname__}"
            if (cls.__module__ == module.__name__ and issubclass(cls, Exception)
                    and not issubclass(cls, SyllabusError)):
                loose.append(qual)
    assert not loose, f"error classes outside syllabus.errors.SyllabusError: {loose}"


@pytest.mark.notebooks
@pytest.mark.slow
def test_all_notebooks_run_on_ci_profile_then_reuse(tmp_path):
    run_dir = tmp_path / "ci-run"
    first = run_cli("run", "--profile", "ci", "--run-dir", str(run_dir))
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in STAGES:
        folder = run_dir / stage
        assert (folder / f"{stage}.ipynb").is_file(), stage
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["outputs"], stage
        assert manifest["git"] is not None and "cache_key" in manifest
    # progress on stderr, a report holding every stage's figure, headline numbers with intervals
    assert all(f"{stage}: cell " in first.stderr for stage in STAGES), first.stderr
    html = (run_dir / "report.html").read_text()
    figures = sorted(run_dir.glob("*/figures/*.png"))
    assert {p.parent.parent.name for p in figures} == set(STAGES)
    for png in figures:
        assert base64.b64encode(png.read_bytes()).decode() in html, png
    summary = (run_dir / "summary.md").read_text()
    assert summary.count("## Stage ") == len(STAGES) and "95% CI" in summary
    status = run_cli("status", "--profile", "ci", "--run-dir", str(run_dir))
    assert status.returncode == 0 and status.stdout.count("up to date") == len(STAGES), status.stdout
    second = run_cli("run", "--profile", "ci", "--run-dir", str(run_dir))
    assert second.returncode == 0
    assert second.stdout.count("up to date") == len(STAGES), second.stdout
