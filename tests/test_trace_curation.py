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
