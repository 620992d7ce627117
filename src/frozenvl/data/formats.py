"""The shard formats: how one sample of each kind is laid out as webdataset members, and how it is decoded.

A sample is a group of consecutive tar members sharing a key (`{key}.{ext}`). Every frozenvl sample has a
`json`
member whose `kind` field names its format (a plain `jpg` + `txt` pair without `kind`, as img2dataset
writes, is
read as a pair). See docs/data.md for a worked example of each.

Training kinds: `pair`, `interleaved`, `video`. Evaluation kinds: `caption`, `vqa`, `classification`,
`retrieval`, `video_qa`.

Decoded samples are plain dicts: `key`, `kind`, `images` (a list of PIL images; for video kinds a list
holding one
list of frames) and, for training kinds, `text` in the Flamingo format (`<image>caption<|endofchunk|>`),
plus the
json fields of the kind (caption, long_caption, answers, ...).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import Image

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.data.skips import BadSample

TRAIN_KINDS = ("pair", "interleaved", "video")
EVAL_KINDS = ("caption", "vqa", "classification", "retrieval", "video_qa")
KINDS = TRAIN_KINDS + EVAL_KINDS
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif")
VIDEO_KINDS = ("video", "video_qa")

# A literal `<|endofchunk|>` inside source text (a caption, a page) would become the control token that ends an
# image's chunk: it is written as this spelling instead, which the tokenizer reads as ordinary text.
ESCAPED_END_OF_CHUNK = "<endofchunk>"

ImageLike = Image.Image | bytes
RawSample = dict[str, bytes | str]  # extension -> member bytes, plus '__key__'


# -----------------------------------------------------------------------------------------------------
# encoding

def image_bytes(image: ImageLike, image_format: str = "png") -> tuple[bytes, str]:
    """(encoded bytes, extension). Bytes are stored as given (extension sniffed); PIL images are encoded."""
    if isinstance(image, bytes | bytearray):
        return bytes(image), sniff_image_ext(bytes(image))
    fmt = image_format.lower()
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        image.convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "jpg"
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=1)  # level 1: 5x faster than the default, ~10% larger
        return buf.getvalue(), "png"
    if fmt == "webp":
        image.save(buf, format="WEBP", lossless=True)
        return buf.getvalue(), "webp"
    raise ValueError(f"unsupported image format {image_format!r}; use png, jpg or webp")


def sniff_image_ext(data: bytes) -> str:
    """File extension from the magic bytes ('png', 'jpg', 'webp', 'gif', 'bmp'); 'img' when unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"GIF8",):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    return "img"


def _check_key(key: str) -> str:
    if not key or "." in key or "/" in key or not key.isprintable():
        raise ValueError(f"sample key {key!r} must be non-empty, printable, without '.' or '/'")
    return key


def _json(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _with_image(key: str, meta: dict[str, Any], image: ImageLike, image_format: str) -> RawSample:
    data, ext = image_bytes(image, image_format)
    meta["image"] = ext
    return {"__key__": _check_key(key), ext: data, "json": _json(meta)}


def _with_frames(key: str, meta: dict[str, Any], frames: Sequence[ImageLike], image_format: str
                 ) -> RawSample:
    out: RawSample = {"__key__": _check_key(key)}
    names = []
    for i, frame in enumerate(frames):
        data, ext = image_bytes(frame, image_format)
        names.append(f"frame{i:03d}.{ext}")
        out[names[-1]] = data
    meta["frames"] = names
    out["json"] = _json(meta)
    return out


def pair_sample(key: str, image: ImageLike, caption: str, *, long_caption: str | None = None,
                language: str | None = None, similarity: float | None = None,
                extra: dict[str, Any] | None = None, image_format: str = "png") -> RawSample:
    """Image-text pair: members `{key}.png` (or jpg...), `{key}.txt` (the caption), `{key}.json`."""
    meta: dict[str, Any] = {"kind": "pair", **(extra or {})}
    for name, value in (("long_caption", long_caption), ("language", language), ("similarity", similarity)):
        if value is not None:
            meta[name] = value
    out = _with_image(key, meta, image, image_format)
    out["txt"] = caption.encode("utf-8")
    return out


def interleaved_sample(key: str, texts: Sequence[str | None], images: Sequence[ImageLike | None], *,
                       similarities: Sequence[float | None] | None = None,
                       extra: dict[str, Any] | None = None, image_format: str = "png") -> RawSample:
    """Interleaved page, the MMC4/OBELICS shape: two parallel lists where each position holds a text or an
    image.

    Members: `{key}.json` with `texts` (str or null) and `images` (member extension or null), and one member
    `{key}.{i}.{ext}` per image. `similarities` (optional, per position, null for texts) is the image-text
    score.
    """
    if len(texts) != len(images):
        raise ValueError(f"texts and images must be parallel lists, got {len(texts)} and {len(images)}")
    out: RawSample = {"__key__": _check_key(key)}
    names: list[str | None] = []
    n_img = 0
    for t, img in zip(texts, images):
        if (t is None) == (img is None):
            raise ValueError("each position of an interleaved page holds exactly one of a text or an image")
        if img is None:
            names.append(None)
            continue
        data, ext = image_bytes(img, image_format)
        names.append(f"{n_img}.{ext}")
        out[names[-1]] = data
        n_img += 1
    meta: dict[str, Any] = {"kind": "interleaved", **(extra or {}), "texts": list(texts), "images": names}
    if similarities is not None:
        if len(similarities) != len(texts):
            raise ValueError("similarities must be parallel to texts and images")
        meta["similarities"] = list(similarities)
    out["json"] = _json(meta)
    return out


def video_sample(key: str, frames: Sequence[ImageLike], caption: str, fps: float, *,
                 extra: dict[str, Any] | None = None, image_format: str = "png") -> RawSample:
    """Video-text pair: frames sampled at `fps` as `{key}.frame000.png`..., the caption in `{key}.txt`."""
    out = _with_frames(key, {"kind": "video", "fps": float(fps), **(extra or {})}, frames, image_format)
    out["txt"] = caption.encode("utf-8")
    return out


def caption_record(key: str, image: ImageLike, captions: Sequence[str], *,
                   extra: dict[str, Any] | None = None, image_format: str = "png") -> RawSample:
    """Captioning evaluation record: one image, all its reference captions."""
    meta = {"kind": "caption", **(extra or {}), "captions": list(captions)}
    return _with_image(key, meta, image, image_format)


def vqa_record(key: str, image: ImageLike, question: str, answers: Sequence[str], *,
               question_id: int | str | None = None, extra: dict[str, Any] | None = None,
               image_format: str = "png") -> RawSample:
    """VQA record: a question and its list of (usually 10) human answers."""
    meta = {"kind": "vqa", **(extra or {}), "question": question, "answers": list(answers)}
    if question_id is not None:
        meta["question_id"] = question_id
    return _with_image(key, meta, image, image_format)


def classification_record(key: str, image: ImageLike, label: str, *, choices: Sequence[str] | None = None,
                          extra: dict[str, Any] | None = None, image_format: str = "png") -> RawSample:
    """Classification / multiple-choice record: the label and, optionally, the candidate answers."""
    meta: dict[str, Any] = {"kind": "classification", **(extra or {}), "label": label}
    if choices is not None:
        if label not in choices:
            raise ValueError(f"label {label!r} is not among the choices")
        meta["choices"] = list(choices)
    return _with_image(key, meta, image, image_format)


def retrieval_record(key: str, image: ImageLike, captions: Sequence[str], *,
                     long_captions: Sequence[str] | None = None, extra: dict[str, Any] | None = None,
                     image_format: str = "png") -> RawSample:
    """Retrieval record: one image with several captions (and optionally long captions)."""
    meta: dict[str, Any] = {"kind": "retrieval", **(extra or {}), "captions": list(captions)}
    if long_captions is not None:
        meta["long_captions"] = list(long_captions)
    return _with_image(key, meta, image, image_format)


def video_qa_record(key: str, frames: Sequence[ImageLike], fps: float, question: str,
                    answers: Sequence[str], *, extra: dict[str, Any] | None = None,
                    image_format: str = "png") -> RawSample:
    """Video QA record: frames at `fps`, a question and its answers."""
    meta = {"kind": "video_qa", "fps": float(fps), **(extra or {}), "question": question,
            "answers": list(answers)}
    return _with_frames(key, meta, frames, image_format)


# -----------------------------------------------------------------------------------------------------
# decoding

def source_text(text: str, name: str = "text", key: str = "?") -> str:
    """Text from a data source, made safe to place in Flamingo text: a literal `<image>` raises
    BadSample('image_token_in_text') (it would ask for an image the sample does not have), a literal
    `<|endofchunk|>` is written as `<endofchunk>` (ESCAPED_END_OF_CHUNK), ordinary text."""
    if IMAGE_TOKEN in text:
        raise BadSample("image_token_in_text", f"{key}: {name} holds a literal {IMAGE_TOKEN}")
    return text.replace(END_OF_CHUNK, ESCAPED_END_OF_CHUNK)


def decode_image(data: bytes, max_pixels: int = 64_000_000) -> Image.Image:
    """Fully decoded RGB image, or BadSample('corrupt_image' | 'image_too_large'). The size is checked on the
    header, before decoding: a decompression bomb (a few KB declaring billions of pixels) is never decoded."""
    try:
        with warnings.catch_warnings():
            # PIL warns (DecompressionBombWarning) above its own limit and raises above twice that; max_pixels
            # is the limit here, so the warning is noise and the error is an image too large.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise BadSample("image_too_large", f"{img.width}x{img.height}")
        img.load()  # decode now: a truncated file fails here, not later in a worker's transform
        return img.convert("RGB")
    except BadSample:
        raise
    except Image.DecompressionBombError as e:
        raise BadSample("image_too_large", str(e)) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadSample("corrupt_image", f"{type(e).__name__}: {e}") from None


def _field(meta: dict[str, Any], name: str, typ: type | tuple[type, ...], key: str) -> Any:
    if name not in meta or meta[name] is None:
        raise BadSample("missing_field", f"{key}: no {name!r}")
    value = meta[name]
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise BadSample("bad_field", f"{key}: {name!r} is {type(value).__name__}")
    return value


def _text(value: Any, name: str, key: str) -> str:
    if not isinstance(value, str):
        raise BadSample("bad_field", f"{key}: {name!r} is {type(value).__name__}, not a string")
    value = value.strip()
    if not value:
        raise BadSample("empty_text", f"{key}: empty {name!r}")
    return value


def _texts(meta: dict[str, Any], name: str, key: str) -> list[str]:
    values = _field(meta, name, list, key)
    if not values:
        raise BadSample("empty_text", f"{key}: empty list {name!r}")
    return [_text(v, name, key) for v in values]


def _member(raw: dict[str, bytes], ext: Any, key: str) -> bytes:
    if not isinstance(ext, str):
        raise BadSample("bad_field", f"{key}: image member name {ext!r}")
    if ext not in raw:
        raise BadSample("missing_field", f"{key}: no member {ext!r}")
    return raw[ext]


def _find_image_ext(raw: dict[str, bytes], meta: dict[str, Any]) -> str | None:
    if isinstance(meta.get("image"), str):
        return meta["image"]
    return next((e for e in IMAGE_EXTS if e in raw), None)


def decode_sample(raw: dict[str, bytes], max_pixels: int = 64_000_000) -> dict[str, Any]:
    """Decode one raw sample (extension -> bytes, plus `__key__`) into a sample dict, or raise BadSample."""
    key = str(raw.get("__key__", "?"))
    meta: dict[str, Any] = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadSample("bad_json", f"{key}: {e}") from None
        except RecursionError:  # nested deeper than the interpreter's stack
            raise BadSample("bad_json", f"{key}: json nested too deeply") from None
        if not isinstance(meta, dict):
            raise BadSample("bad_json", f"{key}: json is a {type(meta).__name__}, not an object")
    kind = meta.get("kind", "pair")
    if kind not in KINDS:
        raise BadSample("unknown_kind", f"{key}: {kind!r}")
    out: dict[str, Any] = {k: v for k, v in meta.items() if k not in ("image", "images", "frames", "texts")}
    out["key"], out["kind"] = key, kind

    if kind == "interleaved":
        return _decode_interleaved(raw, meta, out, max_pixels)
    if kind in VIDEO_KINDS:
        frames = _field(meta, "frames", list, key)
        if not frames:
            raise BadSample("no_images", f"{key}: video without frames")
        _field(meta, "fps", (int, float), key)
        # one video of F frames
        out["images"] = [[decode_image(_member(raw, f, key), max_pixels) for f in frames]]
    else:
        ext = _find_image_ext(raw, meta)
        if ext is None:
            raise BadSample("missing_field", f"{key}: no image member")
        out["images"] = [decode_image(_member(raw, ext, key), max_pixels)]

    if kind in ("pair", "video"):
        if "txt" in raw:
            try:
                out["caption"] = raw["txt"].decode("utf-8")
            except UnicodeDecodeError:
                raise BadSample("bad_field", f"{key}: txt is not UTF-8") from None
        elif "caption" not in meta:
            raise BadSample("missing_field", f"{key}: no caption (txt member)")
        out["caption"] = source_text(_text(out["caption"], "caption", key), "caption", key)
        if "long_caption" in meta:
            out["long_caption"] = _text(meta["long_caption"], "long_caption", key)
        if "similarity" in meta:
            _field(meta, "similarity", (int, float), key)
        out["text"] = f"{IMAGE_TOKEN}{out['caption']}{END_OF_CHUNK}"
    elif kind == "caption":
        out["captions"] = _texts(meta, "captions", key)
    elif kind in ("vqa", "video_qa"):
        out["question"] = _text(_field(meta, "question", str, key), "question", key)
        out["answers"] = _texts(meta, "answers", key)
    elif kind == "classification":
        out["label"] = _text(_field(meta, "label", str, key), "label", key)
        if "choices" in meta:
            out["choices"] = _texts(meta, "choices", key)
    elif kind == "retrieval":
        out["captions"] = _texts(meta, "captions", key)
        if "long_captions" in meta:
            out["long_captions"] = _texts(meta, "long_captions", key)
    return out


def _decode_interleaved(raw: dict[str, bytes], meta: dict[str, Any], out: dict[str, Any], max_pixels: int
                        ) -> dict[str, Any]:
    key = out["key"]
    texts = _field(meta, "texts", list, key)
    names = _field(meta, "images", list, key)
    sims = meta.get("similarities")
    bad_sims = sims is not None and (not isinstance(sims, list) or len(sims) != len(texts))
    if len(texts) != len(names) or bad_sims:
        raise BadSample("bad_field", f"{key}: texts/images/similarities are not parallel lists")
    elements: list[str | Image.Image] = []
    similarities: list[float | None] = []
    for i, (t, name) in enumerate(zip(texts, names)):
        if name is not None:
            elements.append(decode_image(_member(raw, name, key), max_pixels))
            s = sims[i] if sims is not None else None
            if s is not None and (not isinstance(s, int | float) or isinstance(s, bool)):
                raise BadSample("bad_field", f"{key}: similarity {s!r}")
            similarities.append(s)
        elif t is not None:
            if not isinstance(t, str):
                raise BadSample("bad_field", f"{key}: text {t!r}")
            if t.strip():
                elements.append(source_text(t.strip(), f"text {i}", key))
        else:
            raise BadSample("bad_field", f"{key}: position {i} holds neither text nor image")
    out["elements"] = elements  # ordered page: str (text) or PIL image
    out["similarities"] = similarities  # one per image, None when unknown
    return finalize_interleaved(out)


def finalize_interleaved(sample: dict[str, Any]) -> dict[str, Any]:
    """Set `images` and `text` of an interleaved sample from its `elements` (after any filtering)."""
    images = [e for e in sample["elements"] if not isinstance(e, str)]
    if not images:
        raise BadSample("no_images", f"{sample['key']}: page without images")
    if not any(isinstance(e, str) for e in sample["elements"]):
        raise BadSample("empty_text", f"{sample['key']}: page without text")
    sample["images"] = images
    sample["text"] = interleaved_text(sample["elements"])
    return sample


def interleaved_text(elements: Sequence[str | Any]) -> str:
    """Flamingo text of a page: `<image>` where images go, `<|endofchunk|>` after the text following each
    image.

    ["Intro.", img, "A cat.", "More.", img, img, "Dogs."] ->
    "Intro.<image>A cat. More.<|endofchunk|><image><image>Dogs.<|endofchunk|>"
    """
    parts: list[str] = []
    open_chunk = False  # an image was placed and its text has not been closed yet
    prev_text = False
    for e in elements:
        if isinstance(e, str):
            if prev_text:
                parts.append(" ")
            parts.append(e)
            prev_text = True
        else:
            if open_chunk and prev_text:
                parts.append(END_OF_CHUNK)
            parts.append(IMAGE_TOKEN)
            open_chunk, prev_text = True, False
    if open_chunk and prev_text:
        parts.append(END_OF_CHUNK)
    return "".join(parts)
