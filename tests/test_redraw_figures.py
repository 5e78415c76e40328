"""benchmarks/redraw_figures.py redraws a reference folder's figures from its own tables."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import matplotlib.image as mpimg

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference" / "tiny-second-cpu"


def load_script():
    spec = importlib.util.spec_from_file_location("redraw_figures", ROOT / "benchmarks" / "redraw_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_redraw_writes_each_figure_whose_table_and_figure_the_folder_has(tmp_path):
    for name in ("04_grid_with_predictors.csv", "05_learning_curves.csv", "05_module_curves.csv", "05_learning_curves.png"):
        shutil.copy(REFERENCE / name, tmp_path / name)
    counts = {"add": 46, "comparison": 52, "divide": 52, "multiply": 54, "percent": 58, "rate": 61, "subtract": 77}
    drawn = load_script().redraw(tmp_path, 400, counts)
    # no module-curve figure in the folder, so none is added; the learning curves are redrawn in place
    assert drawn == ["04_predictors_vs_gain.png", "05_learning_curves.png"]
    assert not (tmp_path / "05_module_curves.png").exists()
    for name in drawn:
        height, width, _ = mpimg.imread(tmp_path / name).shape
        assert height > 300 and width > 600


def test_redraw_adds_the_stage_3_whiskers_and_the_stage_6_baseline_from_the_folders_tables(tmp_path):
    for name in ("03_dmc.csv", "03_dmc_intervals.csv", "03_dmc_factors.png", "06_results.csv", "06_results.png",
                 "05_final_models.csv"):
        shutil.copy(REFERENCE / name, tmp_path / name)
    assert load_script().redraw(tmp_path, 400, {}) == ["03_dmc_factors.png", "06_results.png"]
    (tmp_path / "03_dmc_intervals.csv").unlink()  # a folder without the intervals keeps its stage-3 figure as it is
    before = (tmp_path / "03_dmc_factors.png").read_bytes()
    (tmp_path / "05_final_models.csv").unlink()  # without stage 5's list every model is its own bar
    assert load_script().redraw(tmp_path, 400, {}) == ["06_results.png"]
    assert (tmp_path / "03_dmc_factors.png").read_bytes() == before
