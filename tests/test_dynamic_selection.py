import json

import pandas as pd
import pytest
import torch

from syllabus import distillation, students
from syllabus.problems import problem_splits
from syllabus.stages import dynamic_selection


def test_prerequisites_lab_graph_step_chain_and_none_for_subjects():
    graph = dynamic_selection.prerequisites(["add", "multiply", "percent", "steps-2", "steps-3", "steps-5", "Algebra"])
    assert graph["steps-2"] == [] and graph["steps-3"] == ["steps-2"] and graph["steps-5"] == ["steps-3"]
    assert graph["Algebra"] == []
    assert graph["add"] == [] and set(graph["percent"]) <= {"add", "multiply"} and graph["percent"]


def test_teacher_module_scores_and_early_policy_checks():
    raw = pd.DataFrame({"teacher": ["t", "t", "t", "u"], "module": ["steps-2", "steps-2", None, "steps-3"],
                        "correct": [True, False, True, True]})
    assert dynamic_selection.teacher_module_scores(raw, "t") == {"steps-2": 0.5}
    assert dynamic_selection.teacher_module_scores(raw, "u") == {"steps-3": 1.0}
    assert dynamic_selection.teacher_module_scores(raw, "u", measurable={"steps-2"}) == {}  # the probe has no steps-3
    no_levels = {"d": pd.DataFrame({"level": [None, None]})}
    with pytest.raises(ValueError, match="easy_to_hard needs problem levels.*dynamic.policies"):
        dynamic_selection.check_policies(["random", "easy_to_hard"], no_levels, {"steps-2": 0.5})
    with pytest.raises(ValueError, match="ioa needs problem modules"):
        dynamic_selection.check_policies(["ioa"], no_levels, {})
    dynamic_selection.check_policies(["random", "ioa"], no_levels, {"steps-2": 0.5})  # both servable: no error


def _student_and_data():
    from syllabus import models, params as P
    from syllabus.records import Problem

    problems = {f"p{i}": Problem(id=f"p{i}", task="lab", source="lab", text=f"What is {i} + {i}?", answer=str(2 * i))
                for i in range(8)}
    short = pd.DataFrame({"problem_id": list(problems), "teacher": "short", "sample": 0, "correct": True,
                          "text": [f"{2 * i}.\n#### {2 * i}" for i in range(8)], "level": 1, "module": "add"})
    long_ = short.assign(teacher="long", text=[f"First {i} + {i}. " * 6 + f"So {2 * i}.\n#### {2 * i}" for i in range(8)])
    tok = models.lab_tokenizer([p.text for p in problems.values()] + list(short["text"]) + list(long_["text"]))
    student = students.StudentModel(P.Student(name="s", source="lab"), None, tok)
    return student, problems, {"short": short, "long": long_}


def test_token_budget_gives_every_choice_the_same_tokens_within_one_example():
    import random

    from syllabus import select

    student, problems, datasets = _student_and_data()
    budget = 8 * dynamic_selection.mean_example_tokens(student, problems, datasets, max_seq_len=256)
    totals = {}
    for name in datasets:
        choice = select.Choice(weights={name: 1.0}, reason="test")
        batch, examples = dynamic_selection.draw_to_token_budget(student, problems, choice, datasets, budget, 2,
                                                                 random.Random(3), max_seq_len=256)
        lengths = distillation.example_tokens(student, examples, 256)
        assert len(batch) == len(examples) and set(batch["teacher"]) == {name}
        assert sum(lengths) >= budget > sum(lengths) - max(lengths)  # reached, and overshot by under one example
        totals[name] = (len(examples), sum(lengths))
        # the draws are a prefix of an unbounded draw: a smaller budget keeps the first examples
        _, fewer = dynamic_selection.draw_to_token_budget(student, problems, choice, datasets, budget / 2, 2,
                                                          random.Random(3), max_seq_len=256)
        assert fewer == examples[:len(fewer)]
    assert totals["short"][0] > totals["long"][0]  # more of the short examples for the same tokens


def test_compare_policies_pairs_seed_by_seed_and_says_where_no_difference_is_shown():
    ids = [f"p{i}" for i in range(40)]
    start = pd.Series(0.0, index=ids)
    rows = []
    for seed in range(3):
        for policy, solved in {"random": 10, "good": 30, "same": 10, "noisy": [6, 36, 24][seed]}.items():
            rows += [{"policy": policy, "seed": seed, "problem_id": pid, "correct": float(i < solved + seed)}
                     for i, pid in enumerate(ids)]
    table = dynamic_selection.compare_policies(pd.DataFrame(rows), start, references=("random",)).set_index("policy")
    assert table.loc["good", "final_accuracy"] == pytest.approx((31 / 40))
    assert table.loc["good", "vs_random"] == pytest.approx(0.5) and table.loc["good", "vs_random_shown"]
    assert table.loc["same", "vs_random"] == 0 and not table.loc["same", "vs_random_shown"]
    assert table.loc["good", "gain_lo"] > 0 and table.loc["good", "seeds"] == 3
    assert "vs_random" not in table.columns or pd.isna(table.loc["random", "vs_random"])
    # where a difference is not shown, the seeds that would show one as large; none where it is shown
    assert pd.isna(table.loc["good", "vs_random_seeds_needed"]) and pd.isna(table.loc["same", "vs_random_seeds_needed"])
    noisy = table.loc["noisy"]
    assert noisy["vs_random"] == pytest.approx((-4 + 26 + 14) / 3 / 40) and not noisy["vs_random_shown"]
    assert 3 < noisy["vs_random_seeds_needed"] < float("inf") and noisy["vs_random_problems_needed"] > 0


def test_budget_steps_equal_tokens_for_short_and_long_examples():
    from syllabus import params as P

    student, problems, datasets = _student_and_data()
    training = P.Training(batch_size=2, max_seq_len=256)
    steps = {}
    for name, rows in datasets.items():
        examples = distillation.sft_examples(student, problems, [dict(r) for r in rows.to_dict("records")])
        steps[name] = distillation.budget_steps(student, examples, training, tokens=2000, steps=7)
        assert distillation.budget_steps(student, examples, training, tokens=None, steps=7) == 7
    assert steps["short"] > steps["long"] >= 1


# --------------------------------------------------------------------------- whole runs, one worker or two
RUN_OVERRIDES = {
    "data.n_pool": 16, "data.n_probe": 4, "data.n_heldout": 8, "data.lab.n_pretrain": 120,
    "students": [{"name": "xs", "source": "lab", "warmup_steps": 4,
                  "arch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}}],
    "student_generation.max_new_tokens": 24, "dmc.capability_samples": 1,
    "dynamic.phases": 2, "dynamic.steps_per_phase": 1, "dynamic.seeds": [0, 1],
    "dynamic.policies": ["dmc_dynamic", "random", "ioa"], "dynamic.datasets": ["teacher=*"],
    "dynamic.ioa.items_per_module": 3, "dynamic.ioa.remedial_problems": 12, "dynamic.ioa.remedial_budget_share": 1.0,
    "dynamic.ioa.stage_problems": 12,
}


def _policy_runs(tmp_path, workers: int, **overrides):
    import random as _random

    from syllabus import lab
    from syllabus.runs import open_stage

    folder = f"run{workers}" + "".join(f"-{k}={v}" for k, v in overrides.items())
    stage = open_stage("05_dynamic_selection", "ci", {**RUN_OVERRIDES, "parallel.workers": workers, **overrides},
                       run_dir=tmp_path / folder)
    splits = problem_splits(stage.params)
    student = students.load_student(stage, stage.params.students[0], splits)
    rng = _random.Random(0)
    rows = lambda name, style: pd.DataFrame([  # noqa: E731
        {"dataset": name, "problem_id": p.id, "teacher": style, "text": lab.write_trace(p, style, error_rate=0.1, rng=rng),
         "sample": 0, "correct": True, "module": p.module, "level": p.level} for p in splits.pool])
    datasets = {"teacher=equations": rows("teacher=equations", "equations"), "teacher=prose": rows("teacher=prose", "prose"),
                "teacher=equations+adapted": rows("teacher=equations+adapted", "equations"), "all": rows("all", "prose")}
    probe = dynamic_selection.ioa_probe(stage, splits, "equations")
    graph = dynamic_selection.prerequisites(probe.teacher_scores)
    inputs = dynamic_selection.PolicyInputs(datasets, splits.by_id(), splits, graph, "equations", probe)
    runs = dynamic_selection.run_policies(stage, student, inputs)
    return stage, probe, {**dynamic_selection.run_tables(runs), "outcomes": dynamic_selection.outcomes_table(runs)}


def _choice_prefixes(choices: pd.DataFrame) -> set:
    """(seed, the choices up to a phase) of every phase of every run: what decides a phase's training."""
    prefixes = set()
    for (_, seed), run in choices.sort_values("phase").groupby(["policy", "seed"]):
        picks = list(zip(run["chosen"], run["weights"], run["modules"], run["levels"]))
        prefixes |= {(seed, tuple(picks[:k + 1])) for k in range(len(picks))}
    return prefixes


def test_policies_that_choose_alike_share_their_phases(tmp_path):
    # with one phase dmc_static is dmc_dynamic: the same choice, the same phase folder, trained once
    stage, _, tables = _policy_runs(tmp_path, 1, **{"dynamic.policies": ["dmc_dynamic", "dmc_static"],
                                                    "dynamic.phases": 1, "dynamic.seeds": [0]})
    outcomes = tables["outcomes"].pivot(index="problem_id", columns="policy", values="correct")
    assert (outcomes["dmc_dynamic"] == outcomes["dmc_static"]).all()
    traj, margins = tables["dmc_trajectories"], dynamic_selection.choice_margins(tables["choices"])
    assert ((traj["dmc_lo"] <= traj["dmc"] + 1e-12) & (traj["dmc"] <= traj["dmc_hi"] + 1e-12)).all()
    assert len(margins) == 1 and margins.loc[0, "dmc_margin"] >= 0  # the pick leads the runner-up
    (folder,) = [p for p in (stage.run.cache / "dynamic").rglob("phase0-*") if p.is_dir()]
    assert json.loads((folder / "phase.json").read_text()) == {"phase": 0, "seed": 0, "after": None}


def test_final_students_of_the_first_seed_or_of_every_seed_are_saved_for_stage_6(tmp_path):
    small = {"dynamic.policies": ["random"], "dynamic.phases": 1, "dynamic.seeds": [0, 1]}
    first, _, _ = _policy_runs(tmp_path, 1, **small)
    every, _, _ = _policy_runs(tmp_path, 1, **small, **{"dynamic.final_seeds": "all"})
    saved = lambda stage: sorted(p.name for p in (stage.run.cache / "final_models").iterdir()  # noqa: E731
                                 if (p / "config.json").is_file())
    assert saved(first) == ["xs-random-seed0"] and saved(every) == ["xs-random-seed0", "xs-random-seed1"]


def test_ioa_phases_continue_the_runs_schedule_or_fine_tune_on_their_own(tmp_path):
    # dynamic.ioa.own_schedule: the paper's FineTune per stage decays to ~0 within each phase; by default
    # IOA's first phase ends mid-way through the run's one schedule, like every other policy's
    small = {"dynamic.policies": ["ioa"], "dynamic.seeds": [0], "dynamic.steps_per_phase": 4}
    last_rates = {}
    for own in (False, True):
        stage, _, _ = _policy_runs(tmp_path, 1, **small, **{"dynamic.ioa.own_schedule": own})
        peak = stage.params.training.learning_rate
        (first,) = [p for p in (stage.run.cache / "dynamic").rglob("phase0-*") if p.is_dir()]
        log = pd.read_csv(first / "train_log.csv")
        assert len(log) >= 3
        last_rates[own] = float(log["lr"].iloc[-1]) / peak
    assert last_rates[False] > 0.5 and last_rates[True] < 0.25, last_rates


def test_policy_runs_with_two_workers_give_the_same_tables_as_one(tmp_path):
    stage1, probe, one = _policy_runs(tmp_path, 1)
    stage2, _, two = _policy_runs(tmp_path, 2)
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name], check_exact=True)
    assert list((stage2.run.cache / "executor").glob("student-xs-*.pt"))  # the workers trained the runs
    summaries = [json.loads(f.read_text()) for f in (stage2.run.cache / "dynamic").rglob("train_summary.json")]
    # one phase folder per (seed, choices so far): runs that chose alike share their phases, trained once in
    # the workers (from step 0) and read back whole by the other run (never a half-trained phase resumed)
    assert len(summaries) == len(_choice_prefixes(one["choices"]))
    assert all(s["resumed_from"] in (0, s["steps"]) for s in summaries)
    # IOA: P_T and P_S on the same fresh items, >= the asked number per module
    assert set(probe.item_counts.values()) == {3} and set(one["ioa_plan"]["n_items"]) == {3}
    # the DMC policy rescored only the datasets of dynamic.datasets, and chose among them
    assert set(one["dmc_trajectories"]["dataset"]) == {"teacher=equations", "teacher=equations+adapted", "teacher=prose"}
    choices = one["choices"]
    assert set(choices.loc[choices["policy"] != "ioa", "chosen"]) <= {"teacher=equations", "teacher=equations+adapted",
                                                                       "teacher=prose"}
    # IOA's first stage is taught on problems written for it, a student at 0 fails the gate, and IOA remediates
    # on other problems it had not seen
    first = choices[(choices["policy"] == "ioa") & (choices["phase"] == 0)]
    assert (first["chosen"] == dynamic_selection.STAGE_NEW).all() and (first["new_problems"] > 0).all()
    assert first["reason"].str.contains("stage 1 first teaching").all()
    ioa = choices[(choices["policy"] == "ioa") & (choices["phase"] == 1)]
    assert ioa["reason"].str.contains("remedial round 1").all() and (ioa["new_problems"] > 0).all()
    assert (ioa["chosen"] == dynamic_selection.REMEDIAL).all()
    # one optimizer across phases: phase 2 continues phase 1 (its AdamW step count goes on)
    for p1 in (p for p in (stage1.run.cache / "dynamic").rglob("phase1-*") if p.is_dir()):
        p0 = p1.parent / json.loads((p1 / "phase.json").read_text())["after"]
        steps = [json.loads((p / "train_summary.json").read_text())["steps"] for p in (p0, p1)]
        adam = torch.load(p1 / "checkpoint.pt", weights_only=False)["optimizer"]["state"][0]["step"]
        assert p0.name.startswith("phase0-") and int(adam) == sum(steps)
    # a run killed in its last phase resumes from the phase before (weights and optimizer from its checkpoint)
    last = [p for p in (stage1.run.cache / "dynamic").rglob("phase1-*") if p.is_dir()]
    for phase1 in last:
        (phase1 / "checkpoint.pt").unlink()
    _, _, resumed = _policy_runs(tmp_path, 1)
    assert all((p / "checkpoint.pt").is_file() for p in last)  # trained again, to the same weights
    for name in one:
        pd.testing.assert_frame_equal(one[name], resumed[name], check_exact=True)


def test_phases_trained_over_two_processes_end_where_one_process_does(tmp_path):
    # parallel.sft_processes reaches stage 5: each phase is one data-parallel SFT run (syllabus.launch) that
    # continues the phase before's optimizer and schedule
    small = {"dynamic.policies": ["random"], "dynamic.seeds": [0]}
    stage1, _, one = _policy_runs(tmp_path, 1, **small)
    stage2, _, two = _policy_runs(tmp_path, 1, **small, **{"parallel.sft_processes": 2})
    pd.testing.assert_frame_equal(one["choices"], two["choices"], check_exact=True)
    summaries = sorted((stage2.run.cache / "dynamic").rglob("train_summary.json"))
    assert len(summaries) == 2 and all(json.loads(f.read_text())["processes"] == 2 for f in summaries)
    for a, b in zip(sorted((stage1.run.cache / "dynamic").rglob("checkpoint.pt")), summaries):
        ours = torch.load(a, weights_only=False)
        theirs = torch.load(b.parent / "checkpoint.pt", weights_only=False)
        assert ours["step"] == theirs["step"] and ours["optimizer"]["state"][0]["step"] == theirs["optimizer"]["state"][0]["step"]
        for name, value in ours["weights"].items():
            assert torch.allclose(value, theirs["weights"][name], atol=2e-5), name


def test_remedial_data_is_new_simpler_verified_and_adapted():
    from syllabus import lab
    from syllabus.params import load_profile
    from syllabus.verify import verify

    prof = load_profile("ci", {"dynamic.ioa.remedial_problems": 30})
    pool = lab.generate_problems(40, 1, max_operand=12, min_steps=1, max_steps=2)
    exclude = {p.text for p in pool}

    def remedial(key):
        return dynamic_selection.remedial_data(prof, ("rate", "divide"), "equations", key, exclude, pd.DataFrame())

    rows, new = remedial([0, 1, "rate"])
    assert len(new) == 30 and 0 < len(rows) <= 30 and set(rows["dataset"]) == {dynamic_selection.REMEDIAL}
    assert not exclude & {p.text for p in new.values()}  # problems the run has not seen
    assert {p.module for p in new.values()} <= {"rate", "divide"} and {p.level for p in new.values()} == {1}  # one step: simpler
    assert max(s["a"] for p in new.values() for s in p.metadata["steps"]) <= 6  # operands up to half the data's 12
    assert all(verify(new[pid], text) and text.startswith("Step 1") for pid, text in zip(rows["problem_id"], rows["text"]))
    again, _ = remedial([0, 1, "rate"])
    pd.testing.assert_frame_equal(rows, again)  # seeded: a replayed run draws the same round
    other, _ = remedial([0, 2, "rate"])
    assert set(other["text"]) != set(rows["text"])  # another round, other problems


@pytest.mark.parametrize("form, one_step, small", [("one-step", True, False), ("small-operands", False, True),
                                                   ("as-data", False, False)])
def test_remedial_forms_simplify_the_steps_or_the_operands(form, one_step, small):
    from syllabus.params import load_profile

    prof = load_profile("ci", {"dynamic.ioa.remedial_problems": 60, "dynamic.ioa.remedial_form": form})
    _, new = dynamic_selection.remedial_data(prof, ("add", "subtract"), "equations", [0], set(), pd.DataFrame())
    levels = {p.level for p in new.values()}
    operands = max(s["a"] for p in new.values() for s in p.metadata["steps"])
    L = prof.data.lab
    assert (levels == {1}) == one_step and levels <= set(range(1, L.max_steps + 1))
    assert (operands <= max(4, L.max_operand // 2)) == small and operands <= L.max_operand
    assert {p.module for p in new.values()} <= {"add", "subtract"}


def test_stage_data_is_new_verified_adapted_and_as_hard_as_the_data():
    from syllabus.params import load_profile
    from syllabus.verify import verify

    prof = load_profile("ci", {"dynamic.ioa.stage_problems": 31})
    splits = problem_splits(prof)
    exclude = {p.text for p in [*splits.pool, *splits.probe, *splits.heldout]}

    def stage(key, modules=("add", "rate")):
        return dynamic_selection.stage_data(prof, splits, modules, "equations", key, exclude)

    rows, new = stage([0, 0, "add", "rate"])
    assert len(new) == 31 and set(rows["dataset"]) == {dynamic_selection.STAGE_NEW}
    assert sorted(p.module for p in new.values()).count("add") == 16  # split evenly, the first module the extra one
    assert {p.module for p in new.values()} == {"add", "rate"} and not exclude & {p.text for p in new.values()}
    L = prof.data.lab
    assert {p.level for p in new.values()} <= set(range(L.min_steps, L.max_steps + 1))  # the data's settings
    assert len({p.level for p in new.values()}) > 1  # not only the one-step problems of remediation
    assert all(verify(new[pid], text) and text.startswith("Step 1") for pid, text in zip(rows["problem_id"], rows["text"]))
    again, _ = stage([0, 0, "add", "rate"])
    pd.testing.assert_frame_equal(rows, again)  # seeded: a replayed run writes the same stage
    assert set(stage([1, 0, "add", "rate"])[0]["text"]) != set(rows["text"])  # another seed, other problems
    assert dynamic_selection.stage_data(prof, splits, ("add",), "no-such-teacher", [0], exclude) is None
    pool = load_profile("ci", {"dynamic.ioa.first_teaching": "pool"})
    assert dynamic_selection.stage_data(pool, splits, ("add",), "equations", [0], exclude) is None


def test_lock_in_table_follows_the_dataset_trained_on_in_the_phase_before():
    traj = pd.DataFrame([
        {"policy": "dmc_dynamic", "seed": 0, "phase": ph, "dataset": ds, "dmc": dmc, "dmc_in_sample": ins,
         "rel_difficulty": r, "rel_difficulty_in_sample": rin}
        for ph, ds, dmc, ins, r, rin in [(0, "a", 0.5, 0.5, 1.2, 1.2), (0, "b", 0.4, 0.4, 1.5, 1.5),
                                         (1, "a", 0.45, 0.8, 1.25, 0.9), (1, "b", 0.42, 0.42, 1.45, 1.45)]])
    choices = pd.DataFrame([{"policy": "dmc_dynamic", "seed": 0, "phase": 0, "chosen": "a"},
                            {"policy": "dmc_dynamic", "seed": 0, "phase": 1, "chosen": "b"},
                            {"policy": "random", "seed": 0, "phase": 0, "chosen": "b"}])
    table = dynamic_selection.lock_in_table(traj, choices)
    assert table.to_dict("records") == [{
        "seed": 0, "phase": 1, "trained_on": "a", "r_in_sample_before": 1.2, "r_in_sample_after": 0.9,
        "r_out_of_sample_before": 1.2, "r_out_of_sample_after": 1.25, "dmc_in_sample_before": 0.5,
        "dmc_in_sample_after": 0.8, "dmc_out_of_sample_before": 0.5, "dmc_out_of_sample_after": 0.45,
        "chosen_next": "b"}]


def test_dmc_margin_is_the_picks_paired_lead_over_the_runner_up_and_choice_margins_says_if_it_is_shown():
    from syllabus import select

    problems = [f"p{i}" for i in range(30)]
    base = {p: 0.1 + 0.8 * (i % 10) / 10 for i, p in enumerate(problems)}  # what the problem shares across datasets
    items = pd.DataFrame([{"dataset": ds, "problem_id": p, "compat": base[p] + lead + 0.002 * (k - 0.5)}
                          for ds, lead in (("a", 0.03), ("b", 0.0), ("c", -0.2)) for p in problems for k in (0, 1)])
    dmc_now = items.groupby("dataset")["compat"].mean().to_dict()
    pick = dynamic_selection.dmc_margin(items, select.Choice({"a": 1.0, "b": 0.0}, "best"), dmc_now)
    assert pick["runner_up"] == "b" and pick["dmc_margin"] == pytest.approx(0.03)
    assert 0 < pick["dmc_margin_lo"] < 0.03 < pick["dmc_margin_hi"]
    close = dynamic_selection.dmc_margin(items.assign(compat=items["compat"] + (items["dataset"] == "b") * 0.03
                                                      + ((items["dataset"] == "b") & (items.index % 4 == 0)) * 0.2
                                                      - ((items["dataset"] == "b") & (items.index % 4 == 2)) * 0.2),
                                         select.Choice({"a": 1.0}, "best"), dmc_now)
    assert close["dmc_margin_lo"] < 0 < close["dmc_margin_hi"]  # a noisy tie: not shown
    assert dynamic_selection.dmc_margin(items, select.Choice({"a": 0.5, "b": 0.5}, "mix"), dmc_now) == {}
    choices = pd.DataFrame([{"policy": "dmc_dynamic", "seed": 0, "phase": 0, "chosen": "a", **pick},
                            {"policy": "dmc_dynamic", "seed": 0, "phase": 1, "chosen": "a", **close},
                            {"policy": "random", "seed": 0, "phase": 0, "chosen": "b"}])
    margins = dynamic_selection.choice_margins(choices)
    assert margins["shown"].tolist() == [True, False] and margins["runner_up"].tolist() == ["b", "b"]
    assert dynamic_selection.choice_margins(choices.drop(columns=["dmc_margin"])).empty


def test_module_curves_show_a_band_per_policy_and_the_legend_over_no_curve():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection

    from syllabus import plots

    rows = [{"policy": pol, "seed": seed, "phase": phase, "module": module, "accuracy": 0.1 * phase + 0.01 * seed}
            for pol in ("random", "ioa") for seed in (0, 1, 2) for phase in range(3) for module in ("add", "rate", "percent", "divide", "multiply")]
    counts = {"add": 40, "rate": 50, "percent": 60, "divide": 45, "multiply": 55}
    fig = plots.module_curves(pd.DataFrame(rows), n_problems=counts)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"{m} ({n} problems)" for m, n in counts.items()]
    assert all(sum(isinstance(c, PolyCollection) for c in ax.collections) == 2 for ax in panels)  # one band each
    spare = [ax for ax in fig.axes if not ax.get_title()]
    assert spare and spare[0].get_legend() is not None and not spare[0].lines
    assert "95% CI" in fig._suptitle.get_text()
    for ax, module in zip(panels, counts):  # each panel's baseline: that module's mean accuracy before training
        start = [line for line in ax.lines if line.get_label() == "start (phase 0)"]
        assert len(start) == 1 and start[0].get_ydata()[0] == pytest.approx(0.01)  # seeds 0-2 at phase 0: 0, 0.01, 0.02
    assert "start (phase 0)" in [t.get_text() for t in spare[0].get_legend().get_texts()]


def test_learning_curves_draw_the_start_as_a_baseline_and_none_without_a_phase_0():
    import matplotlib

    matplotlib.use("Agg")
    from syllabus import plots

    rows = [{"policy": pol, "seed": seed, "phase": phase, "accuracy": 0.5 + 0.1 * phase * (pol == "dmc") - 0.01 * seed}
            for pol in ("dmc", "random") for seed in (0, 1) for phase in range(3)]
    fig = plots.learning_curves(pd.DataFrame(rows), n_problems=400)
    start = [line for line in fig.axes[0].lines if line.get_label() == "start (phase 0)"]
    assert len(start) == 1 and start[0].get_ydata()[0] == pytest.approx(0.495)
    later = pd.DataFrame([r for r in rows if r["phase"] > 0])
    assert not [line for line in plots.learning_curves(later).axes[0].lines if line.get_label() == "start (phase 0)"]


def test_chosen_trajectories_wrap_many_seeds_onto_rows_of_at_most_four_panels():
    import matplotlib

    matplotlib.use("Agg")
    from syllabus import plots

    seeds = range(8)  # the 8-seed stage-5 rerun (benchmarks/more_seeds.sh 05): one row of 8 was unreadable
    scores = pd.DataFrame([{"seed": s, "phase": p, "dataset": d, "dmc": 0.1 * p + (0.2 if d == "a" else 0.0)}
                           for s in seeds for p in range(3) for d in ("a", "b")])
    choices = pd.DataFrame([{"seed": s, "phase": p, "chosen": "a"} for s in seeds for p in range(3)])
    fig = plots.chosen_trajectories(scores, choices)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"seed {s}" for s in seeds]
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2  # two rows of four
    assert len({round(ax.get_position().x0, 3) for ax in panels}) == 4
    assert fig.get_size_inches()[0] <= 4.6 * 4 + 1e-9
    assert all(ax.get_ylabel() for ax in panels if ax.get_subplotspec().is_first_col())
    three = plots.chosen_trajectories(scores[scores["seed"] < 3], choices[choices["seed"] < 3])
    assert [ax.get_title() for ax in three.axes] == ["seed 0", "seed 1", "seed 2"]  # 3 seeds: one row, no spare


def test_chosen_trajectories_draw_a_pick_whose_lead_is_not_shown_hollow():
    import matplotlib

    matplotlib.use("Agg")
    from syllabus import plots

    scores = pd.DataFrame([{"seed": 0, "phase": p, "dataset": d, "dmc": 0.5 + (0.01 if d == "a" else 0.0),
                            "dmc_lo": 0.45, "dmc_hi": 0.56} for p in range(3) for d in ("a", "b")])
    choices = pd.DataFrame([{"seed": 0, "phase": p, "chosen": "a", "dmc_margin_lo": lo, "dmc_margin_hi": 0.02}
                            for p, lo in ((0, -0.01), (1, 0.001), (2, float("nan")))])
    ax = plots.chosen_trajectories(scores, choices).axes[0]
    (hollow,) = [line for line in ax.lines if line.get_label().startswith("chosen, lead")]
    assert list(hollow.get_xdata()) == [0] and hollow.get_markerfacecolor() == "white"  # phase 1 shown, 2 unknown
    whiskers = [c for c in ax.collections if len(c.get_segments()) == 3]
    assert whiskers and sorted(round(s[0][1], 2) for s in whiskers[0].get_segments()) == [0.45] * 3


def test_accuracy_bands_stay_within_zero_and_one():
    from syllabus import plots

    # 1 of 16 and 16 of 16: the normal band would reach below 0 and above 1
    curves = pd.DataFrame({"phase": [0, 1, 2], "accuracy": [1 / 16, 1.0, 0.5]})
    mean, lo, hi = plots._mean_band(curves.groupby("phase")["accuracy"], 16)
    assert (lo >= 0).all() and (hi <= 1).all()
    assert lo[0] == 0.0 and hi[1] == 1.0 and 0 < lo[2] < 0.5 < hi[2] < 1
    # three seeds far apart on many problems: the seeds' part decides, with t at ~2 df, not 1.96
    spread = pd.DataFrame({"phase": [1, 1, 1], "accuracy": [0.3, 0.5, 0.7]})
    mean, lo, hi = plots._mean_band(spread.groupby("phase")["accuracy"], 100_000)
    assert hi[1] - mean[1] == pytest.approx(4.30 * 0.2 / 3 ** 0.5, rel=0.01)


def test_planted_skill_check_compares_seen_and_unseen_modules_and_ioa_diagnosis():
    from syllabus import lab
    from syllabus.params import load_profile
    from syllabus.problems import warmup_modules

    prof = load_profile("ci", {"data.n_heldout": 140})
    spec = prof.students[1]  # warm-started on the first 60% of the modules
    seen = set(warmup_modules(prof, spec))
    heldout = problem_splits(prof).heldout
    # a student that solves exactly the problems of the modules it saw
    start = pd.Series([float(p.module in seen) for p in heldout], index=[p.id for p in heldout])
    modules = sorted({p.module for p in heldout})
    plan = pd.DataFrame([{"seed": s, "phase": ph, "module": m, "p_s": 1.0 if m in seen else 0.1,
                          "deficient": m not in seen and ph == 0} for s in (0, 1) for ph in (0, 1) for m in modules])
    check = dynamic_selection.planted_skill_check(prof, spec, start, heldout, plan)
    assert list(check["module"]) == lab.topological_order(modules)  # prerequisites first
    assert check.set_index("module")["seen_in_warmup"].to_dict() == {m: m in seen for m in modules}
    assert (check.loc[check["seen_in_warmup"], "start_accuracy"] == 1).all()
    assert (check.loc[~check["seen_in_warmup"], "start_accuracy"] == 0).all()
    assert (check["start_lo"] <= check["start_accuracy"]).all() and (check["start_accuracy"] <= check["start_hi"]).all()
    assert check.set_index("module")["ioa_deficient"].to_dict() == {m: m not in seen for m in modules}  # phase 0 only
    text = dynamic_selection.planted_skill_summary(check)
    n_unseen = len(set(modules) - seen)
    assert "every unseen module below every seen one" in text
    assert f"finds {n_unseen} of the {n_unseen} unseen modules deficient" in text
    no_ioa = dynamic_selection.planted_skill_check(prof, spec, start, heldout, pd.DataFrame())
    assert no_ioa["ioa_deficient"].isna().all() and "IOA" not in dynamic_selection.planted_skill_summary(no_ioa)
    other = load_profile("ci", {"data.task": "gsm8k"})
    assert dynamic_selection.planted_skill_check(other, spec, start, heldout, plan).empty


def test_ioa_writes_each_phases_problems_new_to_the_run(tmp_path, monkeypatch):
    # every set IOA writes (a stage's first teaching, a remedial round) leaves out the texts it wrote before
    calls = []
    for name in ("stage_data", "remedial_data"):
        real = getattr(dynamic_selection, name)

        def spy(*args, _real=real, _at=5 if name == "stage_data" else 4, **kwargs):
            made = _real(*args, **kwargs)
            exclude = args[_at]  # stage_data(prof, splits, modules, teacher, key, exclude), remedial_data(prof, ...)
            calls.append((set(exclude), {p.text for p in made[1].values()} if made else set()))
            return made

        monkeypatch.setattr(dynamic_selection, name, spy)
    _policy_runs(tmp_path, 1, **{"dynamic.policies": ["ioa"], "dynamic.seeds": [0], "dynamic.phases": 3,
                                 "dynamic.ioa.remedial_form": "as-data"})
    assert len(calls) >= 2 and all(texts for _, texts in calls)
    for i, (exclude, _) in enumerate(calls):
        earlier = set().union(*(texts for _, texts in calls[:i]))
        assert earlier <= exclude


def test_ioa_lab_probe_gives_every_level_an_equal_share_of_each_modules_items():
    # the data draw 1 and 2 steps equally often; an unstratified draw of 20 had left rate at 5 one-step
    # items and 15 two-step ones, and subtract the other way round
    from collections import Counter

    from syllabus.params import load_profile

    assert dynamic_selection.level_counts(20, 1, 2) == {1: 10, 2: 10}
    assert dynamic_selection.level_counts(7, 1, 3) == {1: 3, 2: 2, 3: 2}
    assert dynamic_selection.level_counts(1, 1, 3) == {1: 1}
    prof = load_profile("tiny")
    splits = problem_splits(prof)
    items = dynamic_selection.ioa_items(prof, splits)
    mix = Counter((p.module, p.level) for p in items)
    modules = dynamic_selection.pool_modules(splits)
    assert mix == Counter({(m, level): 10 for m in modules for level in (1, 2)})
    assert len({p.id for p in items}) == len({p.text for p in items}) == 20 * len(modules)
    seen = {p.text for split in (splits.pool, splits.probe, splits.heldout) for p in split}
    assert not seen & {p.text for p in items}
    assert items == dynamic_selection.ioa_items(prof, splits)  # the same draw every time


def test_chosen_trajectories_name_a_choice_where_it_starts_or_switches_inside_the_panel():
    import matplotlib

    matplotlib.use("Agg")
    from syllabus import plots

    scores = pd.DataFrame([{"seed": 0, "phase": p, "dataset": d, "dmc": 0.3 + 0.1 * p + (0.05 if d == "a" else 0.0)}
                           for p in range(4) for d in ("a", "b")])
    picks = ["a", "a", "b", "a"]  # a lock-in for two phases, a switch, and a switch back at the last phase
    choices = pd.DataFrame([{"seed": 0, "phase": p, "chosen": c} for p, c in enumerate(picks)])
    fig = plots.chosen_trajectories(scores, choices)
    ax = fig.axes[0]
    names = sorted((t.xy[0], t.get_text()) for t in ax.texts)
    assert names == [(0, "a"), (2, "b"), (3, "a")]
    fig.canvas.draw()
    panel = ax.get_window_extent()
    for text in ax.texts:  # no name runs past the panel's edges
        box = text.get_window_extent()
        assert panel.x0 <= box.x0 and box.x1 <= panel.x1, text.get_text()
