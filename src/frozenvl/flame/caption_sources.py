"""Caption inputs for ``frozenvl flame embed``: JSONL of {key, caption}, or webdataset tar shards of pairs.

Shards are read by :func:`frozenvl.data.shards.read_shard` (members grouped by sample key, the member path up to
the first dot of its file name); the caption is the ``.txt`` member, else the ``"caption"`` field of the ``.json``
member. The bad-data policy is the data package's: unreadable shards, bad JSONL lines and samples without a
readable caption are skipped and counted in a :class:`~frozenvl.data.skips.SkipCounter`, never a crash.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from frozenvl.data.shards import MAX_TEXT_MEMBER_BYTES, capped_lines, read_shard
from frozenvl.data.skips import BadSample, SkipCounter

log = logging.getLogger(__name__)


def iter_jsonl_captions(path: str | os.PathLike, skips: SkipCounter | None = None) -> Iterator[tuple[str, str]]:
    """(key, caption) from a JSONL file with one {"key": ..., "caption": ...} object per line."""
    skips = skips if skips is not None else SkipCounter()
    with open(path, "rb") as f:  # decoded line by line: a line that is not UTF-8 is one bad line
        for line_no, line in capped_lines(f):  # a line over 1 MiB is skipped unread, as a caption member of a shard
            if line is None:
                skips.add("member_too_large", f"{path} line {line_no}: longer than {MAX_TEXT_MEMBER_BYTES} bytes")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, caption = str(record["key"]), str(record.get("caption") or "")
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as e:  # not an object
                skips.add("bad_json", f"{path} line {line_no}: {type(e).__name__}: {e}")
                continue
            except RecursionError:
                skips.add("bad_json", f"{path} line {line_no}: nested too deeply")
                continue
            except KeyError:
                skips.add("missing_field", f"{path} line {line_no}: no 'key'")
                continue
            yield key, caption


def _caption_of(sample: dict[str, bytes | str]) -> str:
    """The ``.txt`` member, else the ``"caption"`` of the ``.json`` member; raises :class:`BadSample`."""
    key = sample["__key__"]
    if "txt" in sample:
        return sample["txt"].decode("utf-8", errors="replace")
    if "json" in sample:
        try:
            caption = json.loads(sample["json"]).get("caption")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError, RecursionError) as e:
            raise BadSample("bad_json", f"{key}: {type(e).__name__}") from None
        if isinstance(caption, str):
            return caption
    raise BadSample("missing_field", f"{key}: no caption (a .txt member or a 'caption' string in .json)")


def iter_tar_captions(paths: Sequence[str | os.PathLike],
                      skips: SkipCounter | None = None) -> Iterator[tuple[str, str]]:
    """(key, caption) from webdataset shards, in shard order."""
    skips = skips if skips is not None else SkipCounter()
    for path in paths:
        for sample in read_shard(path, skips):
            try:
                caption = _caption_of(sample)
            except BadSample as bad:
                skips.add(bad.reason, f"{path}: {bad.detail}")
                continue
            yield str(sample["__key__"]), caption


def iter_captions(inputs: Sequence[str | os.PathLike], skips: SkipCounter | None = None
                  ) -> Iterator[tuple[str, str]]:
    """Dispatch on the file type: ``.jsonl`` files or ``.tar`` shards (in the order given). What was skipped is
    counted in ``skips`` and logged once at the end."""
    skips = skips if skips is not None else SkipCounter()
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"caption input {path} does not exist")
        if path.suffix == ".jsonl":
            yield from iter_jsonl_captions(path, skips)
        elif path.name.endswith((".tar", ".tar.gz", ".tgz")):
            yield from iter_tar_captions([path], skips)
        else:
            raise ValueError(f"caption input {path}: expected a .jsonl file or .tar webdataset shards")
    if skips.total:
        log.warning("caption inputs: %d skipped\n%s", skips.total, skips.report())
