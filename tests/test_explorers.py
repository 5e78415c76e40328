"""Stage 3's ranking explorer: the table it shows, its controls, and a headless run that moves them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from syllabus import dmc_factors, explorers

ROWS = [("a", "p1", True, 0.5, 1.25), ("b", "p2", True, 0.0, 5.0), ("c", "p3", True, 0.25, 2.5)]


def factor_items() -> pd.DataFrame:
    """Saved DMC factors of two students over three datasets (the item table stage 3 writes)."""
    frames = []
    for student, scale in [("s1", 1.0), ("s2", 3.0)]:
        df = pd.DataFrame([(d, p, c, q, nll * scale) for d, p, c, q, nll in ROWS],
                          columns=["dataset", "problem_id", "correct", "pass_rate", "nll"])
        frames.append(dmc_factors.item_table(df.assign(student=student, teacher="t"), nll_ref=1.0))
    return pd.concat(frames, ignore_index=True)


def test_rank_table_is_each_students_ranking_and_ignores_other_rules_parameters():
    items = factor_items()
    with pytest.raises(ValueError, match="r0"):  # the rule itself refuses another rule's parameter
        dmc_factors.ranking(items, variant="window", center=1.0, width=1.0, r0=99.0)
    table = explorers.rank_table(items, "window", {"center": 1.0, "width": 1.0, "r0": 99.0})
    ranked = dmc_factors.ranking(items, variant="window", center=1.0, width=1.0)
    assert list(table.columns) == ["s1", "s2"] and sorted(table.index) == ["a", "b", "c"]
    assert table["s1"].is_monotonic_increasing  # rows in the first student's order
    for _, row in ranked.iterrows():
        assert table.loc[row["dataset"], row["student"]] == row["rank"]


def test_explorer_redraws_its_table_when_a_control_moves_and_has_no_output_widget():
    import ipywidgets as widgets

    items = factor_items()
    box = explorers.dmc_ranking_explorer(items, "window", {"center": 1.0, "width": 1.0})
    rule, *controls, table = box.children
    assert not any(isinstance(w, widgets.Output) for w in box.children)  # see the module docstring
    sliders = {c.description: c for c in controls}
    assert table.value == explorers.rank_table(items, "window", {"center": 1.0, "width": 1.0}).to_html()
    sliders["center"].value = 5.0  # a window centred on the foreign traces flips the order
    current = {name: s.value for name, s in sliders.items()}
    assert table.value == explorers.rank_table(items, "window", current).to_html()
    assert explorers.rank_table(items, "window", current).index[0] == "b"
    rule.value = "no_difficulty"
    assert table.value == explorers.rank_table(items, "no_difficulty", current).to_html()


def test_a_headless_papermill_run_moves_the_explorer_without_stalling(tmp_path):
    """nbclient answers an Output widget's captured displays on the shell channel while it waits there for
    the cell's reply, and can miss the reply for good (nbclient #312): of cells that moved an ``interactive``
    widget, one stalled in most runs of this notebook (with no execution timeout, a stall lasts for ever).
    The explorer's HTML table sends nothing back, so every cell returns."""
    import nbformat
    items_path = tmp_path / "items.parquet"
    factor_items().to_parquet(items_path)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_code_cell(
        "import pandas as pd\nfrom IPython.display import display\nfrom syllabus import explorers\n"
        f"items = pd.read_parquet({str(items_path)!r})\n"
        "box = explorers.dmc_ranking_explorer(items, 'window', {'center': 1.0, 'width': 1.0})\ndisplay(box)\n"
        "center = next(c for c in box.children if getattr(c, 'description', '') == 'center')"))
    for k in range(300):
        nb.cells.append(nbformat.v4.new_code_cell(f"center.value = {1.0 + k / 40}"))
    nbformat.write(nb, tmp_path / "explore.ipynb")
    command = [sys.executable, "-m", "papermill", str(tmp_path / "explore.ipynb"), str(tmp_path / "out.ipynb"),
               "-k", "python3", "--no-progress-bar", "--log-level", "ERROR", "--cwd", str(tmp_path)]
    try:  # the notebook takes ~20 s; a stalled cell would wait for ever
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("papermill stalled on a cell that moved the explorer (see the module docstring of syllabus.explorers)")
    assert done.returncode == 0, done.stderr[-2000:]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert all(c.get("execution_count") for c in out.cells)


OUTPUT_CAPTURING = re.compile(r"\b(interactive|interact|interact_manual|Output)\s*\(|\.capture\s*\(|@\s*interact")


def test_no_stage_notebook_or_module_draws_into_an_output_widget():
    """The stall above is not particular to one cell: any ``Output`` widget (``interact``, ``interactive`` and
    ``Output.capture`` draw into one) in a stage notebook can hang ``syllabus run`` and CI for ever. Draw into
    an ``HTML`` widget from observers instead, as ``syllabus.explorers`` does."""
    root = Path(__file__).resolve().parents[1]
    sources = {p: "\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code")
               for p in sorted((root / "notebooks").glob("*.ipynb"))}
    sources.update({p: p.read_text() for p in sorted((root / "src" / "syllabus").rglob("*.py"))})
    assert len(sources) > 6
    offenders = {str(p.relative_to(root)): m.group(0) for p, text in sources.items() if (m := OUTPUT_CAPTURING.search(text))}
    assert not offenders, f"Output-capturing widgets (see syllabus.explorers): {offenders}"
    assert OUTPUT_CAPTURING.search("w = widgets.interactive(f, x=1)") and OUTPUT_CAPTURING.search("out = Output()")
    assert not OUTPUT_CAPTURING.search("widgets.HTML(value=table)")
