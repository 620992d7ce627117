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

The Hugging Face Hub holds the same two files: ``Model.from_pretrained("org/name", revision=...)`` downloads them
into the Hugging Face cache with ``huggingface_hub`` (only the cache with ``HF_HUB_OFFLINE=1``), and
``model.push_to_hub("org/name")`` uploads them with a generated model card (``README.md``).

Devices and dtypes as in transformers: ``from_pretrained(..., dtype=torch.bfloat16, device="cuda")`` loads the
whole model in that dtype on that device, and every model has ``.device`` and ``.dtype``. :func:`as_device` and
:func:`as_dtype` check such arguments (an unusable device, such as ``cuda`` on a machine without a GPU, is one
error saying so).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from frozenvl.config import ConfigError, from_dict, to_dict
from frozenvl.constants import CONFIG_NAME, WEIGHTS_NAME
from frozenvl.files import atomic_path, read_json

M = TypeVar("M", bound="PretrainedModel")

# The dtypes a model may be loaded or built in, by name (as transformers' ``dtype="bfloat16"``).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_dtype(dtype: torch.dtype | str, where: str = "dtype") -> torch.dtype:
    """``dtype`` as a floating ``torch.dtype``: a ``torch.dtype`` or a name of :data:`DTYPES` (``"bfloat16"``,
    ``"torch.bfloat16"``); anything else is an error naming ``where``."""
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ValueError(f"{where} must be a floating torch dtype or one of {', '.join(DTYPES)}, got {dtype!r}")


def as_device(device: str | torch.device | int, where: str = "device") -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` or a GPU index) as a ``torch.device`` this
    machine has; an unknown name, or a device it does not have (``cuda`` without a GPU, ``cuda:3`` with two), is
    one error naming ``where``."""
    try:
        resolved = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{where} {device!r} is not a device (e.g. cpu, cuda, cuda:1, mps)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{where} {device}: CUDA is not available on this machine (no GPU, or a CPU-only "
                             "PyTorch); use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"{where} {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where} {device}: MPS is not available on this machine; use cpu")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        backend = getattr(torch, resolved.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"{where} {device}: this PyTorch has no usable {resolved.type} device; use cpu")
    return resolved


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu`` (the default device of the commands)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _single_device(device: str | torch.device | int | None, device_map: Any) -> torch.device | None:
    """The one device of ``from_pretrained``'s ``device`` or transformers-style ``device_map`` (a single device;
    ``"auto"``: the GPU when there is one, else the CPU)."""
    if device is not None and device_map is not None:
        raise ValueError("pass device or device_map, not both")
    if device_map is None:
        return None if device is None else as_device(device)
    if isinstance(device_map, dict):
        raise ValueError("device_map: a frozenvl model is placed whole on one device; pass a single device "
                         "(device='cuda:0', device_map=0), not a per-module map")
    return default_device() if device_map == "auto" else as_device(device_map, "device_map")


def write_pretrained(folder: str | os.PathLike, model_type: str, config: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing folder (not atomic by itself: the callers
    write into a temporary folder that is renamed when complete)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({"model_type": model_type, **to_dict(config)}, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / WEIGHTS_NAME),
              metadata={"format": "pt", "frozenvl": model_type})


class DamagedModelFileError(ValueError):
    """A saved model's config.json or weights file that cannot be read (a user error: one line naming it)."""


def read_folder(folder: str | os.PathLike,
                model_types: tuple[str, ...]) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(model type, config mapping, tensors) of a folder written by :func:`write_pretrained` for one of
    ``model_types``; a missing file or a folder of another model is an error naming the folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    wanted = " or ".join(model_types)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a saved {wanted} model: {' and '.join(missing)} missing "
                                "(a folder written by save_pretrained or a training checkpoint is needed)")
    try:
        data = read_json(folder / CONFIG_NAME, "model config")
    except ValueError as e:  # not UTF-8, not JSON, nested too deeply
        raise DamagedModelFileError(str(e)) from None
    found = data.pop("model_type", None) if isinstance(data, dict) else None
    if found not in model_types:
        what = f"a {found} model" if found else f"no model_type in {CONFIG_NAME}"
        raise ValueError(f"{folder} holds {what}, not a {wanted} model")
    try:
        tensors = load_file(str(folder / WEIGHTS_NAME))
    except SafetensorError as e:  # a truncated or overwritten weights file
        raise DamagedModelFileError(f"weights file {folder / WEIGHTS_NAME} is corrupt: {e}") from None
    return found, data, tensors


def read_pretrained(folder: str | os.PathLike, model_type: str,
                    config_class: type) -> tuple[Any, dict[str, torch.Tensor]]:
    """(config, tensors) of a folder written by :func:`write_pretrained` for ``model_type``; the config is built
    by the config engine, so an unknown or mistyped field is an error naming the file and the key."""
    _, data, tensors = read_folder(folder, (model_type,))
    try:
        return from_dict(config_class, data), tensors
    except ConfigError as e:
        raise ConfigError(f"{Path(folder) / CONFIG_NAME}: {e}") from None


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a valid Hugging Face Hub repo id (``org/name`` or ``name``), by huggingface_hub's rules."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_folder(name_or_folder: str | os.PathLike, *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> Path:
    """The local folder of a saved model.

    A path that exists, a ``PathLike``, or a string that is not a valid repo id is taken as the folder (so a
    missing one is reported by :func:`read_folder`, naming it). Any other string is a Hub repo id: its
    ``config.json`` and ``model.safetensors`` (nothing else) at ``revision`` are downloaded into the Hugging Face
    cache (``cache_dir``, else ``HF_HUB_CACHE``) and the snapshot folder is returned. With ``HF_HUB_OFFLINE=1``
    only the cache is read, and a repo or revision that is not there is an error saying so.
    """
    if not isinstance(name_or_folder, str) or os.path.exists(name_or_folder) or not is_repo_id(name_or_folder):
        return Path(name_or_folder)
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    # Read the flag here rather than leave it to snapshot_download: offline, it must not even try the Hub.
    offline = huggingface_hub.is_offline_mode()
    try:
        return Path(huggingface_hub.snapshot_download(
            name_or_folder, revision=revision, cache_dir=cache_dir, token=token, local_files_only=offline,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], library_name="frozenvl"))
    except LocalEntryNotFoundError as e:
        what = (f"{name_or_folder} is not a folder, and the Hub repo {name_or_folder} (revision {revision or 'main'}) "
                f"is not in the Hugging Face cache {cache_dir if cache_dir is not None else constants.HF_HUB_CACHE}")
        if offline:
            raise FileNotFoundError(f"{what} while HF_HUB_OFFLINE is set: download it once online (or unset "
                                    "HF_HUB_OFFLINE)") from None
        raise FileNotFoundError(f"{what}, and the Hub could not be reached: {e}") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"{name_or_folder} is neither a folder nor a model repo on the Hub that this "
                                f"token can read: {e}") from e


# The config fields in which a model around frozen backbones references them by source (a Flamingo's LM and
# vision encoder): the model card names them, as from_pretrained loads them from there.
CARD_SOURCES = {"lm": "language model", "vision": "vision encoder"}


def model_card(model: PretrainedModel, repo_id: str, training_config: Any = None) -> Any:
    """The ``huggingface_hub.ModelCard`` that :meth:`PretrainedModel.push_to_hub` uploads as ``README.md``: the
    metadata (``library_name: frozenvl``, the model type as a tag), what the model is, the frozen backbones it
    loads by source, how to load it, its config, and the training config when one is given (a model's config does
    not record how it was trained: pass the run's config, e.g. ``load_config(run_dir / "config.yaml")``)."""
    from huggingface_hub import ModelCard, ModelCardData

    cls = type(model)
    config = to_dict(model.config)
    # Import the class from its package when the package exports it (frozenvl.flamingo.Flamingo).
    package = cls.__module__.rpartition(".")[0]
    module = package if getattr(sys.modules.get(package), cls.__name__, None) is cls else cls.__module__
    sources = {label: config[key] for key, label in CARD_SOURCES.items() if isinstance(config.get(key), str)}
    lines = [f"# {repo_id}", "", f"A frozenvl `{cls.__name__}` (model type `{model.model_type}`)."]
    if sources:
        lines += ["", "Its frozen backbones are not in these weights: `from_pretrained` loads them from their "
                  "sources.", ""]
        lines += [f"- Frozen {label}: `{source}`" for label, source in sources.items()]
        if any(source.startswith("<instance:") for source in sources.values()):
            lines += ["", "A source written `<instance:...>` was a model instance when this model was built: pass "
                      "the same backbone to `from_pretrained` (`lm=`, `tokenizer=`, `vision=`)."]
    lines += ["", "## Usage", "", "```python", f"from {module} import {cls.__name__}", "",
              f'model = {cls.__name__}.from_pretrained("{repo_id}")', "```", "",
              "## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    if training_config is not None:
        import yaml

        run = training_config if isinstance(training_config, dict) else to_dict(training_config)
        lines += ["## Training", "", "The run config it was trained with (`frozenvl train --config`):", "",
                  "```yaml", yaml.safe_dump(run, sort_keys=False).rstrip(), "```", ""]
    data = ModelCardData(library_name="frozenvl", tags=["frozenvl", model.model_type])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


class PretrainedModel:
    """Mixin of every frozenvl model (an ``nn.Module`` with a ``config``): ``model.save_pretrained(folder)``,
    ``Model.from_pretrained(folder_or_repo_id, **kwargs)`` and ``model.push_to_hub(repo_id)``.

    A subclass sets ``model_type`` and ``config_class``; it overrides :meth:`saved_state_dict` /
    :meth:`load_saved_state_dict` when it saves less than its whole state, and :meth:`from_config` when building
    it needs more than the config (the ``kwargs`` of ``from_pretrained`` go there).
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    config: Any

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (all of them after ``model.to(device)``), as transformers'
        ``model.device``."""
        return next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0)).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's first floating parameter (all of them after ``build(dtype=...)``,
        ``from_pretrained(dtype=...)`` or ``model.to(dtype)``), as transformers' ``model.dtype``."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())

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
    def from_config(cls: type[M], config: Any, *, dtype: torch.dtype | None = None, **kwargs: Any) -> M:
        """A fresh model of ``config`` (weights not loaded yet), all of it in ``dtype`` when given."""
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments: {', '.join(sorted(kwargs))}")
        model = cls(config)
        return model if dtype is None else model.to(dtype)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` atomically: a kill leaves the previous folder (if any) or
        the complete new one."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            write_pretrained(tmp, self.model_type, self.config, self.saved_state_dict())

    @classmethod
    def from_pretrained(cls: type[M], name_or_folder: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                        dtype: torch.dtype | str | None = None, device: str | torch.device | int | None = None,
                        torch_dtype: torch.dtype | str | None = None, device_map: Any = None,
                        **kwargs: Any) -> M:
        """The model saved in a folder (by :meth:`save_pretrained` or as a training checkpoint) or in a Hub repo
        (``"org/name"``, pushed by :meth:`push_to_hub`).

        ``revision`` (a branch, tag or commit), ``cache_dir`` (the Hugging Face cache, else ``HF_HUB_CACHE``) and
        ``token`` apply to a Hub repo only (see :func:`resolve_folder`; ``HF_HUB_OFFLINE=1`` reads the cache
        only). Other keyword arguments go to :meth:`from_config`.

        ``dtype`` (transformers' name; ``torch_dtype``, its older one, is accepted too): the whole model - frozen
        backbones and trained parts - in that dtype (a ``torch.dtype``, ``"bfloat16"``..., or ``"auto"``: the dtype
        of the saved tensors); by default float32. ``device`` (or ``device_map`` as a single device, as
        transformers takes it; ``"auto"``: the GPU when there is one): where the whole model goes once loaded
        (``"cuda"``, ``"cuda:1"``, ``torch.device``, a GPU index); an unusable one is an error before anything loads.
        """
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree: pass dtype only")
        dtype = dtype if dtype is not None else torch_dtype
        target = _single_device(device, device_map)
        if dtype is not None and dtype != "auto":
            dtype = as_dtype(dtype)
        folder = resolve_folder(name_or_folder, revision=revision, cache_dir=cache_dir, token=token)
        config, tensors = read_pretrained(folder, cls.model_type, cls.config_class)
        if dtype == "auto":
            dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
        model = cls.from_config(config, dtype=dtype, **kwargs)
        model.load_saved_state_dict(tensors)
        return model if target is None else model.to(target)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | bool | None = None,
                    commit_message: str | None = None, revision: str | None = None,
                    training_config: Any = None) -> Any:
        """Upload the model to the Hub repo ``repo_id``, created if missing (``private``: its visibility then):
        the two files of :meth:`save_pretrained` and a generated model card, ``README.md`` (see
        :func:`model_card`; ``training_config``: the run config, a config dataclass or a mapping, shown in the card).
        ``revision``: the branch to commit to, created if missing. Returns the commit's
        ``huggingface_hub.CommitInfo``. ``Class.from_pretrained(repo_id)`` loads it back."""
        from huggingface_hub import HfApi

        with tempfile.TemporaryDirectory(prefix="frozenvl-push-") as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder)
            # Written before the repo is created: a model whose card cannot be made leaves no empty repo behind.
            model_card(self, repo_id, training_config).save(str(folder / "README.md"))
            api = HfApi(token=token, library_name="frozenvl")
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id  # "name" -> "user/name"
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                     commit_message=commit_message or f"Upload {type(self).__name__}")
