"""Teachers: anything that writes traces for problems, behind one interface, with a resumable cache.

``make_teacher(spec)`` returns a ``Teacher`` for one of the backends ``lab`` (rule-based, from
``syllabus.lab``), ``hf`` (a local transformers model), ``file`` (existing traces in JSONL),
``openai`` (an OpenAI-compatible chat endpoint) and ``vllm`` (optional extra).
``generate_traces`` wraps any teacher with a cache in append-only JSONL shards, so an interrupted
run restarts where it stopped and a rerun with the same inputs generates nothing.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import requests
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from . import lab, models, params as P, vllm_backend
from .devices import resolve_device
from .errors import SyllabusError, utf8_problem
from .progress import task
from .prompts import STOP_STRINGS, build_prompt
from .records import Problem, Trace
from .runs import hash_obj, hash_path, sha256_bytes, stable_seed
from .tokens import count_tokens, encode_prompt

SYSTEM_PROMPT = ("Solve the problem step by step. Finish with a last line of the form '#### <answer>', "
                 "where <answer> is the final answer only.")


class TeacherError(SyllabusError, RuntimeError):
    """A teacher that cannot produce traces as asked; the message says what and how to fix it."""


def _count_tokens(tokenizer, text: str) -> int | None:
    return None if tokenizer is None else count_tokens(tokenizer, text)


class Teacher:
    """Writes ``n_samples`` traces per problem. ``settings()`` holds everything that decides its output."""

    name: str
    max_samples: int | None = None  # a file holds one trace per problem
    chunk_size: int = 16  # problems per generate call in generate_traces (its cache is flushed after each)

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def generate(self, problems: Sequence[Problem], n_samples: int, seed: int) -> list[Trace]:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what generation holds (a vLLM engine's GPU memory); the teacher can still generate after."""

    def _trace(self, problem: Problem, text: str, sample: int, **extra: Any) -> Trace:
        return Trace(problem_id=problem.id, teacher=self.name, text=text, sample=sample,
                     settings=self.settings(), **extra)


# --------------------------------------------------------------------------- lab
class LabTeacher(Teacher):
    """Rule-based traces for lab problems in one style, wrong with probability ``error_rate`` (for ``sloppy`` at
    least ``lab.SLOPPY_MIN_ERROR_RATE``)."""

    def __init__(self, spec: P.Teacher, student_tokenizer=None):
        self.name, self.style, self.error_rate = spec.name, spec.style, spec.error_rate
        self.tokenizer = student_tokenizer

    def settings(self) -> dict[str, Any]:
        return {"backend": "lab", "style": self.style, "error_rate": self.error_rate, "version": 1}

    def generate(self, problems, n_samples, seed):
        out = []
        for problem in problems:
            if problem.task != "lab":
                raise TeacherError(f"lab teacher '{self.name}' can only write traces for lab problems; "
                                   f"problem '{problem.id}' is a {problem.task} problem")
            for k in range(n_samples):
                rng = random.Random(stable_seed(seed, self.name, problem.id, k))
                text = lab.write_trace(problem, self.style, error_rate=self.error_rate, rng=rng)
                text = getattr(text, "text", text)
                out.append(self._trace(problem, text, k, n_tokens=_count_tokens(self.tokenizer, text)))
        return out


# --------------------------------------------------------------------------- hf
class HFTeacher(Teacher):
    """A local transformers model; batched generation through ``models.generate``."""

    def __init__(self, spec: P.Teacher, cache_dir=None, batch_size: int = 8, device: str = "cpu"):
        self.name, self.sampling, self.batch_size = spec.name, spec.sampling, batch_size
        ref = spec.model
        path = Path(ref).expanduser()
        self.model, self.tokenizer = models.load_pretrained(models.guess_source(ref), ref, cache_dir=cache_dir)
        self.model = self.model.to(resolve_device(device))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.use_chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.model_id = hash_path(path) if path.exists() else ref
        self.chat = models.chat_template_info(self.tokenizer)

    def settings(self):
        return {"backend": "hf", "model": self.model_id, "use_chat_template": self.use_chat,
                "chat_template": self.chat, "sampling": self.sampling.model_dump(), "stop": list(STOP_STRINGS),
                "prompt": "syllabus.prompts.build_prompt", "version": 1}

    def generate(self, problems, n_samples, seed):
        prompts = [build_prompt(p.text, self.tokenizer, self.use_chat) for p in problems]
        gens = models.generate(self.model, self.tokenizer, prompts, max_new_tokens=self.sampling.max_new_tokens,
                        temperature=self.sampling.temperature, top_p=self.sampling.top_p, num_samples=n_samples,
                        batch_size=self.batch_size, seed=seed, stop=STOP_STRINGS)
        return [self._trace(p, g.text.strip(), k, truncated=g.truncated, n_tokens=g.n_tokens)
                for p, samples in zip(problems, gens) for k, g in enumerate(samples)]


# --------------------------------------------------------------------------- file
def normalise_question(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


class FileTeacher(Teacher):
    """Existing traces from a JSONL file, matched to problems by normalised question text.

    ``field`` names the solution: a string field (``answer`` of GSM8K's train/test files) or an
    object with a ``solution`` (``175b_verification`` of ``example_model_solutions.jsonl``).
    """

    max_samples = 1

    def __init__(self, spec: P.Teacher, data_dir=None, student_tokenizer=None):
        self.name, self.field, self.tokenizer = spec.name, spec.field or "answer", student_tokenizer
        self.path = path = file_teacher_path(spec, data_dir)
        self.by_question: dict[str, str] = {}
        self.missing: list[str] = []
        first_line: dict[str, int] = {}  # question -> the line that gave it first
        try:
            with open(path, encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise TeacherError(f"{path}, line {line_no}: not valid JSON ({exc.msg})") from None
                    question = normalise_question(self._question(row, line_no))
                    solution = self._solution(row, line_no)
                    if question in first_line and self.by_question[question] != solution:
                        raise TeacherError(
                            f"{path}, lines {first_line[question]} and {line_no}: the same question (case and "
                            f"whitespace aside) with two different solutions in field '{self.field}'; a file teacher "
                            "gives one trace per problem: keep one of the two lines (or put the other in a second "
                            "file, for a second teacher)")
                    first_line.setdefault(question, line_no)
                    self.by_question[question] = solution
        except UnicodeDecodeError:
            raise TeacherError(f"{path}: {utf8_problem(path.read_bytes())}; re-save it as UTF-8") from None
        self.file_hash = hash_path(path)

    def _field(self, row: dict, key: str, line_no: int) -> Any:
        if not isinstance(row, dict) or key not in row:
            have = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise TeacherError(f"{self.path}, line {line_no}: no field '{key}' (fields: {have}); "
                               f"fix the file or the teacher's 'field' setting")
        return row[key]

    def _question(self, row: dict, line_no: int) -> str:
        if not isinstance(row, dict) or "question" not in row:
            have = sorted(row) if isinstance(row, dict) else type(row).__name__
            named = next((k for k in ("problem", "prompt", "input") if isinstance(row, dict) and k in row), None)
            fix = (f"rename its '{named}' field to 'question' (in a copy, if the file is the data's own)" if named else
                   "add it (traces are matched to the data's problems by this text)")
            raise TeacherError(f"{self.path}, line {line_no}: no field 'question' (fields: {have}); every line needs "
                               f"the problem's text under 'question': {fix}")
        value = row["question"]
        if not isinstance(value, str):
            raise TeacherError(f"{self.path}, line {line_no}: field 'question' is {type(value).__name__}, expected the "
                               "problem's text (a string); fix the line")
        return value

    def _solution(self, row: dict, line_no: int) -> str:
        value = self._field(row, self.field, line_no)
        if isinstance(value, dict):
            if "solution" not in value:
                raise TeacherError(f"{self.path}, line {line_no}: field '{self.field}' has no 'solution' "
                                   f"(keys: {sorted(value)})")
            value = value["solution"]
        if not isinstance(value, str):
            raise TeacherError(f"{self.path}, line {line_no}: field '{self.field}' is {type(value).__name__}, "
                               "expected the solution text")
        return value

    def settings(self):
        return {"backend": "file", "file": self.path.name, "sha256": self.file_hash, "field": self.field, "version": 1}

    def generate(self, problems, n_samples, seed):
        out = []
        for p in problems:
            text = self.by_question.get(normalise_question(p.text))
            if text is None:
                if p.id not in self.missing:
                    self.missing.append(p.id)
                continue
            out.append(self._trace(p, text, 0, n_tokens=_count_tokens(self.tokenizer, text)))
        return out


# --------------------------------------------------------------------------- openai-compatible
class OpenAITeacher(Teacher):
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Base URL from ``$OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``), key from
    ``$OPENAI_API_KEY``. The key is sent only in the Authorization header and never appears in
    settings, traces or errors. Retries with exponential backoff on 429, 5xx and connection errors;
    at most ``max_rps`` requests per second.
    """

    def __init__(self, spec: P.Teacher, student_tokenizer=None, *, max_rps: float = 2.0, max_retries: int = 5,
                 backoff_s: float = 1.0, timeout_s: float = 120.0):
        self.name, self.model, self.sampling, self.tokenizer = spec.name, spec.model, spec.sampling, student_tokenizer
        self.base_url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
        self._key = os.environ.get("OPENAI_API_KEY")
        if not self._key:
            raise TeacherError(f"openai teacher '{self.name}': $OPENAI_API_KEY is not set; export it "
                               "(and $OPENAI_BASE_URL for a non-OpenAI endpoint)")
        self.max_rps, self.max_retries, self.backoff_s, self.timeout_s = max_rps, max_retries, backoff_s, timeout_s
        self._last_request = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAITeacher(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r})"

    def settings(self):
        return {"backend": "openai", "base_url": self.base_url, "model": self.model,
                "sampling": self.sampling.model_dump(), "system_prompt": SYSTEM_PROMPT, "version": 1}

    def _wait_for_rate_limit(self) -> None:
        with self._lock:
            wait = self._last_request + 1.0 / self.max_rps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_request = time.monotonic()

    def _post(self, payload: dict) -> dict:
        url = f"{self.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        problem = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self._wait_for_rate_limit()
            try:
                resp = requests.post(url, headers=headers, json=payload, timeout=self.timeout_s)
            except requests.RequestException as exc:
                problem = f"connection error ({type(exc).__name__})"
                continue
            if resp.status_code in (401, 403):
                raise TeacherError(f"openai teacher '{self.name}': the endpoint {url} refused the key "
                                   f"(HTTP {resp.status_code}); check $OPENAI_API_KEY and $OPENAI_BASE_URL")
            if resp.status_code == 429 or resp.status_code >= 500:
                problem = f"HTTP {resp.status_code}"
                retry_after = resp.headers.get("Retry-After")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    time.sleep(min(float(retry_after), 60.0))
                continue
            if resp.status_code != 200:
                raise TeacherError(f"openai teacher '{self.name}': {url} answered HTTP {resp.status_code}: "
                                   f"{resp.text[:200]!r}; check the model name '{self.model}'")
            try:
                return resp.json()
            except ValueError:
                raise TeacherError(f"openai teacher '{self.name}': {url} answered with non-JSON text") from None
        raise TeacherError(f"openai teacher '{self.name}': {url} failed {self.max_retries + 1} times "
                           f"(last: {problem}); try again later or lower the request rate")

    def generate(self, problems, n_samples, seed):
        out = []
        for p in problems:
            payload = {"model": self.model, "n": n_samples, "seed": stable_seed(seed, p.id) % 2**31,
                       "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                    {"role": "user", "content": p.text.strip()}],
                       "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                       "max_tokens": self.sampling.max_new_tokens}
            choices: list[dict] = []
            for _ in range(2 * n_samples):  # some endpoints ignore n: ask again for the rest
                payload["n"] = n_samples - len(choices)
                got = self._post(payload).get("choices") or []
                choices += sorted(got, key=lambda c: c.get("index", 0))
                if len(choices) >= n_samples or not got:
                    break
                payload["seed"] += 1
            for k, choice in enumerate(choices[:n_samples]):
                text = ((choice.get("message") or {}).get("content") or "").strip()
                out.append(self._trace(p, text, k, truncated=choice.get("finish_reason") == "length",
                                       n_tokens=_count_tokens(self.tokenizer, text)))
        return out


# --------------------------------------------------------------------------- vllm (optional extra)
class VLLMTeacher(Teacher):
    """A model served in-process by vLLM (GPU machines). Installed with ``pip install 'syllabus[vllm]'``.

    The tokenizer (for ``settings()`` and the prompts) comes from transformers, as vLLM's own does; the engine
    is made on the first ``generate``, so a teacher whose traces are all cached never loads the model.
    Prompts go to vLLM as token ids (``tokens.encode_prompt``: a chat template that writes the BOS token
    gets no second one, which vLLM adds to a text prompt), with a seed per problem (``stable_seed(seed,
    problem id)``; vLLM gives sample k the seed + k), and 128 problems per call keep its batch full."""

    chunk_size = 128

    def __init__(self, spec: P.Teacher):
        what, fallback = f"vllm teacher '{spec.name}'", "use backend: hf"
        try:
            self._vllm = vllm_backend.import_vllm(what, fallback)
        except vllm_backend.VLLMMissing as exc:
            raise TeacherError(str(exc)) from None
        self.name, self.model_name, self.sampling = spec.name, spec.model, spec.sampling
        self.tensor_parallel_size, self.max_model_len = spec.tensor_parallel_size, spec.max_model_len
        self.gpu_memory_utilization = spec.gpu_memory_utilization
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model)
        self.use_chat = bool(getattr(self.tokenizer, "chat_template", None))

    def _engine(self):
        return vllm_backend.engine(self.model_name, what=f"vllm teacher '{self.name}'", fallback="use backend: hf",
                                   tensor_parallel_size=self.tensor_parallel_size, max_model_len=self.max_model_len,
                                   gpu_memory_utilization=self.gpu_memory_utilization)

    def settings(self):
        # version 2: token-id prompts and a seed per problem (version 1: text prompts, one seed for all).
        # max_model_len can cut a completion short; the GPUs the model is split over, and its share of them,
        # decide nothing
        return {"backend": "vllm", "model": self.model_name, "sampling": self.sampling.model_dump(),
                "use_chat_template": self.use_chat, "chat_template": models.chat_template_info(self.tokenizer),
                "stop": list(STOP_STRINGS), "max_model_len": self.max_model_len, "version": 2}

    def generate(self, problems, n_samples, seed):
        llm = self._engine()
        params = [vllm_backend.sampling_params(self._vllm, n=n_samples, temperature=self.sampling.temperature,
                                               top_p=self.sampling.top_p, max_tokens=self.sampling.max_new_tokens,
                                               seed=stable_seed(seed, p.id) % 2**31, stop=STOP_STRINGS)
                  for p in problems]
        prompts = [build_prompt(p.text, self.tokenizer, self.use_chat) for p in problems]
        prompts = [{"prompt_token_ids": encode_prompt(self.tokenizer, prompt)} for prompt in prompts]
        gens = vllm_backend.to_generations(llm.generate(prompts, params, use_tqdm=False), n_samples, self.tokenizer)
        return [self._trace(p, g.text.strip(), k, truncated=g.truncated, n_tokens=g.n_tokens)
                for p, samples in zip(problems, gens) for k, g in enumerate(samples)]

    def close(self) -> None:
        vllm_backend.release()


def file_teacher_path(spec: P.Teacher, data_dir=None) -> Path:
    """The JSONL file a ``file`` teacher reads: ``path`` as given, or relative to the data directory."""
    path = Path(spec.path).expanduser()
    if not path.is_absolute():
        if data_dir is None:
            raise TeacherError(f"file teacher '{spec.name}': relative path '{spec.path}' needs a data directory; "
                               "set data.data_dir or $SYLLABUS_DATA_DIR, or give an absolute path")
        path = Path(data_dir) / path
    if not path.is_file():
        raise TeacherError(f"file teacher '{spec.name}': '{path}' does not exist; fix 'path' "
                           "(relative paths are read from the data directory)")
    return path


def make_teacher(spec: P.Teacher, *, data_dir=None, cache_dir=None, student_tokenizer=None,
                 device: str = "cpu") -> Teacher:
    """The teacher for a profile's ``teachers[]`` entry (an ``hf`` teacher runs on ``device``)."""
    if spec.backend == "lab":
        return LabTeacher(spec, student_tokenizer)
    if spec.backend == "hf":
        return HFTeacher(spec, cache_dir=cache_dir, device=device)
    if spec.backend == "file":
        return FileTeacher(spec, data_dir=data_dir, student_tokenizer=student_tokenizer)
    if spec.backend == "openai":
        return OpenAITeacher(spec, student_tokenizer)
    if spec.backend == "vllm":
        return VLLMTeacher(spec)
    raise TeacherError(f"unknown teacher backend '{spec.backend}'")


# --------------------------------------------------------------------------- cached, resumable generation
@dataclass
class GenerationResult:
    traces: list[Trace]
    n_generated: int
    n_cached: int
    missing: list[str] = field(default_factory=list)  # problem ids the teacher had no trace for


def _record_key(problem: Problem, sample: int, seed: int) -> str:
    return f"{problem.id}|{sha256_bytes(problem.text.encode())[:16]}|{sample}|{seed}"


def read_cache(folder: Path) -> dict[str, Trace]:
    """Every complete line of every shard; a torn last line (killed mid-write) is ignored."""
    found: dict[str, Trace] = {}
    for shard in sorted(folder.glob("shard-*.jsonl")):
        with open(shard, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                found[row["key"]] = Trace.from_dict(row["trace"])
    return found


def _new_shard(folder: Path) -> Path:
    """A fresh shard per call (time + process id): earlier shards are never written again."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"shard-{time.time_ns():020d}-{os.getpid()}.jsonl"


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def generate_traces(teacher: Teacher, problems: Sequence[Problem], n_samples: int, *, cache_dir, seed: int = 0,
                    progress: bool = True, chunk_size: int | None = None) -> GenerationResult:
    """Traces for every (problem, sample), generating only what the cache does not hold.

    Cache: ``cache_dir/generations/<hash of teacher settings>/shard-<time ns>-<pid>.jsonl``, one new shard per
    call that generates anything, appended and flushed per chunk of ``chunk_size`` problems (by default the
    teacher's: 16, a vllm teacher 128).
    """
    chunk_size = chunk_size or teacher.chunk_size
    folder = Path(cache_dir) / "generations" / hash_obj(teacher.settings())[:16]
    cached = read_cache(folder)
    n_wanted = min(n_samples, teacher.max_samples or n_samples)
    todo = [p for p in problems if any(_record_key(p, k, seed) not in cached for k in range(n_wanted))]
    n_generated, shard = 0, None
    bar = tqdm(total=len(todo), desc=f"traces from {teacher.name}", unit="problem", disable=not progress or not todo)
    with task(f"traces from {teacher.name}", len(todo), "problems") as loop:
        for chunk in _chunks(todo, chunk_size):
            by_id = {p.id: p for p in chunk}
            lines = []
            for trace in teacher.generate(chunk, n_wanted, seed):
                key = _record_key(by_id[trace.problem_id], trace.sample, seed)
                if key in cached:
                    continue
                cached[key] = trace
                lines.append(json.dumps({"key": key, "trace": trace.to_dict()}, sort_keys=True) + "\n")
                n_generated += 1
            if lines:
                shard = shard or _new_shard(folder)
                with open(shard, "a", encoding="utf-8") as fh:
                    fh.write("".join(lines))
                    fh.flush()
                    os.fsync(fh.fileno())
            bar.update(len(chunk))
            loop.advance(len(chunk))
    bar.close()
    traces, missing = [], []
    for p in problems:
        got = [cached[k] for k in (_record_key(p, s, seed) for s in range(n_wanted)) if k in cached]
        traces.extend(got)
        if not got:
            missing.append(p.id)
    if missing:
        warnings.warn(f"teacher '{teacher.name}' has no trace for {len(missing)} of {len(problems)} problems "
                      f"(first: {missing[:3]}); they are listed in GenerationResult.missing", stacklevel=2)
    return GenerationResult(traces=traces, n_generated=n_generated, n_cached=len(traces) - n_generated,
                            missing=missing)
