"""The synthetic world's evaluation splits as few-shot tasks.

``generate_world`` writes ``eval/{captioning,vqa,classification,heldout,video_qa,icl_words}-*.tar``; this module
reads them into :class:`EvalRecord` for the tasks ``synth_captioning`` ... (registered in ``tasks``). A
:class:`TaskData` holds the queries, the demonstration pool and, for classification, the class names.

``synth_icl_words`` is the in-context-learning task: each episode maps the values of one attribute to nonsense
words. Its queries take their demonstrations from the support records of their own episode
(``TaskData.episodic``), and their candidates are the episode's words (``meta["choices"]``).
"""

from __future__ import annotations

import os

from frozenvl.eval.harness import TaskData
from frozenvl.eval.records import EvalRecord

SYNTHETIC_TASKS: dict[str, str] = {  # task name -> split of the world
    "synth_captioning": "captioning",
    "synth_vqa": "vqa",
    "synth_classification": "classification",
    "synth_heldout": "heldout",
    "synth_video_qa": "video_qa",
    "synth_icl_words": "icl_words",
}


def _record(sample: dict) -> EvalRecord:
    kind, key = sample["kind"], sample["key"]
    meta = {k: v for k, v in sample.items() if k not in ("key", "kind", "images", "captions", "question",
                                                         "answers", "label")}
    if kind == "video_qa":
        return EvalRecord(key=key, frames=list(sample["images"][0]), question=sample["question"],
                          answers=list(sample["answers"]), meta=meta)
    record = EvalRecord(key=key, image=sample["images"][0], meta=meta)
    if kind == "caption":
        record.captions = list(sample["captions"])
    elif kind == "vqa":
        record.question, record.answers = sample["question"], list(sample["answers"])
    elif kind == "classification":
        record.label = list(sample["choices"]).index(sample["label"])
        meta["class_name"] = sample["label"]
    else:
        raise ValueError(f"{key}: a {kind!r} record is not an evaluation record of a known task")
    return record


def read_world_split(path: str | os.PathLike, split: str) -> list[EvalRecord]:
    """All records of one evaluation split (:func:`frozenvl.data.synth.iter_world_split`), in shard order. Bad
    samples are skipped and counted (a warning says how many)."""
    import warnings

    from frozenvl.data import SkipCounter
    from frozenvl.data.synth import iter_world_split

    skips = SkipCounter()
    records = [_record(sample) for sample in iter_world_split(path, split, skips)]
    if skips.total:
        warnings.warn(f"{path} ({split}): skipped {skips.total} bad samples: {skips.as_dict()}", stacklevel=2)
    if not records:
        raise ValueError(f"{path}: the {split} split has no readable records")
    return records


def synthetic_task_data(task: str, path: str | os.PathLike) -> TaskData:
    """Queries and demonstration pool of a synthetic task. Every record is a query; the pool is the whole split
    (a query is never its own demonstration), except for ``synth_icl_words``, whose queries are the episodes'
    query records and whose pool is the support records, used per episode."""
    if task not in SYNTHETIC_TASKS:
        raise KeyError(f"{task!r} is not a synthetic task; known: {sorted(SYNTHETIC_TASKS)}")
    records = read_world_split(path, SYNTHETIC_TASKS[task])
    if task == "synth_icl_words":
        queries = [r for r in records if r.meta.get("role") == "query"]
        pool = [r for r in records if r.meta.get("role") == "support"]
        return TaskData(queries=queries, pool=pool, episodic=True)
    class_names = list(records[0].meta["choices"]) if records[0].label is not None else None
    return TaskData(queries=records, pool=records, class_names=class_names)
