"""Stage 6: lm-eval on the shipped local tasks, with real (tiny) models, real verification, real code execution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from syllabus import evaluate
from syllabus.eval_tasks import EvalTaskError, code_eval, load_gsm8k, pass_at_k
from syllabus.records import Problem

import torch

WORDS = ["7"] + [str(d) for d in range(10) if d != 7] + [
    "Question", "Answer", ":", "####", ".", ",", "?", "the", "is", "he", "she", "has", "apples", "def", "return",
    "(", ")", "+", "-", "*", "/", "=", "[UNK]", "<pad>", "</s>",
]


def save_tiny_model(out: Path, *, seed: int = 0, always_first_token: bool = False) -> Path:
    """A 1-layer Llama with a word-level tokenizer, saved with save_pretrained.

    ``always_first_token`` zeroes the final norm, so every logit is 0 and greedy decoding always
    picks token 0 (the word "7"): a model whose answers are known in advance.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"], bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    if always_first_token:
        with torch.no_grad():
            model.model.norm.weight.zero_()
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("random_model"))


@pytest.fixture(scope="module")
def sevens_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("sevens_model"), always_first_token=True)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def humaneval_problems(n: int) -> list[Problem]:
    from syllabus.data import load_problems

    return load_problems("humaneval", "test", data_dir=None)[:n]


# --------------------------------------------------------------------------- units
def test_pass_at_k_matches_the_unbiased_estimator():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - (4 * 3) / (5 * 4))


def test_code_eval_canonical_solutions_pass_and_empty_completions_fail(monkeypatch):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    problems = humaneval_problems(8)
    tests = [p.tests for p in problems]  # they end with check(<entry_point>)
    scores, passed = code_eval([[p.text + p.solution] for p in problems], tests, k=[1], timeout_s=10, memory_mb=512)
    assert scores == {"pass@1": 1.0}, passed
    scores, passed = code_eval([[p.text] for p in problems], tests, k=[1], timeout_s=10, memory_mb=512)
    assert scores == {"pass@1": 0.0} and not any(x for row in passed for x in row)


def test_code_eval_refuses_without_the_allow_flag(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(PermissionError, match="HF_ALLOW_CODE_EVAL=1"):
        code_eval([["print(1)"]], ["pass"])


def test_truncation_rate_counts_responses_that_used_the_whole_budget(tmp_path, random_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(random_model)
    rows = [("1 2 3", 3), ("1 2", 3), ("", 3), ("he has 7 apples", 4)]  # 3/3, 2/3, 0/3, 4/4 tokens
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"resps": [[text]], "arguments": {"gen_args_0": {
        "arg_0": "Question:", "arg_1": {"until": ["Question:"], "max_gen_toks": budget}}}}) + "\n" for text, budget in rows))
    assert evaluate.truncation_rate(path, tok) == 0.5


def test_scorers_use_the_project_verifier():
    from syllabus.eval_tasks import score_gsm8k, score_lab, score_math

    assert score_gsm8k({"answer": "1200"}, ["She earns 1,200 dollars.\n#### 1,200"]) == {"exact_match": 1.0}
    assert score_gsm8k({"answer": "12"}, ["#### 13"]) == {"exact_match": 0.0}
    assert score_lab({"answer": "7"}, ["3 + 4 = 7\n#### 7"]) == {"exact_match": 1.0}
    assert score_math({"answer": "\\frac{1}{2}"}, ["so it is $\\boxed{0.5}$"]) == {"exact_match": 1.0}
    assert score_math({"answer": "\\frac{1}{2}"}, ["so it is $\\boxed{2}$"]) == {"exact_match": 0.0}


def test_loaders_fail_clearly_without_a_data_dir(monkeypatch):
    def unreachable_hub(name, *args, **kwargs):
        raise ConnectionError(f"cannot reach {name}")

    monkeypatch.setattr(datasets, "load_dataset", unreachable_hub)
    with pytest.raises(EvalTaskError, match=r"syllabus_gsm8k: cannot load gsm8k/test.*4\. the hub.*metadata"):
        load_gsm8k()
    with pytest.raises(EvalTaskError, match="does not exist"):
        load_gsm8k(data_dir="/nonexistent/data")


def test_gsm8k_documents_use_the_project_prompt(data_dir):
    from syllabus.prompts import question_prompt

    docs = load_gsm8k(data_dir=str(data_dir))["test"]
    assert len(docs) == 40  # the fixture subset
    assert docs[0]["prompt"] == question_prompt(docs[0]["text"]) and docs[0]["answer"] == "18"
    assert load_gsm8k(data_dir=str(data_dir), chat_prompt=True)["test"][0]["prompt"] == docs[0]["text"].strip()


def test_run_lm_eval_rejects_bad_requests(tmp_path, random_model, data_dir):
    kw = dict(data_dir=data_dir, limit=2, max_gen_toks=4, batch_size=2, apply_chat_template=False,
              output_dir=tmp_path, seed=0)
    with pytest.raises(evaluate.EvaluateError, match="unknown benchmark task 'gsm9k'"):
        evaluate.run_lm_eval(random_model, ["gsm9k"], **kw)
    with pytest.raises(evaluate.EvaluateError, match="lab_file"):
        evaluate.run_lm_eval(random_model, ["syllabus_lab"], **kw)
    with pytest.raises(evaluate.EvaluateError, match="no config.json"):
        evaluate.run_lm_eval(tmp_path, ["syllabus_gsm8k"], **kw)


def test_builtin_tasks_point_at_local_files_by_absolute_path(data_dir, tmp_path):
    spec = evaluate.builtin_local_task("gsm8k", data_dir)
    files = spec["task"][0]["dataset_kwargs"]["data_files"]
    assert spec["group"] == "gsm8k_localfile" and spec["task"][0]["task"] == "gsm8k"
    assert files == {"train": str(data_dir.resolve() / "gsm8k/train.jsonl"), "test": str(data_dir.resolve() / "gsm8k/test.jsonl")}
    assert evaluate.builtin_local_task("minerva_math500", data_dir)["task"][0]["training_split"] is None
    with pytest.raises(evaluate.EvaluateError, match="math500/test.jsonl"):
        evaluate.builtin_local_task("minerva_math500", tmp_path)


# --------------------------------------------------------------------------- lm-eval runs
def test_lab_task_scores_through_the_verifier_and_resumes(tmp_path, sevens_model):
    golds = ["7", "8", "7", "12", "7", "70"]  # the model always answers "7 7 7 ..."
    problems = [Problem(id=f"lab-{i}", task="lab", source="lab", text=f"he has {g} apples ?", answer=g)
                for i, g in enumerate(golds)]
    lab_file = evaluate.write_problems_jsonl(problems, tmp_path / "lab.jsonl")
    kw = dict(data_dir=None, limit=None, max_gen_toks=5, batch_size=3, apply_chat_template=False,
              output_dir=tmp_path / "out", seed=0, lab_file=lab_file, model_name="sevens")
    result = evaluate.run_lm_eval(sevens_model, ["syllabus_lab"], **kw)
    lab = result.tasks["syllabus_lab"]
    assert lab.metrics == {"exact_match": 0.5} and lab.n == 6 and lab.truncation_rate == 1.0
    samples = [json.loads(line) for line in open(lab.samples_file)]
    assert [s["resps"][0][0] for s in samples] == ["7 7 7 7 7"] * 6
    # lm-eval's folders are named after the model folder, not the machine's absolute path to it
    names = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_dir()}
    assert names == {"syllabus_lab", "syllabus_lab/lm_eval", f"syllabus_lab/lm_eval/{sevens_model.name}"}

    again = evaluate.run_lm_eval(sevens_model, ["syllabus_lab"], **kw)  # complete: read back, not re-run
    assert again.tasks["syllabus_lab"].results_file == lab.results_file
    table = evaluate.tidy_results([tmp_path / "out"])
    assert list(table.columns) == evaluate.TIDY_COLUMNS
    assert table.to_dict("records") == [{"model": "sevens", "task": "syllabus_lab", "metric": "exact_match",
                                         "value": 0.5, "stderr": pytest.approx(0.2236, abs=1e-4), "limit": None,
                                         "n": 6, "truncation_rate": 1.0}]


def test_all_tasks_of_a_model_run_in_one_lm_eval_call(tmp_path, sevens_model, monkeypatch):
    import lm_eval

    golds = ["7", "8", "7", "70"]
    problems = [Problem(id=f"lab-{i}", task="lab", source="lab", text=f"he has {g} apples ?", answer=g)
                for i, g in enumerate(golds)]
    lab_file = evaluate.write_problems_jsonl(problems, tmp_path / "lab.jsonl")
    calls = []
    real = lm_eval.simple_evaluate
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda *a, **kw: calls.append(kw["tasks"]) or real(*a, **kw))
    kw = dict(data_dir=None, limit=None, max_gen_toks=3, batch_size=4, apply_chat_template=False,
              output_dir=tmp_path / "out", seed=0, lab_file=lab_file, model_name="sevens")
    both = evaluate.run_lm_eval(sevens_model, ["syllabus_lab", "syllabus_heldout"], **kw)
    assert calls == [["syllabus_lab", "syllabus_heldout"]]  # one evaluation, the model loaded once
    for task in ("syllabus_lab", "syllabus_heldout"):
        res = both.tasks[task]
        assert res.metrics == {"exact_match": 0.5} and res.n == 4
        assert set(json.load(open(res.results_file))["results"]) == {task}  # each task's files hold that task only
        assert Path(res.results_file).is_relative_to(tmp_path / "out" / task / "lm_eval")
    alone = evaluate.run_lm_eval(sevens_model, ["syllabus_lab"], **{**kw, "output_dir": tmp_path / "alone"})
    assert _responses(alone.tasks["syllabus_lab"].samples_file) == _responses(both.tasks["syllabus_lab"].samples_file)
    calls.clear()
    evaluate.run_lm_eval(sevens_model, ["syllabus_lab", "syllabus_heldout"], **kw)
    assert calls == []  # both complete: read back


def test_task_index_reads_lm_evals_own_tasks_only_when_asked():
    meta = {"chat_prompt": False}
    own = evaluate.task_manager(meta, ["syllabus_lab"])
    assert own is evaluate.task_manager(dict(meta), ["syllabus_gsm8k", "syllabus_lab"])  # built once
    assert set(own.all_tasks) == set(evaluate.SYLLABUS_TASKS)
    full = evaluate.task_manager(meta, ["syllabus_lab", "gsm8k"])  # one of lm-eval's own: its whole index (~12 s)
    assert full is not own and {"gsm8k", "hendrycks_math", *evaluate.SYLLABUS_TASKS} <= set(full.all_tasks)


@pytest.mark.slow
def test_project_path_and_lm_eval_command_line_agree(tmp_path, random_model, data_dir):
    result = evaluate.run_lm_eval(random_model, ["syllabus_gsm8k"], data_dir=data_dir, limit=5, max_gen_toks=12,
                                  batch_size=5, apply_chat_template=False, output_dir=tmp_path / "api", seed=0)
    ours = result.tasks["syllabus_gsm8k"]

    cli_out = tmp_path / "cli"
    cmd = [str(Path(sys.executable).parent / "lm_eval"), "run", "--model", "hf", "--model_args", f"pretrained={random_model},dtype=float32",
           "--device", "cpu", "--include_path", str(evaluate.TASKS_DIR), "--tasks", "syllabus_gsm8k", "--limit", "5",
           "--batch_size", "5", "--gen_kwargs", "max_gen_toks=12", "--seed", "0",
           "--metadata", json.dumps({"data_dir": str(data_dir)}), "--output_path", str(cli_out), "--log_samples"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = evaluate.read_task_result(cli_out, "syllabus_gsm8k", tokenizer=_tokenizer(random_model))

    assert theirs.metrics == ours.metrics and theirs.stderrs == ours.stderrs and theirs.n == ours.n == 5
    assert theirs.truncation_rate == ours.truncation_rate
    assert _responses(theirs.samples_file) == _responses(ours.samples_file)


@pytest.mark.slow
def test_humaneval_runs_offline_with_gates_only_for_that_task(tmp_path, random_model, data_dir):
    assert evaluate.is_unsafe("syllabus_humaneval") and not evaluate.is_unsafe("syllabus_gsm8k")
    os.environ.pop("HF_ALLOW_CODE_EVAL", None)
    result = evaluate.run_lm_eval(random_model, ["syllabus_humaneval"], data_dir=data_dir, limit=2, max_gen_toks=8,
                                  batch_size=2, apply_chat_template=False, output_dir=tmp_path, seed=0)
    assert "HF_ALLOW_CODE_EVAL" not in os.environ
    he = result.tasks["syllabus_humaneval"]
    assert he.metrics == {"pass@1": 0.0} and he.n == 2  # random words are not Python

    import lm_eval
    from lm_eval.tasks import TaskManager

    with pytest.raises(ValueError, match="confirm_run_unsafe_code"):
        lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(random_model)}, device="cpu",
                                tasks=["syllabus_humaneval"], task_manager=TaskManager(include_path=str(evaluate.TASKS_DIR)),
                                limit=1)


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _responses(samples_file) -> dict[int, str]:
    return {s["doc_id"]: s["resps"][0][0] for s in map(json.loads, open(samples_file))}


def test_two_workers_evaluate_the_models_side_by_side_with_the_same_table(tmp_path, sevens_model, random_model):
    import pandas as pd

    from syllabus.problems import problem_splits
    from syllabus.stages import benchmark
    from syllabus.runs import open_stage

    entries = pd.DataFrame([{"model": "sevens", "model_dir": str(sevens_model), "chat_template": False},
                            {"model": "random (undistilled)", "model_dir": str(random_model), "chat_template": False}])
    tables = {}
    for workers in (1, 2):
        stage = open_stage("06_benchmark", "ci", {"parallel.workers": workers, "benchmark.tasks": ["syllabus_lab"],
                                                  "benchmark.limit": 6, "benchmark.max_gen_toks": 4},
                           run_dir=tmp_path / f"run{workers}")
        splits = problem_splits(stage.params)
        results = benchmark.run_all(stage, entries, splits)
        assert [r.model for r in results] == ["sevens", "random (undistilled)"]
        tables[workers] = evaluate.tidy_results(results)
        assert len(list((stage.run.root).rglob("results_*.json"))) == 2  # one lm-eval result per model
    pd.testing.assert_frame_equal(tables[1], tables[2], check_exact=True)
    assert set(tables[1]["model"]) == {"sevens", "random (undistilled)"} and (tables[1]["n"] == 6).all()


def test_own_evaluation_check_compares_lm_evals_verdicts_with_the_packages_problem_by_problem(tmp_path, sevens_model):
    from types import SimpleNamespace

    import pandas as pd

    from syllabus.params import load_profile
    from syllabus.stages import benchmark

    golds = ["7", "8", "7", "12", "7", "70"]  # the model always answers 7: right on problems 0, 2 and 4
    problems = [Problem(id=f"lab-{i}", task="lab", source="lab", text=f"he has {g} apples ?", answer=g)
                for i, g in enumerate(golds)]
    lab_file = evaluate.write_problems_jsonl(problems, tmp_path / "lab.jsonl")
    result = evaluate.run_lm_eval(sevens_model, ["syllabus_lab"], data_dir=None, limit=None, max_gen_toks=5,
                                  batch_size=3, apply_chat_template=False, output_dir=tmp_path / "out", seed=0,
                                  lab_file=lab_file, model_name="lab-s + all")
    per_problem = evaluate.sample_scores(result.tasks["syllabus_lab"].samples_file)
    assert per_problem == {f"lab-{i}": float(g == "7") for i, g in enumerate(golds)}
    # stage 5's record of the same weights, with one verdict flipped (problem 1) and one problem lm-eval never saw
    recorded = {**per_problem, "lab-1": 1.0, "lab-extra": 1.0}
    tables = {"final_outcomes": pd.DataFrame({"policy": "all", "seed": 2, "problem_id": list(recorded),
                                              "correct": list(recorded.values())}),
              "final_models": pd.DataFrame([{"student": "lab-s", "policy": "all", "seed": 2}])}
    prof = load_profile("ci", {"benchmark.max_gen_toks": 7, "student_generation.max_new_tokens": 7})
    stage = SimpleNamespace(params=prof, read_table=lambda stage_name, name: tables[name])
    entries = pd.DataFrame([{"model": "lab-s + all", "kind": "distilled", "model_dir": str(sevens_model),
                             "chat_template": False}])
    check = benchmark.own_evaluation_check(stage, entries, [result], splits=None)
    row = check.iloc[0].to_dict()
    assert row["n"] == 6 and row["agree"] == 5 and row["agreement"] == pytest.approx(5 / 6)
    assert row["lm_eval_accuracy"] == 0.5 and row["own_accuracy"] == pytest.approx(4 / 6)
    assert row["same_settings"] and row["own_source"] == "stage 5, seed 2"
    prof_other = load_profile("ci", {"benchmark.max_gen_toks": 9, "student_generation.max_new_tokens": 7})
    other = benchmark.own_evaluation_check(SimpleNamespace(params=prof_other, read_table=stage.read_table), entries,
                                           [result], splits=None)
    assert not other.iloc[0]["same_settings"]


def test_noise_floor_adds_stage_5s_seed_spread_to_policy_rows_on_the_held_out_problems_only():
    import math

    import pandas as pd

    from syllabus.stages import benchmark

    tidy = pd.DataFrame([
        {"model": "s (undistilled)", "task": "syllabus_lab", "metric": "exact_match", "value": 0.5, "stderr": 0.05,
         "limit": 100, "n": 100, "truncation_rate": 0.0},
        {"model": "s + random", "task": "syllabus_lab", "metric": "exact_match", "value": 0.3, "stderr": 0.046,
         "limit": 100, "n": 100, "truncation_rate": 0.0},
        {"model": "s + random", "task": "gsm8k", "metric": "exact_match", "value": 0.1, "stderr": 0.03,
         "limit": 100, "n": 100, "truncation_rate": 0.0},
        {"model": "s + all", "task": "syllabus_lab", "metric": "exact_match", "value": 0.6, "stderr": 0.049,
         "limit": 100, "n": 100, "truncation_rate": 0.0}])
    finals = pd.DataFrame([{"student": "s", "policy": "random", "seed": 2, "model_dir": "a", "weights": "x"},
                           {"student": "s", "policy": "all", "seed": 0, "model_dir": "b", "weights": "y"}])
    accuracy = pd.DataFrame([{"policy": "random", "seeds": 3, "final_accuracy": 0.35, "seed_sd": 0.2},
                             {"policy": "all", "seeds": 1, "final_accuracy": 0.6, "seed_sd": float("nan")}])
    noise = benchmark.noise_floor(tidy, finals, accuracy).set_index(["model", "task"])
    row = noise.loc[("s + random", "syllabus_lab")]
    assert row["scored_seed"] == 2 and row["seeds"] == 3 and row["seed_sd"] == 0.2
    assert row["ci_lo"] < 0.3 < row["ci_hi"]
    # stage 5 scored neither another task's problems nor an undistilled student over seeds; one seed has no spread
    for key in [("s + random", "gsm8k"), ("s (undistilled)", "syllabus_lab")]:
        assert pd.isna(noise.loc[key, "scored_seed"]) and math.isnan(noise.loc[key, "seed_sd"])
    assert noise.loc[("s + all", "syllabus_lab"), "seeds"] == 1 and math.isnan(noise.loc[("s + all", "syllabus_lab"), "seed_sd"])


def test_every_seeds_final_student_is_named_by_its_seed_and_averaged_per_policy():
    """``dynamic.final_seeds: all``: stage 6 scores each seed's final student under its own name and reports
    each policy's mean over them; a policy with one saved seed keeps its plain name and has no mean."""
    import pandas as pd

    from syllabus.stages import benchmark

    finals = pd.DataFrame([{"student": "s", "policy": "random", "seed": k, "model_dir": f"r{k}", "weights": "x"}
                           for k in (0, 1, 2)] + [{"student": "s", "policy": "all", "seed": 0, "model_dir": "a",
                                                   "weights": "y"}])
    names = benchmark.final_names(finals)
    assert list(names) == ["s + random (seed 0)", "s + random (seed 1)", "s + random (seed 2)", "s + all"]
    assert names["s + random (seed 1)"]["model_dir"] == "r1"
    rows = [("s + random (seed 0)", 0.30), ("s + random (seed 1)", 0.40), ("s + random (seed 2)", 0.50),
            ("s + all", 0.60), ("s (undistilled)", 0.50)]
    tidy = pd.DataFrame([{"model": m, "task": "syllabus_lab", "metric": "exact_match", "value": v, "stderr": 0.04,
                          "limit": 100, "n": 100, "truncation_rate": 0.0} for m, v in rows])
    means = benchmark.policy_means(tidy, finals)
    assert list(means["policy"]) == ["random"]  # one seed of `all`: nothing to average
    row = means.iloc[0]
    assert row["seeds"] == 3 and row["mean"] == pytest.approx(0.40) and row["seed_sd"] == pytest.approx(0.10)
    # the problems' error does not average out over seeds that answer the same problems
    assert row["problems_se"] == pytest.approx(0.04) and row["se"] == pytest.approx((0.1 ** 2 / 3 + 0.04 ** 2) ** 0.5)
    # the interval: Wilson on the 100 problems and the seeds' t(2) SD / sqrt(3), in quadrature on each side
    from syllabus.stats import wilson
    lo, hi = wilson(40, 100)
    half = 4.302653 * 0.10 / 3 ** 0.5
    assert row["ci_lo"] == pytest.approx(0.40 - ((0.40 - lo) ** 2 + half ** 2) ** 0.5, abs=1e-5)
    assert row["ci_hi"] == pytest.approx(0.40 + ((hi - 0.40) ** 2 + half ** 2) ** 0.5, abs=1e-5)
    at_zero = benchmark.policy_means(tidy.assign(value=0.0, stderr=0.0), finals).iloc[0]
    assert at_zero["ci_lo"] == 0.0 and at_zero["ci_hi"] == pytest.approx(wilson(0, 100)[1])  # not [0, 0]
    accuracy = pd.DataFrame([{"policy": "random", "seeds": 3, "final_accuracy": 0.4, "seed_sd": 0.1},
                             {"policy": "all", "seeds": 1, "final_accuracy": 0.6, "seed_sd": float("nan")}])
    noise = benchmark.noise_floor(tidy, finals, accuracy).set_index("model")
    assert [noise.loc[f"s + random (seed {k})", "scored_seed"] for k in (0, 1, 2)] == [0, 1, 2]
    assert noise.loc["s + all", "scored_seed"] == 0


def test_the_figure_draws_a_policy_scored_over_seeds_as_one_bar_with_its_mean_interval():
    """``figure_rows``: the seeds' students of a policy become one row (their mean, policy_means' interval);
    a model scored once keeps its own row and Wilson interval; only each task's first metric is drawn; and
    ``benchmark_bars`` draws the rows' own intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import pandas as pd

    from syllabus import plots, stats
    from syllabus.stages import benchmark

    finals = pd.DataFrame([{"student": "s", "policy": "random", "seed": k, "model_dir": f"r{k}", "weights": "x"}
                           for k in (0, 1, 2)])
    rows = [("s + random (seed 0)", 0.30), ("s + random (seed 1)", 0.40), ("s + random (seed 2)", 0.50),
            ("s (undistilled)", 0.25)]
    tidy = pd.DataFrame([{"model": m, "task": "syllabus_lab", "metric": metric, "value": v, "stderr": 0.04,
                          "n": 100} for m, v in rows for metric in ("exact_match", "exact_match_flexible")])
    means = benchmark.policy_means(tidy, finals)
    drawn = benchmark.figure_rows(tidy, means, finals).set_index("model")
    assert list(drawn.index) == ["s (undistilled)", "s + random (mean of 3 seeds)"]
    assert set(drawn["metric"]) == {"exact_match"}
    mean = means[means["metric"] == "exact_match"].iloc[0]
    assert drawn.loc["s + random (mean of 3 seeds)", "value"] == pytest.approx(0.40)
    assert drawn.loc["s + random (mean of 3 seeds)", ["ci_lo", "ci_hi"]].tolist() == [mean["ci_lo"], mean["ci_hi"]]
    assert drawn.loc["s + random (mean of 3 seeds)", "seeds"] == 3 and pd.isna(drawn.loc["s (undistilled)", "seeds"])
    assert tuple(drawn.loc["s (undistilled)", ["ci_lo", "ci_hi"]]) == pytest.approx(stats.wilson(25, 100))
    ax = plots.benchmark_bars(drawn.reset_index()).axes[0]
    ends = {round(float(x), 4) for line in ax.lines for x in np.atleast_1d(line.get_xdata())}
    assert {round(mean["ci_lo"], 4), round(mean["ci_hi"], 4)} <= ends  # the mean's interval, wider than Wilson's
    assert "mean over seeds" in ax.get_xlabel()
