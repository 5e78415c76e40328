import numpy as np
import pandas as pd
import pytest

from syllabus.stages.correlation import grid_datasets
from syllabus.stages import correlation


def test_grid_datasets_selects_by_glob_and_names_unmatched_patterns():
    datasets = {name: pd.DataFrame({"problem_id": ["p1"]}) for name in
                ("all", "teacher=a", "teacher=a+unverified", "teacher=b", "level=1")}
    assert grid_datasets(datasets, None) is datasets
    assert sorted(grid_datasets(datasets, ["teacher=*"])) == ["teacher=a", "teacher=a+unverified", "teacher=b"]
    assert sorted(grid_datasets(datasets, ["teacher=?", "all"])) == ["all", "teacher=a", "teacher=b"]
    with pytest.raises(ValueError, match=r"\['style=\*'\] match no candidate dataset.*'level=1'"):
        grid_datasets(datasets, ["teacher=*", "style=*"])


def test_dataset_families_group_variants_and_mixtures():
    from syllabus.stages.correlation import MIXED_FAMILY, dataset_family

    assert dataset_family("teacher=prose") == dataset_family("teacher=prose+adapted") == "teacher=prose"
    assert dataset_family("teacher=prose+unverified") == "teacher=prose"
    for name in ("all", "all+adapted", "level=1", "pass_rate=0.00-0.25+adapted"):
        assert dataset_family(name) == MIXED_FAMILY


def test_cell_gains_pair_outcomes_and_mark_controls():
    from syllabus.stages.correlation import CONTROL_NONE, cell_gains, family_split, noise_floor

    rows = []
    before = [0, 0, 1, 1]
    for name, seeds in {"teacher=a": {0: [1, 1, 1, 1], 1: [1, 0, 1, 1]}, CONTROL_NONE: {-1: before},
                        "teacher=b": {0: [0, 0, 1, 0], 1: [0, 0, 0, 1]}, "all": {0: [1, 0, 1, 1], 1: [1, 0, 1, 1]}}.items():
        for seed, after in seeds.items():
            rows += [{"student": "s", "dataset": name, "seed": seed, "problem_id": f"p{i}", "correct_before": b,
                      "correct_after": a} for i, (b, a) in enumerate(zip(before, after))]
    cells = cell_gains(pd.DataFrame(rows)).set_index("dataset")
    assert cells.loc["teacher=a", "gain"] == pytest.approx((0.5 + 0.25) / 2)
    assert cells.loc["teacher=b", "gain"] == pytest.approx(-0.25)
    assert cells.loc[CONTROL_NONE, "gain"] == 0 and bool(cells.loc[CONTROL_NONE, "control"])
    assert cells.loc["teacher=a", "n_seeds"] == 2 and cells.loc["teacher=a", "n_problems"] == 4
    # a gain whose interval spans 0 says what sample would show it; a gain of exactly 0 has nothing to show
    assert cells.loc["teacher=a", "gain_lo"] < 0 < cells.loc["teacher=a", "gain_hi"]
    assert cells.loc["teacher=a", "seeds_needed"] > 2 and cells.loc["teacher=a", "problems_needed"] > 4
    assert np.isnan(cells.loc[CONTROL_NONE, "seeds_needed"]) and np.isnan(cells.loc[CONTROL_NONE, "problems_needed"])
    floor = noise_floor(cells.reset_index())
    assert floor.loc[0, "n_problems"] == 4 and floor.loc[0, "binomial_se"] == pytest.approx(0.25)
    fit, hold = family_split(cells.reset_index(), 0.5, seed=0)
    assert set(fit["family"]).isdisjoint(hold["family"]) and "mixed" not in set(fit["family"]) | set(hold["family"])


def test_planted_style_check_pairs_the_familiar_teacher_against_the_others():
    from syllabus import params as P
    from syllabus.stages.correlation import planted_style_check

    prof = P.load_profile("ci")  # students warm-started on gold solutions: the familiar teacher is prose
    rows = []
    for student in [s.name for s in prof.students]:
        for name, solved in {"teacher=prose": 30, "teacher=equations": 10, "teacher=sloppy": 29}.items():
            for seed in range(3):
                rows += [{"student": student, "dataset": name, "seed": seed, "problem_id": f"p{i}",
                          "correct_before": 0.0, "correct_after": float(i < solved + seed)} for i in range(40)]
    check = planted_style_check(pd.DataFrame(rows), prof).set_index(["student", "other_teacher"])
    first = prof.students[0].name
    assert set(check["familiar_teacher"]) == {"prose"}
    assert check.loc[(first, "equations"), "difference"] == pytest.approx(0.5)
    assert bool(check.loc[(first, "equations"), "recovered"])
    assert not bool(check.loc[(first, "sloppy"), "recovered"])  # 1 problem in 40: inside the noise
    # what would show it: no seed spread to reduce, so more problems, not more seeds
    assert check.loc[(first, "sloppy"), "seeds_needed"] == float("inf")
    assert 40 < check.loc[(first, "sloppy"), "problems_needed"] < float("inf")
    assert pd.isna(check.loc[(first, "equations"), "problems_needed"])  # shown: nothing needed


def test_planted_style_check_compares_unverified_sets_at_equal_error_rates_only():
    from syllabus import params as P
    from syllabus.stages.correlation import planted_style_check

    prof = P.load_profile("tiny-wide")  # lab-s: gold warm-up, familiar style prose; 20 teachers, styles x error rates
    solved = {"teacher=prose-e10+unverified": 30, "teacher=prose-e00+unverified": 35,
              "teacher=equations-e10+unverified": 10, "teacher=equations-e20+unverified": 0}
    rows = [{"student": "lab-s", "dataset": name, "seed": seed, "problem_id": f"p{i}", "correct_before": 0.0,
             "correct_after": float(i < n)} for name, n in solved.items() for seed in range(3) for i in range(40)]
    check = planted_style_check(pd.DataFrame(rows), prof)
    # prose-e10 against equations-e10 (equal error rates); not against equations-e20 (a difference of quality),
    # nor prose against prose; prose-e00 has no equations-e00 in the grid
    assert check[["familiar_teacher", "other_teacher"]].values.tolist() == [["prose-e10", "equations-e10"]]
    assert check["difference"].iloc[0] == pytest.approx(0.5) and bool(check["recovered"].iloc[0])


def test_training_and_scoring_slices_share_no_problem_and_nest():
    from types import SimpleNamespace

    from syllabus.stages import dmc as dmc_stage

    prof = SimpleNamespace(seed=3, dmc=SimpleNamespace(heldout_fraction=0.25))
    ids = [f"p{i}" for i in range(200)]
    datasets = {"all": pd.DataFrame({"problem_id": ids * 2}), "teacher=a": pd.DataFrame({"problem_id": ids[::2]})}
    train = dmc_stage.training_rows(datasets, prof)
    score = dmc_stage.slice_rows(datasets, prof, "scoring")
    for name in datasets:
        assert set(train[name]["problem_id"]).isdisjoint(score[name]["problem_id"])
        assert len(train[name]) + len(score[name]) == len(datasets[name])
    assert set(score["teacher=a"]["problem_id"]) <= set(score["all"]["problem_id"])  # nested datasets, one split
    sample = dmc_stage.slice_rows(datasets, prof, "training_sample")  # stage 5's in-sample DMC
    assert set(sample["all"]["problem_id"]) < set(train["all"]["problem_id"])
    assert set(sample["teacher=a"]["problem_id"]) <= set(sample["all"]["problem_id"])
    n_score, n_sample = score["all"]["problem_id"].nunique(), sample["all"]["problem_id"].nunique()
    assert 0.6 * n_score < n_sample < 1.6 * n_score  # about as many problems as the scoring slice
    only_scored = score["all"]["problem_id"].iloc[:1].tolist()
    with pytest.raises(ValueError, match=r"\['tiny'\] have no problem outside the DMC scoring slice.*heldout_fraction"):
        dmc_stage.training_rows({"tiny": pd.DataFrame({"problem_id": only_scored})}, prof)


def test_rule_protocol_chooses_on_one_part_and_reports_on_the_other():
    from types import SimpleNamespace

    import numpy as np

    from syllabus import dmc_factors, params
    from syllabus.stages import correlation

    rng = np.random.default_rng(0)
    rows, grid = [], []
    for s in ("s1", "s2"):
        for d in range(8):
            r = rng.uniform(0.3, 4.0)  # how foreign dataset d is to student s
            for i in range(10):
                rows.append({"student": s, "dataset": f"teacher=t{d}", "problem_id": f"p{i}", "correct": True,
                             "pass_rate": 0.2, "nll": r * rng.uniform(0.9, 1.1)})
            grid.append({"student": s, "dataset": f"teacher=t{d}", "family": f"teacher=t{d}"})
    items = dmc_factors.item_table(pd.DataFrame(rows), nll_ref=1.0)
    table = pd.DataFrame(grid)
    truth = dmc_factors.dmc_scores(dmc_factors.recompute(items, variant="window", center=1.0, width=0.5),
                                   by=["dataset", "student"])
    table["gain"] = [truth[(d, s)] for d, s in zip(table["dataset"], table["student"])]
    table["dmc"] = 0.0
    table["rel_difficulty"] = items.groupby(["dataset", "student"])["rel_difficulty"].mean().loc[
        list(zip(table["dataset"], table["student"]))].to_numpy()
    prof = SimpleNamespace(dmc=params.DMC(variant="excess"), correlation=params.Correlation(
        fit_split="student", bootstrap=50, permutations=50,
        fit_grid={"window": {"center": [1.0, 2.0]}, "no_difficulty": {}}))
    fit_table, held, summary = correlation.rule_protocol(table, items, SimpleNamespace(params=prof, seed=0))
    assert summary["chosen_rule"] == "window" and summary["chosen_params"] == {"center": 1.0, "width": 0.5}
    assert fit_table.set_index("rule")["chosen"].to_dict() == {"window": True, "no_difficulty": False}
    assert summary["n_fit_cells"] == summary["n_held_out_cells"] == 8 and set(held["scope"]) == {"s2"}
    rows = held.set_index("predictor")
    assert rows.loc["dmc[window chosen]", "spearman"] == pytest.approx(1.0)  # the planted rule, on unseen cells
    assert "dmc[excess profile]" in rows.index and "rel_difficulty" in rows.index
    leads = correlation.held_out_leads(table, items, SimpleNamespace(params=prof, seed=0), summary)
    assert set(leads["scope"]) == {"s2"} and set(leads["dmc"]) == {"dmc[window chosen]", "dmc[excess profile]"}
    lead = leads.set_index(["dmc", "rival"]).loc[("dmc[window chosen]", "rel_difficulty")]
    assert lead["spearman"] == pytest.approx(1.0)
    assert lead["lead"] == pytest.approx(1.0 - lead["rival_abs_spearman"])


def test_held_out_verdict_needs_the_level_and_a_shown_lead_over_every_defined_rival():
    import numpy as np

    from syllabus.stages import correlation

    held = pd.DataFrame({"scope": ["a", "b"], "predictor": ["dmc[x]", "dmc[x]"], "spearman": [0.9, 0.5],
                         "spearman_lo": [0.2, -0.1], "spearman_hi": [1.0, 0.9]})
    leads = pd.DataFrame([
        # student a: clearly ahead of quality, tied in point with perplexity (not shown), capability undefined
        {"scope": "a", "dmc": "dmc[x]", "rival": "quality", "n": 12, "spearman": 0.9, "rival_abs_spearman": 0.3,
         "lead": 0.6, "lead_lo": 0.2, "lead_hi": 0.9, "note": "", "ahead_shown": True},
        {"scope": "a", "dmc": "dmc[x]", "rival": "perplexity", "n": 12, "spearman": 0.9, "rival_abs_spearman": 0.9,
         "lead": 0.0, "lead_lo": -0.1, "lead_hi": 0.1, "note": "", "ahead_shown": False},
        {"scope": "a", "dmc": "dmc[x]", "rival": "capability", "n": 12, "spearman": 0.9, "rival_abs_spearman": np.nan,
         "lead": np.nan, "lead_lo": np.nan, "lead_hi": np.nan, "note": "constant", "ahead_shown": False},
        # student b: ahead of its one defined rival, but the level is not met
        {"scope": "b", "dmc": "dmc[x]", "rival": "quality", "n": 12, "spearman": 0.5, "rival_abs_spearman": 0.0,
         "lead": 0.5, "lead_lo": 0.1, "lead_hi": 0.8, "note": "", "ahead_shown": True},
    ])
    v = correlation.held_out_verdict(held, leads).set_index("scope")
    assert v.loc["a", "strong"] and not v.loc["a", "ahead_of_every_rival"]
    assert v.loc["a", "not_shown_ahead_of"] == "perplexity" and v.loc["a", "ahead_shown_of"] == "quality"
    assert v.loc["a", "rivals_at_or_above"] == "perplexity" and v.loc["a", "undefined_rivals"] == "capability"
    assert "shown ahead of 1 of 2 defined rivals, not of perplexity" in v.loc["a", "verdict"]
    assert not v.loc["b", "strong"] and v.loc["b", "ahead_of_every_rival"]
    assert "not at least 0.6" in v.loc["b", "verdict"] and "every defined rival (1)" in v.loc["b", "verdict"]
    assert correlation.held_out_verdict(held, leads.iloc[:0]).empty


def test_per_prompt_reference_falls_back_to_the_median_for_a_problem_without_a_scored_sample():
    import numpy as np

    from syllabus.stages import dmc as dmc_stage

    own = pd.DataFrame({"problem_id": ["a", "a", "b", "c", "c"], "nll": [1.0, 3.0, np.nan, 4.0, 4.0]})
    ref = dmc_stage.per_prompt_reference(own)
    assert ref.to_dict() == {"a": 2.0, "b": 3.0, "c": 4.0} and ref.attrs["n_fallback"] == 1
    with pytest.raises(ValueError, match="every own sample of the student is empty"):
        dmc_stage.per_prompt_reference(own.assign(nll=np.nan))


def test_pooled_leads_pools_named_students_of_several_grids_and_names_bad_input():
    import numpy as np
    rng = np.random.default_rng(0)
    grids = {}
    for name in ("g1", "g2"):
        rows = []
        truth = rng.normal(size=12)
        for student in ("a", "b"):
            gain = truth + 0.2 * rng.normal(size=12)
            for i in range(12):
                rows.append({"student": student, "dataset": f"d{i}", "family": f"d{i}", "control": False,
                             "gain": gain[i], "dmc": truth[i] + 0.1 * rng.normal(), "quality": rng.normal(),
                             "capability": 0.5})
        rows.append({"student": "a", "dataset": "gold", "family": "gold", "control": True, "gain": 9.0, "dmc": 0.0,
                     "quality": 0.0, "capability": 0.5})
        grids[name] = pd.DataFrame(rows)
    table = correlation.pooled_leads(grids, {"g1": ["b"], "g2": ["a", "b"]}, n_boot=200)
    quality = table.set_index("rival").loc["quality"]
    assert quality["strata"] == 3 and quality["n"] == 36  # controls left out; only the named students
    assert quality["ahead_shown"] and quality["lead_lo"] > 0  # a planted predictor beats noise
    assert quality["strata_leads"].startswith("g1/b +")
    capability = table.set_index("rival").loc["capability"]  # constant within every grid: undefined, said
    assert capability["strata"] == 0 and not capability["ahead_shown"] and "g1/b" in capability["note"]
    with pytest.raises(ValueError, match="grid 'g1' has no student \\['c'\\]"):
        correlation.pooled_leads(grids, {"g1": ["c"]})
    with pytest.raises(ValueError, match="no grid table for \\['g3'\\]"):
        correlation.pooled_leads(grids, {"g3": ["a"]})


def test_grid_cells_train_each_student_on_its_own_token_budget():
    """``correlation.sft_tokens_by_student``: equal tokens within a student, sized per student."""
    from syllabus import models, params as P
    from syllabus.records import Problem
    from syllabus.students import StudentModel

    problems = {f"p{i}": Problem(id=f"p{i}", task="lab", source="lab", text=f"What is {i} + {i}?",
                                 answer=str(2 * i), solution=f"{i} + {i} = {2 * i}.\n#### {2 * i}") for i in range(40)}
    rows = pd.DataFrame({"problem_id": list(problems), "teacher": "prose", "sample": 0, "correct": True,
                         "text": [f"Add {i} and {i} to get {2 * i}.\n#### {2 * i}" for i in range(40)],
                         "level": 1, "module": "add"})
    tok = models.lab_tokenizer([p.text for p in problems.values()] + list(rows["text"])
                               + [p.solution for p in problems.values()])
    prof = P.Profile(name="t", students=[P.Student(name="s", source="lab"), P.Student(name="m", source="lab")],
                     teachers=[P.Teacher(name="prose", backend="lab", style="prose")],
                     training=P.Training(batch_size=2, max_seq_len=256),
                     correlation=P.Correlation(sft_tokens=2000, sft_tokens_by_student={"m": 4000}))
    steps = {}
    for spec in prof.students:
        student = StudentModel(spec, None, tok)
        cells = correlation.grid_cells(student, {"teacher=prose": rows}, problems, list(problems.values()), prof)
        assert set(cells) == {"teacher=prose", correlation.CONTROL_GOLD}
        steps[spec.name] = {name: n for name, (_, n) in cells.items()}
    # twice the tokens, about twice the steps, for every cell of m
    for name in steps["s"]:
        assert steps["m"][name] == pytest.approx(2 * steps["s"][name], abs=1)


def test_predictor_figure_fits_a_line_within_each_student_and_draws_the_zero_gain_line():
    import matplotlib

    matplotlib.use("Agg")
    from syllabus import plots

    # within each student the gain rises with the predictor; pooled, it falls (the students sit at different levels)
    grid = pd.DataFrame([{"student": s, "dmc": x + offset, "gain": 0.1 * x - 2 * offset, "gain_lo": 0.1 * x - 2 * offset - 0.05,
                          "gain_hi": 0.1 * x - 2 * offset + 0.05} for s, offset in [("a", 0.0), ("b", 1.0)] for x in (0.0, 0.5, 1.0)])
    fig = plots.scatter_with_fit(grid, ["dmc"])
    ax = fig.axes[0]
    fits = [line for line in ax.lines if len(line.get_xdata()) == 20]
    assert len(fits) == 2
    for line in fits:  # each student's own slope, in its colour
        xs, ys = line.get_xdata(), line.get_ydata()
        assert (ys[-1] - ys[0]) / (xs[-1] - xs[0]) == pytest.approx(0.1)
    assert fits[0].get_color() != fits[1].get_color()
    zero = [line for line in ax.lines if list(line.get_ydata()) == [0, 0]]
    assert len(zero) == 1 and zero[0].get_linestyle() == "--"
    assert "within each student" in fig._suptitle.get_text()
