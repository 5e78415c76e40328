"""Interactive controls for the notebooks (ipywidgets): stage 3's DMC ranking under any rule.

The result a control changes is an ``HTML`` widget whose value the kernel rewrites, never an ``Output``
widget. A headless client (papermill, through nbclient) answers every display captured by an ``Output``
widget with a message on the shell channel while it waits on that same channel for the cell's reply;
when the reply lands during that send, nbclient never sees it and waits for ever (nbclient issue #312).
A notebook whose cell displayed into an ``Output`` widget stalled so with an idle kernel in CI; a test
executes the explorer under papermill.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from . import dmc_factors


def rank_table(items: pd.DataFrame, variant: str, params: Mapping[str, float]) -> pd.DataFrame:
    """Each dataset's DMC rank within each student (1 = highest) under ``variant`` with ``params`` (those
    the rule does not take are ignored), recomputed from the saved factors: datasets x students, in the
    first student's order."""
    taken = dmc_factors.rule_params(variant)
    table = dmc_factors.ranking(items, variant=variant, **{k: v for k, v in params.items() if k in taken})
    pivot = table.pivot(index="dataset", columns="student", values="rank")
    return pivot.sort_values(table["student"].iloc[0], kind="mergesort")


def dmc_ranking_explorer(items: pd.DataFrame, variant: str, params: Mapping[str, float]):
    """A rule dropdown, a log slider for every registered rule's parameters (``dmc_factors.parameter_ranges``:
    those on the scale of r span the items' relative difficulties) and the ``rank_table`` they give,
    redrawn whenever a control moves; it starts at ``variant`` and ``params`` (the profile's)."""
    import ipywidgets as widgets

    sliders = {name: widgets.FloatLogSlider(value=start, base=10, min=np.log10(low), max=np.log10(high), step=0.02,
                                            description=name)
               for name, (low, high, start) in dmc_factors.parameter_ranges(items, params).items()}
    rule = widgets.Dropdown(options=sorted(dmc_factors.RULES), value=variant, description="rule")
    table = widgets.HTML()

    def redraw(_change=None) -> None:
        current = {name: slider.value for name, slider in sliders.items()}
        table.value = rank_table(items, rule.value, current).to_html()

    for control in [rule, *sliders.values()]:
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([rule, *sliders.values(), table])
