"""A stand-in for the ``vllm`` package on machines without it (no GPU): the few names syllabus uses
(``LLM(model, dtype, seed)``, ``LLM.generate`` over token-id prompts with one ``SamplingParams`` per
prompt or for all, ``LLM.get_tokenizer``), backed by a real transformers model loaded from the same
directory vLLM would load. Greedy outputs are transformers' greedy outputs; stop strings end a
completion and are left out of its text, as vLLM does."""

from __future__ import annotations

import importlib.machinery
import types
from types import SimpleNamespace

import torch


class SamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, stop=None):
        self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed
        self.stop = list(stop or [])


class LLM:
    loaded: list[str] = []  # every model directory an engine was made for

    def __init__(self, model, dtype="auto", seed=0, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        LLM.loaded.append(str(model))

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
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
        if eos in new:
            new, reason = new[:new.index(eos)], "stop"
        else:
            reason = "length" if len(new) >= sp.max_tokens else "stop"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cuts = [text.find(s) for s in sp.stop if s in text]
        if cuts:
            text, reason = text[:min(cuts)], "stop"
            new = self.tokenizer.encode(text, add_special_tokens=False)
        return SimpleNamespace(text=text, token_ids=new, finish_reason=reason)


def module() -> types.ModuleType:
    """A fresh ``vllm`` stand-in module (with a spec, so ``importlib.util.find_spec`` finds it)."""
    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod
