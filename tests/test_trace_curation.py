from syllabus.problems import problem_splits
from syllabus.stages.trace_curation import eval_sets
from syllabus.params import load_profile


def test_decontamination_uses_the_tasks_test_set_unless_the_pool_is_drawn_from_it(data_dir):
    def sets(pool_split):
        prof = load_profile("ci", {"data.task": "gsm8k", "data.pool_split": pool_split, "data.n_pool": 5,
                                   "data.n_probe": 3, "data.n_heldout": 4, "data.data_dir": str(data_dir),
                                   "data.eval_sets": ["gsm8k", "math500"]})
        return eval_sets(prof, problem_splits(prof))

    from_train = sets("train")  # the paper set-up: train pool, the whole test set benchmarked
    assert len(from_train["gsm8k"]) == 40 and len(from_train["math500"]) == 40  # the fixture subsets
    assert len(from_train["heldout"]) == 4 and len(from_train["probe"]) == 3
    from_test = sets("test")  # the smol set-up: test partitioned, only its held-out part is evaluated
    assert "gsm8k" not in from_test and len(from_test["math500"]) == 40 and len(from_test["heldout"]) == 4


def test_planted_slip_rates_are_recovered_by_the_verifier_and_a_blind_verifier_is_caught():
    import random

    import pandas as pd

    from syllabus import lab
    from syllabus.stages.trace_curation import planted_error_check
    from syllabus.verify import verify

    teachers = [{"name": "careful", "backend": "lab", "style": "prose", "error_rate": 0.2},
                {"name": "messy", "backend": "lab", "style": "sloppy", "error_rate": 0.0},  # slips >= 0.4 anyway
                {"name": "gpt", "backend": "file", "path": "x.jsonl", "field": "answer"}]
    prof = load_profile("ci", {"teachers": teachers})
    problems = lab.generate_problems(400, seed=3, max_operand=10, max_value=50, min_steps=1, max_steps=2)
    rng = random.Random(0)
    rows = [{"teacher": t["name"], "correct": verify(p, lab.write_trace(p, t["style"], error_rate=t["error_rate"], rng=rng))}
            for t in teachers[:2] for p in problems]
    raw = pd.DataFrame(rows)
    check = planted_error_check(raw, prof).set_index("teacher")
    assert list(check.index) == ["careful", "messy"]  # the file teacher has no planted rate
    assert check.loc["careful", "planted_wrong"] == 0.2 and check.loc["messy", "planted_wrong"] == 0.4
    assert check["recovered"].all() and (check["traces"] == 400).all()
    assert check.loc["messy", "measured_lo"] < 0.4 < check.loc["messy", "measured_hi"]
    blind = planted_error_check(raw.assign(correct=True), prof).set_index("teacher")  # a verifier passing everything
    assert not blind["recovered"].any() and (blind["measured_wrong"] == 0).all()
