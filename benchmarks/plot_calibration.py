"""The curves behind the tiny profile's stage-4 budgets: gain against SFT tokens, per student and candidate.

    PYTHONPATH=src python benchmarks/plot_calibration.py benchmarks/calibration/*.csv \
        [--lr 3e-3] [--batch 16] [--target 0.15] [--threshold 0.17] [--chosen lab-s=900000,lab-m=450000] \
        [--out benchmarks/calibration/budgets.png]

Reads the tables ``calibrate_lab.py --candidates ... --eval fresh --out X.csv`` writes (one row per cell,
plus each student's untrained row) and draws, for one learning rate and batch size, each candidate's mean
gain on the fresh problems against its training tokens: every seed as a dot, the mean with a 95% interval,
the issue's target and the rule's threshold as lines, each student's chosen budget marked. The interval
is mean +- 1.96 sqrt(seed variance / seeds + the unpaired binomial variance of a gain on the problems);
it ignores the pairing of before and after on the same problems, so it is wider than a paired one. It
also prints the table it draws and, per student, the smallest budget whose best candidate reaches the
threshold (the rule the tiny profile's ``correlation.sft_tokens_by_student`` follows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from syllabus import plots, stats

plt = plots.plt


def load(paths: list[Path]) -> pd.DataFrame:
    """Every calibration table, with its student's untrained accuracy as ``accuracy_before``."""
    frames = []
    for path in paths:
        table = pd.read_csv(path)
        missing = {"student", "style", "lr", "batch", "steps", "seed", "tokens", "accuracy", "gain"} - set(table)
        if missing:
            raise SystemExit(f"{path}: columns {sorted(missing)} missing; pass tables written by calibrate_lab.py")
        frames.append(table)
    table = pd.concat(frames, ignore_index=True)
    base = table[table["steps"] == 0].drop_duplicates("student").set_index("student")["accuracy"]
    cells = table[table["steps"] > 0].copy()
    unknown = sorted(set(cells["student"]) - set(base.index))
    if unknown:
        raise SystemExit(f"no untrained row for student(s) {unknown}: pass the table that holds it")
    cells["accuracy_before"] = cells["student"].map(base)
    return cells


def summarise(cells: pd.DataFrame, n_problems: int) -> pd.DataFrame:
    """Mean gain per (student, candidate, budget) with its 95% interval (seed spread + problem sampling)."""
    cells = cells.assign(budget=(cells["tokens"] / 5e4).round() * 5e4)  # budgets asked for, to 50k tokens
    rows = []
    for (student, style, budget), g in cells.groupby(["student", "style", "budget"], sort=True):
        before, after = g["accuracy_before"].iloc[0], g["accuracy"].mean()
        seed_var = g["gain"].var(ddof=1) / len(g) if len(g) > 1 else np.nan
        problem_var = stats.binomial_se(before, n_problems) ** 2 + stats.binomial_se(after, n_problems) ** 2
        half = stats.Z95 * np.sqrt((0.0 if np.isnan(seed_var) else seed_var) + problem_var)
        rows.append({"student": student, "candidate": style, "tokens": int(budget), "seeds": len(g),
                     "gain": g["gain"].mean(), "lo": g["gain"].mean() - half, "hi": g["gain"].mean() + half})
    return pd.DataFrame(rows)


def chosen_by_rule(summary: pd.DataFrame, threshold: float) -> dict[str, int | None]:
    """Per student: the smallest budget at which its best candidate's mean gain reaches ``threshold``."""
    out = {}
    for student, g in summary.groupby("student"):
        best = g.groupby("tokens")["gain"].max()
        reached = best[best >= threshold]
        out[student] = int(reached.index.min()) if len(reached) else None
    return out


def figure(cells: pd.DataFrame, summary: pd.DataFrame, *, target: float, threshold: float,
           chosen: dict[str, int], lr: float, batch: int):
    students = sorted(summary["student"].unique())
    fig, axes = plt.subplots(1, len(students), figsize=(5.4 * len(students), 3.9), squeeze=False, sharey=True)
    colors = dict(zip(sorted(summary["candidate"].unique()), plots.sns.color_palette(plots.PALETTE)))
    for ax, student in zip(axes.flat, students):
        g = summary[summary["student"] == student]
        span = g["tokens"].max() - g["tokens"].min() or 1e5
        for k, (name, h) in enumerate(g.groupby("candidate", sort=True)):
            shift = (k - (g["candidate"].nunique() - 1) / 2) * 0.012 * span  # side by side at equal budgets
            dots = cells[(cells["student"] == student) & (cells["style"] == name)]
            ax.scatter(dots["tokens"] + shift, dots["gain"], s=12, color=colors[name], alpha=0.45, lw=0)
            ax.errorbar(h["tokens"] + shift, h["gain"], yerr=[h["gain"] - h["lo"], h["hi"] - h["gain"]],
                        color=colors[name], marker="o", ms=4, capsize=2, lw=1.2, label=name.replace("teacher=", ""))
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.axhline(target, color="black", lw=0.8, ls=":", label=f"the issue's target, +{target:.2f}")
        ax.axhline(threshold, color="black", lw=0.8, ls="-.", label=f"the rule's threshold, +{threshold:.2f}")
        if student in chosen:
            ax.axvline(chosen[student], color="#cc3311", lw=1, alpha=0.7, label="the budget chosen")
            ax.annotate(f"chosen: {chosen[student] / 1e3:.0f}k", (chosen[student], 1), xycoords=("data", "axes fraction"),
                        xytext=(4, -12), textcoords="offset points", fontsize=8, color="#cc3311")
        ax.xaxis.set_major_formatter(plots.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:.0f}k"))
        ax.set_xlabel("SFT tokens per cell")
        start = cells.loc[cells["student"] == student, "accuracy_before"].iloc[0]
        ax.set_title(f"{student} (from {start:.2f} on the fresh problems)", fontsize=10)
    axes.flat[0].set_ylabel("gain on fresh problems (95% CI)")
    handles = {}
    for ax in axes.flat:  # one legend for both panels, below them
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(f"Calibration of stage 4's budgets: each student's candidates, lr {lr:g}, batch {batch} "
                 "(dots: seeds)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+", type=Path)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--problems", type=int, default=400, help="fresh problems each cell was scored on")
    ap.add_argument("--target", type=float, default=0.15)
    ap.add_argument("--threshold", type=float, default=0.17)
    ap.add_argument("--chosen", default=None, help="student=tokens,... to mark (default: the rule's choice)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/calibration/budgets.png"))
    a = ap.parse_args()
    cells = load(a.tables)
    cells = cells[np.isclose(cells["lr"], a.lr) & (cells["batch"] == a.batch)]
    if cells.empty:
        raise SystemExit(f"no cell at lr {a.lr:g} and batch {a.batch} in {[str(p) for p in a.tables]}")
    summary = summarise(cells, a.problems)
    rule = chosen_by_rule(summary, a.threshold)
    chosen = ({k: int(float(v)) for k, v in (x.split("=") for x in a.chosen.split(","))} if a.chosen
              else {k: v for k, v in rule.items() if v is not None})
    print(summary.round(3).to_string(index=False))
    print(f"\nsmallest budget whose best candidate gains >= {a.threshold:+.2f}: "
          + ", ".join(f"{k} {'none' if v is None else f'{v:,}'}" for k, v in rule.items()))
    fig = figure(cells, summary, target=a.target, threshold=a.threshold, chosen=chosen, lr=a.lr, batch=a.batch)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=120, bbox_inches="tight")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
