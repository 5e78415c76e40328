"""Profiles: load a params YAML, apply overrides, validate, fail with the file, the key and the reason.

A profile is one YAML file in ``params/`` (or any path). Every notebook of a run reads the same
resolved profile. Validation is strict: unknown keys, wrong types and out-of-range values are
errors, reported before any work starts.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .dmc_factors import RULES, check_params, rule_params  # the DMC rule registry
from .errors import SyllabusError, utf8_problem
from .select import POLICIES  # the selection policy registry

PARAMS_SCHEMA_VERSION = 1
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARAMS_DIR = PROJECT_ROOT / "params"
DATA_DIR_ENV = "SYLLABUS_DATA_DIR"
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"  # the third place data is looked for


class ParamsError(SyllabusError, ValueError):
    """A profile that cannot be used; the message names the file, the key and the fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- tasks and data
LAB_MODULES = ("add", "subtract", "multiply", "divide", "percent", "rate", "comparison")


class LabTask(Strict):
    """The procedural lab task (GSM8K-style word problems); see ``syllabus.lab``."""

    modules: list[str] = Field(default_factory=lambda: list(LAB_MODULES), min_length=1)
    min_steps: int = Field(1, ge=1, le=8)
    max_steps: int = Field(3, ge=1, le=8)
    max_operand: int = Field(20, ge=2, le=10_000)
    max_value: int | None = Field(None, ge=2, description="largest value along a problem's steps "
                                                          "(None: 10 x max_operand)")
    n_pretrain: int = Field(2000, ge=0, description="problems whose gold solutions warm-start lab students")

    @model_validator(mode="after")
    def _check(self) -> "LabTask":
        unknown = sorted(set(self.modules) - set(LAB_MODULES))
        if unknown:
            raise ValueError(f"unknown lab modules {unknown}; known: {list(LAB_MODULES)}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) > max_steps ({self.max_steps})")
        if self.max_value is not None and self.max_value < self.max_operand:
            raise ValueError(f"max_value ({self.max_value}) < max_operand ({self.max_operand})")
        return self


# The problem sources of ``syllabus.data`` (its ``SOURCES``): what ``data.eval_sets`` may name.
PROBLEM_SOURCES = ("gsm8k", "math", "math500", "humaneval", "lab")


class Data(Strict):
    """Where problems come from. Hub ids are used only when set; otherwise ``data_dir``."""

    task: Literal["lab", "gsm8k", "math"] = "lab"
    data_dir: Path | None = Field(None, description=f"GSM8K/MATH files; else ${DATA_DIR_ENV}")
    hub: dict[str, str] = Field(default_factory=dict, description="source -> hub dataset id")
    eval_sets: list[str] = Field(default_factory=lambda: ["lab"], description="decontamination + benchmark sets")
    pool_split: Literal["train", "test"] = Field(
        "train", description="split the pool comes from; 'test' partitions the test file into pool/probe/held-out")
    n_pool: int = Field(400, ge=1, description="problems that candidate datasets are built from")
    n_probe: int = Field(60, ge=2, description="probe problems (teacher selection, NLL_ref, IOA probes)")
    n_heldout: int = Field(100, ge=1, description="held-out problems for gains and evaluation")
    lab: LabTask = Field(default_factory=LabTask)

    @field_validator("eval_sets")
    @classmethod
    def _known_sets(cls, eval_sets: list[str]) -> list[str]:
        unknown = [name for name in eval_sets if name not in PROBLEM_SOURCES]
        if unknown:
            raise ValueError(f"unknown eval set(s) {unknown}; choose from {list(PROBLEM_SOURCES)}")
        return eval_sets

    def resolved_data_dir(self) -> Path | None:
        """The local data folder: ``data_dir``, else ``$SYLLABUS_DATA_DIR``, else ``../shared/data`` if it exists."""
        if self.data_dir is not None:
            return self.data_dir
        env = os.environ.get(DATA_DIR_ENV)
        if env:
            return Path(env).expanduser().resolve()
        return SHARED_DATA_DIR if SHARED_DATA_DIR.is_dir() else None


# --------------------------------------------------------------------------- models
class LabArch(Strict):
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)
    max_position_embeddings: int = Field(512, ge=32)


class Student(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    source: Literal["lab", "hub", "dir", "gguf"] = "lab"
    model: str | None = Field(None, description="hub id, local directory, or GGUF file/package")
    gguf_file: str | None = None
    arch: LabArch | None = None
    warmup_steps: int = Field(0, ge=0, description="lab students: pre-training steps on lab text")
    warmup_fraction: float = Field(1.0, gt=0, le=1, description="share of lab modules seen in warm-up "
                                                                 "(the first ones in prerequisite order)")
    warmup_modules: list[str] | None = Field(None, description="lab modules seen in warm-up (overrides "
                                                               "warmup_fraction)")
    warmup_style: Literal["gold", "equations", "prose", "selfcheck"] = Field(
        "gold", description="how the warm-up solutions are written: the reference solutions or a lab teacher's "
                            "style without slips (the style a student is made familiar with)")
    warmup_learning_rate: float | None = Field(None, gt=0, le=1, description="warm-up learning rate "
                                                                             "(None: training.learning_rate)")
    warmup_batch_size: int | None = Field(None, ge=1, description="warm-up batch size (None: training.batch_size)")
    learning_rate: float | None = Field(None, gt=0, le=1, description="this student's SFT learning rate in stages "
                                                                      "1, 4 and 5 (None: training.learning_rate)")
    lora: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    chat_template: bool = False

    @model_validator(mode="after")
    def _check(self) -> "Student":
        if self.source == "lab" and self.arch is None:
            self.arch = LabArch()
        if self.source != "lab" and not self.model:
            raise ValueError(f"student '{self.name}': source '{self.source}' needs 'model'")
        unknown = sorted(set(self.warmup_modules or ()) - set(LAB_MODULES))
        if unknown:
            raise ValueError(f"student '{self.name}': unknown warmup_modules {unknown}; known: {list(LAB_MODULES)}")
        return self


class Sampling(Strict):
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)


class StudentGeneration(Strict):
    """How students write their own solutions (pass rates, NLL_ref, accuracy)."""

    temperature: float = Field(0.7, ge=0, description="sampling temperature when k > 1 (k = 1 is greedy)")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(160, ge=1)
    batch_size: int = Field(32, ge=1)
    token_budget: int | None = Field(
        None, ge=1, description="hf backend: at most this many prompt and new tokens per batch (rows x (longest "
                                "prompt + max_new_tokens), its KV cache), so long prompts run in fewer rows; "
                                "None: batch_size rows whatever their length (vLLM schedules its own batches)")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers generate on the profile's device; vllm: vLLM on the student's "
                          "(LoRA-merged) weights, GPU machines, the optional extra syllabus[vllm]")


class Teacher(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    backend: Literal["lab", "hf", "file", "openai", "vllm"]
    style: Literal["equations", "prose", "selfcheck", "sloppy"] | None = None
    error_rate: float = Field(0.0, ge=0, le=1)
    model: str | None = None
    path: str | None = Field(None, description="file backend: JSONL path (relative to data_dir if not absolute)")
    field: str | None = Field(None, description="file backend: which solution field to read")
    sampling: Sampling = Field(default_factory=Sampling)
    tensor_parallel_size: int = Field(1, ge=1, description="vllm backend: GPUs the engine splits the model over "
                                                           "(a 32B teacher in bf16 does not fit one 80 GB GPU)")
    max_model_len: int | None = Field(None, ge=2, description="vllm backend: longest prompt + completion the engine "
                                                             "serves (None: the model's own context length)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vllm backend: the share of each of its GPUs the engine takes (None: vLLM's "
                                      "0.9); the student stays on the first GPU beside it, so leave it room")

    @model_validator(mode="after")
    def _check(self) -> "Teacher":
        need = {"lab": "style", "hf": "model", "file": "path", "openai": "model", "vllm": "model"}[self.backend]
        if getattr(self, need) in (None, ""):
            raise ValueError(f"teacher '{self.name}': backend '{self.backend}' needs '{need}'")
        if self.backend != "vllm" and (self.tensor_parallel_size != 1 or self.max_model_len is not None
                                       or self.gpu_memory_utilization is not None):
            raise ValueError(f"teacher '{self.name}': tensor_parallel_size, max_model_len and gpu_memory_utilization "
                             f"are settings of the vllm backend, not of '{self.backend}'; remove them")
        if self.max_model_len is not None and self.max_model_len <= self.sampling.max_new_tokens:
            raise ValueError(f"teacher '{self.name}': max_model_len {self.max_model_len} leaves no room for the prompt "
                             f"beside sampling.max_new_tokens {self.sampling.max_new_tokens}; raise it")
        return self


class Training(Strict):
    learning_rate: float = Field(3e-3, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_seq_len: int = Field(256, ge=16)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="after warm-up: cosine to 0, or constant")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    gradient_checkpointing: bool = Field(
        False, description="recompute each decoder layer's activations in the backward pass instead of keeping "
                           "them (transformers' non-reentrant gradient checkpointing): much less memory for long "
                           "sequences, about one more forward pass of compute, the same loss and gradients; not "
                           "part of any cache key")

    def key_dump(self) -> dict[str, Any]:
        """The settings that decide what SFT trains, for cache and resume keys: ``model_dump(mode="json")``
        without ``gradient_checkpointing`` (memory only), so switching it keeps every key."""
        return self.model_dump(mode="json", exclude={"gradient_checkpointing"})

    def record_dump(self) -> dict[str, Any]:
        """The settings as training records (``train_summary.json``) hold them: ``key_dump`` plus
        ``gradient_checkpointing`` when it is on (records of runs without it stay as they were)."""
        return {**self.key_dump(), **({"gradient_checkpointing": True} if self.gradient_checkpointing else {})}


# --------------------------------------------------------------------------- stages
class TeacherSelection(Strict):
    probe_size: int = Field(40, ge=2)
    samples_per_problem: int = Field(1, ge=1)
    smoke_sft_steps: int = Field(30, ge=1, description="smoke-test SFT steps when smoke_sft_tokens is not set")
    smoke_sft_tokens: int | None = Field(None, ge=1, description="smoke-test training tokens per teacher and seed "
                                                                 "(equal compute for short and long traces)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="smoke-test seeds")
    select_top: int = Field(1, ge=1)


class Curation(Strict):
    samples_per_problem: int = Field(4, ge=1, description="M (DED)")
    max_trace_tokens: int = Field(256, ge=8)
    require_think_tags: bool = False
    near_dup_ngram: int = Field(5, ge=1)
    near_dup_threshold: float = Field(0.8, gt=0, le=1)
    decontam_ngram: int = Field(13, ge=1)
    easy_pass_rate: float = Field(0.75, ge=0, le=1)
    pass_rate_samples: int = Field(4, ge=1, description="k samples for the student's pass rate")
    keep_per_problem: int = Field(4, ge=1, description="P (DED diversity)")
    per_teacher: bool = Field(True, description="dedup and diversity within each teacher's traces of a problem")
    balance_by: Literal["none", "level", "pass_rate"] = "none"
    adapter: bool = True


class DMC(Strict):
    variant: str = Field("window", description="a rule of syllabus.dmc_factors.RULES")
    params: dict[str, float] = Field(default_factory=dict,
                                     description="the rule's keyword parameters (unset ones keep the rule's defaults)")
    reference: Literal["per_prompt", "sampled_median"] = Field(
        "per_prompt", description="NLL_ref of r = NLL(trace) / NLL_ref: per_prompt, the student's own mean NLL of "
                                  "its T = sample_temperature samples of that problem; sampled_median, the median "
                                  "NLL of its tempered samples on the probe set (the first version)")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of problems (by a stable hash of the id) "
                                    "in every candidate dataset's scoring slice: DMC is measured there, SFT in "
                                    "stages 4 and 5 never draws from it")
    capability_samples: int = Field(4, ge=1)
    sample_temperature: float = Field(1.0, gt=0, description="temperature of the student's own samples behind "
                                      "capability and the per-prompt reference (top_p 1)")
    capability_prior: tuple[float, float] = Field((1.0, 1.0), description="Beta(a, b) prior of the smoothed "
                                                  "pass rate (s + a) / (k + a + b); [0, 0]: the raw pass rate")
    score_batch_size: int = Field(16, ge=1)
    score_max_batch_tokens: int | None = Field(
        None, ge=16, description="padded tokens per scoring batch, a cap on top of score_batch_size (None: no cap; "
                                 "set it for long traces on a GPU)")

    @field_validator("variant")
    @classmethod
    def _registered(cls, variant: str) -> str:
        if variant not in RULES:
            raise ValueError(f"unknown DMC rule; registered rules: {sorted(RULES)}")
        return variant

    @model_validator(mode="after")
    def _rule_takes_params(self) -> "DMC":
        check_params(self.variant, self.params, where="dmc.params")
        if min(self.capability_prior) < 0:
            raise ValueError(f"dmc.capability_prior must be two numbers >= 0, got {list(self.capability_prior)}")
        return self

    def rule_params(self) -> dict[str, float]:
        """The chosen rule's parameters: ``params`` over the rule's defaults."""
        return check_params(self.variant, self.params)


class Correlation(Strict):
    datasets: list[str] | None = Field(None, description="glob patterns of the candidate datasets in the grid "
                                                        "(e.g. 'teacher=*'); None: all of them")
    sft_steps: int = Field(40, ge=1, description="SFT steps per grid cell when sft_tokens is not set")
    sft_tokens: int | None = Field(None, ge=1, description="training tokens per grid cell (equal compute per cell: "
                                                           "steps = sft_tokens / (batch x mean example tokens))")
    sft_tokens_by_student: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="a student's own training tokens per grid cell, in place of sft_tokens "
                                          "(every cell of one student still trains on equal tokens)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    bootstrap: int = Field(1000, ge=10)
    permutations: int = Field(1000, ge=10)
    fit_fraction: float = Field(0.5, gt=0, lt=1)
    fit_split: Literal["family", "student"] = Field(
        "family", description="how the rule is chosen: on fit_fraction of the single-teacher families (family) or "
                              "on the first student (student), and reported on the rest")
    fit_grid: dict[str, dict[str, list[float]]] = Field(
        default_factory=lambda: {"window": {"center": [0.75, 1.0, 1.25, 1.5, 2.0], "width": [0.25, 0.5, 1.0]},
                                 "window_information": {"center": [1.0, 1.25, 1.5], "width": [0.5, 1.0]},
                                 "excess": {"r0": [0.5, 1.0, 1.5, 2.0, 3.0], "lam": [0.25, 1.0, 4.0]},
                                 "no_difficulty": {}},
        description="rules compared when choosing the default, each with the values of its parameters to search")

    @field_validator("fit_grid")
    @classmethod
    def _grid_names_rule_params(cls, grid: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
        for rule, values in grid.items():
            if rule not in RULES:
                raise ValueError(f"correlation.fit_grid: unknown DMC rule '{rule}'; registered rules: {sorted(RULES)}")
            unknown = sorted(set(values) - set(rule_params(rule)))
            if unknown:
                raise ValueError(f"correlation.fit_grid.{rule}: rule '{rule}' has no parameter(s) {unknown}; it takes "
                                 f"{sorted(rule_params(rule)) or 'none'}")
            empty = [k for k, v in values.items() if not v]
            if empty:
                raise ValueError(f"correlation.fit_grid.{rule}.{empty[0]}: give at least one value")
        return grid


class IOA(Strict):
    tau_gap: float = Field(0.3, ge=0, le=1)
    tau_mastery: float = Field(0.9, ge=0, le=1)
    tau_zpd: float = Field(0.15, ge=0)
    max_remedial_rounds: int = Field(5, ge=0)
    alpha: float = Field(0.7, ge=0, le=1, description="severity weight of the gap (Eq. 4)")
    target_share: float = Field(0.25, gt=0, le=1, description="top-m: this share of the deficient modules (Eq. 5)")
    items_per_module: int = Field(20, ge=1, description="probe items per module on which P_T and P_S are both "
                                                        "measured (lab: drawn fresh; other tasks: the probe set's)")
    gate_confidence: float = Field(0.9, gt=0, lt=1, description="two-sided confidence of the Wilson bound in the gate")
    gate_bound: Literal["upper", "lower"] = Field(
        "upper", description="upper: mastered unless the data show P_S below target; lower: the data must show it at target")
    mastery_ceiling: float | None = Field(None, gt=0, le=1, description="cap on a module's target; None: the best "
                                                                        "P_S the student showed on a non-deficient module")
    plateau_rounds: int = Field(2, ge=1, description="remedial rounds in a row without min_progress before moving on")
    min_progress: float = Field(0.05, ge=0, description="gain in the gate score that counts as progress")
    remedial_budget_share: float = Field(0.5, ge=0, le=1, description="remedial phases at most this share of the "
                                                                      "phases left")
    first_teaching: Literal["new", "pool"] = Field(
        "new", description="new: a stage is first taught on stage_problems new problems of its modules at the "
                           "data's difficulty, written by the selected teacher's pen, verified and adapted (IOA's "
                           "Adapter synthesises each stage's data; lab task with a lab teacher, elsewhere the "
                           "pool); pool: the selected teacher's +adapted candidate set, filtered to the stage's "
                           "modules (the data every other policy chooses from)")
    stage_problems: int = Field(8000, ge=1, description="new problems written for a stage's first teaching "
                                                       "(first_teaching: new), split evenly over its modules")
    remedial_problems: int = Field(8000, ge=1, description="new problems written per remedial round")
    remedial_form: Literal["one-step-small", "one-step", "small-operands", "as-data"] = Field(
        "one-step-small", description="how a lab remedial round's new problems are simpler than the data's: one "
                                      "step with operands up to half the data's, one step with the data's operands, "
                                      "the data's steps with operands up to half, or not simpler (as-data: the "
                                      "data's steps and operands)")
    own_schedule: bool = Field(False, description="true: every IOA phase (a stage's first teaching or a remedial round) "
                                                "is a fine-tune of its own, as the paper's FineTune per stage: a "
                                                "fresh AdamW, warm-up and cosine decay to zero within the phase; "
                                                "false: IOA continues the run's one optimizer and schedule like the "
                                                "other policies (dynamic.carry_optimizer), so policies differ by "
                                                "their data only")
    prerequisites_first: bool = Field(True, description="a target's deficient prerequisites join the targets and are "
                                                        "taught in earlier stages; false: prerequisites outside the "
                                                        "targets count as met")


class DynamicSelection(Strict):
    policies: list[str] = Field(
        default_factory=lambda: ["dmc_dynamic", "dmc_static", "random", "all", "easy_to_hard", "ioa"], min_length=1,
        description="policies of syllabus.select.POLICIES")
    phases: int = Field(4, ge=1)
    steps_per_phase: int = Field(20, ge=1)
    budget: Literal["tokens", "steps"] = Field(
        "tokens", description="equal compute per phase: 'tokens' trains every policy on the same number of "
                              "tokens (steps_per_phase x batch x grad_accum examples of the candidates' mean "
                              "length, one pass, within one example); 'steps' on the same number of optimizer "
                              "steps and examples")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    mixture: Literal["best", "softmax"] = "best"
    softmax_temperature: float = Field(0.05, gt=0)
    datasets: list[str] | None = Field(
        None, min_length=1, description="glob patterns of the candidate datasets the policies choose among (and the "
                                        "DMC policies rescore); None: all")
    carry_optimizer: bool = Field(True, description="one AdamW state and one LR schedule across the phases (phases "
                                                    "are re-selection points); false: a fresh optimizer and warm-up "
                                                    "per phase")
    final_seeds: Literal["first", "all"] = Field(
        "first", description="whose final students are saved for stage 6 to benchmark: the first seed's, or every "
                             "seed's (stage 6 then reports each policy's mean over its seeds, with their spread)")
    ioa: IOA = Field(default_factory=IOA)
    student: str | None = Field(None, description="the student stage 5 trains, by its students[].name; None: the "
                                                   "profile's first student")

    @field_validator("policies")
    @classmethod
    def _registered(cls, policies: list[str]) -> list[str]:
        unknown = [p for p in policies if p not in POLICIES]
        if unknown:
            raise ValueError(f"unknown selection policies {unknown}; registered policies: {sorted(POLICIES)}")
        return policies


BENCHMARK_TASKS = ("syllabus_lab", "syllabus_heldout", "syllabus_gsm8k", "syllabus_math500", "syllabus_humaneval",
                   "gsm8k", "minerva_math500")


class Benchmark(Strict):
    tasks: list[str] = Field(default_factory=lambda: ["syllabus_lab"], min_length=1,
                             description="syllabus_lab / syllabus_heldout: this run's held-out problems; "
                                         "syllabus_gsm8k / math500 / humaneval: the benchmark files")
    limit: int | None = Field(50, ge=1)
    max_gen_toks: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1, description="hf backend; vllm takes 'auto' (every request at once)")
    apply_chat_template: bool = False
    backend: Literal["hf", "vllm"] = Field("hf", description="lm-eval's model type: hf (transformers) or vllm "
                                                             "(GPU machines, the optional extra syllabus[vllm])")

    @model_validator(mode="after")
    def _check(self) -> "Benchmark":
        unknown = [t for t in self.tasks if t not in BENCHMARK_TASKS]
        if unknown:
            raise ValueError(f"unknown benchmark task(s) {unknown}; choose from {list(BENCHMARK_TASKS)}")
        return self


class Parallel(Strict):
    """Where a stage's independent runs go (stage-1 smoke tests, stage-4 grid cells, stage-5 policy runs,
    stage-6 models) and how one SFT run spreads over processes; the tables do not depend on it."""

    workers: int = Field(1, ge=1, description="local: processes side by side, one GPU each when there are GPUs; "
                                              "slurm: jobs in flight at once")
    executor: Literal["local", "slurm"] = Field("local", description="slurm: one job per run through submitit")
    slurm_partition: str | None = None
    slurm_timeout_min: int = Field(60, ge=1)
    slurm_gpus_per_job: int = Field(1, ge=0)
    sft_processes: int = Field(1, ge=1, description="processes per SFT run of stages 1, 4 and 5: data parallel "
                                                    "through accelerate launch, one GPU each (syllabus.launch)")
    sft_sharding: Literal["replicate", "fsdp"] = Field(
        "replicate", description="with sft_processes > 1: replicate the weights (DDP-style all-reduce) or shard "
                                 "weights, gradients and optimizer moments over the processes (FSDP2), for students "
                                 "whose full fine-tuning does not fit one GPU")

    @model_validator(mode="after")
    def _check(self) -> "Parallel":
        if self.sft_processes > 1 and self.workers > 1 and self.executor == "local":
            raise ValueError(f"parallel: workers {self.workers} and sft_processes {self.sft_processes} both spread "
                             "over the node's GPUs; set one of them to 1 (runs side by side, or one run over the GPUs)")
        return self


# --------------------------------------------------------------------------- profile
class Profile(Strict):
    """One run's settings. ``source_file`` is where it was read from (not a YAML key)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    params_version: int = PARAMS_SCHEMA_VERSION
    seed: int = Field(1234, ge=0)
    threads: int = Field(2, ge=1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    parallel: Parallel = Field(default_factory=lambda: Parallel())
    results_dir: Path = Path("results")
    data: Data = Field(default_factory=Data)
    students: list[Student] = Field(default_factory=list, min_length=1)
    teachers: list[Teacher] = Field(default_factory=list, min_length=1)
    training: Training = Field(default_factory=Training)
    student_generation: StudentGeneration = Field(default_factory=StudentGeneration)
    teacher_selection: TeacherSelection = Field(default_factory=TeacherSelection)
    curation: Curation = Field(default_factory=Curation)
    dmc: DMC = Field(default_factory=DMC)
    correlation: Correlation = Field(default_factory=Correlation)
    dynamic: DynamicSelection = Field(default_factory=DynamicSelection)
    benchmark: Benchmark = Field(default_factory=Benchmark)
    _source_file: Path | None = PrivateAttr(None)

    @property
    def source_file(self) -> Path | None:
        """The YAML file the profile was loaded from (None when built in code)."""
        return self._source_file

    @field_validator("students", "teachers")
    @classmethod
    def _unique_names(cls, items: list, info) -> list:
        """Names label tables, caches and ``-p`` overrides (``students.<name>.lora``): one per student, one per
        teacher."""
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                raise ValueError(f"{info.field_name}.{seen[item.name]} and {info.field_name}.{i} are both named "
                                 f"'{item.name}'; rename one of them (names label tables, caches and -p overrides)")
            seen[item.name] = i
        return items

    @model_validator(mode="after")
    def _check(self) -> "Profile":
        if self.params_version != PARAMS_SCHEMA_VERSION:
            raise ValueError(
                f"params_version {self.params_version} is not supported (this syllabus reads version "
                f"{PARAMS_SCHEMA_VERSION}); update the file to the current layout"
            )
        names = [s.name for s in self.students]
        unknown = sorted(set(self.correlation.sft_tokens_by_student) - set(names))
        if unknown:
            raise ValueError(f"correlation.sft_tokens_by_student names {unknown}, which are not students of this "
                             f"profile ({names}); use a student's name or remove the key")
        if self.dynamic.student is not None and self.dynamic.student not in names:
            raise ValueError(f"dynamic.student '{self.dynamic.student}' is not a student of this profile ({names}); "
                             "use one of those names, or remove the key to train the first student")
        for key, ref in self._local_model_refs():
            if not _local_path_exists(ref):
                raise ValueError(
                    f"{key} '{ref}' does not exist (looked in {Path.cwd()} and {PROJECT_ROOT}); point it at an "
                    "existing model folder or .gguf file, or use a hub id / installed package name"
                )
        if self.data.data_dir is not None and not self.data.data_dir.is_dir():
            raise ValueError(
                f"data.data_dir '{self.data.data_dir}' is not a directory; point it at the folder holding "
                f"gsm8k/ and math/ (or remove the key and set ${DATA_DIR_ENV})"
            )
        return self

    def _local_model_refs(self) -> list[tuple[str, str]]:
        """(key, path) of every model the profile names by a local path: checked before any work starts."""
        refs = []
        for i, s in enumerate(self.students):
            if s.model and (s.source == "dir" or (s.source == "gguf" and s.model.endswith(".gguf"))):
                refs.append((f"students.{i}.model (student '{s.name}')", s.model))
        for i, t in enumerate(self.teachers):
            if t.model and t.backend in ("hf", "vllm") and _looks_like_path(t.model):
                refs.append((f"teachers.{i}.model (teacher '{t.name}')", t.model))
        return refs

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of every resolved value (defaults included)."""
        return self.model_dump(mode="json")


def _looks_like_path(ref: str) -> bool:
    """A model reference written as a path (not a hub id like ``org/name``)."""
    return ref.startswith(("/", "./", "../", "~")) or ref.endswith(".gguf")


def _local_path_exists(ref: str) -> bool:
    """The path exists as given (relative to the working directory) or relative to the project root,
    where ``syllabus run`` executes the notebooks."""
    path = Path(os.path.expandvars(ref)).expanduser()
    return path.exists() or (not path.is_absolute() and (PROJECT_ROOT / path).exists())


# --------------------------------------------------------------------------- loading
def available_profiles() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


def resolve_profile_path(profile: str | os.PathLike) -> Path:
    """A profile name in ``params/`` or a path to a YAML file."""
    text = str(profile)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if not path.is_file():
            raise ParamsError(f"profile file '{path}' does not exist")
        return path.resolve()
    candidate = PARAMS_DIR / f"{text}.yaml"
    if candidate.is_file():
        return candidate
    raise ParamsError(
        f"unknown profile '{text}': no file {candidate}; available profiles: {', '.join(available_profiles())} "
        "(or pass a path to a .yaml file)"
    )


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value parsed as a YAML scalar/list (``-p training.learning_rate=1e-3``)."""
    if "=" not in item:
        raise ParamsError(f"override '{item}' is not of the form key=value (for example -p seed=7)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ParamsError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{item}': value is not valid YAML ({exc})") from None
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None,
                    applied: dict[str, str] | None = None) -> dict[str, Any]:
    """Set dotted keys; list items are addressed by index or by their ``name`` (``students.s1.lora=true``).
    ``applied``, when given, gets each override's key as validation names it (list items by index) -> its key."""
    out = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        parts = dotted.split(".")
        node: Any = out
        resolved = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = _list_index(node, part, dotted)
                resolved.append(str(idx))
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
                continue
            if not isinstance(node, dict):
                raise ParamsError(f"override '{dotted}': '{'.'.join(parts[:i])}' is not a mapping")
            resolved.append(part)
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        if applied is not None:
            applied[".".join(resolved)] = dotted
    return out


def _list_index(node: list, part: str, dotted: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for idx, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return idx
    names = [item.get("name") for item in node if isinstance(item, dict)]
    raise ParamsError(f"override '{dotted}': no list item '{part}' (names: {names})")


def _absolute_model_paths(raw: dict[str, Any]) -> None:
    """Write the relative model paths of ``raw`` (``dir`` students, ``gguf`` students given by a path, ``hf`` and
    ``vllm`` teachers given by a path) as absolute paths, so that the notebooks, which run in the project root,
    read the folder the profile was checked against: the working directory's, else the project root's. A path not
    found in either is left as written (validation reports it); package names and hub ids are not paths."""
    for section, is_path in (("students", _student_model_is_path), ("teachers", _teacher_model_is_path)):
        items = raw.get(section)
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and isinstance(item.get("model"), str) and is_path(item):
                item["model"] = _absolute_local_path(item["model"])


def _student_model_is_path(item: dict[str, Any]) -> bool:
    model = item["model"]
    return item.get("source") == "dir" or (item.get("source") == "gguf" and (_looks_like_path(model) or "/" in model))


def _teacher_model_is_path(item: dict[str, Any]) -> bool:
    return item.get("backend") in ("hf", "vllm") and _looks_like_path(item["model"])


def _absolute_local_path(ref: str) -> str:
    """A relative path as the absolute path where it exists, in the working directory or else the project root
    (where ``_local_path_exists`` looks); an absolute path, or one found in neither, as it is."""
    path = Path(os.path.expandvars(ref)).expanduser()
    if path.is_absolute():
        return ref
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / path).exists():
            return os.path.normpath(base / path)
    return ref


def _override_note(key: str, applied: dict[str, str], overrides: dict[str, Any], msg: str = "") -> str:
    """`` (from -p k=v)`` when the value at ``key`` came from an override (of it or of a section holding it),
    `` (with -p k=v)`` when an override set a key inside it (a rule across its keys failed) or, for a rule
    across sections (``key`` empty), a key the message names, else ''."""
    for resolved, dotted in applied.items():
        value = overrides[dotted]
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        if not key:
            if re.search(rf"(?<![\w.]){re.escape(resolved)}(?![\w])", msg):
                return f" (with -p {dotted}={shown})"
            continue
        if key == resolved or key.startswith(resolved + "."):
            return f" (from -p {dotted}={shown})"
        if resolved.startswith(key + "."):
            return f" (with -p {dotted}={shown})"
    return ""


def _format_validation_error(path: Path, exc: ValidationError, applied: dict[str, str] | None = None,
                             overrides: dict[str, Any] | None = None) -> str:
    lines = [f"{path}: invalid profile ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        where = _override_note(key, applied or {}, overrides or {}, msg)
        key = key or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?); see the defaults in params/tiny.yaml or syllabus.params"
        elif ("input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict)
              and not (isinstance(err["input"], list) and any(isinstance(x, dict) for x in err["input"]))):
            got = repr(err["input"])  # a whole section (a rule across keys failed) would bury the message
            msg += f" (got {got if len(got) <= 120 else got[:117] + '...'})"
        lines.append(f"  - key '{key}'{where}: {msg}")
    return "\n".join(lines)


class DuplicateKeyError(SyllabusError, yaml.YAMLError):
    """A mapping of a YAML file names one key twice (plain YAML keeps the last value silently)."""

    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(f"key '{key}' is given twice (lines {first_line} and {second_line})")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: let the base loader report it
                continue
            if first != key_node.start_mark.line + 1:
                raise DuplicateKeyError(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except DuplicateKeyError as exc:
        raise ParamsError(f"{path}: line {exc.second_line}: {exc}; keep one of them (YAML would silently use the "
                          "last)") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: {utf8_problem(path.read_bytes())}; re-save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParamsError(f"{path}:{where}: malformed YAML: {problem}") from None
    if raw is None:
        raise ParamsError(f"{path}: the file is empty; a profile needs at least 'name', 'students' and 'teachers'")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def load_profile(profile: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Profile:
    """Read, override and validate a profile; raise ParamsError naming file, key and reason."""
    path = resolve_profile_path(profile)
    applied: dict[str, str] = {}  # the keys the overrides set, as validation names them
    raw = apply_overrides(read_yaml(path), overrides, applied)
    # A relative data.data_dir is relative to the profile file's folder (a teacher's trace path is read from the
    # data folder; model paths from the working directory, then the project root, and written absolute).
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("data_dir"), str):
        data["data_dir"] = str((path.parent / os.path.expandvars(data["data_dir"])).resolve())
    _absolute_model_paths(raw)
    try:
        prof = Profile.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_validation_error(path, exc, applied, overrides)) from None
    prof._source_file = path
    return prof
