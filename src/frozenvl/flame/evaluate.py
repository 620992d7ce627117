"""FLAME evaluation: retrieval Recall@K in both directions, zero-shot classification, dataset loaders.

Loaders (each returns a :class:`RetrievalSet` or :class:`ClassificationSet` of image paths):

- ``karpathy``: COCO / Flickr30k retrieval JSON, either the Karpathy split file
  ``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}`` or the list form
  ``[{"image": path, "caption": [str, ...]}]``;
- ``urban1k``: Urban-1k folder layout ``image/NAME.jpg`` + ``caption/NAME.txt`` (one long caption per image);
- ``sharegpt4v``: ShareGPT4V-style JSON ``[{"image": path, "conversations": [..., {"from": "gpt", "value"}]}]``,
  the first ``limit`` entries (S4V-eval uses 1000);
- ``imagefolder``: ``root/CLASS/*.jpg`` for classification (class names from the folder names, ``_`` -> space).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from frozenvl.files import read_json
from frozenvl.flame.inference import (
    DEFAULT_CLASS_TEMPLATES,
    encode_image,
    encode_text,
    image_transform,
    similarity,
    zero_shot_classifier,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class RetrievalSet:
    images: list[str]  # image paths
    captions: list[str]
    text_to_image: list[int]  # image index of every caption


@dataclass
class ClassificationSet:
    images: list[str]
    labels: list[int]
    classnames: list[str]


def retrieval_metrics(sim: torch.Tensor, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K (in %) from an (I, T) image-text similarity matrix.

    image->text: a hit if any caption of the image is among its top K texts; text->image: a hit if the
    caption's image is among its top K images.
    """
    n_img, n_txt = sim.shape
    owner = torch.as_tensor(list(text_to_image), dtype=torch.long)  # (T,)
    if owner.shape[0] != n_txt:
        raise ValueError(f"text_to_image has {owner.shape[0]} entries for {n_txt} texts")
    out = {}
    i2t_rank = sim.argsort(dim=1, descending=True)  # (I, T)
    t2i_rank = sim.T.argsort(dim=1, descending=True)  # (T, I)
    for k in ks:
        top_owner = owner[i2t_rank[:, :min(k, n_txt)]]  # (I, k)
        i2t = (top_owner == torch.arange(n_img)[:, None]).any(dim=1).float().mean().item()
        t2i = (t2i_rank[:, :min(k, n_img)] == owner[:, None]).any(dim=1).float().mean().item()
        out[f"image_to_text_R@{k}"] = 100 * i2t
        out[f"text_to_image_R@{k}"] = 100 * t2i
    return out


def classification_metrics(logits: torch.Tensor, labels: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict:
    """Top-K accuracy (in %) from (N, C) scores."""
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    top = logits.argsort(dim=1, descending=True)
    return {f"top{k}": 100 * (top[:, :min(k, logits.shape[1])] == labels_t[:, None]).any(1).float().mean().item()
            for k in ks}


def _read_json(path: str | os.PathLike):
    """The JSON in ``path``; a file that is not UTF-8, not JSON or nested too deeply is one ValueError naming it."""
    return read_json(path, "file")


# What reading one malformed entry raises (a missing key, a number where a text goes, an entry that is not an
# object): the entry is skipped, and one warning names the file and the count.
_ENTRY_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def _warn_skipped(path: str | os.PathLike, skipped: int) -> None:
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} entries with missing, empty or malformed fields", stacklevel=3)


def _karpathy_entry(e: dict, split: str) -> tuple[str, list[str]] | None:
    """(image path, captions) of one Karpathy image entry in ``split``; None for other splits."""
    if e.get("split", split) != split:
        return None
    caps = [s["raw"].strip() for s in e["sentences"]]
    if not e["filename"] or not all(isinstance(c, str) and c for c in caps) or not caps:
        raise ValueError("empty filename or caption")
    return str(Path(e.get("filepath", "")) / e["filename"]), caps


def load_karpathy(path: str | os.PathLike, image_root: str | os.PathLike = "", split: str = "test") -> RetrievalSet:
    data, root = _read_json(path), Path(image_root)
    images, captions, owner = [], [], []
    entries, skipped = [], 0
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        for e in data["images"]:
            try:
                entry = _karpathy_entry(e, split)
            except _ENTRY_ERRORS:
                skipped += 1
                continue
            if entry is not None:
                entries.append(entry)
        if not entries:
            splits = sorted({str(e.get("split")) for e in data["images"] if isinstance(e, dict)})
            raise ValueError(f"{path}: no usable images in split {split!r} (splits in the file: "
                             f"{', '.join(splits) or 'none'})")
    elif isinstance(data, list):
        for e in data:
            try:
                caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
                if not isinstance(e["image"], str) or not caps or not all(isinstance(c, str) for c in caps):
                    raise ValueError("not an image path and captions")
                entries.append((e["image"], caps))
            except _ENTRY_ERRORS:
                skipped += 1
        if not entries:
            raise ValueError(f"{path}: no usable {{image, caption}} entries")
    else:
        raise ValueError(f"{path}: expected a Karpathy split file or a list of {{image, caption}}")
    _warn_skipped(path, skipped)
    for image, caps in entries:
        owner.extend([len(images)] * len(caps))
        captions.extend(caps)
        images.append(str(root / image))
    return RetrievalSet(images, captions, owner)


def load_urban1k(root: str | os.PathLike) -> RetrievalSet:
    root = Path(root)
    images = sorted(p for p in (root / "image").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f"{root}/image has no images (Urban-1k layout: image/ and caption/)")
    captions = []
    for image in images:
        caption = root / "caption" / f"{image.stem}.txt"
        if not caption.is_file():
            raise FileNotFoundError(f"Urban-1k caption {caption} is missing")
        captions.append(caption.read_text(encoding="utf-8").strip())
    return RetrievalSet([str(p) for p in images], captions, list(range(len(images))))


def load_sharegpt4v(path: str | os.PathLike, image_root: str | os.PathLike = "", limit: int = 1000) -> RetrievalSet:
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    data, root = _read_json(path), Path(image_root)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of ShareGPT4V entries")
    images, captions = [], []
    for entry in data[:limit]:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise ValueError(f"{path}: entry {len(images)} is not an object with an 'image' path")
        answers = [t["value"] for t in entry.get("conversations") or []
                   if isinstance(t, dict) and t.get("from") == "gpt" and isinstance(t.get("value"), str)]
        if not answers:
            raise ValueError(f"{path}: entry {entry.get('id', len(images))} has no 'gpt' caption")
        images.append(str(root / entry["image"]))
        captions.append(answers[0].strip())
    return RetrievalSet(images, captions, list(range(len(images))))


def load_image_folder(root: str | os.PathLike) -> ClassificationSet:
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root} has no class folders (ImageFolder layout: root/CLASS/image)")
    images, labels = [], []
    for label, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(str(p))
                labels.append(label)
    return ClassificationSet(images, labels, [c.replace("_", " ") for c in classes])


LOADERS = {"karpathy": load_karpathy, "urban1k": load_urban1k, "sharegpt4v": load_sharegpt4v}


def load_images(paths: Sequence[str], image_size: int) -> torch.Tensor:
    """(N, 3, S, S) tensor; an unreadable image is an error that names the file."""
    from PIL import Image

    transform = image_transform(image_size)
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(transform(im))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # bombs: PIL's pixel limit
            raise OSError(f"cannot read image {p}: {e}") from e
    return torch.stack(out)


def score_retrieval(model, encoder, images: torch.Tensor, captions: Sequence[str], text_to_image: Sequence[int],
                    aggregate: str = "mean_embedding", batch_size: int = 32) -> dict:
    """Recall@1/5/10 both ways for preprocessed images (N, 3, S, S). ``model`` needs ``encode_image``;
    ``encoder`` needs ``encode(captions) -> (B, K, D)`` (a FLAME text encoder, or a baseline's text tower)."""
    image_features = encode_image(model, images, batch_size)
    text_features = encode_text(encoder, list(captions), aggregate, batch_size)
    metrics = retrieval_metrics(similarity(image_features, text_features), text_to_image)
    return {"task": "retrieval", "aggregate": aggregate, "num_images": len(images), "num_captions": len(captions),
            **metrics}


def score_zero_shot(model, encoder, images: torch.Tensor, labels: Sequence[int], classnames: Sequence[str],
                    templates: Sequence[str] = DEFAULT_CLASS_TEMPLATES, aggregate: str = "mean_embedding",
                    batch_size: int = 32) -> dict:
    """Top-1/5 zero-shot accuracy for preprocessed images (N, 3, S, S); same ``model`` / ``encoder`` contract."""
    image_features = encode_image(model, images, batch_size)
    classifier = zero_shot_classifier(encoder, classnames, templates, aggregate, batch_size)
    metrics = classification_metrics(similarity(image_features, classifier), labels)
    return {"task": "zero_shot", "aggregate": aggregate, "num_images": len(images), "num_classes": len(classnames),
            **metrics}


def evaluate_retrieval(model, encoder, dataset: RetrievalSet, aggregate: str = "mean_embedding",
                       batch_size: int = 32) -> dict:
    images = load_images(dataset.images, model.config.vision.image_size)
    return score_retrieval(model, encoder, images, dataset.captions, dataset.text_to_image, aggregate, batch_size)


def evaluate_zero_shot(model, encoder, dataset: ClassificationSet, templates: Sequence[str] = DEFAULT_CLASS_TEMPLATES,
                       aggregate: str = "mean_embedding", batch_size: int = 32) -> dict:
    images = load_images(dataset.images, model.config.vision.image_size)
    return score_zero_shot(model, encoder, images, dataset.labels, dataset.classnames, templates, aggregate,
                           batch_size)
