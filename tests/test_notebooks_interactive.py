"""Each stage notebook runs top to bottom as JupyterLab runs it: from the notebooks/ folder, on the
notebook's own kernel, with no papermill and no injected parameters. The only edit is the one a user
makes in the first cell: the profile (ci, to keep the test short) and a run folder under tmp."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from syllabus.runs import STAGES, RunDir


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_notebook_runs_from_the_notebooks_folder_as_jupyterlab_runs_it(tmp_path, project_root):
    notebooks = project_root / "notebooks"
    run_dir = tmp_path / "run"
    for stage in STAGES:
        nb = nbformat.read(notebooks / f"{stage}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert 'profile = "tiny"' in cell.source and "run_dir = None" in cell.source, cell.source
        cell.source = (cell.source.replace('profile = "tiny"', 'profile = "ci"')
                       .replace("run_dir = None", f"run_dir = {json.dumps(str(run_dir))}"))
        # where the kernel starts: JupyterLab starts it in the notebook's folder
        nb.cells.insert(0, nbformat.v4.new_code_cell("import os; print(os.getcwd())"))
        client = NotebookClient(nb, kernel_name=nb.metadata["kernelspec"]["name"], timeout=1800,
                                resources={"metadata": {"path": str(notebooks)}})
        client.execute()
        assert nb.cells[0].outputs[0]["text"].strip() == str(notebooks)
        assert RunDir(run_dir).is_complete(stage), f"{stage} ran but wrote no manifest in {run_dir}"
    assert not (notebooks / "results").exists()  # nothing written relative to the notebooks folder
