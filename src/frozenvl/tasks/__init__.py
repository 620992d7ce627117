"""The training tasks: what the engine trains, one file per model kind, each with its collator and options.

A task builds its model, turns loader samples into batches (``collate``) and batches into a loss; the contract is
:class:`~frozenvl.tasks.base.Task`. The engine (``frozenvl.train``) uses only that contract and
:func:`build_task`; the model packages never import this wing.
"""

from __future__ import annotations

from frozenvl.tasks.base import ModelTask, Task
from frozenvl.tasks.clip_baseline import ClipBaselineCollator, ClipBaselineTask, ClipBaselineTaskOptions
from frozenvl.tasks.config import ModelConfig
from frozenvl.tasks.flame import FlameCollator, FlameTask, FlameTaskOptions
from frozenvl.tasks.flamingo import FlamingoCollator, FlamingoTask

__all__ = ["ClipBaselineCollator", "ClipBaselineTask", "ClipBaselineTaskOptions", "FlameCollator", "FlameTask",
           "FlameTaskOptions", "FlamingoCollator", "FlamingoTask", "ModelConfig", "ModelTask", "Task", "build_task"]


def build_task(config: ModelConfig) -> Task:
    """``model.kind``: ``flamingo``, ``flame`` (options in ``model.flame``) or ``clip_baseline``
    (``model.clip_baseline``), each a task of this package."""
    if config.kind == "flamingo":
        return FlamingoTask(config)
    if config.kind == "flame":
        return FlameTask.from_options(config.flame)
    if config.kind == "clip_baseline":
        return ClipBaselineTask.from_options(config.clip_baseline)
    raise ValueError(f"unknown model.kind {config.kind!r}")
