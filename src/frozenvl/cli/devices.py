"""``--device`` and ``--dtype``: the same two options, with the same meaning, on every command that runs a model.

``--device``: ``cuda`` when a GPU is available, else ``cpu`` (or ``cuda:1``, ``mps``...); a device this machine
does not have is one error line. ``--dtype``: ``float32`` (default), ``bfloat16``, ``float16``, or ``auto``
(bfloat16 on a GPU that supports it, float16 on an older GPU, float32 on the CPU). The whole model is placed there
in that dtype (``frozenvl.flamingo.build(dtype=, device=)``, ``from_pretrained(dtype=, device=)``). ``frozenvl
train`` reads them as ``train.device`` / ``train.precision`` (float32 or bfloat16 autocast) and ``frozenvl demo``
keeps its plan's precisions without ``--dtype``. The data commands (``data synth/convert/inspect``) run no model
and take neither.
"""

from __future__ import annotations

import argparse

import torch

from frozenvl.pretrained import DTYPES, as_device, as_dtype, default_device

DTYPE_CHOICES = (*DTYPES, "auto")


AUTO = "auto (bfloat16 on a GPU that supports it, float16 on an older GPU, float32 on the CPU)"


def add_device_arguments(parser: argparse.ArgumentParser, what: str = "the model", *,
                         devices: str = "cpu, cuda, cuda:N, mps",
                         default_device: str = "cuda when a GPU is available, else cpu",
                         dtype_choices: tuple[str, ...] = DTYPE_CHOICES,
                         dtypes: str = f"float32, bfloat16, float16, or {AUTO}",
                         unset_dtype: str | None = None, dtype_of: str | None = None) -> None:
    """Add ``--device`` and ``--dtype`` to a command's parser (read them with :func:`resolve_device` and
    :func:`resolve_dtype`). ``devices`` / ``dtypes``: the values the command takes, described for its help;
    ``default_device``: what no ``--device`` means. ``unset_dtype``: what no ``--dtype`` means for a command that
    then keeps its own choice (``args.dtype`` is None); without it the default is float32. ``dtype_of``: what
    ``--dtype`` sets, when that is not all of ``what``."""
    parser.add_argument("--device", default=None, help=f"where {what} runs: {devices} (default: {default_device})")
    parser.add_argument("--dtype", choices=dtype_choices, default=None if unset_dtype else "float32",
                        help=f"dtype of {dtype_of or what}: {dtypes}; default: {unset_dtype or 'float32'}")


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


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on ``device``: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX instructions. Elsewhere (an AVX2-only CPU) torch emulates them: a (1000, 576) x (576, 4096)
    product took 1.5-2.0 s in bf16 against 0.14 s in float32 on an AMD EPYC with AVX2, its backward 10 s against
    0.10 s, so bf16 autocast there is one to two orders of magnitude slower, not faster."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


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
