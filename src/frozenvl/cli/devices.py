"""``--device`` and ``--dtype``: the same two options, with the same meaning, on every command that runs a model.

``--device``: ``cuda`` when a GPU is available, else ``cpu`` (or ``cuda:1``, ``mps``...); a device this machine
does not have is one error line. ``--dtype``: ``float32`` (default), ``bfloat16``, ``float16``, or ``auto``
(bfloat16 on a GPU that supports it, float16 on an older GPU, float32 on the CPU). The whole model is placed there
in that dtype (``frozenvl.flamingo.build(dtype=, device=)``, ``from_pretrained(dtype=, device=)``).
"""

from __future__ import annotations

import argparse

import torch

from frozenvl.pretrained import DTYPES, as_device, as_dtype, default_device

DTYPE_CHOICES = (*DTYPES, "auto")


def add_device_arguments(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    """Add ``--device`` and ``--dtype`` to a command's parser (read them with :func:`resolve_device` and
    :func:`resolve_dtype`)."""
    parser.add_argument("--device", default=None,
                        help=f"where {what} runs: cpu, cuda, cuda:N, mps (default: cuda when a GPU is available, "
                             "else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                        help=f"dtype of {what}: float32 (default), bfloat16, float16, or auto (bfloat16 on a GPU "
                             "that supports it, float16 on an older GPU, float32 on the CPU)")


def resolve_device(name: str | None) -> torch.device:
    """The ``--device`` value as a ``torch.device``: ``None`` is ``cuda`` when a GPU is available, else ``cpu``; a
    device this machine lacks is a ``ValueError`` (one line: the commands print it as their error)."""
    return default_device() if name is None else as_device(name, "--device")


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """The ``--dtype`` value as a ``torch.dtype``; ``auto`` depends on ``device`` (see the module docstring)."""
    if name != "auto":
        return as_dtype(name, "--dtype")
    if device is None or device.type == "cpu":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16


def engine_device(device: torch.device) -> str:
    """The training engine's ``train.device`` for ``device`` (``cpu`` or ``cuda``: the engine trains on GPU 0, or
    on GPU LOCAL_RANK under torchrun); another device is a ``ValueError`` saying how to pick a GPU."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda" and device.index in (None, 0):
        return "cuda"
    raise ValueError(f"--device {device}: training runs on cpu or cuda (GPU 0, or GPU LOCAL_RANK under torchrun); "
                     "choose another GPU with CUDA_VISIBLE_DEVICES")


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a command's parsed ``--device`` / ``--dtype``."""
    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)
