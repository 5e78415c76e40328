"""Supervised fine-tuning on (prompt, target) pairs: a short plain loop that resumes bit-exactly.

* Loss on the target tokens only (``loss_on="target"``) or on every token (``"all"``, warm-up
  pre-training); the target gets the EOS token appended.
* Batch order: epochs over the examples, each epoch a permutation drawn from ``(seed, epoch)``.
  Step ``s`` always sees the same examples, so the order needs no saved state.
* AdamW, linear warm-up (``warmup_ratio``) then cosine decay to zero or a constant rate
  (``lr_schedule``), gradient clipping at 1.0, gradient accumulation.
* Padding without waste, same gradient: each micro-batch's examples are sorted by length and run in the
  groups that pad to the fewest tokens (``padding_groups``); the loss is summed over the step's
  target tokens, so the groups' gradients add up to the one-batch gradient. On a model with a plain LM
  head (not sharded) the head runs on the target positions only (``target_loss``), not on prompt and
  padding positions.
* One run in several calls (stage 5's phases): ``optimizer_state`` continues AdamW from where the
  previous call left it (``TrainResult.optimizer_state``) and ``schedule_span=(a, b)`` maps this
  call's steps onto the fraction [a, b] of one warm-up + decay schedule, so phases are re-selection
  points, not restarts (no second warm-up, no fresh moments).
* Checkpoints (trainable weights, optimizer, scheduler, torch RNG, step, loss curve) are written
  atomically to ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps and at the end. A run
  killed at any point and resumed ends with the same weights as an uninterrupted run (CPU, same
  thread count). Batches go to the model's device; on a GPU the CUDA random state is saved too.
* Precision: a model marked with a compute dtype (``devices.set_compute_dtype``: a bfloat16 student, whose
  trainable weights ``models.load_student`` keeps in float32) runs each forward pass under
  ``torch.autocast`` in bfloat16; the backward pass, the gradients, AdamW and its moments stay in float32
  (mixed precision). Unmarked (float32) models run without autocast, as before. float16 is refused: it
  needs loss scaling, which this loop does not do.
* ``training.gradient_checkpointing`` recomputes each decoder layer's activations in the backward pass
  (transformers' non-reentrant checkpointing, ``use_cache`` off) instead of keeping them: less memory,
  about one more forward pass of compute, the same loss and gradients. It is switched off again when the
  call returns, and it is not part of any cache key (it does not change what is trained).
* ``out_dir`` also gets ``train_log.csv`` (step, loss, lr, tokens) and ``train_summary.json``
  (steps, tokens seen, wall time, data hash and count, settings).
* Inside a ``torch.distributed`` group (``syllabus.launch``) each process takes its share of every
  step. Replicated weights: the gradients are summed in one all-reduce. Sharded weights (FSDP2's
  ``fully_shard``, ``launch.shard``): FSDP sums them in its reduce-scatter; every process runs the same
  number of forward/backward passes (idle passes where its share has fewer groups), and checkpoints
  hold full, unsharded weights and optimizer moments, so any process count can resume them.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch build without torch.distributed: nothing is ever sharded
    DTensor = ()

from . import params as P
from .devices import autocast, compute_dtype, model_device
from .errors import SyllabusError
from .progress import Task
from .runs import atomic_path, atomic_write_json, atomic_write_text, hash_obj
from .tokens import encode_prompt, encode_text

CHECKPOINT = "checkpoint.pt"
CLIP_NORM = 1.0


class TrainError(SyllabusError, RuntimeError):
    """Training that cannot run as asked; the message says why and how to fix it."""


@dataclass
class TrainResult:
    model: Any
    losses: list[float]
    tokens_seen: int
    wall_s: float
    data_hash: str
    n_examples: int
    steps: int
    resumed_from: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None  # AdamW's state at the end, for a following call


# --------------------------------------------------------------------------- data
def tokenize_examples(tokenizer, examples: Sequence[tuple[str, str]], max_seq_len: int,
                      loss_on: str) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example; labels are -100 where no loss is taken. Truncated to ``max_seq_len``."""
    eos = tokenizer.eos_token_id
    out = []
    for i, pair in enumerate(examples):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TrainError(f"training example {i} is not a (prompt, target) pair: {pair!r:.80}")
        prompt, target = pair
        p_ids = encode_prompt(tokenizer, prompt) if prompt else []
        t_ids = encode_text(tokenizer, target) + ([eos] if eos is not None else [])
        ids = (p_ids + t_ids)[:max_seq_len]
        labels = list(ids) if loss_on == "all" else ([-100] * len(p_ids) + t_ids)[:max_seq_len]
        out.append((ids, labels))
    return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded order in which an epoch visits ``n`` examples."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Example indices of one optimizer step: epochs of seeded permutations, concatenated."""
    start = step * batch
    out: list[int] = []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), n)
        out.extend(int(i) for i in epoch_order(n, seed, epoch)[offset:offset + batch - len(out)])
    return out


def single_pass_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Example indices of one optimizer step of a single pass: the first epoch's order, cut into batches
    (the last one possibly smaller), so a single pass visits what ``batch_indices`` visits in its first epoch."""
    return [int(i) for i in epoch_order(n, seed, 0)[step * batch:(step + 1) * batch]]


def collate(items: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(items):
        input_ids[r, :len(ids)] = torch.tensor(ids)
        labels[r, :len(lab)] = torch.tensor(lab)
        mask[r, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# The cost of one more forward and backward pass, in padded tokens: measured on the lab students with one
# thread, a pass costs about what 96 more tokens of a batch do (benchmarks/bench_sft_step.py --overheads).
PASS_OVERHEAD_TOKENS = 96


def padding_groups(lengths: Sequence[int], overhead: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """Positions of ``lengths`` cut into groups of similar length that cost the least to run: the
    lengths sorted, then split where (rows x longest length of each group + ``overhead`` per group),
    summed over the groups, is smallest (dynamic programming). Deterministic; ties keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[order[j - 1]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


# Causal LMs whose logits are exactly lm_head(decoder(...)): no soft-capping or scaling in between
PLAIN_HEAD_MODELS = ("llama", "mistral", "qwen2", "qwen3")


def target_loss(model, batch: dict[str, torch.Tensor], n_target: int) -> torch.Tensor:
    """Summed cross-entropy of the batch's target tokens divided by ``n_target`` (the whole step's).

    Position t predicts token t+1. For plain-head models the LM head runs on the target positions only,
    and a right-padded batch (what ``collate`` makes) runs without its attention mask: the causal mask
    alone keeps every real token from the padding after it, the same numbers without building a padding
    mask (the same weights bit for bit after 60 steps of both lab students; 1.04x a step); other
    models, and sharded ones, go through their own forward, every position and the mask."""
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    keep = shifted != -100
    config = getattr(model, "config", None)
    # a sharded model gathers its weights in its own forward's hooks: call it whole
    if getattr(config, "model_type", None) in PLAIN_HEAD_MODELS and not is_sharded(model):
        mask = batch["attention_mask"]
        right_padded = bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all())
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=None if right_padded else mask,
                                     use_cache=False)[0]
        logits = model.get_output_embeddings()(hidden[keep])
        return torch.nn.functional.cross_entropy(logits.float(), shifted[keep], reduction="sum") / n_target
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), shifted.reshape(-1),
                                             ignore_index=-100, reduction="sum") / n_target


def lr_factor(step: int, steps: int, warmup_ratio: float, schedule: str) -> float:
    warmup = int(round(warmup_ratio * steps))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def span_lr_factor(step: int, steps: int, span: tuple[float, float], warmup_ratio: float, schedule: str) -> float:
    """The learning-rate factor of step ``step`` of ``steps`` when this call covers the fraction ``span``
    of one schedule: linear warm-up over the first ``warmup_ratio`` of the whole schedule, then cosine
    decay to zero at its end (or constant); during warm-up a step's rate is taken at the schedule point where it
    ends, afterwards where it starts."""
    a, b = span
    x = a + (b - a) * (step + 1) / steps  # schedule position reached by this step
    x_start = a + (b - a) * step / steps
    if warmup_ratio > 0 and x_start < warmup_ratio:
        return min(1.0, x / warmup_ratio)
    if schedule == "constant":
        return 1.0
    progress = (x_start - warmup_ratio) / max(1e-12, 1.0 - warmup_ratio)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


# --------------------------------------------------------------------------- checkpoints
def _full(t):
    """A tensor as a whole: a sharded one (DTensor) gathered from every process (a collective), on the CPU."""
    return t.full_tensor().cpu() if isinstance(t, DTensor) else t.detach().clone()


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: _full(p) for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_state(optimizer) -> dict[str, Any]:
    """The optimizer's state dict with every sharded moment gathered whole (a collective under FSDP)."""
    state = optimizer.state_dict()
    if any(isinstance(v, DTensor) for s in state["state"].values() for v in s.values()):
        state["state"] = {i: {k: _full(v) if isinstance(v, DTensor) else v for k, v in s.items()}
                          for i, s in state["state"].items()}
    return state


def _shard_like(value: torch.Tensor, param) -> torch.Tensor:
    """``value`` (a whole tensor of ``param``'s shape) laid out as ``param`` is: sharded like a DTensor param."""
    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value


def _load_optimizer_state(optimizer, params: list, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state (whole moments), sharding each moment like its parameter."""
    if any(isinstance(p, DTensor) for p in params):
        state = {**state, "state": {i: {k: _shard_like(v, params[int(i)]) if v.dim() else v for k, v in s.items()}
                                    for i, s in state["state"].items()}}
    optimizer.load_state_dict(state)


def is_sharded(model) -> bool:
    """Whether the model's weights are sharded over a process group (FSDP2's ``fully_shard``, which
    ``launch.shard`` applies to the whole model, so the first parameter tells)."""
    return isinstance(next(model.parameters(), None), DTensor)


def _save_checkpoint(path: Path | None, model, optimizer, scheduler, state: dict[str, Any]) -> None:
    """Write the checkpoint to ``path``; ``None``: only take part in gathering sharded weights (FSDP)."""
    weights, moments = _trainable_state(model), _optimizer_state(optimizer)
    if path is None:
        return
    payload = {"weights": weights, "optimizer": moments,
               "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), **state}
    device = model_device(model)
    if device.type == "cuda":  # dropout on the GPU draws from its own generator
        payload["cuda_rng"] = torch.cuda.get_rng_state(device)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _write_records(out_dir: Path, log: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    lines = ["step,loss,lr,tokens"] + [f"{r['step']},{r['loss']!r},{r['lr']!r},{r['tokens']}" for r in log]
    atomic_write_text(out_dir / "train_log.csv", "\n".join(lines) + "\n")
    atomic_write_json(out_dir / "train_summary.json", summary)


# --------------------------------------------------------------------------- data parallelism
def process_group() -> tuple[int, int]:
    """(rank, world size) of the running ``torch.distributed`` group; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _sum_loss_over_processes(loss: float, device) -> float:
    total = torch.tensor([loss], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return float(total)


def step_passes(data: list, mine: list[int], micro: int) -> list[list[tuple[list[int], list[int]]]]:
    """One process's forward/backward passes of a step: micro-batches of at most ``micro`` of its
    examples, each run in its padding groups."""
    passes = []
    for k in range(0, len(mine), micro):  # micro-batches of at most batch_size rows (memory)
        items = [data[i] for i in mine[k:k + micro]]
        passes += [[items[g] for g in group] for group in padding_groups([len(ids) for ids, _ in items])]
    return passes


def _idle_pass(model, pad_id: int, device) -> torch.Tensor:
    """A forward/backward pass that adds nothing (one padding token, no target): it keeps a sharded
    model's collectives in step on a process whose share of the step has fewer passes than another's."""
    ids = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return logits.float().sum() * 0.0


def _sum_over_processes(params: list[torch.Tensor], loss: float) -> float:
    """Sum the gradients (each process's share of the step, already divided by the whole step's target
    tokens) and the logged loss over the processes, in one flat all-reduce: every process then takes the
    same optimizer step, as one process would on the whole batch."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    return _sum_loss_over_processes(loss, flat.device)


def _checkpointing_on(model):
    """Switch transformers' gradient (activation) checkpointing on, non-reentrant, with ``use_cache`` off;
    return the function that switches it off again and restores ``use_cache`` and the embedding hook that
    transformers adds with it."""
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_* (the old names warn)
    enable = getattr(model, "activation_checkpointing_enable", None)
    disable = getattr(model, "activation_checkpointing_disable", None)
    if enable is None or disable is None:
        enable, disable = (getattr(model, "gradient_checkpointing_enable", None),
                           getattr(model, "gradient_checkpointing_disable", None))
        kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    else:
        kwargs = {"activation_checkpointing_kwargs": {"use_reentrant": False}}
    if enable is None or disable is None:
        raise TrainError(f"training.gradient_checkpointing: {type(model).__name__} is not a transformers model "
                         "(it has no activation_checkpointing_enable); set it to false")
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    had_input_hook = bool(getattr(model, "_require_grads_hooks", None))
    enable(**kwargs)
    if config is not None:
        config.use_cache = False

    def restore() -> None:
        disable()
        if not had_input_hook and getattr(model, "_require_grads_hooks", None):
            model.disable_input_require_grads()  # the hook that makes embedding outputs require grad
        if config is not None:
            config.use_cache = use_cache

    return restore


# --------------------------------------------------------------------------- the loop
def sft(model, tokenizer, examples: Sequence[tuple[str, str]], *, steps: int | None, cfg: P.Training, seed: int,
        out_dir: str | Path | None = None, checkpoint_every: int | None = None, resume: bool = True,
        loss_on: Literal["target", "all"] = "target", single_pass: bool = False,
        optimizer_state: dict[str, Any] | None = None, schedule_span: tuple[float, float] | None = None) -> TrainResult:
    """Train ``model`` in place for ``steps`` optimizer steps; see the module docstring.

    ``optimizer_state`` (from a previous call's ``TrainResult.optimizer_state``) continues that optimizer;
    ``schedule_span`` places this call's steps on part of one schedule (default: a whole schedule).

    ``single_pass=True`` visits every example exactly once, in a seeded order, the last batch possibly
    smaller: ``steps`` is then ``ceil(examples / (batch_size x grad_accum))`` (pass None to derive it).
    """
    if loss_on not in ("target", "all"):
        raise TrainError(f"loss_on must be 'target' or 'all', got {loss_on!r}")
    data = tokenize_examples(tokenizer, examples, cfg.max_seq_len, loss_on)
    data = [d for d in data if any(l != -100 for l in d[1][1:])]
    if not data:
        raise TrainError(f"none of the {len(examples)} training examples has a target token within "
                         f"max_seq_len={cfg.max_seq_len}; shorten the prompts or raise training.max_seq_len")
    if single_pass:
        one_pass = -(-len(data) // (cfg.batch_size * cfg.grad_accum))
        if steps is not None and steps != one_pass:
            raise TrainError(f"single_pass over {len(data)} examples at batch {cfg.batch_size} x {cfg.grad_accum} "
                             f"takes {one_pass} steps, not {steps}; pass steps=None")
        steps = one_pass
    if steps is None or steps < 1:
        raise TrainError(f"steps must be >= 1, got {steps}")
    if schedule_span is not None:
        a, b = (float(x) for x in schedule_span)
        if not 0.0 <= a < b <= 1.0:
            raise TrainError(f"schedule_span must satisfy 0 <= start < end <= 1, got {schedule_span}")
        schedule_span = (a, b)
    data_hash = hash_obj([list(e) for e in examples])
    extra: dict[str, Any] = {"single_pass": True} if single_pass else {}
    if schedule_span is not None:
        extra["schedule_span"] = list(schedule_span)
    if optimizer_state is not None:
        extra["continued"] = True
    run_key = hash_obj({"data": data_hash, "steps": steps, "cfg": cfg.key_dump(), "seed": seed,
                        "loss_on": loss_on, **extra})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainError("the model has no trainable parameters")
    if compute_dtype(model) == "float16":
        raise TrainError("a float16 student cannot be trained here: float16 gradients need loss scaling "
                         "(a GradScaler), which train.sft does not do; set the student's dtype to bfloat16 "
                         "(GPUs since Ampere) or float32")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if schedule_span is None:
        factor = lambda s: lr_factor(s, steps, cfg.warmup_ratio, cfg.lr_schedule)  # noqa: E731
    else:
        factor = lambda s: span_lr_factor(min(s, steps - 1), steps, schedule_span, cfg.warmup_ratio,  # noqa: E731
                                          cfg.lr_schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if optimizer_state is not None:  # continue the previous call's AdamW moments and step counts
        _load_optimizer_state(optimizer, params, copy.deepcopy(optimizer_state))  # leave the caller's tensors as they are
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.learning_rate
            group["lr"] = cfg.learning_rate * factor(0)
    out = Path(out_dir) if out_dir is not None else None
    log: list[dict[str, Any]] = []
    start_step, tokens_seen, prior_wall = 0, 0, 0.0
    trained_by = 1  # processes that trained the last step (data parallelism)
    torch.manual_seed(seed)
    if out is not None and resume and (out / CHECKPOINT).is_file():
        ckpt = torch.load(out / CHECKPOINT, weights_only=False, map_location="cpu")
        if ckpt["run_key"] != run_key:
            raise TrainError(f"{out / CHECKPOINT} belongs to a different training run (other data, steps, settings "
                             "or seed); use another out_dir or resume=False to start over")
        with torch.no_grad():
            named = dict(model.named_parameters())
            for name, value in ckpt["weights"].items():
                named[name].copy_(_shard_like(value, named[name]))
        _load_optimizer_state(optimizer, params, ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if "cuda_rng" in ckpt and model_device(model).type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"], model_device(model))
        start_step, tokens_seen, log, prior_wall = ckpt["step"], ckpt["tokens_seen"], ckpt["log"], ckpt["wall_s"]
        trained_by = ckpt.get("processes", 1)

    rank, world = process_group()
    sharded = is_sharded(model)
    if start_step < steps:
        trained_by = world

    def summary(step: int, wall: float) -> dict[str, Any]:
        return {"steps_done": step, "steps": steps, "tokens_seen": tokens_seen, "wall_s": round(wall, 3),
                "data_hash": data_hash, "n_examples": len(examples), "n_used": len(data), "seed": seed,
                "loss_on": loss_on, "training": cfg.record_dump(), "resumed_from": start_step,
                "final_loss": log[-1]["loss"] if log else None,
                "batch_order": "one pass, seeded order" if single_pass else "epochs of seeded permutations",
                **({"processes": trained_by} if trained_by > 1 else {})}

    started = time.perf_counter()
    model.train()
    restore_checkpointing = _checkpointing_on(model) if cfg.gradient_checkpointing else None
    device = model_device(model)
    micro = cfg.batch_size
    writes = out is not None and rank == 0  # under data parallelism the first process writes for all
    loop = Task("SFT steps", steps - start_step)
    try:
        for step in range(start_step, steps):
            chosen = (single_pass_indices(len(data), micro * cfg.grad_accum, step, seed) if single_pass
                      else batch_indices(len(data), micro * cfg.grad_accum, step, seed))
            # target tokens and tokens of the whole step, over every process's share of it
            n_target = sum(sum(label != -100 for label in data[i][1][1:]) for i in chosen)
            tokens_seen += sum(len(data[i][0]) for i in chosen)
            passes = step_passes(data, chosen[rank::world], micro)
            if sharded:  # every process runs as many passes as the busiest one (FSDP's collectives run per pass)
                busiest = max(len(step_passes(data, chosen[r::world], micro)) for r in range(world))
                passes += [None] * (busiest - len(passes))
            total = 0.0
            for items in passes:
                with autocast(model):  # forward passes only; a float32 model: no autocast
                    if items is None:
                        loss = _idle_pass(model, pad_id, device)
                    else:
                        b = {key: value.to(device) for key, value in collate(items, pad_id).items()}
                        loss = target_loss(model, b, n_target)
                loss.backward()
                total += loss.item()
            if sharded:  # FSDP summed the gradients (launch.shard sets its divide factor to 1)
                total = _sum_loss_over_processes(total, device)
            elif world > 1:
                total = _sum_over_processes(params, total)
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.append({"step": step + 1, "loss": total, "lr": lr, "tokens": tokens_seen})
            done = step + 1
            due = out is not None and ((checkpoint_every and done % checkpoint_every == 0) or done == steps)
            if due and (writes or sharded):  # under FSDP every process helps gather the weights; the first writes
                wall = prior_wall + time.perf_counter() - started
                _save_checkpoint(out / CHECKPOINT if writes else None, model, optimizer, scheduler,
                                 {"step": done, "tokens_seen": tokens_seen, "log": log, "wall_s": wall,
                                  "run_key": run_key, **({"processes": world} if world > 1 else {})})
                if writes:
                    _write_records(out, log, summary(done, wall))
            loop.advance()
    finally:
        if restore_checkpointing is not None:
            restore_checkpointing()
    loop.close()
    model.eval()
    wall = prior_wall + time.perf_counter() - started
    result_summary = summary(steps, wall)
    if writes:
        _write_records(out, log, result_summary)
    return TrainResult(model=model, losses=[r["loss"] for r in log], tokens_seen=tokens_seen, wall_s=wall,
                       data_hash=data_hash, n_examples=len(examples), steps=steps, resumed_from=start_step,
                       summary=result_summary,
                       optimizer_state=copy.deepcopy(optimizer.state_dict()))
