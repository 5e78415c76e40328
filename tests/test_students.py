import torch

from syllabus import scoring, students
from syllabus.params import Student

from tiny_lm import tiny_llama, tiny_tokenizer


def test_student_fingerprint_is_hashed_again_only_after_the_weights_change(monkeypatch):
    tok = tiny_tokenizer()
    student = students.StudentModel(Student(name="s", source="dir", model="unused"), tiny_llama(tok), tok)
    calls = []
    real = scoring.model_fingerprint
    monkeypatch.setattr(scoring, "model_fingerprint", lambda m: calls.append(1) or real(m))
    first = student.fingerprint()
    assert student.fingerprint() == first and len(calls) == 1  # unchanged weights: the memo answers

    opt = torch.optim.SGD(student.model.parameters(), lr=0.1)  # one in-place optimizer step
    ids = tok("Question: Tom has 3 boxes", return_tensors="pt")["input_ids"]
    student.model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    second = student.fingerprint()
    assert second != first and len(calls) == 2 and second == real(student.model)

    student.model.load_state_dict(tiny_llama(tok).state_dict())  # back to the first weights, in place
    assert student.fingerprint() == first and len(calls) == 3


def test_workers_get_a_student_pickled_under_the_present_package_versions(tmp_path, monkeypatch):
    """A run folder made under other torch/transformers/peft versions keeps its pickle, but workers get a
    new one: a pickle names package classes and may not load under other versions."""
    from types import SimpleNamespace

    from syllabus import sft_cells
    from syllabus.runs import RunDir

    tok = tiny_tokenizer()
    student = students.StudentModel(Student(name="s", source="dir", model="unused"), tiny_llama(tok), tok)
    stage = SimpleNamespace(run=RunDir(tmp_path / "run"))
    present = sft_cells.student_file(stage, student)
    assert present.is_file() and sft_cells.worker_student(str(present), "cpu", 1).fingerprint() == student.fingerprint()
    written = present.stat().st_mtime_ns
    assert sft_cells.student_file(stage, student) == present  # same versions: the same file, not written again
    assert present.stat().st_mtime_ns == written

    real = sft_cells.package_versions
    monkeypatch.setattr(sft_cells, "package_versions",
                        lambda names: {**real(names), "transformers": "0.0.1"})  # as if after a downgrade
    other = sft_cells.student_file(stage, student)
    assert other != present and other.is_file() and present.is_file()
