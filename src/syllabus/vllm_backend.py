"""vLLM, the optional extra for generation on GPU machines (``pip install 'syllabus[vllm]'``).

One import point with the error that names the extra, one engine held at a time (a new model frees
the previous one's GPU memory, and the process's freed GPU memory is handed back before an engine is
made), and vLLM's outputs as ``models.Generation`` lists, the shape the ``hf`` path returns. Teachers
(``backend: vllm``) and the student's own samples (``student_generation.backend: vllm``) both go
through here; a student is served from a plain model directory of its current weights, LoRA adapters
merged (``student_weights``), for one ``generate`` call: its engine is released and the directory
deleted when the call ends (the samples' results are cached by the callers, by weights).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from . import models
from .devices import compute_dtype
from .errors import SyllabusError
from .runs import sha256_bytes, stable_seed
from .tokens import count_tokens, encode_prompt

_ENGINE: dict[str, Any] = {}  # {"key": (model, dtype, settings...), "llm": vllm.LLM} - the one engine held
STUDENT_GPU_SHARE = 0.4  # vLLM's share of the GPU when serving a student: the student itself stays on the GPU


class VLLMMissing(SyllabusError, ImportError):
    """vLLM is not installed; the message names the extra and the fallback."""


def import_vllm(what: str, fallback: str):
    """The ``vllm`` module, or ``VLLMMissing`` saying that ``what`` needs it and to use ``fallback`` instead."""
    try:
        import vllm
    except ImportError:
        raise VLLMMissing(f"{what} needs vLLM, which is not installed: pip install 'syllabus[vllm]' (GPU machines), "
                          f"or {fallback}") from None
    return vllm


def engine(model: str, *, dtype: str = "auto", what: str = "vllm generation", fallback: str = "use the hf backend",
           gpu_memory_utilization: float | None = None, tensor_parallel_size: int = 1,
           max_model_len: int | None = None):
    """A ``vllm.LLM`` for ``model`` (a model directory or hub id); the previous engine is released first.

    ``gpu_memory_utilization`` (vLLM's share of the GPU; None: vLLM's default, 0.9) must leave room for
    what else the process holds on the GPU (a student being trained); ``tensor_parallel_size`` GPUs share
    the model; ``max_model_len`` bounds prompt + completion (None: the model's own context length), and
    with it the KV cache one sequence may need. Settings left at their defaults are not passed to vLLM."""
    key = (str(model), dtype, gpu_memory_utilization, tensor_parallel_size, max_model_len)
    if _ENGINE.get("key") == key:
        return _ENGINE["llm"]
    vllm = import_vllm(what, fallback)
    release()
    free_gpu_memory()  # what else the process let go of (an engine lm-eval made, a model) before vLLM measures the GPU
    extra = {name: value for name, value, default in (("gpu_memory_utilization", gpu_memory_utilization, None),
                                                      ("tensor_parallel_size", tensor_parallel_size, 1),
                                                      ("max_model_len", max_model_len, None)) if value != default}
    llm = vllm.LLM(model=str(model), dtype=dtype, seed=0, **extra)
    _ENGINE.update(key=key, llm=llm)
    return llm


def release() -> None:
    """Drop the engine held (and its GPU memory)."""
    llm = _ENGINE.pop("llm", None)
    _ENGINE.pop("key", None)
    if llm is not None:
        del llm
        free_gpu_memory()


def free_gpu_memory() -> None:
    """Collect what is no longer referenced (an object in a reference cycle outlives its last name until the
    next collection) and hand the CUDA allocator's cached blocks back to the GPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sampling_params(vllm, *, n: int, temperature: float, top_p: float, max_tokens: int, seed: int,
                    stop: Sequence[str]):
    """vLLM's sampling settings; greedy (one sample) when ``temperature == 0``."""
    if temperature == 0:
        return vllm.SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, seed=seed, stop=list(stop))
    return vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                               stop=list(stop))


def n_tokens(completion, tokenizer) -> int:
    """A completion's length as ``models.generate`` counts it: the tokens of the text kept when a stop string
    ended it, else its tokens without the EOS (or stop token) it stopped on, which vLLM keeps in ``token_ids``."""
    if isinstance(getattr(completion, "stop_reason", None), str):
        return count_tokens(tokenizer, completion.text)
    ids = list(completion.token_ids)
    return len(ids) - 1 if completion.finish_reason == "stop" and ids else len(ids)


def to_generations(results, num_samples: int, tokenizer) -> list[list]:
    """``models.Generation`` lists from vLLM's request outputs (a greedy output copied ``num_samples`` times)."""
    out = []
    for result in results:
        gens = [models.Generation(c.text, n_tokens(c, tokenizer), c.finish_reason == "length") for c in result.outputs]
        out.append(gens * num_samples if len(gens) == 1 and num_samples > 1 else gens)
    return out


def generate(model_dir: str | os.PathLike, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
             temperature: float, top_p: float, num_samples: int, seed: int, stop: Sequence[str],
             dtype: str = "auto") -> list[list]:
    """``models.generate`` through vLLM on the model in ``model_dir``: the same prompt tokens (the
    tokenizer's own start token, as ``tokens.encode_prompt``), one seed per prompt (so a prompt's random
    draws do not depend on what else is in the batch; vLLM's logits may still, in float rounding, so samples
    are not guaranteed identical across batchings). The engine is made for this call and released
    when it ends, so it holds no GPU memory while the student trains (its weights then change anyway)."""
    llm = None
    try:
        llm = engine(str(model_dir), dtype=dtype, what="student_generation.backend 'vllm'",
                     fallback="set student_generation.backend: hf", gpu_memory_utilization=STUDENT_GPU_SHARE)
        vllm = import_vllm("student_generation.backend 'vllm'", "set student_generation.backend: hf")
        requests = [{"prompt_token_ids": encode_prompt(tokenizer, p)} for p in prompts]
        params = [sampling_params(vllm, n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                  seed=stable_seed(seed, prompt, bits=32, form="repr") % (2 ** 31), stop=stop)
                  for prompt in prompts]
        return to_generations(llm.generate(requests, params, use_tqdm=False), num_samples, tokenizer)
    finally:
        llm = None  # this frame's name for the engine (a traceback keeps the frame): release() holds the last one
        release()


def dtype_name(model) -> str:
    """The dtype the student runs in, by name, for vLLM's ``dtype`` (its ``auto`` runs a float32 model in
    float16, where the hf path runs it as it is): the compute dtype a bf16 student trained in float32 is marked
    with (``devices.set_compute_dtype``; ``models.save_model`` writes the copy vLLM loads in it), else the
    dtype of its weights."""
    marked = compute_dtype(model)
    if marked != "float32":
        return marked
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def student_weights(model, tokenizer, fingerprint: str, root: str | os.PathLike) -> Iterator[Path]:
    """A plain model directory of the student's current weights (LoRA merged), what vLLM loads, for the
    ``with`` block: under ``root/vllm_models/``, named by the weights' fingerprint and made afresh for this
    block only (another process serving the same weights has its own), deleted when the block ends."""
    parent = Path(root) / "vllm_models"
    parent.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix=f"{sha256_bytes(fingerprint.encode())[:20]}-", dir=parent))
    try:
        models.save_model(model, tokenizer, target, info={"made_from": "student weights, for vllm",
                                                          "fingerprint": fingerprint})
        yield target
    finally:
        if _ENGINE.get("key", ("",))[0] == str(target):
            release()
        shutil.rmtree(target, ignore_errors=True)
