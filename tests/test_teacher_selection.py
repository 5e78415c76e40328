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


def test_leads_pair_the_selected_teacher_with_each_rival_problem_by_problem():
    import numpy as np

    n = 40
    before = pd.Series(0.0, index=[f"p{i}" for i in range(n)])

    def solved(counts):  # seeds x problems, the first k problems right
        return np.array([[float(i < k) for i in range(n)] for k in counts])

    smoke = teacher_selection.SmokeTests(before, {
        "best": solved([30, 31, 32]), "far": solved([10, 11, 12]), "close": solved([29, 31, 33]),
        "noisy": solved([5, 38, 20]), "empty": before.to_numpy()[None, :]})
    leads = teacher_selection.leads(smoke, "best").set_index("rival")
    assert list(leads.index) == ["far", "close", "noisy", "empty"] and (leads["selected"] == "best").all()
    assert leads.loc["far", "lead"] == 0.5 and leads.loc["far", "shown"] and np.isnan(leads.loc["far", "seeds_needed"])
    assert leads.loc["empty", "lead"] == 31 / 40 and leads.loc["empty", "shown"]  # one row, paired with every seed
    # a lead of zero: not shown, nothing to show; a noisy rival: not shown, and the seeds that would show it
    assert leads.loc["close", "lead"] == 0 and not leads.loc["close", "shown"]
    assert np.isnan(leads.loc["close", "seeds_needed"])
    assert not leads.loc["noisy", "shown"] and leads.loc["noisy", "lead_lo"] < leads.loc["noisy", "lead"] < leads.loc["noisy", "lead_hi"]
    assert leads.loc["noisy", "seeds_needed"] > 3 and leads.loc["noisy", "problems_needed"] > 0
    # the other way round: the selected teacher had nothing to train on
    flipped = teacher_selection.leads(smoke, "empty").set_index("rival")
    assert flipped.loc["best", "lead"] == -31 / 40 and flipped.loc["best", "lead_hi"] < 0
