"""Readers for the evaluation datasets' real file formats, all into one record type, :class:`EvalRecord`.

Supported: COCO / Flickr30k captions (Karpathy-split JSON and official COCO annotation JSON), VQAv2 and OK-VQA
(questions + annotations JSON), TextVQA and VizWiz JSON, ImageNet-style class folders with a class list,
HatefulMemes JSONL, and videos (video files or frame folders) with caption or QA annotations (MSVD / MSR-VTT
style).
Entries with missing, empty or malformed fields (a number where a text goes, an id that cannot be a key, an
entry that is not an object) are skipped and counted (a warning names the file and the count); a file that
cannot be parsed (missing, not UTF-8, not JSON, nested deeper than Python's stack, the wrong layout) raises one
error naming it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.data.formats import ESCAPED_END_OF_CHUNK
from frozenvl.data.video import find_video_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class EvalRecord:
    """One evaluation sample. Only the fields its task needs are set.

    ``image_path`` or ``image`` (an in-memory image) for images, ``frames`` (frame paths in time order) or
    ``video`` (a video file, decoded at 1 FPS when used: :func:`frozenvl.data.video.read_video_frames`) for
    videos; ``captions`` for captioning; ``question`` and ``answers`` (all human answers) for VQA; ``label``
    (class index or 0/1) for classification; ``text`` for text written on the image (HatefulMemes).
    """

    key: str
    image_path: str | None = None
    image: Any = None
    frames: list[str] | None = None
    video: str | None = None
    question: str | None = None
    answers: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    label: int | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def media(self) -> Any:
        """What the model sees for this sample: the frame list, the video file, the in-memory image, or the image
        path."""
        if self.frames is not None:
            return self.frames
        if self.video is not None:
            return self.video
        return self.image if self.image is not None else self.image_path

    @property
    def caption(self) -> str | None:
        return self.captions[0] if self.captions else None

    @property
    def answer(self) -> str | None:
        """The most common human answer (first seen wins a tie): the answer shown in a demonstration."""
        if not self.answers:
            return None
        counts = Counter(self.answers)
        return max(self.answers, key=lambda a: counts[a])  # max keeps the first of equal counts


# What reading one malformed entry raises (a number where a text goes, a list where an id goes, an entry that is
# not an object): the entry is skipped and counted like one with a missing field.
_ENTRY_ERRORS = (AttributeError, KeyError, TypeError, ValueError, IndexError)


def _read_text(path: str | os.PathLike) -> str:
    if os.path.exists(path) and not os.path.isfile(path):  # a folder, or a FIFO whose open() would block
        raise ValueError(f"evaluation file {path} is not a regular file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"evaluation file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _parse_json(text: str | bytes, where: str | os.PathLike) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to read") from None


def _load_json(path: str | os.PathLike) -> Any:
    return _parse_json(_read_text(path), path)


def _entries(data: Any, path: str | os.PathLike, name: str | None = None) -> list:
    """``data[name]`` (or ``data``) as a list, or one error naming the file."""
    items = data.get(name) if name is not None and isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"{path}: {repr(name) + ' must be' if name else 'expected'} a JSON list, "
                         f"got {type(items).__name__}")
    return items


def _text(value: Any) -> str:
    """A stripped string field, safe in a prompt; anything else is a malformed entry (TypeError). As in the data
    loader, a literal ``<image>`` makes the entry malformed (it would ask for an image the prompt does not have)
    and a literal ``<|endofchunk|>`` is written as ``<endofchunk>``, ordinary text, not the control token."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if IMAGE_TOKEN in value:
        raise ValueError(f"a literal {IMAGE_TOKEN} in {value[:60]!r}")
    return value.strip().replace(END_OF_CHUNK, ESCAPED_END_OF_CHUNK)


def _warn_skipped(path: str | os.PathLike, skipped: int, what: str) -> None:
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} {what} with missing, empty or malformed fields", stacklevel=3)


def _join(root: str | os.PathLike | None, *parts: str) -> str:
    return str(Path(root, *parts)) if root is not None else str(Path(*parts))


# ------------------------------------------------------------------------------------------------ captions


def read_coco_captions(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                       split: str | Sequence[str] | None = None) -> list[EvalRecord]:
    """COCO or Flickr30k captions, one record per image with all its captions.

    Two layouts are recognised. Karpathy split files (``{"images": [{"filename", "filepath"?, "split",
    "sentences": [{"raw"}], "cocoid" | "imgid"}]}``) can be filtered by ``split`` (e.g. ``"test"`` or
    ``["train", "restval"]``). Official COCO annotations (``{"images": [{"id", "file_name"}], "annotations":
    [{"image_id", "caption"}]}``) hold a single split, so ``split`` must be None.
    """
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path}: expected a JSON object with an 'images' list (COCO or Karpathy format)")
    if "annotations" in data:
        if split is not None:
            raise ValueError(f"{path}: official COCO annotation files hold one split; do not pass split=")
        return _read_official_coco(path, data, image_root)
    return _read_karpathy(path, data, image_root, split)


def _read_karpathy(path, data: dict, image_root, split) -> list[EvalRecord]:
    wanted = {split} if isinstance(split, str) else (set(split) if split is not None else None)
    records, skipped = [], 0
    for image in _entries(data, path, "images"):
        try:
            if wanted is not None and image.get("split") not in wanted:
                continue
            captions = [_text(s.get("raw")) for s in image.get("sentences", [])]
            captions = [c for c in captions if c]
            if not image.get("filename") or not captions:
                skipped += 1
                continue
            key = str(image.get("cocoid", image.get("imgid", image["filename"])))
            folder = image.get("filepath", "")
            records.append(EvalRecord(key=key, image_path=_join(image_root, folder, image["filename"]),
                                      captions=captions, meta={"split": image.get("split")}))
        except _ENTRY_ERRORS:
            skipped += 1
    _warn_skipped(path, skipped, "images")
    return records


def _read_official_coco(path, data: dict, image_root) -> list[EvalRecord]:
    captions: dict[Any, list[str]] = {}
    skipped = 0
    for ann in _entries(data, path, "annotations"):
        try:
            text = _text(ann.get("caption"))
            if "image_id" not in ann or not text:
                skipped += 1
                continue
            captions.setdefault(ann["image_id"], []).append(text)
        except _ENTRY_ERRORS:
            skipped += 1
    records = []
    for image in _entries(data, path, "images"):
        try:
            if "id" not in image or not image.get("file_name") or image["id"] not in captions:
                skipped += 1
                continue
            records.append(EvalRecord(key=str(image["id"]), image_path=_join(image_root, image["file_name"]),
                                      captions=captions[image["id"]]))
        except _ENTRY_ERRORS:
            skipped += 1
    _warn_skipped(path, skipped, "entries")
    return records


# ------------------------------------------------------------------------------------------------ VQA


def read_vqav2(questions_path: str | os.PathLike, annotations_path: str | os.PathLike | None = None,
               image_root: str | os.PathLike | None = None,
               image_template: str = "COCO_val2014_{image_id:012d}.jpg") -> list[EvalRecord]:
    """VQAv2 / OK-VQA: ``{"questions": [{"question_id", "image_id", "question"}]}`` plus, when given, the
    annotations ``{"annotations": [{"question_id", "answers": [{"answer"}], ...}]}`` (all human answers kept,
    in order). ``image_template`` names the image file from its id (COCO train2014 / val2014 naming).
    """
    questions = _load_json(questions_path)
    if not isinstance(questions, dict) or "questions" not in questions:
        raise ValueError(f"{questions_path}: expected a JSON object with a 'questions' list")
    answers: dict[Any, dict] = {}
    if annotations_path is not None:
        annotations = _load_json(annotations_path)
        if not isinstance(annotations, dict) or "annotations" not in annotations:
            raise ValueError(f"{annotations_path}: expected a JSON object with an 'annotations' list")
        for a in _entries(annotations, annotations_path, "annotations"):
            try:
                answers[a["question_id"]] = a
            except _ENTRY_ERRORS:
                continue  # its question, if any, has no answers: skipped and counted below
    records, skipped = [], 0
    for q in _entries(questions, questions_path, "questions"):
        try:
            qid, text = q.get("question_id"), _text(q.get("question"))
            if qid is None or "image_id" not in q or not text:
                skipped += 1
                continue
            record = EvalRecord(key=str(qid), question=text,
                                image_path=_join(image_root, image_template.format(image_id=q["image_id"])),
                                meta={"image_id": q["image_id"]})
            if annotations_path is not None:
                ann = answers.get(qid)
                human = [_text(a["answer"]) for a in (ann or {}).get("answers", []) if a.get("answer")]
                human = [a for a in human if a]
                if not human:
                    skipped += 1
                    continue
                record.answers = human
                record.meta.update({k: ann[k] for k in ("question_type", "answer_type") if k in ann})
            records.append(record)
        except _ENTRY_ERRORS:
            skipped += 1
    _warn_skipped(questions_path, skipped, "questions")
    return records


def read_textvqa(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[EvalRecord]:
    """TextVQA: ``{"data": [{"question_id", "image_id", "question", "answers": [str, ...]}]}``; images are
    ``<image_id>.jpg``."""
    data = _load_json(path)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: expected a JSON object with a 'data' list (TextVQA format)")
    records, skipped = [], 0
    for item in _entries(data, path, "data"):
        try:
            text = _text(item.get("question"))
            if "question_id" not in item or "image_id" not in item or not text:
                skipped += 1
                continue
            records.append(EvalRecord(key=str(item["question_id"]), question=text,
                                      image_path=_join(image_root, f"{item['image_id']}.jpg"),
                                      answers=[a for a in map(_text, item.get("answers", [])) if a]))
        except _ENTRY_ERRORS:
            skipped += 1
    _warn_skipped(path, skipped, "questions")
    return records


def read_vizwiz(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[EvalRecord]:
    """VizWiz: a JSON list of ``{"image", "question", "answers": [{"answer"}], "answer_type"?}``; the key is
    the image file name (VizWiz has one question per image)."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list (VizWiz format)")
    records, skipped = [], 0
    for item in data:
        try:
            text = _text(item.get("question"))
            if not item.get("image") or not text:
                skipped += 1
                continue
            answers = [_text(a["answer"]) for a in item.get("answers", []) if a.get("answer")]
            records.append(EvalRecord(key=_text(item["image"]), question=text,
                                      image_path=_join(image_root, item["image"]), answers=[a for a in answers if a],
                                      meta={"answer_type": item.get("answer_type")}))
        except _ENTRY_ERRORS:
            skipped += 1
    _warn_skipped(path, skipped, "questions")
    return records


# ------------------------------------------------------------------------------------------------ classes


def read_class_names(path: str | os.PathLike) -> list[str] | dict[str, str]:
    """A class list: a text file (one name per line), a JSON list of names, or a JSON object mapping folder
    names (e.g. WordNet ids) to class names."""
    if str(path).endswith(".json"):
        names = _load_json(path)
        if not isinstance(names, (list, dict)):
            raise ValueError(f"{path}: expected a JSON list of class names or a folder -> name object")
        return names
    return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def read_class_folder(
    root: str | os.PathLike, class_names: Sequence[str] | dict[str, str] | None = None
) -> tuple[list[EvalRecord], list[str]]:
    """ImageNet-style folders ``root/<class folder>/<image>``; label = index of the folder in sorted order.

    ``class_names``: a list in sorted-folder order, a mapping folder -> name, or None (folder names are the
    class names). Returns the records (``meta["class_name"]`` set) and the class names by label.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"class folder root not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{root}: no class folders")
    if class_names is None:
        names = folders
    elif isinstance(class_names, dict):
        missing = [f for f in folders if f not in class_names]
        if missing:
            raise ValueError(f"{root}: no class name for folders {missing[:5]}")
        names = [class_names[f] for f in folders]
    else:
        if len(class_names) != len(folders):
            raise ValueError(f"{root}: {len(folders)} class folders but {len(class_names)} class names")
        names = list(class_names)
    records = []
    for label, folder in enumerate(folders):
        for image in sorted((root / folder).iterdir()):
            if image.suffix.lower() in IMAGE_EXTENSIONS:
                records.append(EvalRecord(key=f"{folder}/{image.name}", image_path=str(image), label=label,
                                          meta={"class_name": names[label]}))
    return records, names


def read_hateful_memes(path: str | os.PathLike,
                       image_root: str | os.PathLike | None = None) -> list[EvalRecord]:
    """HatefulMemes JSONL: one ``{"id", "img", "text", "label"?}`` per line (test files may lack labels)."""
    records, skipped = [], 0
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        item = _parse_json(line, f"{path}:{number}")
        try:
            if "id" not in item or not item.get("img") or item.get("text") is None:
                skipped += 1
                continue
            label = item.get("label")
            if label is not None and (isinstance(label, bool) or label not in (0, 1)):
                raise ValueError(f"label {label!r}")
            records.append(EvalRecord(key=str(item["id"]), image_path=_join(image_root, item["img"]),
                                      text=_text(item["text"]), label=None if label is None else int(label)))
        except _ENTRY_ERRORS:
            skipped += 1
    _warn_skipped(path, skipped, "memes")
    return records


# ------------------------------------------------------------------------------------------------ video


def video_frames(folder: str | os.PathLike, max_frames: int | None = None) -> list[str]:
    """The frame images of one video folder in name order, uniformly subsampled to ``max_frames``."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    frames = sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if max_frames is not None and len(frames) > max_frames:
        step = len(frames) / max_frames
        frames = [frames[int(i * step)] for i in range(max_frames)]
    return frames


def _video_media(root: str | os.PathLike, video_id: str, max_frames: int | None) -> dict[str, Any] | None:
    """A video's fields of :class:`EvalRecord`: ``frames`` of the folder ``root/<video_id>/``, else ``video``, the
    file ``root/<video_id>`` or ``root/<video_id>.<ext>`` (mp4, avi, webm, ...); None when neither exists."""
    folder = Path(root, video_id)
    if folder.is_dir():
        frames = video_frames(folder, max_frames)
        return {"frames": frames} if frames else None
    path = find_video_file(root, video_id)
    return {"video": str(path)} if path is not None else None


def _video_items(annotations: Any, path) -> Iterable[dict]:
    if isinstance(annotations, dict):  # {video_id: [caption, ...]} or {video_id: caption}
        for vid, caps in annotations.items():
            yield {"video_id": vid, "captions": [caps] if isinstance(caps, str) else caps}
    elif isinstance(annotations, list):
        yield from annotations
    else:
        raise ValueError(f"{path}: expected a JSON list or object of video annotations")


def read_video_captions(frames_root: str | os.PathLike, annotations_path: str | os.PathLike,
                        max_frames: int | None = None) -> list[EvalRecord]:
    """Video captioning: frames in ``frames_root/<video_id>/`` or a video file ``frames_root/<video_id>[.mp4]``
    (``max_frames`` subsamples a frame folder here; a file is decoded at 1 FPS when used, capped at the model's
    ``max_frames``); annotations either ``{video_id: [captions]}`` or a list of ``{"video_id", "caption"}`` rows
    (several rows per video allowed)."""
    captions: dict[str, list[str]] = {}
    skipped = 0
    for item in _video_items(_load_json(annotations_path), annotations_path):
        try:
            vid = item.get("video_id", item.get("video"))
            caps = [c for c in map(_text, item.get("captions", [item.get("caption")])) if c]
            if vid is None or not caps:
                skipped += 1
                continue
            captions.setdefault(str(vid), []).extend(caps)
        except _ENTRY_ERRORS:
            skipped += 1
    records = []
    for vid, caps in captions.items():
        media = _video_media(frames_root, vid, max_frames)
        if media is None:
            skipped += 1
            continue
        records.append(EvalRecord(key=vid, captions=caps, **media))
    _warn_skipped(annotations_path, skipped, "videos")
    return records


def read_video_qa(frames_root: str | os.PathLike, annotations_path: str | os.PathLike,
                  max_frames: int | None = None) -> list[EvalRecord]:
    """Video QA (MSVD-QA / MSRVTT-QA style): a JSON list of ``{"video_id" | "video", "question", "answer"}``
    (``"answers"`` lists allowed); frames in ``frames_root/<video_id>/`` or a video file
    ``frames_root/<video_id>[.mp4]``, as :func:`read_video_captions`. Keys are row indices."""
    records, skipped = [], 0
    media_cache: dict[str, dict[str, Any] | None] = {}
    for index, item in enumerate(_video_items(_load_json(annotations_path), annotations_path)):
        try:
            vid = item.get("video_id", item.get("video"))
            text = _text(item.get("question"))
            answers = item.get("answers", [item.get("answer")])
            answers = [str(a).strip() for a in answers if a is not None and str(a).strip()]
        except _ENTRY_ERRORS:
            skipped += 1
            continue
        if vid is None or not text or not answers:
            skipped += 1
            continue
        vid = str(vid)
        if vid not in media_cache:
            media_cache[vid] = _video_media(frames_root, vid, max_frames)
        if media_cache[vid] is None:
            skipped += 1
            continue
        records.append(EvalRecord(key=str(item.get("question_id", index)), question=text, answers=answers,
                                  meta={"video_id": vid}, **media_cache[vid]))
    _warn_skipped(annotations_path, skipped, "questions")
    return records
