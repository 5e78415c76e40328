"""environment.yml mirrors pyproject.toml; committed notebooks carry no outputs."""

import json
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    pip_deps = [d for d in pip if not d.startswith("-e")]
    assert sorted(pip_deps) == sorted(deps)
    assert any(d.startswith("-e .") for d in pip)


def test_torch_is_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("torch==") for d in deps)


def test_top_level_layout():
    for name in ("notebooks", "src", "environment.yml", "params", "results", "tests", "README.md",
                 "pyproject.toml", "Makefile", ".ci/run"):
        assert (ROOT / name).exists(), name


def test_notebooks_committed_without_outputs_and_with_parameters_cell():
    from syllabus.runs import STAGES

    for stage in STAGES:
        nb = json.loads((ROOT / "notebooks" / f"{stage}.ipynb").read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", stage
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{stage}: needs exactly one cell tagged 'parameters'"
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                    f"{stage} is committed with outputs; clear them (Kernel > Restart & Clear Output)")
