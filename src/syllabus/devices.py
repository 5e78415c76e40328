"""Where models run: the profile's ``device`` (``cpu``, ``cuda``, ``auto``) resolved once, and checked
before any stage starts.

``resolve_device`` turns the setting into a ``torch.device``: ``auto`` is the GPU when one is visible,
else the CPU; ``cuda`` on a machine without a GPU is a ``DeviceError`` naming the key and the fix.
Every part that runs a model (students, HF teachers, SFT batches, scoring and generation batches)
moves its tensors to ``model_device(model)``, so a model loaded onto the profile's device keeps all
of its work there.
"""

from __future__ import annotations

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
