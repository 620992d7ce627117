"""One save/load contract for every model of frozenvl, in the style of Hugging Face's ``save_pretrained`` /
``from_pretrained``.

A saved model is a folder with two files (names in :mod:`frozenvl.constants`):

- ``config.json``: the model's config dataclass (read back by the config engine, so an unknown key is an error)
  plus ``"model_type"``, which names the class that wrote it;
- ``model.safetensors``: the tensors the model saves. A model trained from scratch (FLAME's image tower, the CLIP
  baseline) saves its whole state; a model around frozen backbones (Flamingo) saves only what trains and
  references its backbones by source in the config.

The folder is written under a temporary name and renamed in one step: a kill leaves the old folder or the new one.
A training checkpoint is such a folder with the trainer's files beside (``frozenvl.train.checkpoint``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from frozenvl.config import from_dict, to_dict
from frozenvl.constants import CONFIG_NAME, WEIGHTS_NAME
from frozenvl.files import atomic_path


def write_pretrained(folder: str | os.PathLike, model_type: str, config: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing folder (not atomic by itself: the callers
    write into a temporary folder that is renamed when complete)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({"model_type": model_type, **to_dict(config)}, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / WEIGHTS_NAME),
              metadata={"format": "pt", "frozenvl": model_type})


def read_pretrained(folder: str | os.PathLike, model_type: str,
                    config_class: type) -> tuple[Any, dict[str, torch.Tensor]]:
    """(config, tensors) of a folder written by :func:`write_pretrained` for ``model_type``; a missing file or a
    folder of another model is an error naming the folder and what it holds."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a saved {model_type} model: {' and '.join(missing)} missing "
                                f"(a folder written by save_pretrained or a training checkpoint is needed)")
    try:
        data = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {e}") from None
    found = data.pop("model_type", None)
    if found != model_type:
        raise ValueError(f"{folder} holds a {found or 'unknown'} model, not a {model_type} model")
    return from_dict(config_class, data, CONFIG_NAME), load_file(str(folder / WEIGHTS_NAME))


class PretrainedModel:
    """Mixin of every frozenvl model (an ``nn.Module`` with a ``config``): ``save_pretrained(folder)`` and
    ``cls.from_pretrained(folder, **kwargs)``.

    A subclass sets ``model_type`` and ``config_class``; it overrides :meth:`saved_state_dict` /
    :meth:`load_saved_state_dict` when it saves less than its whole state, and :meth:`from_config` when building
    it needs more than the config (``kwargs`` of ``from_pretrained`` go there).
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    config: Any

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def load_saved_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(tensors)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> PretrainedModel:
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments: {', '.join(sorted(kwargs))}")
        return cls(config)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the folder atomically: a kill leaves the previous folder (if any) or the complete new one."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            write_pretrained(tmp, self.model_type, self.config, self.saved_state_dict())

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> PretrainedModel:
        config, tensors = read_pretrained(folder, cls.model_type, cls.config_class)
        model = cls.from_config(config, **kwargs)
        model.load_saved_state_dict(tensors)
        return model
