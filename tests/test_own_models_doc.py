"""docs/own-models.md: its example profile passes ``syllabus check`` once its two placeholder paths point at a
saved model folder and a trace file written as the page describes, and those traces reach the verifier."""

from __future__ import annotations

import json
import re
import shutil

from tiny_lm import tiny_llama, tiny_tokenizer

from syllabus import cli, models, params, teachers, verify
from syllabus.problems import problem_splits

DOC = "docs/own-models.md"


def _example(project_root) -> str:
    text = (project_root / DOC).read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, f"{DOC}: expected one yaml example, found {len(blocks)}"
    return blocks[0]


def test_the_documented_example_profile_checks_and_its_trace_file_format_is_read(tmp_path, project_root, data_dir,
                                                                               capsys):
    student_dir = tmp_path / "my-student"
    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer).save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    data = tmp_path / "data"
    shutil.copytree(data_dir / "gsm8k", data / "gsm8k")
    # the page's trace format: one line per problem, its question and the solution under `field`
    traces = tmp_path / "traces" / "big-teacher.jsonl"
    traces.parent.mkdir()
    rows = [json.loads(line) for line in (data / "gsm8k" / "example_model_solutions.jsonl").open()]
    traces.write_text("".join(json.dumps({"question": r["question"], "solution": r["175b_verification"]["solution"]})
                              + "\n" for r in rows))
    example = _example(project_root)
    for placeholder in ("/path/to/data", "/path/to/my-student", "/path/to/traces/big-teacher.jsonl"):
        assert placeholder in example, f"{DOC}: the example no longer names {placeholder}"
    profile = tmp_path / "my-study.yaml"
    profile.write_text(example.replace("/path/to/data", str(data)).replace("/path/to/my-student", str(student_dir))
                       .replace("/path/to/traces/big-teacher.jsonl", str(traces)))

    assert cli.main(["check", "--profile", str(profile)]) == 0
    resolved = capsys.readouterr().out
    assert f"model: {student_dir}" in resolved and "name: big-teacher" in resolved

    prof = params.load_profile(profile)
    model, _ = models.load_pretrained(prof.students[0].source, prof.students[0].model)
    assert model.config.hidden_size == 32  # the saved folder, loaded as the `dir` source loads it
    pool = problem_splits(prof).pool
    for spec in prof.teachers:
        made = teachers.make_teacher(spec, data_dir=prof.data.resolved_data_dir())
        got = made.generate(pool, 1, seed=0)
        assert len(got) == len(pool)  # the fixture's 40 test problems all have a solution in both files
        verdicts = [verify.verify(p, t.text) for p, t in zip(pool, got)]
        assert any(verdicts) and (spec.name != "reference" or all(verdicts))  # the gold solutions all verify
