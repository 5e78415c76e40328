"""Stage 1's choice and what it says about itself."""

from __future__ import annotations

import pandas as pd

from syllabus.stages import teacher_selection


def board(rows):
    frame = pd.DataFrame(rows, columns=["teacher", "gain", "gain_lo", "gain_hi", "teacher_accuracy"])
    frame = frame.sort_values(["gain", "teacher_accuracy"], ascending=[False, False]).reset_index(drop=True)
    return frame.assign(rank=range(1, len(frame) + 1))


def test_a_choice_among_harms_says_so_and_a_shown_gain_says_nothing():
    harms = board([("prose", -0.135, -0.20, -0.07, 1.0), ("selfcheck", -0.39, -0.46, -0.32, 1.0)])
    selected = teacher_selection.choose(harms, 1)
    caveat = teacher_selection.selection_caveat(harms, selected)
    assert selected == ["prose"] and caveat.startswith("every teacher lowered the probe accuracy")
    assert "prose gained -0.135 [-0.200, -0.070]" in caveat and "smoke_sft_tokens" in caveat
    unclear = board([("prose", 0.02, -0.03, 0.07, 1.0), ("selfcheck", -0.39, -0.46, -0.32, 1.0)])
    assert teacher_selection.selection_caveat(unclear, ["prose"]).startswith("the gain of the selected prose, +0.020 [-0.030, +0.070], is not shown")
    shown = board([("prose", 0.12, 0.05, 0.19, 1.0), ("selfcheck", -0.39, -0.46, -0.32, 1.0)])
    assert teacher_selection.selection_caveat(shown, ["prose"]) is None
