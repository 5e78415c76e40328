"""One seaborn style for every figure, and the figures the stage notebooks show.

Each function takes a tidy DataFrame (as saved in the stage's tables) and returns a matplotlib
Figure; ``Stage.save_figure`` writes it as PNG and SVG next to the tables.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib import ticker
import numpy as np
import pandas as pd
import seaborn as sns

from . import stats

PALETTE = "colorblind"


def set_theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "axes.titleweight": "bold"})


set_theme()


def _colors(names: list) -> dict:
    """One colour of the palette per name, in order: the same name keeps its colour across a figure's panels."""
    return dict(zip(names, sns.color_palette(PALETTE, len(names))))


def _annotate(ax, xs, ys, labels, step: float = 10.0, tries: int = 8) -> None:
    """Label each point beside it; a label that would overprint one placed before it moves down (then up)
    a line at a time until it is clear."""
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for x, y, label in zip(xs, ys, labels):
        note = ax.annotate(str(label), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        for k in range(1, tries + 1):
            box = note.get_window_extent(renderer).expanded(1.0, 1.1)
            if not any(box.overlaps(other) for other in placed):
                break
            shift = step * ((k + 1) // 2) * (-1 if k % 2 else 1)  # -1, +1, -2, +2 ... lines
            note.xyann = (5, 4 + shift)
        placed.append(note.get_window_extent(renderer))


def accuracy_vs_gain(board: pd.DataFrame, *, x="teacher_accuracy", y="gain", label="teacher", hue=None):
    """Stage 1: the teacher's own accuracy against what the student gained from it (DED's point),
    with the gain's 95% interval (columns ``gain_lo``/``gain_hi``) as a vertical bar."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if {"gain_lo", "gain_hi"} <= set(board.columns):
        ax.errorbar(board[x], board[y], yerr=[board[y] - board["gain_lo"], board["gain_hi"] - board[y]],
                    fmt="none", ecolor="grey", elinewidth=1, capsize=3, zorder=1)
    sns.scatterplot(data=board, x=x, y=y, hue=hue, s=80, ax=ax, zorder=2)
    _annotate(ax, board[x], board[y], board[label])
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("teacher accuracy on its traces (fraction correct)")
    ax.set_ylabel("student gain after smoke-test SFT\n(probe accuracy, after - before; 95% CI)")
    ax.set_title("Most accurate teacher vs most useful teacher")
    return fig


def funnel(counts: pd.DataFrame, *, step="step", count="kept", hue="teacher"):
    """Stage 2: traces kept after each curation step, per teacher."""
    order = list(dict.fromkeys(counts[step]))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(order)), 4))
    sns.barplot(data=counts, x=step, y=count, hue=hue, order=order, ax=ax)
    ax.set_xlabel("curation step")
    ax.set_ylabel("traces kept (count)")
    ax.set_title("Curation funnel")
    ax.tick_params(axis="x", rotation=30)
    return fig


def distributions(items: pd.DataFrame, *, value: str, by: str = "dataset", xlabel: str, discrete=False):
    """Stage 2: a distribution (length, level, pass rate) per candidate dataset: boxes of ``value``, or, with
    ``discrete``, one bar of items per dataset stacked by ``value`` (ordered values in a sequential palette,
    the key beside the axes)."""
    n = items[by].nunique()
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * n + 1.5)))
    if discrete:
        table = items.groupby([by, value]).size().unstack(value, fill_value=0).sort_index(ascending=False)
        table.plot.barh(stacked=True, ax=ax, width=0.75, color=sns.color_palette("crest", table.shape[1]))
        ax.set_xlabel("items (count)")
        ax.legend(title=xlabel, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8, title_fontsize=9)
    else:
        sns.boxplot(data=items, x=value, y=by, ax=ax, fliersize=2, orient="h")
        ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    return fig


def dmc_factors(table: pd.DataFrame, intervals: pd.DataFrame | None = None, *, dataset="dataset", student="student",
                factors=("quality", "capability", "rel_difficulty", "dmc"), log_factors=("rel_difficulty", "dmc")):
    """Stage 3: DMC and its factors per candidate dataset and student (``log_factors`` on a log axis), with
    whiskers from ``intervals`` (``stages.dmc.factor_intervals``: student, dataset, factor, lo, hi) when given."""
    long = table.melt(id_vars=[dataset, student], value_vars=list(factors), var_name="factor", value_name="value")
    datasets, students = sorted(table[dataset].unique()), sorted(table[student].unique())
    g = sns.catplot(data=long, x="value", y=dataset, hue=student, col="factor", kind="bar", sharex=False,
                    order=datasets, hue_order=students, errorbar=None, col_wrap=2,  # 2 x 2: stays readable
                    height=max(3, 0.3 * len(datasets) + 1.2), aspect=0.8)    # at a notebook's width
    g.set_titles("{col_name}")
    g.set_axis_labels("mean over items" + ("; whiskers: 95% CI" if intervals is not None else ""), "")
    bounds = (intervals.set_index(["factor", student, dataset])[["lo", "hi"]]
              if intervals is not None and len(intervals) else None)
    for ax, name in zip(g.axes.flat, factors):
        if bounds is not None:  # one container of bars per student, its bars in dataset order
            for who, bars in zip(students, ax.containers):
                for ds, bar in zip(datasets, bars.patches):
                    if (name, who, ds) not in bounds.index:
                        continue
                    lo, hi = bounds.loc[(name, who, ds)]
                    y = bar.get_y() + bar.get_height() / 2
                    ax.plot([lo, hi], [y, y], color="0.15", linewidth=0.9, solid_capstyle="butt")
        if name in log_factors and (table[name] > 0).any():  # DMC spans orders of magnitude between datasets
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # no overprinted minor labels
            ax.set_title(f"{name} (log scale)")
    g.figure.suptitle("DMC and its factors per candidate dataset"
                      + (" (whiskers: problems resampled)" if bounds is not None else ""), y=1.03)
    return g.figure


def cell_gains(cells: pd.DataFrame, *, student="student", dataset="dataset", y="gain",
               budgets: dict[str, str] | None = None):
    """Stage 4: every cell's paired gain with its 95% interval, one panel per student, sorted;
    the controls (no SFT, gold solutions) in grey, zero as a dashed line. ``budgets``: each student's
    SFT budget per cell as text (e.g. "900,000 tokens"), named in its panel's title."""
    students = sorted(cells[student].unique())
    n = cells.groupby(student).size().max()
    fig, axes = plt.subplots(1, len(students), figsize=(5.2 * len(students), 0.28 * n + 1.6), squeeze=False)
    for ax, name in zip(axes.flat, students):
        g = cells[cells[student] == name].sort_values(y)
        pos = np.arange(len(g))
        colors = ["#999999" if c else sns.color_palette(PALETTE)[0] for c in g["control"]]
        ax.barh(pos, g[y], color=colors)
        ax.errorbar(g[y], pos, xerr=[g[y] - g["gain_lo"], g["gain_hi"] - g[y]], fmt="none", ecolor="black",
                    elinewidth=0.8, capsize=2)
        ax.set_yticks(pos, g[dataset], fontsize=8)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("gain in held-out accuracy (after - before, 95% CI)")
        budget = f"{budgets[name]} per cell, " if budgets and name in budgets else ""
        ax.set_title(f"{name} ({budget}from {g['accuracy_before'].iloc[0]:.2f}; grey: controls)", fontsize=10)
    fig.suptitle("What each candidate dataset teaches each student (equal SFT budget within a student)")
    fig.tight_layout()
    return fig


def scatter_with_fit(grid: pd.DataFrame, predictors: list[str], *, target="gain", hue="student"):
    """Stage 4: each predictor against the measured gain (with its 95% interval when the table has
    ``gain_lo``/``gain_hi``), a zero line for the gain, and a least-squares line within each student (in
    its colour), since the study's correlations are within each student: a pooled line would mostly
    show the students' different levels."""
    cols = min(3, len(predictors))
    rows = int(np.ceil(len(predictors) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    order = list(dict.fromkeys(grid[hue]))
    colors = _colors(order)
    for ax, pred in zip(axes.flat, predictors):
        if target == "gain":
            ax.axhline(0, color="grey", lw=0.8, ls="--", zorder=0)
        if {"gain_lo", "gain_hi"} <= set(grid.columns) and target == "gain":
            ax.errorbar(grid[pred], grid[target], yerr=[grid[target] - grid["gain_lo"], grid["gain_hi"] - grid[target]],
                        fmt="none", ecolor="#bbbbbb", elinewidth=0.8, zorder=1)
        sns.scatterplot(data=grid, x=pred, y=target, hue=hue, hue_order=order, palette=colors, ax=ax, s=40,
                        legend=ax is axes.flat[0], zorder=2)
        for name in order:
            ok = grid.loc[grid[hue] == name, [pred, target]].dropna()
            if len(ok) >= 2 and ok[pred].nunique() > 1:
                slope, intercept = np.polyfit(ok[pred], ok[target], 1)
                xs = np.linspace(ok[pred].min(), ok[pred].max(), 20)
                ax.plot(xs, slope * xs + intercept, color=colors[name], lw=1)
        ax.set_xlabel(pred)
        ax.set_ylabel("gain (after - before)" if ax in axes[:, 0] else "")
    for ax in list(axes.flat)[len(predictors):]:
        ax.set_visible(False)
    fig.suptitle("Which predictor tracks the distillation gain? (held-out accuracy gain, 95% CI; "
                 "least-squares lines within each student)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # keep the title above the first row's labels
    return fig


def dmc_leads(leads: pd.DataFrame, *, scope="scope", rival="rival", lead="lead"):
    """Stage 4: DMC's Spearman with the gain minus each rival's absolute Spearman, with its paired 95%
    interval, one panel per student; right of the dashed zero line DMC tracks the gain better."""
    if leads.empty:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.text(0.5, 0.5, "no cells to compare", ha="center", va="center")
        ax.set_axis_off()
        return fig
    scopes = sorted(leads[scope].unique())
    n = leads.groupby(scope).size().max()
    fig, axes = plt.subplots(1, len(scopes), figsize=(5.6 * len(scopes), 0.32 * n + 1.9), squeeze=False, sharex=True)
    for ax, name in zip(axes.flat, scopes):
        g = leads[leads[scope] == name].sort_values(lead, na_position="first")
        pos = np.arange(len(g))
        shown = g["lead_lo"] > 0
        ax.errorbar(g[lead], pos, xerr=[g[lead] - g["lead_lo"], g["lead_hi"] - g[lead]], fmt="none", ecolor="black",
                    elinewidth=0.8, capsize=2, zorder=1)
        ax.scatter(g[lead], pos, c=[sns.color_palette(PALETTE)[2] if s else "#777777" for s in shown], s=30, zorder=2)
        ax.set_yticks(pos, [f"{r} ({a:.2f})" if np.isfinite(a) else f"{r} (undefined)"
                            for r, a in zip(g[rival], g["rival_abs_spearman"])], fontsize=8)
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("DMC's Spearman - |rival's Spearman|, 95% CI")
        ax.set_title(f"{name}: DMC Spearman {g['spearman'].dropna().iloc[0]:.2f}" if g["spearman"].notna().any()
                     else name, fontsize=10)
    fig.suptitle("Does DMC track the gain better than each rival?\n"
                 "(the rival's |Spearman| in brackets; green: DMC ahead, interval above 0)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def _mean_band(g, n_problems: int | None) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Mean over seeds of grouped accuracies and its 95% band: mean +- t sqrt(p(1-p)/n + seed SD^2/seeds)
    with ``n_problems`` (t the Student quantile at the two parts' Welch-Satterthwaite df, as in
    ``stats.paired_difference``), kept within [0, 1] (an accuracy's range), else the seeds' min-max."""
    mean, sd, count = g.mean(), g.std(ddof=1).fillna(0.0), g.count()
    if n_problems:
        binomial, seeds = mean * (1 - mean) / n_problems, sd ** 2 / count
        q = pd.Series([stats.t_quantile(stats.welch_df([(b, n_problems - 1), (s, c - 1)]))
                       for b, s, c in zip(binomial, seeds, count)], index=mean.index)
        half = q * np.sqrt(binomial + seeds)
        return mean, (mean - half).clip(lower=0.0), (mean + half).clip(upper=1.0)
    return mean, g.min(), g.max()


def _start_level(curves: pd.DataFrame, x: str, y: str) -> float | None:
    """The mean accuracy at phase 0, before any training (the same student for every policy), or None when
    the curves have no phase 0: the baseline each curve ends above or below."""
    start = curves.loc[curves[x] == 0, y]
    return float(start.mean()) if len(start) else None


def _dodge(order: list, width: float) -> dict:
    """Sideways offsets, from -width to +width, one per name: equal curves stay visible."""
    return dict(zip(order, np.linspace(-width, width, len(order)) if len(order) > 1 else [0.0]))


def learning_curves(curves: pd.DataFrame, *, x="phase", y="accuracy", hue="policy", n_problems: int | None = None):
    """Stage 5: held-out accuracy after each phase per policy: the mean over seeds and, with
    ``n_problems``, a 95% band from the binomial SE of that mean and the seed spread
    (mean +- t sqrt(p(1-p)/n + seed SD^2/seeds), t at the Welch-Satterthwaite df as in ``_mean_band``);
    without it, the seeds' min-max. Every phase is the
    same compute for every policy (the ``tokens`` column has the counts). Policies are dodged sideways
    a little so that equal curves stay visible."""
    order = list(dict.fromkeys(curves[hue]))
    offsets = _dodge(order, 0.08)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    colors = _colors(order)
    start = _start_level(curves, x, y)
    if start is not None:
        ax.axhline(start, color="grey", lw=0.8, ls="--", zorder=0, label="start (phase 0)")
    for name in order:
        mean, lo, hi = _mean_band(curves[curves[hue] == name].groupby(x)[y], n_problems)
        xs = mean.index.to_numpy(float) + offsets[name]
        ax.plot(xs, mean.to_numpy(), marker="o", color=colors[name], label=name)
        ax.fill_between(xs, lo.to_numpy(), hi.to_numpy(), color=colors[name], alpha=0.12)
    ax.set_xticks(sorted(curves[x].unique()))
    ax.set_xlabel("phase (0 = before training; equal compute per phase; policies dodged)")
    ax.set_ylabel("held-out accuracy (fraction correct)")
    band = "95% CI (binomial + seeds)" if n_problems else "min-max over seeds"
    ax.set_title(f"Learning curves at equal compute (mean over seeds, band: {band})", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def chosen_trajectories(scores: pd.DataFrame, choices: pd.DataFrame, *, x="phase", y="dmc", hue="dataset",
                        seed_col="seed"):
    """Stage 5: dmc_dynamic's DMC trajectories, one panel per seed: every candidate in grey, the dataset
    chosen at each phase marked in colour on its line, named where the choice starts or switches, so a switch,
    or lock-in, shows.
    Where ``scores`` has ``{y}_lo``/``{y}_hi`` (95% intervals), the chosen points carry whiskers; where
    ``choices`` has the paired margin over the runner-up (``dmc_margin_lo``/``_hi``), a pick whose lead is not
    shown (the interval spans 0) is drawn hollow."""
    bounded = {f"{y}_lo", f"{y}_hi"} <= set(scores.columns)
    margins = {"dmc_margin_lo", "dmc_margin_hi"} <= set(choices.columns) and choices["dmc_margin_lo"].notna().any()
    seeds = sorted(scores[seed_col].unique())
    ncols = min(4, len(seeds))  # more seeds wrap onto more rows, so that a panel keeps its width
    nrows = -(-len(seeds) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows + 0.6), squeeze=False, sharey=True)
    for ax in list(axes.flat)[len(seeds):]:
        ax.axis("off")
    for ax, seed in zip(axes.flat, seeds):
        g = scores[scores[seed_col] == seed]
        for name, line in g.groupby(hue):
            line = line.sort_values(x)
            ax.plot(line[x], line[y], color="0.75", linewidth=1, zorder=1)
        picks = choices[choices[seed_col] == seed]
        chosen = g.merge(picks[[x, "chosen"]], on=x).query(f"{hue} == chosen")
        ax.plot(chosen[x], chosen[y], color="tab:red", marker="o", linewidth=1, linestyle="--", zorder=2, label="chosen")
        if bounded:
            ax.errorbar(chosen[x], chosen[y], yerr=[chosen[y] - chosen[f"{y}_lo"], chosen[f"{y}_hi"] - chosen[y]],
                        fmt="none", color="tab:red", capsize=2, linewidth=0.9, zorder=2)
        if margins:
            lead = picks.set_index(x)
            lo, hi = lead["dmc_margin_lo"].reindex(chosen[x]), lead["dmc_margin_hi"].reindex(chosen[x])
            tie = chosen[(lo.notna() & ~stats.excludes_zero(lo, hi)).to_numpy()]  # the paired interval spans 0
            ax.plot(tie[x], tie[y], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="tab:red",
                    zorder=3, label="chosen, lead over the runner-up not shown")
        _name_switches(ax, chosen.sort_values(x), x=x, y=y, hue=hue)
        ax.set_xticks(sorted(g[x].unique()))
        ax.set_xlabel("phase (DMC measured before its training)")
        ax.set_title(f"seed {seed}", fontsize=9)
    for row in axes:
        row[0].set_ylabel("DMC on the current checkpoint")
    fig.suptitle("dmc_dynamic: every candidate's DMC (grey) and the dataset chosen per phase (red)"
                 + ("; whiskers: its 95% CI, problems resampled" if bounded else ""), fontsize=10)
    fig.tight_layout()
    # the key below the panels, where it covers no line
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=2, fontsize=8, frameon=False)
    return fig


def _name_switches(ax, chosen: pd.DataFrame, *, x: str, y: str, hue: str) -> None:
    """Name the chosen dataset where the choice starts or switches (a lock-in is named once); a name at the
    last phase is written to the left of its point, so it stays inside the panel."""
    last_x, previous = chosen[x].max(), None
    for _, row in chosen.iterrows():
        if row[hue] != previous:
            left = row[x] == last_x and previous is not None
            ax.annotate(row[hue], (row[x], row[y]), textcoords="offset points", xytext=(-4 if left else 4, 4),
                        ha="right" if left else "left", fontsize=7)
        previous = row[hue]


def module_curves(curves: pd.DataFrame, *, x="phase", y="accuracy", hue="policy", col="module",
                  n_problems: dict[str, int] | None = None):
    """Stage 5: held-out accuracy per module after each phase (mean over seeds), one panel per module;
    with ``n_problems`` (held-out problems per module) a 95% band as in ``learning_curves``. Policies
    are dodged sideways a little, as there, so that equal curves stay visible."""
    modules = list(dict.fromkeys(curves[col]))
    ncols = min(4, len(modules))
    nrows = -(-len(modules) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), squeeze=False, sharey=True)
    order = list(dict.fromkeys(curves[hue]))
    colors = _colors(order)
    offsets = _dodge(order, 0.1)
    for ax, module in zip(axes.flat, modules):
        g = curves[curves[col] == module]
        start = _start_level(g, x, y)
        if start is not None:
            ax.axhline(start, color="grey", lw=0.8, ls="--", zorder=0, label="start (phase 0)")
        for name in order:
            m, lo, hi = _mean_band(g[g[hue] == name].groupby(x)[y], (n_problems or {}).get(module))
            xs = m.index.to_numpy(float) + offsets[name]
            ax.plot(xs, m.to_numpy(), marker=".", color=colors[name], label=name)
            if n_problems:
                ax.fill_between(xs, lo.to_numpy(), hi.to_numpy(), color=colors[name], alpha=0.08)
        ax.set_title(module if not n_problems else f"{module} ({n_problems.get(module, 0)} problems)", fontsize=9)
        ax.set_xticks(sorted(g[x].unique()))
    spare = list(axes.flat)[len(modules):]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if spare:  # the legend in an empty panel, over no curve
        spare[0].legend(handles, labels, loc="center", fontsize=8, title=hue)
    else:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    band = ", band: 95% CI (binomial + seeds)" if n_problems else ""
    fig.suptitle(f"Held-out accuracy per module after each phase (mean over seeds{band}; policies dodged)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def benchmark_bars(tidy: pd.DataFrame, *, value="value", model="model", task="task", err="stderr"):
    """Stage 6: one bar per model and task, with its 95% interval and its value written beside it (so that a
    score of 0 reads as 0, not as a missing bar). The interval is the row's ``ci_lo``/``ci_hi`` where the table
    has them (``benchmark.figure_rows``), else ``stats.score_interval`` (Wilson for a share of problems)."""
    wide = tidy.pivot_table(index=model, columns=task, values=value, aggfunc="first")
    if {"ci_lo", "ci_hi"} <= set(tidy.columns):
        bounds = tidy[["ci_lo", "ci_hi"]].set_axis(["lo", "hi"], axis=1)
    else:
        bounds = pd.DataFrame([stats.score_interval(r, value, err) for r in tidy.to_dict("records")],
                              columns=["lo", "hi"], index=tidy.index)
    lo, hi = (tidy.assign(bound=bounds[side]).pivot_table(index=model, columns=task, values="bound", aggfunc="first",
                                                           dropna=False).reindex_like(wide) for side in ("lo", "hi"))
    below, above = (wide - lo).clip(lower=0).fillna(0), (hi - wide).clip(lower=0).fillna(0)
    errs = np.stack([np.stack([below[c].to_numpy(), above[c].to_numpy()]) for c in wide.columns])
    fig, ax = plt.subplots(figsize=(7.5, max(3, 0.45 * wide.size / max(1, wide.shape[1]) * max(1, wide.shape[1] / 2) + 1.5)))
    wide.plot.barh(ax=ax, xerr=errs, capsize=2, color=sns.color_palette(PALETTE, wide.shape[1]))
    for bars in ax.containers:
        if hasattr(bars, "patches"):
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=3)
    means = "seeds" in tidy.columns and bool(tidy["seeds"].notna().any())
    ax.set_xlabel("score (fraction; whiskers: 95% CI, Wilson on the problems scored"
                  + (";\na policy's mean over seeds adds their spread)" if means else ")"))
    ax.set_ylabel("")
    ax.set_xlim(0, max(0.05, float(np.nanmax((wide + above).to_numpy())) * 1.25))
    _undistilled_lines(ax, wide)
    ax.legend(title="task", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not on them
    ax.set_title("lm-evaluation-harness results")
    return fig


def _undistilled_lines(ax, wide: pd.DataFrame, suffix: str = " (undistilled)") -> None:
    """The baseline of a student's distilled models: a dashed line at its undistilled score (per task, in a
    darker shade of the task's colour, visible over its bars) across the rows of that student ("S
    (undistilled)" and every "S + policy")."""
    colors = [tuple(0.55 * np.asarray(c)) for c in sns.color_palette(PALETTE, wide.shape[1])]
    names = list(wide.index)
    for student in [m.removesuffix(suffix) for m in names if m.endswith(suffix)]:
        rows = [i for i, m in enumerate(names) if m == student + suffix or m.startswith(student + " + ")]
        if len(rows) < 2:  # no distilled model of this student to compare with
            continue
        for color, task in zip(colors, wide.columns):
            base = wide.loc[student + suffix, task]
            if pd.isna(base):
                continue
            label = f"{student} undistilled" + (f" ({task})" if wide.shape[1] > 1 else "")
            ax.vlines(base, min(rows) - 0.45, max(rows) + 0.45, colors=[color], linestyles="dashed", linewidth=1.0,
                      label=label, zorder=3)
