"""A stand-in for the ``vllm`` package on machines without it (no GPU): the few names syllabus uses
(``LLM(model, dtype, seed, ...)`` with the engine arguments syllabus passes and no others, ``LLM.generate``
over token-id prompts with one ``SamplingParams`` per prompt or for all, ``LLM.get_tokenizer``), backed by
a real transformers model loaded from the same directory vLLM would load. Greedy outputs are transformers' greedy outputs. Completions end as vLLM's do:
``token_ids`` keeps the EOS token a completion stopped on, and a stop string ends a completion at the token
that completes it (kept in ``token_ids``, ``stop_reason`` the string) and is left out of its text
(vLLM's ``IncrementalDetokenizer`` and ``check_stop``)."""

from __future__ import annotations

import importlib.machinery
import types
import weakref
from pathlib import Path
from types import SimpleNamespace

import torch


class SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, stop=None):
        self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed
        self.stop = list(stop or [])


class LLM:
    loaded: list[str] = []  # every model directory an engine was made for
    made: list[dict] = []  # the keyword arguments of every engine made (and the files of its model directory)
    alive: "weakref.WeakSet[LLM]" = weakref.WeakSet()  # the engines not yet garbage-collected
    calls: list[list] = []  # every generate call's (prompt, sampling params) pairs

    # the engine arguments (vLLM's ``EngineArgs`` fields) syllabus may pass; like vLLM, any other raises TypeError
    ENGINE_ARGS = ("gpu_memory_utilization", "tensor_parallel_size", "max_model_len")

    def __init__(self, model, dtype="auto", seed=0, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        unknown = sorted(set(kwargs) - set(LLM.ENGINE_ARGS))
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}")

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        LLM.loaded.append(str(model))
        LLM.made.append({"model": str(model), "dtype": dtype, "seed": seed, **kwargs,
                         "files": sorted(p.name for p in Path(model).iterdir()) if Path(model).is_dir() else None})
        LLM.alive.add(self)
        self._engine_core = SimpleNamespace(client=self)  # a reference cycle, as a real engine's: freed by gc only

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):  # as vLLM's LLM._validate_and_add_requests
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        LLM.calls.append(list(zip(prompts, params)))
        return [SimpleNamespace(outputs=[self._one(p, sp, k) for k in range(sp.n)]) for p, sp in zip(prompts, params)]

    def _one(self, prompt, sp: SamplingParams, k: int):
        ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else self.tokenizer(prompt)["input_ids"]
        sampling = sp.temperature > 0
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed((sp.seed or 0) + k)
            out = self.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=sp.max_tokens, do_sample=sampling,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                                      **({"temperature": sp.temperature, "top_p": sp.top_p, "top_k": 0} if sampling else {}))
        new = out[0, len(ids):].tolist()
        eos = self.tokenizer.eos_token_id
        stopped = eos in new
        body = new[:new.index(eos)] if stopped else new
        for j in range(1, len(body) + 1):  # vLLM checks the stop strings after every token
            text = self.tokenizer.decode(body[:j], skip_special_tokens=True)
            hits = [s for s in sp.stop if s in text]
            if hits:
                first = min(hits, key=text.find)
                return SimpleNamespace(text=text[:text.find(first)], token_ids=body[:j], finish_reason="stop",
                                       stop_reason=first)
        reason = "stop" if stopped or len(new) < sp.max_tokens else "length"
        return SimpleNamespace(text=self.tokenizer.decode(body, skip_special_tokens=True),
                               token_ids=body + [eos] if stopped else body, finish_reason=reason, stop_reason=None)


def module() -> types.ModuleType:
    """A fresh ``vllm`` stand-in module (with a spec, so ``importlib.util.find_spec`` finds it)."""
    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod
