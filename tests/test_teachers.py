"""Teachers: every backend writes real traces; generation is cached and resumable; bad input is clear."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from syllabus import models, params as P, teachers, train
from syllabus.prompts import question_prompt, target_text
from syllabus.records import Problem

torch.set_num_threads(1)
SECRET = "sk-test-secret-key-0123456789"


def gsm8k_problems(data_dir, n: int) -> list[Problem]:
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:n]]
    return [Problem(id=f"gsm8k-test-{i}", task="gsm8k", source="gsm8k", text=r["question"],
                    answer=r["answer"].split("####")[-1].strip(), solution=r["answer"]) for i, r in enumerate(rows)]


# --------------------------------------------------------------------------- lab
def test_lab_teacher_writes_seeded_traces_in_its_style(tmp_path):
    from syllabus import lab

    problems = lab.generate_problems(6, seed=1)
    spec = P.Teacher(name="eq", backend="lab", style="equations", error_rate=0.0)
    teacher = teachers.make_teacher(spec)
    res = teachers.generate_traces(teacher, problems, 2, cache_dir=tmp_path, seed=0, progress=False)
    assert res.n_generated == 12 and len(res.traces) == 12
    assert all(t.text.strip().splitlines()[-1].startswith("####") for t in res.traces)
    assert all(t.text.split("####")[-1].strip() == p.answer for t, p in zip(res.traces[::2], problems))
    again = teachers.make_teacher(spec).generate(problems, 2, 0)
    assert [t.text for t in again] == [t.text for t in res.traces]
    prose = teachers.make_teacher(P.Teacher(name="pr", backend="lab", style="prose")).generate(problems, 1, 0)
    assert [t.text for t in prose] != [t.text for t in res.traces[::2]]


# --------------------------------------------------------------------------- hf
@pytest.fixture(scope="module")
def lab_model_dir(tmp_path_factory):
    texts = [question_prompt(f"Tom has {a} apples. He buys {b} more. How many apples?") +
             target_text(f"{a} + {b} = {a + b}.\n#### {a + b}") for a in range(1, 16) for b in range(1, 9)]
    tok = models.lab_tokenizer(texts)
    model = models.build_lab_model(P.LabArch(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96,
                                             max_position_embeddings=128), tok, 0)
    train.sft(model, tok, [("", t) for t in texts], steps=60, cfg=P.Training(batch_size=8, learning_rate=1e-2,
                                                                            max_seq_len=64), seed=0, loss_on="all")
    return models.save_model(model, tok, tmp_path_factory.mktemp("m") / "lab-teacher")


def test_hf_teacher_generates_batched_traces_from_a_local_model(lab_model_dir, tmp_path):
    spec = P.Teacher(name="tiny-hf", backend="hf", model=str(lab_model_dir),
                     sampling=P.Sampling(temperature=0.7, top_p=0.95, max_new_tokens=24))
    teacher = teachers.make_teacher(spec)
    problems = [Problem(id=f"p{i}", task="lab", source="lab", text=f"Tom has {i} apples. He buys 2 more. How many apples?",
                        answer=str(i + 2)) for i in range(1, 6)]
    res = teachers.generate_traces(teacher, problems, 3, cache_dir=tmp_path, seed=0, progress=False)
    assert res.n_generated == 15 and [t.sample for t in res.traces[:3]] == [0, 1, 2]
    assert sum("####" in t.text for t in res.traces) >= 10  # the trained model writes the answer format
    settings = teacher.settings()
    assert settings["sampling"]["temperature"] == 0.7 and settings["chat_template"] == {"has_template": False,
                                                                                         "sha256": None}
    assert res.traces[0].settings == settings and all(t.n_tokens and t.n_tokens <= 24 for t in res.traces)


# --------------------------------------------------------------------------- file
def test_file_teacher_reads_real_gpt3_solutions_and_reference_answers(data_dir, tmp_path):
    problems = gsm8k_problems(data_dir, 5)
    spec = P.Teacher(name="gpt3", backend="file", path="gsm8k/example_model_solutions.jsonl", field="175b_verification")
    teacher = teachers.make_teacher(spec, data_dir=data_dir)
    res = teachers.generate_traces(teacher, problems, 4, cache_dir=tmp_path, seed=0, progress=False)
    rows = [json.loads(x) for x in (data_dir / "gsm8k" / "example_model_solutions.jsonl").read_text().splitlines()[:5]]
    assert [t.text for t in res.traces] == [r["175b_verification"]["solution"] for r in rows]  # one per problem, as is
    ref = teachers.make_teacher(P.Teacher(name="ref", backend="file", path="gsm8k/test.jsonl", field="answer"),
                                data_dir=data_dir)
    assert [t.text for t in ref.generate(problems, 1, 0)] == [p.solution for p in problems]
    stranger = Problem(id="x", task="gsm8k", source="gsm8k", text="What is the colour of the sky?", answer="0")
    with pytest.warns(UserWarning, match="no trace for 1 of 6"):
        res = teachers.generate_traces(teacher, problems + [stranger], 1, cache_dir=tmp_path, progress=False)
    assert res.missing == ["x"] and res.n_generated == 0 and res.n_cached == 5


def test_file_teacher_with_a_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "a?", "answer": "1"}) + "\n" + json.dumps({"question": "b?"}) + "\n")
    spec = P.Teacher(name="bad", backend="file", path=str(path), field="answer")
    with pytest.raises(teachers.TeacherError, match=r"bad.jsonl, line 2: no field 'answer'"):
        teachers.make_teacher(spec)
    with pytest.raises(teachers.TeacherError, match="does not exist"):
        teachers.make_teacher(P.Teacher(name="b", backend="file", path=str(tmp_path / "none.jsonl")))


def test_file_teacher_refuses_a_question_that_is_not_text_or_not_there_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    spec = P.Teacher(name="bad", backend="file", path=str(path), field="solution")
    path.write_text("".join(json.dumps(row) + "\n" for row in ({"question": "a?", "solution": "1"},
                                                                {"question": 7, "solution": "2"})))
    with pytest.raises(teachers.TeacherError, match=r"bad\.jsonl, line 2: field 'question' is int, expected the "
                                                    r"problem's text \(a string\); fix the line"):
        teachers.make_teacher(spec)
    path.write_text(json.dumps({"problem": "What is 1 + 1?", "solution": "$\\boxed{2}$"}) + "\n")  # MATH's key
    with pytest.raises(teachers.TeacherError) as err:
        teachers.make_teacher(spec)
    message = str(err.value)
    assert "bad.jsonl, line 1: no field 'question' (fields: ['problem', 'solution'])" in message
    assert "rename its 'problem' field to 'question'" in message and "'field' setting" not in message
    path.write_text(json.dumps({"question": "a?", "answer": "1"}) + "\n")  # the solution field: its own setting
    with pytest.raises(teachers.TeacherError, match=r"line 1: no field 'solution' .*the teacher's 'field' setting"):
        teachers.make_teacher(spec)


def test_file_teacher_refuses_one_question_with_two_different_solutions_naming_both_lines(tmp_path):
    path = tmp_path / "dups.jsonl"
    rows = [{"question": "What is 2 + 2?", "solution": "#### 4"}, {"question": "What is 3 + 3?", "solution": "#### 6"},
            {"question": "what is  2 + 2?", "solution": "#### 4"},  # the same line again (case, spaces): kept once
            {"question": "What is 2 + 2? ", "solution": "2 + 2 = 5\n#### 5"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    spec = P.Teacher(name="dups", backend="file", path=str(path), field="solution")
    assert teachers.make_teacher(spec).by_question == {"what is 2 + 2?": "#### 4", "what is 3 + 3?": "#### 6"}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(teachers.TeacherError, match=r"dups\.jsonl, lines 1 and 4: the same question \(case and "
                                                    r"whitespace aside\) with two different solutions in field "
                                                    r"'solution'; .*keep one of the two lines"):
        teachers.make_teacher(spec)


def test_file_teacher_not_utf8_names_the_byte_offset_and_the_fix(tmp_path):
    path = tmp_path / "cp1252.jsonl"
    first = (json.dumps({"question": "a?", "answer": "1"}) + "\n").encode()
    path.write_bytes(first + b'{"question": "b?", "answer": "\x93two\x94"}\n')
    offset = len(first) + len('{"question": "b?", "answer": "')
    spec = P.Teacher(name="cp", backend="file", path=str(path))
    with pytest.raises(teachers.TeacherError, match=rf"cp1252\.jsonl: not UTF-8: byte 0x93 at byte offset {offset}, "
                                                    r"line 2; re-save it as UTF-8$"):
        teachers.make_teacher(spec)


# --------------------------------------------------------------------------- openai-compatible, against a local fake
class FakeEndpoint:
    """A tiny OpenAI-compatible server on 127.0.0.1 that serves at most ``budget`` requests, then stops.

    ``script`` lists the HTTP status of the first responses (then 200); ``down_after`` makes every
    request after that many successful ones fail with 503; ``max_n`` caps the choices per answer.
    """

    def __init__(self, budget: int = 50, script=(), key: str = SECRET, down_after: int | None = None,
                 max_n: int = 8):
        self.requests: list[dict] = []
        self.max_n = max_n
        self.script, self.key, self.down_after, self.ok = list(script), key, down_after, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status = outer.script.pop(0) if outer.script else 200
                if self.headers.get("Authorization") != f"Bearer {outer.key}":
                    status = 401
                if outer.down_after is not None and outer.ok >= outer.down_after:
                    status = 503
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    return
                outer.ok += 1
                question = body["messages"][-1]["content"]
                choices = [{"index": k, "finish_reason": "stop" if k else "length",
                            "message": {"role": "assistant", "content": f"Sample {k} for: {question[:20]}\n#### {k}"}}
                           for k in range(min(body.get("n", 1), outer.max_n))]
                data = json.dumps({"choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 0.2
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self._budget = budget
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        served = 0
        while served < self._budget and not self._stop.is_set():
            before = len(self.requests)
            self.server.handle_request()
            served += len(self.requests) - before
        self.server.server_close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(timeout=5)


def openai_teacher(monkeypatch, url, key=SECRET):
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    spec = P.Teacher(name="api", backend="openai", model="fake-model",
                     sampling=P.Sampling(temperature=0.5, max_new_tokens=64))
    teacher = teachers.make_teacher(spec)
    teacher.backoff_s, teacher.max_rps = 0.01, 200.0
    return teacher


def test_openai_teacher_retries_samples_and_never_shows_the_key(monkeypatch, tmp_path, data_dir):
    problems = gsm8k_problems(data_dir, 3)
    with FakeEndpoint(script=[429, 500]) as fake:
        teacher = openai_teacher(monkeypatch, fake.url)
        res = teachers.generate_traces(teacher, problems, 2, cache_dir=tmp_path, seed=0, progress=False)
    assert len(fake.requests) == 5  # two failures retried, then one request per problem
    assert all(r["path"] == "/v1/chat/completions" and r["body"]["n"] == 2 for r in fake.requests)
    assert [(t.problem_id, t.sample) for t in res.traces] == [(p.id, k) for p in problems for k in (0, 1)]
    assert res.traces[0].truncated and not res.traces[1].truncated and res.traces[1].text.endswith("#### 1")
    for blob in (json.dumps(teacher.settings()), repr(teacher), *(json.dumps(t.to_dict()) for t in res.traces),
                 *(p.read_text() for p in (tmp_path / "generations").rglob("*.jsonl"))):
        assert SECRET not in blob


def test_openai_teacher_asks_again_when_the_endpoint_ignores_n(monkeypatch, data_dir):
    with FakeEndpoint(max_n=1) as fake:
        teacher = openai_teacher(monkeypatch, fake.url)
        traces = teacher.generate(gsm8k_problems(data_dir, 2), 3, 0)
    assert [t.sample for t in traces] == [0, 1, 2, 0, 1, 2] and len(fake.requests) == 6


def test_openai_endpoint_refusing_the_key_is_a_clear_error(monkeypatch, data_dir):
    with FakeEndpoint(key="another-key") as fake:
        teacher = openai_teacher(monkeypatch, fake.url)
        with pytest.raises(teachers.TeacherError, match="refused the key") as err:
            teacher.generate(gsm8k_problems(data_dir, 1), 1, 0)
    assert SECRET not in str(err.value) and len(fake.requests) == 1  # no retry on 401


# --------------------------------------------------------------------------- cache and resume
def test_interrupted_generation_resumes_and_a_rerun_generates_nothing(monkeypatch, tmp_path, data_dir):
    problems = gsm8k_problems(data_dir, 10)
    with FakeEndpoint(down_after=4) as fake:  # the endpoint goes down after 4 problems
        teacher = openai_teacher(monkeypatch, fake.url)
        teacher.max_retries = 1
        with pytest.raises(teachers.TeacherError, match="failed 2 times"):
            teachers.generate_traces(teacher, problems, 2, cache_dir=tmp_path, seed=0, progress=False, chunk_size=4)
        folder = next((tmp_path / "generations").iterdir())
        assert len(teachers.read_cache(folder)) == 8  # the first chunk (4 problems x 2 samples) was kept
        with open(next(folder.glob("shard-*.jsonl")), "a") as fh:
            fh.write('{"key": "torn')  # a write killed mid-line
        fake.down_after, n_before = None, len(fake.requests)  # the endpoint is back
        res = teachers.generate_traces(teacher, problems, 2, cache_dir=tmp_path, seed=0, progress=False, chunk_size=4)
        assert (res.n_generated, res.n_cached, len(fake.requests) - n_before) == (12, 8, 6)
        again = teachers.generate_traces(teacher, problems, 2, cache_dir=tmp_path, seed=0, progress=False)
        assert (again.n_generated, again.n_cached, len(fake.requests) - n_before) == (0, 20, 6)  # zero new calls
    assert [t.to_dict() for t in again.traces] == [t.to_dict() for t in res.traces]
    assert len(list(folder.glob("shard-*.jsonl"))) == 2  # the second run wrote a new shard, the first kept as is


_GENERATE_SCRIPT = """
import sys
from syllabus import params as P, teachers
from syllabus.records import Problem
model_dir, cache_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = P.Teacher(name="tiny-hf", backend="hf", model=model_dir,
                 sampling=P.Sampling(temperature=0.8, top_p=0.95, max_new_tokens=48))
problems = [Problem(id=f"p{i}", task="lab", source="lab", answer=str(i + 3),
                    text=f"Tom has {i} apples. He buys 3 more. How many apples?") for i in range(n)]
teachers.generate_traces(teachers.make_teacher(spec), problems, 2, cache_dir=cache_dir, seed=5,
                         progress=False, chunk_size=2)
"""


def _cached_lines(cache_dir) -> int:
    return sum(len(teachers.read_cache(folder)) for folder in (cache_dir / "generations").glob("*"))


def _run_generation(lab_model_dir, cache_dir, n, kill_after_first_chunk=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _GENERATE_SCRIPT, str(lab_model_dir), str(cache_dir), str(n)],
                            env=env, stderr=subprocess.PIPE)
    if kill_after_first_chunk:
        deadline = time.monotonic() + 300
        while _cached_lines(cache_dir) == 0:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no trace was written"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    return proc.returncode, err.decode()


def test_generation_killed_with_sigkill_resumes_to_the_traces_of_an_uninterrupted_run(lab_model_dir, tmp_path):
    """A real SIGKILL in the middle of sampled generation; the re-run generates only what is missing and
    ends with exactly the traces (same sampled text) of a run that was never interrupted."""
    n = 24
    rc, err = _run_generation(lab_model_dir, tmp_path / "killed", n, kill_after_first_chunk=True)
    assert rc == -9, err[-2000:]
    kept = _cached_lines(tmp_path / "killed")
    assert 0 < kept < 2 * n, kept  # killed mid-way: some chunks written, not all
    rc, err = _run_generation(lab_model_dir, tmp_path / "killed", n)
    assert rc == 0, err[-2000:]
    assert _cached_lines(tmp_path / "killed") == 2 * n
    rc, err = _run_generation(lab_model_dir, tmp_path / "whole", n)
    assert rc == 0, err[-2000:]
    resumed = {k: t.to_dict() for f in (tmp_path / "killed" / "generations").glob("*")
               for k, t in teachers.read_cache(f).items()}
    whole = {k: t.to_dict() for f in (tmp_path / "whole" / "generations").glob("*")
             for k, t in teachers.read_cache(f).items()}
    assert resumed == whole
    by_problem: dict[str, set[str]] = {}
    for t in whole.values():
        by_problem.setdefault(t["problem_id"], set()).add(t["text"])
    assert sum(len(texts) > 1 for texts in by_problem.values()) >= n // 4  # sampled: the two samples differ


def test_vllm_missing_names_the_extra_to_install():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(teachers.TeacherError, match=r"pip install 'syllabus\[vllm\]'"):
        teachers.make_teacher(P.Teacher(name="v", backend="vllm", model="some/model"))
