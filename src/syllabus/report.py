"""The report of a run folder: ``report.html`` and ``summary.md``.

``report.html`` is one page built with nbconvert from the executed stage notebooks, code hidden: each
stage's text, tables and printed results, every figure of its ``figures/`` folder (placed after the
cell that saved it) and its "what to notice"; warnings and progress bars (stderr) are left out.
``summary.md`` holds the headline numbers with their 95% intervals. Both are built from the run
folder's files only (no clock, no host), so an unchanged run folder gives byte-identical files;
``syllabus run`` writes them at the end and ``syllabus report RUN_DIR`` rebuilds them.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import nbformat
import pandas as pd
from nbconvert import HTMLExporter

from .runs import STAGES, RunDir, atomic_write_text, read_json, read_run_json
from .stats import score_interval, wilson

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.md"
HIDDEN_TAGS = {"parameters", "injected-parameters"}
SAVED_FIGURE = re.compile(r"save_figure\(.*[\"']([\w.-]+)[\"']\s*\)")


# --------------------------------------------------------------------------- numbers


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(lo, hi, digits: int = 2) -> str:
    return f"[{_num(lo, digits)}, {_num(hi, digits)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _read(run: RunDir, stage: str, name: str) -> pd.DataFrame | None:
    path = run.stage_dir(stage) / "tables" / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _split_size(run: RunDir, split: str) -> int | None:
    problems = _read(run, "01_teacher_selection", "problems")
    return None if problems is None else int((problems["split"] == split).sum())


# --------------------------------------------------------------------------- summary.md, stage by stage
def _teacher_selection(run: RunDir) -> list[str]:
    board = _read(run, "01_teacher_selection", "leaderboard")
    if board is None:
        return []
    chosen_file = run.stage_dir("01_teacher_selection") / "selected_teachers.json"
    chosen = read_json(chosen_file) if chosen_file.is_file() else {}
    n = _split_size(run, "probe") or 0
    lines = [f"Selected teacher(s): **{', '.join(chosen.get('selected', [])) or 'n/a'}** "
             f"(by {chosen.get('criterion', 'smoke-test gain')}, student {chosen.get('student', 'n/a')}). "
             f"Accuracies on the {n} probe problems; intervals are 95% Wilson intervals.", ""]
    rows = []
    for r in board.to_dict("records"):
        t_lo, t_hi = wilson(r["teacher_accuracy"] * r["traces"], int(r["traces"]))
        b_lo, b_hi = wilson(r["accuracy_before"] * n, n)
        gain_ci = _ci(r["gain_lo"], r["gain_hi"]) if "gain_lo" in r else ""  # paired over problems and seeds
        rows.append([str(r["rank"]), str(r["teacher"]), f"{_num(r['teacher_accuracy'], 2)} {_ci(t_lo, t_hi)}",
                     f"{_num(r['accuracy_before'], 2)} {_ci(b_lo, b_hi)}", _num(r["accuracy_after"], 2),
                     f"{r['gain']:+.3f} {gain_ci}"])
    return lines + _table(["rank", "teacher", "teacher accuracy", "student before", "after smoke SFT",
                           "gain (paired 95% CI)"], rows)


def _trace_curation(run: RunDir) -> list[str]:
    funnel, datasets = _read(run, "02_trace_curation", "funnel"), _read(run, "02_trace_curation", "datasets")
    if funnel is None or datasets is None:
        return []
    steps = (funnel[funnel["dataset"] == "all"].groupby(["step_no", "step"], sort=True)["traces"].sum()
             .reset_index())
    chain = " -> ".join(f"{r['step']} {int(r['traces'])}" for r in steps.to_dict("records"))
    return [f"{len(datasets)} candidate datasets. The `all` funnel (traces left after each step): {chain}."]


def _dmc(run: RunDir) -> list[str]:
    scores = _read(run, "03_dmc", "dmc")
    if scores is None:
        return []
    rows = []
    for student, group in scores.groupby("student", sort=True):
        ranked = group.sort_values(["dmc", "dataset"], ascending=[False, True])
        top = ", ".join(f"{r['dataset']} {_num(r['dmc'])}" for r in ranked.head(3).to_dict("records"))
        last = ranked.iloc[-1]
        rows.append([str(student), top, f"{last['dataset']} {_num(last['dmc'])}"])
    return _table(["student", "highest DMC", "lowest DMC"], rows)


def _correlation(run: RunDir) -> list[str]:
    preds = _read(run, "04_correlation", "predictors")
    if preds is None:
        return []
    lines: list[str] = []
    cells = _read(run, "04_correlation", "cells")
    if cells is not None and "gain_lo" in cells:
        def gain(r) -> str:
            return f"{r['gain']:+.3f} {_ci(r['gain_lo'], r['gain_hi'])}"

        control = cells["control"].astype(bool) if "control" in cells else pd.Series(False, index=cells.index)
        gold = {r["student"]: gain(r) for _, r in cells[cells["dataset"] == "control:gold"].iterrows()}
        best = [[str(r["student"]), str(r["dataset"]), gain(r), gold.get(r["student"], "-")]
                for _, r in cells[~control].sort_values(["student", "gain"], ascending=[True, False])
                .groupby("student", sort=True).head(1).iterrows()]
        lines += ["Best candidate dataset per student (held-out accuracy after - before, paired 95% CI), with "
                  "the gold-solution control beside it:", ""]
        lines += _table(["student", "best candidate", "gain", "control:gold"], best) + [""]
    noise = _read(run, "04_correlation", "noise_floor")
    if noise is not None:
        lines += ["Reliability of the cell gains per student: "
                  + ", ".join(f"{r['student']} {_num(r['reliability'], 2)}" for r in noise.to_dict("records")), ""]
    scope = preds["scope"] if "scope" in preds else pd.Series("all", index=preds.index)
    rows = [[str(sc), str(r["predictor"]), str(int(r["n"])), _num(r["spearman"], 2),
             _ci(r["spearman_lo"], r["spearman_hi"]), _num(r["spearman_p"], 3)]
            for sc, r in zip(scope, preds.to_dict("records"))]
    return lines + (["Spearman correlation of each predictor with the gain, within each student and pooled; "
                     "bootstrap 95% intervals (dataset families resampled whole), permutation p-values.", ""]
                    + _table(["scope", "predictor", "cells", "Spearman", "95% CI", "p"], rows))


def _dynamic(run: RunDir) -> list[str]:
    final = _read(run, "05_dynamic_selection", "final_accuracy")
    if final is None:
        return []
    n = _split_size(run, "heldout") or 0
    curves = _read(run, "05_dynamic_selection", "learning_curves")
    start = curves.loc[curves["phase"] == 0, "accuracy"].mean() if curves is not None and "phase" in curves else None
    rows = []
    for r in final.to_dict("records"):
        vs = [f"{r[f'vs_{ref}']:+.3f} {_ci(r[f'vs_{ref}_lo'], r[f'vs_{ref}_hi'])}"
              if f"vs_{ref}" in r and not pd.isna(r[f"vs_{ref}"]) else "" for ref in ("random", "dmc_static")]
        rows.append([str(r["policy"]), _num(r["final_accuracy"]), f"{r['gain']:+.3f} {_ci(r['gain_lo'], r['gain_hi'])}",
                     *vs, str(int(r["seeds"]))])
    head = (f"Final held-out accuracy per policy ({n} problems; before training {_num(start)}); gains and differences "
            "are paired on the same problems and seeds, with 95% intervals; an interval that contains 0 shows no "
            "difference.")
    lines = [head, ""] + _table(["policy", "final accuracy", "gain over start", "vs random", "vs dmc_static", "seeds"],
                                rows)
    margins = _read(run, "05_dynamic_selection", "dmc_choice_margins")
    if margins is not None and len(margins):
        picks = ", ".join(sorted(margins["chosen"].unique()))
        lines += ["", f"`dmc_dynamic` picked {picks}; its DMC lead over the runner-up was "
                      f"{margins['dmc_margin'].min():+.3f} to {margins['dmc_margin'].max():+.3f}, shown (paired 95% "
                      f"interval excluding 0, problems resampled) in {int(margins['shown'].sum())} of {len(margins)} "
                      "(seed, phase) choices."]
    return lines


def _benchmark(run: RunDir) -> list[str]:
    results = _read(run, "06_benchmark", "results")
    if results is None:
        return []
    rows = []
    for r in results.to_dict("records"):
        n = r.get("n")
        lo, hi = score_interval(r)  # Wilson for a share of problems, also at 0 and 1
        ci = "n/a" if math.isnan(lo) else _ci(lo, hi)
        rows.append([str(r["model"]), str(r["task"]), str(r["metric"]), _num(r["value"]), ci,
                     "" if n is None or pd.isna(n) else str(int(n)), _num(r.get("truncation_rate"), 2)])
    lines = (["lm-evaluation-harness scores; 95% Wilson intervals on the problems scored (value +- 1.96 "
              "standard errors for a metric that is not a share).", ""]
             + _table(["model", "task", "metric", "value", "95% CI", "problems", "truncated"], rows))
    means = _read(run, "06_benchmark", "policy_means")
    if means is not None and len(means):
        lines += ["", "Each policy's mean over the seeds whose final students were scored; the 95% interval adds "
                  "the seeds' spread to the problems' part.", ""]
        lines += _table(["student", "policy", "task", "metric", "seeds", "mean", "95% CI", "seed SD"],
                        [[str(r["student"]), str(r["policy"]), str(r["task"]), str(r["metric"]), str(int(r["seeds"])),
                          _num(r["mean"]), _ci(r["ci_lo"], r["ci_hi"]), _num(r["seed_sd"])]
                         for r in means.to_dict("records")])
    return lines


HEADLINES = {
    "01_teacher_selection": ("Stage 1 - teacher selection", _teacher_selection),
    "02_trace_curation": ("Stage 2 - trace curation", _trace_curation),
    "03_dmc": ("Stage 3 - DMC", _dmc),
    "04_correlation": ("Stage 4 - does DMC predict the gain?", _correlation),
    "05_dynamic_selection": ("Stage 5 - dynamic selection", _dynamic),
    "06_benchmark": ("Stage 6 - lm-eval benchmark", _benchmark),
}


def _run_table(run: RunDir) -> list[str]:
    rows = []
    for stage in STAGES:
        if not run.is_complete(stage):
            rows.append([stage, "not finished", "-", "-"])
            continue
        m = run.manifest(stage)
        wall = m.get("wall_seconds")
        commit = (m.get("git") or {}).get("commit") or "n/a"
        dirty = " (uncommitted changes)" if (m.get("git") or {}).get("dirty") else ""
        rows.append([stage, m.get("finished", "n/a"), "-" if wall is None else f"{wall:.1f} s", commit[:10] + dirty])
    return _table(["stage", "finished", "wall time", "commit"], rows)


def summary_markdown(run: RunDir) -> str:
    """Headline numbers of every finished stage, with their 95% intervals."""
    info = read_run_json(run.root / "run.json") if (run.root / "run.json").is_file() else {}
    lines = [f"# syllabus run `{run.root.name}` (profile {info.get('profile', 'n/a')})", "", *_run_table(run)]
    for stage, (title, headline) in HEADLINES.items():
        if run.is_complete(stage) and (body := headline(run)):
            lines += ["", f"## {title}", "", *body]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- report.html
def _figure_outputs(path: Path) -> list[nbformat.NotebookNode]:
    """A saved figure as an image output, captioned with its file."""
    png = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = f"*figure `{path.parent.parent.name}/figures/{path.name}`*"
    return [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": f"figure {path.stem}"}),
            nbformat.v4.new_output("display_data", data={"text/markdown": caption, "text/plain": caption})]


def _is_image(output) -> bool:
    return any(k.startswith("image/") for k in output.get("data", {}))


def stage_cells(run: RunDir, stage: str) -> list[nbformat.NotebookNode]:
    """One stage's cells for the report: its executed notebook less parameters, stderr and inline
    images, with each saved figure (``figures/<name>.png``) after the cell that saved it."""
    folder = run.stage_dir(stage)
    figures = {p.stem: p for p in sorted((folder / "figures").glob("*.png"))}
    notebook_file = folder / f"{stage}.ipynb"
    cells = [nbformat.v4.new_markdown_cell(f'<a id="{stage}"></a>')]
    if notebook_file.is_file():
        nb = nbformat.read(notebook_file, as_version=4)
    else:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
            f"# {stage}\n\nThe executed notebook `{notebook_file.name}` is not in the run folder.")])
    placed = set()
    for cell in nb.cells:
        if HIDDEN_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        if cell.cell_type == "code":
            outputs = [o for o in cell.outputs
                       if not (o.output_type == "stream" and o.get("name") == "stderr") and not _is_image(o)]
            for name in SAVED_FIGURE.findall(cell.source):
                if name in figures and name not in placed:
                    outputs += _figure_outputs(figures[name])
                    placed.add(name)
            cell = nbformat.v4.new_code_cell(source=cell.source, outputs=outputs)
        cells.append(cell)
    rest = [name for name in figures if name not in placed]
    if rest:
        cells.append(nbformat.v4.new_code_cell(outputs=[o for name in rest for o in _figure_outputs(figures[name])]))
    return cells


def report_html(run: RunDir, summary: str) -> str:
    """The executed notebooks of the finished stages on one page, code hidden, summary first."""
    done = [s for s in STAGES if run.is_complete(s)]
    contents = " · ".join(f"[{s}](#{s})" for s in done)
    intro = (f"{summary}\n\nThe sections below are the executed notebooks (`<stage>/<stage>.ipynb`), code hidden. "
             f"Stages: {contents}")
    cells = [nbformat.v4.new_markdown_cell(intro)]
    for stage in done:
        cells += stage_cells(run, stage)
    for number, cell in enumerate(cells):  # fixed ids (new cells get random ones): the same run, the same page
        cell.id = f"cell-{number:04d}"
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"language_info": {"name": "python"}})
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"syllabus report: {run.root.name}"}})
    return body


def build(run: RunDir) -> dict[str, Path]:
    """Write ``report.html`` and ``summary.md`` into the run folder (atomically); return their paths."""
    summary = summary_markdown(run)
    html = report_html(run, summary)
    paths = {"html": run.root / REPORT_FILE, "summary": run.root / SUMMARY_FILE}
    atomic_write_text(paths["summary"], summary)
    atomic_write_text(paths["html"], html)
    return paths

