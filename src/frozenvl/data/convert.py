"""Converters from common source layouts to frozenvl shards.

- `convert_folder`: a folder of images + a CSV or JSONL file of captions -> image-text pairs.
- `convert_coco`: COCO captions JSON + image folder -> pairs, or captioning / retrieval evaluation records.
- `convert_vqav2`: VQAv2 questions (+ annotations) JSON + image folder -> VQA records.
- `convert_mmc4`: MMC4-style JSONL (text_list + image_info) + local images -> interleaved pages.
- `convert_videos`: a folder of video files + a CSV or JSONL file of captions -> video-text pairs, the frames
  decoded at 1 FPS (`frozenvl.data.video`).

Each writes shards of `shard_size` samples, shows a progress bar, and returns a `ConvertReport` with what was
written and what was skipped, by reason. Source images are stored as they are (verified to decode) unless
`max_size` asks for a downscale.

Bad data: one bad record (a missing or mistyped field, a line that is not JSON or nests deeper than Python's
stack, a CSV field over the csv module's 131072 characters, a repeated key, a missing, corrupt or oversized image)
is skipped and counted, never the end of a conversion. A file that cannot be used at all (missing, not UTF-8 text,
not JSON, not the expected layout, a CSV without the needed columns) is one `ValueError` / `FileNotFoundError`
naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from frozenvl.data.formats import (
    RawSample,
    caption_record,
    interleaved_sample,
    pair_sample,
    retrieval_record,
    video_sample,
    vqa_record,
)
from frozenvl.data.shards import MAX_MEMBER_BYTES, ShardWriter, member_cap
from frozenvl.data.skips import BadSample, SkipCounter
from frozenvl.data.video import check_sampling, find_video_file, read_video_frames

IMAGE_COLUMNS = ("image", "file", "filename", "file_name", "path", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title")
VIDEO_COLUMNS = ("video", "video_id", "file", "filename", "file_name", "path", "video_path")


@dataclass
class ConvertReport:
    written: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: SkipCounter = field(default_factory=SkipCounter)

    def summary(self) -> str:
        head = f"wrote {self.written} samples in {len(self.shards)} shards; skipped {self.skipped.total}"
        return head if not self.skipped.total else head + ":\n" + self.skipped.report()


def safe_key(text: str) -> str:
    """A webdataset key: letters, digits, '_' and '-' only (a '.' would split the key)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def load_image_bytes(path: Path, max_size: int | None = None, max_pixels: int = 64_000_000) -> bytes:
    """The image file's bytes, verified to decode; downscaled (longest side <= max_size) when asked. Files over
    the reader's member cap and images over `max_pixels` (the loader's default) are skipped, as the loader would."""
    if not path.is_file():
        raise BadSample("missing_image", str(path))
    if path.stat().st_size > MAX_MEMBER_BYTES:
        raise BadSample("member_too_large", f"{path}: {path.stat().st_size} bytes (cap {MAX_MEMBER_BYTES})")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise BadSample("image_too_large", f"{path}: {img.width}x{img.height}")
            img.load()
            if max_size is None or max(img.size) <= max_size:
                return data
            fmt = "JPEG" if img.format == "JPEG" else "PNG"
            img = img.convert("RGB")
            img.thumbnail((max_size, max_size), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            return buf.getvalue()
    except BadSample:
        raise
    except Image.DecompressionBombError as e:
        raise BadSample("image_too_large", f"{path}: {e}") from None
    except Exception as e:
        raise BadSample("corrupt_image", f"{path}: {type(e).__name__}: {e}") from None


def _over_cap(sample: RawSample) -> str | None:
    """The first member of ``sample`` that the shard reader would skip unread (over its cap,
    :func:`~frozenvl.data.shards.member_cap`: a caption over 1 MiB), described; None when every member fits."""
    for ext, data in sample.items():
        if ext.startswith("__"):
            continue
        size, cap = len(data.encode("utf-8") if isinstance(data, str) else data), member_cap(ext)
        if size > cap:
            return f"{sample['__key__']}.{ext}: {size} bytes (cap {cap})"
    return None


def _claim_output(out_dir: Path, prefix: str, overwrite: bool) -> None:
    """A conversion writes ``{prefix}-000000.tar`` on: the shards of an earlier one with the same prefix in the
    folder would be partly overwritten and partly left to mix with the new ones. Refused (one error naming the
    folder) unless ``overwrite``, which removes them first; the ``.tar.tmp`` of a killed conversion always goes."""
    shard = re.compile(rf"{re.escape(prefix)}-\d{{6}}\.tar(\.tmp)?")
    old = sorted(p for p in out_dir.iterdir() if shard.fullmatch(p.name)) if out_dir.is_dir() else []
    whole = [p for p in old if p.suffix == ".tar"]
    if whole and not overwrite:
        raise FileExistsError(f"output folder {out_dir} already holds {len(whole)} '{prefix}' shards ({whole[0].name}"
                              f"{' ...' if len(whole) > 1 else ''}) of an earlier conversion: pass --overwrite "
                              "(overwrite=True) to replace them, or give another folder or --prefix")
    for p in old:
        p.unlink()


def _write(samples: Iterable[RawSample | BadSample], out_dir: str | Path, prefix: str, shard_size: int,
           total: int | None, progress: bool, report: ConvertReport | None = None,
           overwrite: bool = False) -> ConvertReport:
    report = report or ConvertReport()
    _claim_output(Path(out_dir), prefix, overwrite)
    keys: set[str] = set()  # over all shards: a key written twice would be two samples of one name
    with ShardWriter(out_dir, prefix, max_samples=shard_size) as w:
        for s in tqdm(samples, total=total, desc=f"convert {prefix}", disable=not progress):
            if isinstance(s, BadSample):
                report.skipped.add(s.reason, s.detail)
            elif s["__key__"] in keys:
                report.skipped.add("duplicate_key", f"{s['__key__']}: the first record of this key was kept")
            elif (too_large := _over_cap(s)) is not None:  # written, it would be skipped at every read
                report.skipped.add("member_too_large", too_large)
            else:
                keys.add(str(s["__key__"]))
                w.write(s)
                report.written += 1
    report.shards = [str(p) for p in w.shards]
    return report


# What a malformed record raises when a field has an unexpected type or value (a list where a name goes, an id
# that cannot be a key): the record is skipped and counted ('bad_field'), with the error in the detail.
RECORD_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError)


def _guard(make: Any, where: str = "record") -> RawSample | BadSample:
    try:
        return make()
    except BadSample as e:
        return e
    except RECORD_ERRORS as e:
        return BadSample("bad_field", f"{where}: {type(e).__name__}: {e}")


def _row_key(row: dict, i: int, name, caption, seen: set[str]) -> str:
    """The sample key of caption row ``i`` naming the file ``name`` (its ``key`` column, else the file's stem and
    the row number; made unique against ``seen``, which it joins); a missing, non-text or empty caption is a bad
    sample."""
    if not isinstance(caption, str):
        raise BadSample("missing_field" if caption is None else "bad_field", f"row {i}: caption {caption!r}")
    if not caption.strip():
        raise BadSample("empty_text", f"row {i}")
    key = safe_key(str(row.get("key") or f"{Path(str(name)).stem}_{i}"))
    if key in seen:
        key = safe_key(f"{key}_{i}")
    seen.add(key)
    return key


def _pick(row: dict[str, Any], names: tuple[str, ...], given: str | None) -> Any:
    if given is not None:
        return row.get(given)
    present = [row[n] for n in names if row.get(n) is not None]
    return next((v for v in present if v != ""), present[0] if present else None)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Excel's CSVs) is not text
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _json_line(line: str | bytes, where: str) -> Any:
    """One JSONL line, or BadSample('bad_json') naming the file and line."""
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadSample("bad_json", f"{where}: {e}") from None
    except RecursionError:
        raise BadSample("bad_json", f"{where}: nested too deeply") from None


def read_caption_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV (with a header) or JSONL caption file. A row that cannot be read (a line that is not JSON,
    a CSV field over the csv module's limit of 131072 characters) is ``{"__bad__": why, "__reason__": reason}``
    so that the converter counts it and goes on."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, or a FIFO whose read would block
        raise ValueError(f"caption file {path} is not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    text = _read_text(path, "caption file")
    rows: list[Any] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(_json_line(line, f"{path}:{n}"))
                except BadSample as e:
                    rows.append({"__bad__": e.detail, "__reason__": e.reason})
        return rows
    reader = csv.DictReader(io.StringIO(text))
    while True:
        try:
            rows.append(next(reader))
        except StopIteration:
            return rows
        except csv.Error as e:  # the reader goes on with the next line
            rows.append({"__bad__": f"{path}:{reader.line_num}: {e}", "__reason__": "bad_field"})


def _check_columns(path: Path, rows: list[Any], image_column: str | None, caption_column: str | None,
                   media: tuple[str, tuple[str, ...], str] = ("image", IMAGE_COLUMNS, "--image-column")) -> None:
    """One clear error for a caption file without the columns a pair needs (a CSV without a header line reads
    its first row as the header): naming the file, the missing column and the columns it has."""
    if not rows:
        raise ValueError(f"caption file {path} has no rows")
    columns: set[str] = set()
    for row in rows:
        if isinstance(row, dict) and "__bad__" not in row:
            columns.update(str(k) for k in row if k is not None)
    is_csv = path.suffix.lower() not in (".jsonl", ".json", ".ndjson")
    for what, given, names, flag in ((media[0], image_column, media[1], media[2]),
                                     ("caption", caption_column, CAPTION_COLUMNS, "--caption-column")):
        wanted = (given,) if given is not None else names
        if not columns or any(n in columns for n in wanted):
            continue
        expected = f"column {given!r}" if given is not None else f"{what} column (one of {', '.join(names)}; " \
                                                                  f"or {flag})"
        header = f"; the header line is {sorted(columns)} (a CSV needs a header line first)" if is_csv else \
            f"; the rows have {sorted(columns)}"
        raise ValueError(f"caption file {path} has no {expected}{header}")


def convert_folder(image_dir: str | Path, captions: str | Path, out_dir: str | Path, *, shard_size: int = 1000,
                   prefix: str = "pairs", image_column: str | None = None, caption_column: str | None = None,
                   max_size: int | None = None, progress: bool = True, overwrite: bool = False) -> ConvertReport:
    """Pairs from a folder of images and a CSV/JSONL of rows {image, caption[, long_caption, key, language]}."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    rows = read_caption_rows(captions)
    _check_columns(Path(captions), rows, image_column, caption_column)
    seen: set[str] = set()

    def one(i: int, row: dict[str, Any]) -> RawSample:
        if not isinstance(row, dict) or "__bad__" in row:
            if isinstance(row, dict):
                raise BadSample(row.get("__reason__", "bad_json"), str(row["__bad__"]))
            raise BadSample("bad_json", f"{captions} row {i}: {str(row)[:80]} is not an object")
        name, caption = _pick(row, IMAGE_COLUMNS, image_column), _pick(row, CAPTION_COLUMNS, caption_column)
        if not name:
            raise BadSample("missing_field", f"row {i}: no image column")
        key = _row_key(row, i, name, caption, seen)
        long_caption = row.get("long_caption") or None
        if long_caption is not None and not isinstance(long_caption, str):
            raise BadSample("bad_field", f"row {i}: long_caption {long_caption!r}")
        return pair_sample(key, load_image_bytes(image_dir / str(name), max_size), caption.strip(),
                           long_caption=long_caption, language=row.get("language") or None)

    samples = (_guard(lambda i=i, row=row: one(i, row), f"{captions} row {i}") for i, row in enumerate(rows))
    return _write(samples, out_dir, prefix, shard_size, len(rows), progress, overwrite=overwrite)


def _load_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(_read_text(path, what))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to read") from None


def convert_coco(captions_json: str | Path, image_dir: str | Path, out_dir: str | Path, *,
                 records: str = "pairs", shard_size: int = 1000, prefix: str | None = None,
                 max_size: int | None = None, progress: bool = True, overwrite: bool = False) -> ConvertReport:
    """COCO captions: records='pairs' (one pair per caption), 'caption' or 'retrieval' (one record per image)."""
    if records not in ("pairs", "caption", "retrieval"):
        raise ValueError(f"records must be 'pairs', 'caption' or 'retrieval', got {records!r}")
    coco = _load_json(captions_json, "COCO captions file")
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) \
            or not isinstance(coco.get("annotations"), list):
        raise ValueError(f"{captions_json} is not a COCO captions file (needs 'images' and 'annotations' lists)")
    image_dir = Path(image_dir)
    report = ConvertReport()
    files: dict[Any, Any] = {}
    for img in coco["images"]:
        if isinstance(img, dict) and isinstance(img.get("id"), int | str) and not isinstance(img["id"], bool):
            files.setdefault(img["id"], img.get("file_name"))
        else:
            report.skipped.add("bad_field", f"{captions_json}: image entry {str(img)[:80]} (needs an int or str 'id')")
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in coco["annotations"]:
        if isinstance(ann, dict) and isinstance(ann.get("image_id"), int | str) and not isinstance(ann["image_id"],
                                                                                                 bool):
            by_image[ann["image_id"]].append(ann)
        else:
            report.skipped.add("bad_field", f"{captions_json}: annotation {str(ann)[:80]} (needs an int or str "
                                            "'image_id')")

    def image(image_id: Any) -> bytes:
        if image_id not in files or not files[image_id]:
            raise BadSample("missing_field", f"image {image_id} is not in 'images'")
        if not isinstance(files[image_id], str):
            raise BadSample("bad_field", f"image {image_id}: file_name {files[image_id]!r}")
        return load_image_bytes(image_dir / files[image_id], max_size)

    def per_image(image_id: Any) -> RawSample:
        caps = [a["caption"].strip() for a in by_image[image_id]
                if isinstance(a.get("caption"), str) and a["caption"].strip()]
        if not caps:
            raise BadSample("empty_text", f"image {image_id}: no caption")
        key = safe_key(f"coco{image_id}")
        extra = {"image_id": image_id}
        if records == "caption":
            return caption_record(key, image(image_id), caps, extra=extra)
        return retrieval_record(key, image(image_id), caps, extra=extra)

    def pairs() -> Iterator[RawSample | BadSample]:
        for image_id, anns in by_image.items():
            try:
                data = image(image_id)  # read once for all captions of the image
            except BadSample as e:
                yield from (e for _ in anns)
                continue
            except RECORD_ERRORS as e:
                bad = BadSample("bad_field", f"{captions_json}: image {image_id!r}: {type(e).__name__}: {e}")
                yield from (bad for _ in anns)
                continue
            for a in anns:
                cap = a.get("caption")
                if not isinstance(cap, str) or not cap.strip():
                    yield BadSample("empty_text" if isinstance(cap, str) else "missing_field", f"ann {a.get('id')}")
                    continue
                yield _guard(lambda a=a, cap=cap, image_id=image_id, data=data: pair_sample(
                    safe_key(f"coco{image_id}_{a.get('id')}"), data, cap.strip(), extra={"image_id": image_id}),
                             f"{captions_json}: annotation {a.get('id')!r}")

    if records == "pairs":
        samples: Iterable[RawSample | BadSample] = pairs()
        total = sum(len(v) for v in by_image.values())
    else:
        samples = (_guard(lambda i=i: per_image(i), f"{captions_json}: image {i!r}") for i in by_image)
        total = len(by_image)
    return _write(samples, out_dir, prefix or f"coco-{records}", shard_size, total, progress, report, overwrite)


def _index_images_by_id(image_dir: Path) -> dict[int, Path]:
    """COCO-style names (COCO_val2014_000000000042.jpg, 42.png): the last group of digits is the image id."""
    out = {}
    for p in sorted(image_dir.iterdir()):
        m = re.findall(r"\d+", p.stem)
        if p.is_file() and m:
            out.setdefault(int(m[-1]), p)
    return out


def convert_vqav2(questions_json: str | Path, image_dir: str | Path, out_dir: str | Path, *,
                  annotations_json: str | Path | None = None, shard_size: int = 1000, prefix: str = "vqav2",
                  max_size: int | None = None, progress: bool = True, overwrite: bool = False) -> ConvertReport:
    """VQAv2: one record per question; answers from the annotations file (none for test splits)."""
    qs = _load_json(questions_json, "VQAv2 questions file")
    if not isinstance(qs, dict) or not isinstance(qs.get("questions"), list):
        raise ValueError(f"{questions_json} is not a VQAv2 questions file (needs a 'questions' list)")
    answers: dict[Any, list[str]] = {}
    if annotations_json is not None:
        anns = _load_json(annotations_json, "VQAv2 annotations file")
        if not isinstance(anns, dict) or not isinstance(anns.get("annotations"), list):
            raise ValueError(f"{annotations_json} is not a VQAv2 annotations file (needs 'annotations')")
        for a in anns["annotations"]:
            if isinstance(a, dict) and isinstance(a.get("answers"), list) \
                    and isinstance(a.get("question_id"), int | str):
                answers[a["question_id"]] = [x.get("answer") for x in a["answers"] if isinstance(x, dict)]
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    images = _index_images_by_id(image_dir)

    def one(q: Any) -> RawSample:
        if not isinstance(q, dict) or "question_id" not in q or "image_id" not in q:
            raise BadSample("missing_field", f"{questions_json}: question {str(q)[:80]}")
        if not isinstance(q["question_id"], int | str) or isinstance(q["question_id"], bool):
            raise BadSample("bad_field", f"{questions_json}: question_id {q['question_id']!r}")
        question = q.get("question")
        if not isinstance(question, str) or not question.strip():
            raise BadSample("empty_text", f"question {q.get('question_id')}")
        path = images.get(q["image_id"]) if isinstance(q["image_id"], int) else None
        if path is None:
            raise BadSample("missing_image", f"image {q['image_id']} of question {q['question_id']}")
        ans = answers.get(q["question_id"], []) if annotations_json is not None else []
        if annotations_json is not None and not [a for a in ans if isinstance(a, str) and a.strip()]:
            raise BadSample("missing_field", f"question {q['question_id']}: no answers")
        ans = [a.strip() for a in ans if isinstance(a, str) and a.strip()] or ["<unknown>"]
        return vqa_record(safe_key(f"vqa{q['question_id']}"), load_image_bytes(path, max_size), question.strip(),
                          ans, question_id=q["question_id"], extra={"image_id": q["image_id"],
                                                                    "has_answers": annotations_json is not None})

    samples = (_guard(lambda q=q: one(q), f"{questions_json}: question {i}") for i, q in enumerate(qs["questions"]))
    return _write(samples, out_dir, prefix, shard_size, len(qs["questions"]), progress, overwrite=overwrite)


def convert_mmc4(jsonl: str | Path, image_dir: str | Path, out_dir: str | Path, *, shard_size: int = 1000,
                 prefix: str = "mmc4", max_size: int | None = None, progress: bool = True,
                 overwrite: bool = False) -> ConvertReport:
    """MMC4 documents (one JSON per line: text_list, image_info[{image_name, matched_text_index, matched_sim}])
    -> interleaved pages; each image is placed before the sentence it is matched to, as in MMC4's usage."""
    path = Path(jsonl)
    if not path.is_file():
        raise FileNotFoundError(f"MMC4 jsonl not found: {path}")
    image_dir = Path(image_dir)
    lines = path.read_bytes().splitlines()  # decoded line by line: one bad line is one skipped document
    report = ConvertReport()

    def one(n: int, line: bytes) -> RawSample:
        doc = _json_line(line, f"{path}:{n}")
        if not isinstance(doc, dict) or not isinstance(doc.get("text_list"), list):
            raise BadSample("missing_field", f"{path}:{n}: no text_list")
        text_list = doc["text_list"]
        placed: dict[int, list[tuple[bytes, float | None]]] = defaultdict(list)
        for info in doc.get("image_info") or []:
            idx = info.get("matched_text_index") if isinstance(info, dict) else None
            if not isinstance(idx, int) or not 0 <= idx < len(text_list) or not info.get("image_name"):
                report.skipped.add("bad_field", f"{path}:{n}: image_info {info!r}")
                continue
            if not isinstance(info["image_name"], str):
                report.skipped.add("bad_field", f"{path}:{n}: image_name {info['image_name']!r}")
                continue
            try:
                data = load_image_bytes(image_dir / info["image_name"], max_size)
            except BadSample as e:  # one missing image does not lose the page
                report.skipped.add(e.reason, e.detail)
                continue
            sim = info.get("matched_sim")
            placed[idx].append((data, float(sim) if isinstance(sim, int | float) else None))
        if not placed:
            raise BadSample("no_images", f"{path}:{n}")
        texts: list[str | None] = []
        images: list[bytes | None] = []
        sims: list[float | None] = []
        for i, sentence in enumerate(text_list):
            for data, sim in placed.get(i, []):
                texts.append(None), images.append(data), sims.append(sim)
            if isinstance(sentence, str) and sentence.strip():
                texts.append(sentence.strip()), images.append(None), sims.append(None)
        extra = {k: doc[k] for k in ("url",) if isinstance(doc.get(k), str)}
        return interleaved_sample(safe_key(f"{prefix}{n:08d}"), texts, images, similarities=sims, extra=extra)

    samples = (_guard(lambda n=n, line=line: one(n, line), f"{path}:{n}") for n, line in enumerate(lines)
               if line.strip())
    return _write(samples, out_dir, prefix, shard_size, len(lines), progress, report, overwrite)


def convert_videos(video_dir: str | Path, captions: str | Path, out_dir: str | Path, *, fps: float = 1.0,
                   max_frames: int | None = None, shard_size: int = 1000, prefix: str = "videos",
                   video_column: str | None = None, caption_column: str | None = None, max_size: int | None = None,
                   image_format: str = "jpg", progress: bool = True, overwrite: bool = False) -> ConvertReport:
    """Video-text pairs from a folder of video files and a CSV/JSONL of rows {video, caption[, key]}: each video
    decoded at ``fps`` (at most ``max_frames`` frames spread over the clip, :func:`read_video_frames`), frames
    stored as ``image_format`` (JPEG by default: natural frames) and downscaled to ``max_size`` when asked. A row
    may name the file without its extension (MSR-VTT's ``video7010``); several rows of one video (MSR-VTT's 20
    captions) give one sample each, the video decoded once. A missing video is 'missing_video', one that cannot be
    decoded 'corrupt_video': skipped and counted."""
    check_sampling(fps, max_frames)  # before any file is read
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video folder not found: {video_dir}")
    rows = read_caption_rows(captions)
    _check_columns(Path(captions), rows, video_column, caption_column, ("video", VIDEO_COLUMNS, "--video-column"))
    seen: set[str] = set()
    decoded: dict[str, list[Image.Image] | BadSample] = {}  # the last video's frames (rows of a video are adjacent)

    def frames_of(name: str) -> list[Image.Image]:
        if name not in decoded:
            decoded.clear()
            path = find_video_file(video_dir, name)
            try:
                if path is None:
                    raise BadSample("missing_video", str(video_dir / name))
                frames = read_video_frames(path, fps, max_frames)
                if max_size is not None:
                    frames = [f.copy() for f in frames]
                    for f in frames:
                        f.thumbnail((max_size, max_size), Image.BICUBIC)
                decoded[name] = frames
            except BadSample as e:
                decoded[name] = e
            except ValueError as e:  # VideoDecodeError: the message names the file
                decoded[name] = BadSample("corrupt_video", str(e))
        if isinstance(decoded[name], BadSample):
            raise decoded[name]
        return decoded[name]

    def one(i: int, row: dict[str, Any]) -> RawSample:
        if not isinstance(row, dict) or "__bad__" in row:
            if isinstance(row, dict):
                raise BadSample(row.get("__reason__", "bad_json"), str(row["__bad__"]))
            raise BadSample("bad_json", f"{captions} row {i}: {str(row)[:80]} is not an object")
        name, caption = _pick(row, VIDEO_COLUMNS, video_column), _pick(row, CAPTION_COLUMNS, caption_column)
        if not name or not isinstance(name, str | int):
            raise BadSample("missing_field" if not name else "bad_field", f"row {i}: video {name!r}")
        key = _row_key(row, i, name, caption, seen)
        return video_sample(key, frames_of(str(name)), caption.strip(), fps, extra={"video": str(name)},
                            image_format=image_format)

    samples = (_guard(lambda i=i, row=row: one(i, row), f"{captions} row {i}") for i, row in enumerate(rows))
    return _write(samples, out_dir, prefix, shard_size, len(rows), progress, overwrite=overwrite)
