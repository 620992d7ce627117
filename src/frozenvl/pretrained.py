"""One save/load contract for every model of frozenvl, in the style of Hugging Face's ``save_pretrained`` /
``from_pretrained``.

A saved model is a folder with two files (names in :mod:`frozenvl.constants`):

- ``config.json``: the model's config dataclass (read back by the config engine, so an unknown key is an error)
  plus ``"model_type"``, which names the class that wrote it (``flamingo``, ``flame``, ``clip_baseline``);
- ``model.safetensors``: the tensors the model saves. A model trained from scratch (FLAME's image tower, the CLIP
  baseline) saves its whole state; a model around frozen backbones (Flamingo) saves only what trains and
  references its backbones by source in the config.

``save_pretrained`` writes the folder under a temporary name and renames it in one step: a kill leaves the old
folder or the new one. A training checkpoint (``frozenvl.train.checkpoint``) is such a folder with the trainer's
files beside, so ``Model.from_pretrained(checkpoint)`` reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from frozenvl.config import ConfigError, from_dict, to_dict
from frozenvl.constants import CONFIG_NAME, WEIGHTS_NAME
from frozenvl.files import atomic_path

M = TypeVar("M", bound="PretrainedModel")


def write_pretrained(folder: str | os.PathLike, model_type: str, config: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing folder (not atomic by itself: the callers
    write into a temporary folder that is renamed when complete)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({"model_type": model_type, **to_dict(config)}, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / WEIGHTS_NAME),
              metadata={"format": "pt", "frozenvl": model_type})


def read_folder(folder: str | os.PathLike,
                model_types: tuple[str, ...]) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(model type, config mapping, tensors) of a folder written by :func:`write_pretrained` for one of
    ``model_types``; a missing file or a folder of another model is an error naming the folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    wanted = " or ".join(model_types)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a saved {wanted} model: {' and '.join(missing)} missing "
                                "(a folder written by save_pretrained or a training checkpoint is needed)")
    try:
        data = json.loads((folder / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {e}") from None
    found = data.pop("model_type", None) if isinstance(data, dict) else None
    if found not in model_types:
        what = f"a {found} model" if found else f"no model_type in {CONFIG_NAME}"
        raise ValueError(f"{folder} holds {what}, not a {wanted} model")
    return found, data, load_file(str(folder / WEIGHTS_NAME))


def read_pretrained(folder: str | os.PathLike, model_type: str,
                    config_class: type) -> tuple[Any, dict[str, torch.Tensor]]:
    """(config, tensors) of a folder written by :func:`write_pretrained` for ``model_type``; the config is built
    by the config engine, so an unknown or mistyped field is an error naming the file and the key."""
    _, data, tensors = read_folder(folder, (model_type,))
    try:
        return from_dict(config_class, data), tensors
    except ConfigError as e:
        raise ConfigError(f"{Path(folder) / CONFIG_NAME}: {e}") from None


class PretrainedModel:
    """Mixin of every frozenvl model (an ``nn.Module`` with a ``config``): ``model.save_pretrained(folder)`` and
    ``Model.from_pretrained(folder, **kwargs)``.

    A subclass sets ``model_type`` and ``config_class``; it overrides :meth:`saved_state_dict` /
    :meth:`load_saved_state_dict` when it saves less than its whole state, and :meth:`from_config` when building
    it needs more than the config (the ``kwargs`` of ``from_pretrained`` go there).
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    config: Any

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors ``save_pretrained`` writes (and a training checkpoint holds): the whole state dict."""
        return self.state_dict()

    def load_saved_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`saved_state_dict` gave; a missing or unexpected name is an error naming them."""
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"the tensors do not match the {type(self).__name__}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")

    @classmethod
    def from_config(cls: type[M], config: Any, **kwargs: Any) -> M:
        """A fresh model of ``config`` (weights not loaded yet)."""
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments: {', '.join(sorted(kwargs))}")
        return cls(config)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` atomically: a kill leaves the previous folder (if any) or
        the complete new one."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            write_pretrained(tmp, self.model_type, self.config, self.saved_state_dict())

    @classmethod
    def from_pretrained(cls: type[M], folder: str | os.PathLike, **kwargs: Any) -> M:
        """The model saved in ``folder`` (by :meth:`save_pretrained` or as a training checkpoint)."""
        config, tensors = read_pretrained(folder, cls.model_type, cls.config_class)
        model = cls.from_config(config, **kwargs)
        model.load_saved_state_dict(tensors)
        return model
