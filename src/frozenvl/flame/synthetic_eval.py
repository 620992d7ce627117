"""The synthetic world's evaluation splits (``frozenvl.data.generate_world``) as FLAME evaluation sets.

- ``classification`` / ``heldout``: one object per image, label "colour shape" among the record's 36 choices;
  ``heldout`` holds only the six compositions never seen in training (zero-shot compositionality).
- ``retrieval``: one image, up to 5 short captions and one long caption; ``long=True`` keeps the long caption
  only (long-caption retrieval, one caption per image).

Images come back preprocessed, (N, 3, S, S), ready for :func:`frozenvl.flame.evaluate.score_retrieval` and
:func:`~frozenvl.flame.evaluate.score_zero_shot`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from frozenvl.data.synth import iter_world_split
from frozenvl.flame.inference import image_transform

WORLD_CLASSIFICATION_SPLITS = ("classification", "heldout")


def with_article(name: str) -> str:
    """A class name as the world's captions say it: "a red square", "an orange circle"."""
    return f"an {name}" if name[:1] in ("a", "e", "i", "o", "u") else f"a {name}"


@dataclass
class TensorClassificationSet:
    images: torch.Tensor  # (N, 3, S, S)
    labels: list[int]
    classnames: list[str]


@dataclass
class TensorRetrievalSet:
    images: torch.Tensor  # (N, 3, S, S)
    captions: list[str]
    text_to_image: list[int]


def world_classification(world: str | os.PathLike, split: str, image_size: int,
                         limit: int | None = None) -> TensorClassificationSet:
    """Records of a classification split; class names are the records' ``choices`` (the same for all)."""
    transform = image_transform(image_size)
    images, labels, classnames = [], [], None
    for record in iter_world_split(world, split):
        if classnames is None:
            classnames = list(record["choices"])
        elif list(record["choices"]) != classnames:
            raise ValueError(f"{record['key']}: its choices differ from the split's first record")
        images.append(transform(record["images"][0]))
        labels.append(classnames.index(record["label"]))
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"{world}: the {split} split has no readable records")
    return TensorClassificationSet(torch.stack(images), labels, classnames)


def world_retrieval(world: str | os.PathLike, image_size: int, long: bool = True, split: str = "retrieval",
                    limit: int | None = None, language: str = "en") -> TensorRetrievalSet:
    """Images with their long caption (``long=True``) or their short captions; ``language``: ``en`` or one of
    the languages the world also writes its captions in (the record's ``translations``, e.g. ``fr``)."""
    transform = image_transform(image_size)
    images, captions, owner = [], [], []
    for record in iter_world_split(world, split):
        source = record
        if language != "en":
            source = record.get("translations", {}).get(language)
            if source is None:
                have = ", ".join(["en", *record.get("translations", {})])
                raise ValueError(f"{world}: record {record['key']} of the {split} split has no {language!r} "
                                 f"captions (it has: {have}); generate the world with this language")
        texts = source.get("long_captions") if long else source.get("captions")
        if not texts:
            continue
        owner.extend([len(images)] * len(texts))
        captions.extend(texts)
        images.append(transform(record["images"][0]))
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"{world}: the {split} split has no record with {'long ' if long else ''}captions")
    return TensorRetrievalSet(torch.stack(images), captions, owner)
