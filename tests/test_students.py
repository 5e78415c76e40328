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
