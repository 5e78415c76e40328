"""Where models run: the profile's ``device`` (``cpu``, ``cuda``, ``auto``) resolved once, and checked
before any stage starts.

``resolve_device`` turns the setting into a ``torch.device``: ``auto`` is the GPU when one is visible,
else the CPU; ``cuda`` on a machine without a GPU is a ``DeviceError`` naming the key and the fix.
Every part that runs a model (students, HF teachers, SFT batches, scoring and generation batches)
moves its tensors to ``model_device(model)``, so a model loaded onto the profile's device keeps all
of its work there.

Precision: a student whose ``dtype`` is ``bfloat16`` keeps the weights it trains in float32 (the
optimizer's moments too) and runs its forward passes under ``torch.autocast`` in bfloat16 (mixed
precision): ``set_compute_dtype`` marks the model when it is loaded, ``autocast(model)`` applies the mark
(SFT, scoring, generation). A model without the mark, or marked float32, runs as it is: no autocast, the
same operations as before.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import SyllabusError


class DeviceError(SyllabusError, RuntimeError):
    """A device setting this machine cannot honour; the message names the key and the fix."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(setting: str) -> torch.device:
    """``torch.device`` for a profile's ``device`` setting (see the module docstring)."""
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if setting == "cuda":
        if not cuda_available():
            raise DeviceError("key 'device' is 'cuda' but this machine has no usable GPU (torch.cuda.is_available() "
                              f"is False; torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                              "run on a GPU machine with a CUDA build of torch, or set device: cpu (or auto, "
                              "or -p device=cpu)")
        return torch.device("cuda")
    raise DeviceError(f"key 'device' is {setting!r}; use one of cpu, cuda, auto")


def model_device(model) -> torch.device:
    """The device of a model's (first) parameters: where its inputs must go."""
    return next(model.parameters()).device


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose random state ``torch.random.fork_rng`` must save for work on ``device``."""
    return [device.index or 0] if device.type == "cuda" else []


COMPUTE_DTYPE_ATTR = "syllabus_compute_dtype"  # a str on the model: pickles and deep-copies with it
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def set_compute_dtype(model, dtype: str) -> None:
    """Mark ``model`` to run its forward passes in ``dtype`` under autocast (see the module docstring);
    float32 leaves it unmarked."""
    if dtype == "float32":
        return
    if dtype not in AUTOCAST_DTYPES:
        raise DeviceError(f"compute dtype {dtype!r} is not one of float32, {', '.join(AUTOCAST_DTYPES)}")
    object.__setattr__(model, COMPUTE_DTYPE_ATTR, dtype)


def compute_dtype(model) -> str:
    """The dtype ``model``'s forward passes run in: its mark, else float32."""
    return model.__dict__.get(COMPUTE_DTYPE_ATTR, "float32") if hasattr(model, "__dict__") else "float32"


def autocast(model):
    """``torch.autocast`` on the model's device in its compute dtype; a context that does nothing for float32."""
    dtype = compute_dtype(model)
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(model_device(model).type, dtype=AUTOCAST_DTYPES[dtype])
