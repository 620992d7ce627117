"""Training checkpoints: atomic folders of safetensors + JSON (no pickle anywhere), the last K kept.

``{run_dir}/checkpoints/step-{step:08d}/``:

- ``config.json`` + ``model.safetensors``: the model, written by the save/load contract (:mod:`frozenvl.pretrained`)
  with the task model's type, config and saved tensors, so the folder loads with that model's ``from_pretrained``
  (``Flamingo``: its trainable weights only, frozen backbones referenced by source, never copied; ``FlameModel``,
  ``ClipBaseline``: every weight);
- ``optimizer.safetensors``: AdamW state tensors as ``{param name}::{key}``; ``optimizer.json``: param groups;
- ``rng.safetensors``: every rank's torch (and CUDA) generator state;
- ``trainer_state.json``: step, counters, data positions of every slot, Python/NumPy RNG states, the run config.

A folder is written under a temporary name and renamed in one step, so a kill at any moment leaves the previous
checkpoint intact; leftover temporary folders are ignored and cleaned. ``trainer_state.json`` is the completion
marker: only a ``step-N`` folder that holds it is listed, and it records the size of every other file, so a
truncated or missing file is found before anything is loaded (:class:`CorruptCheckpointError`). Pruning renames
an old folder out of the listing in one step before deleting it, so a kill while pruning never leaves a listed
folder without its weights. :func:`load_latest` falls back to the previous checkpoint when the newest is corrupt.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from frozenvl.constants import CONFIG_NAME, WEIGHTS_NAME
from frozenvl.files import atomic_path, fsync_file
from frozenvl.pretrained import DamagedModelFileError, read_folder, write_pretrained

STEP_DIR = re.compile(r"^step-(\d{8})$")
# The trainer's own files, beside the model's (CONFIG_NAME, WEIGHTS_NAME).
OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
RNG = "rng.safetensors"
STATE = "trainer_state.json"

log = logging.getLogger("frozenvl.train")


class CorruptCheckpointError(ValueError):
    """A checkpoint folder that cannot be read back: a file is missing, truncated or unreadable."""


@dataclass
class Checkpoint:
    path: Path
    weights: dict[str, torch.Tensor]  # the model's saved tensors (its saved_state_dict)
    optimizer: dict[str, Any]  # torch optimizer state dict keyed by parameter name (DCP full-state layout)
    rng: list[dict[str, Any]]  # per rank
    state: dict[str, Any]


# ----------------------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """This process's generator states: tensors for torch/CUDA, JSON-able lists for Python and NumPy."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    state["python"] = [py[0], list(py[1]), py[2]]
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], np_state[1].tolist(), *map(_py, np_state[2:])]
    return state


def _py(x):
    return x.item() if hasattr(x, "item") else x


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------------------- optimizer


def optimizer_to_tensors(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Name-keyed optimizer state dict -> (flat tensors, JSON metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, entry in osd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(name, {})[key] = value
    meta = {"param_groups": [_jsonable(g) for g in osd["param_groups"]], "scalars": scalars}
    return tensors, meta


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in tensors.items():
        name, _, key = flat.rpartition("::")
        state.setdefault(name, {})[key] = value
    for name, entry in meta.get("scalars", {}).items():
        state.setdefault(name, {}).update(entry)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.item()
    return x


# ----------------------------------------------------------------------------------------- folders


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders of interrupted writes excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / STATE).exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: str | Path, step: int, model_type: str, config: Any, weights: dict[str, torch.Tensor],
                    optimizer: dict[str, Any], rng: list[dict[str, Any]], state: dict[str, Any], keep: int) -> Path:
    """Write ``step-{step}`` atomically (the model as ``model_type`` with its ``config`` and ``weights``, then the
    trainer's state), then delete all but the last ``keep`` checkpoints."""
    final = step_dir(root, step)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        write_pretrained(tmp, model_type, config, weights)
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        save_file(opt_tensors, str(tmp / OPTIMIZER), metadata={"format": "pt"})
        (tmp / OPTIMIZER_META).write_text(json.dumps(opt_meta) + "\n")
        rng_tensors = {}
        rng_json = []
        for r, s in enumerate(rng):
            for key in ("torch", "cuda"):
                if key in s:
                    rng_tensors[f"rank{r}/{key}"] = s[key]
            rng_json.append({"python": s["python"], "numpy": s["numpy"]})
        save_file(rng_tensors, str(tmp / RNG))
        files = {}
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                fsync_file(f)
                files[f.name] = f.stat().st_size
        # The completion marker, written last: the sizes of every other file.
        marker = json.dumps({**state, "step": step, "rng": rng_json, "files": files}, indent=1) + "\n"
        with open(tmp / STATE, "w") as f:
            f.write(marker)
            f.flush()
            os.fsync(f.fileno())
    prune(root, keep)
    return final


def prune(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and the leftovers of interrupted writes and prunes. Each old
    folder leaves the listing in one step (renamed to a temporary name) before its files are deleted."""
    found = list_checkpoints(root)
    for old in found[:-keep] if keep > 0 else []:
        doomed = old.with_name(f".{old.name}.pruned.tmp")
        if doomed.exists():
            shutil.rmtree(doomed, ignore_errors=True)
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    for leftover in Path(root).glob(".step-*.tmp"):  # interrupted writes and prunes
        shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(path: str | Path, model_type: str) -> Checkpoint:
    """A checkpoint written by :func:`save_checkpoint` for a model of ``model_type`` (another model's checkpoint
    is an error naming both)."""
    path = Path(path)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME, OPTIMIZER, OPTIMIZER_META, RNG, STATE) if not (path / n).exists()]
    if missing:
        raise CorruptCheckpointError(f"{path} is not a complete training checkpoint: {', '.join(missing)} missing")
    try:
        state = json.loads((path / STATE).read_text())
        sizes = state.pop("files", {})  # absent in checkpoints written before sizes were recorded
        wrong = [f"{name} has {(path / name).stat().st_size} bytes, {size} were written"
                 for name, size in sizes.items() if (path / name).stat().st_size != size]
        if wrong:
            raise CorruptCheckpointError(f"{path} is corrupt: {'; '.join(wrong)}")
        rng_tensors = load_file(str(path / RNG))
        rng = []
        for r, s in enumerate(state.pop("rng")):
            entry = {"python": s["python"], "numpy": s["numpy"], "torch": rng_tensors[f"rank{r}/torch"]}
            if f"rank{r}/cuda" in rng_tensors:
                entry["cuda"] = rng_tensors[f"rank{r}/cuda"]
            rng.append(entry)
        optimizer = optimizer_from_tensors(load_file(str(path / OPTIMIZER)),
                                           json.loads((path / OPTIMIZER_META).read_text()))
        _, _, weights = read_folder(path, (model_type,))
    except CorruptCheckpointError:
        raise
    except (OSError, SafetensorError, json.JSONDecodeError, UnicodeDecodeError, DamagedModelFileError, RecursionError,
            KeyError, TypeError) as e:  # RecursionError: a JSON file nested too deeply to parse
        raise CorruptCheckpointError(f"{path} cannot be read: {type(e).__name__}: {e}") from None
    return Checkpoint(path=path, weights=weights, optimizer=optimizer, rng=rng, state=state)


def load_latest(root: str | Path, model_type: str) -> Checkpoint | None:
    """The newest checkpoint under ``root`` that reads back whole; a corrupt newer one is skipped with a warning
    naming what is wrong with it (it is left in place). None when there is no checkpoint; an error when every one
    is corrupt."""
    found = list_checkpoints(root)
    problems = []
    for path in reversed(found):
        try:
            checkpoint = load_checkpoint(path, model_type)
        except CorruptCheckpointError as e:
            problems.append(str(e))
            log.warning("skipping a corrupt checkpoint: %s; trying the previous one", e)
            continue
        return checkpoint
    if problems:
        raise CorruptCheckpointError(f"no checkpoint under {root} can be read: {' / '.join(problems)}")
    return None
