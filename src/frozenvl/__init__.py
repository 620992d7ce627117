"""frozenvl: vision-language learning on frozen language models (Flamingo and FLAME)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["backbones", "data", "eval", "flame", "flamingo", "tasks", "train", "__version__"]


def __getattr__(name: str):
    # Submodules load on first use so that `import frozenvl` stays cheap.
    if name in __all__:
        return importlib.import_module(f"frozenvl.{name}")
    raise AttributeError(f"module 'frozenvl' has no attribute {name!r}")
