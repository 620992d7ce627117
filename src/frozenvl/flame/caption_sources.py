"""Caption inputs for ``frozenvl flame embed``: JSONL of {key, caption}, or webdataset tar shards of pairs.

The tar reader is deliberately small (stdlib ``tarfile``): members are grouped by sample key (the member path up
to the first dot of its file name), the caption is the ``.txt`` member, else the ``"caption"`` field of the
``.json`` member. Samples without a readable caption are skipped and counted, never a crash.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def _split_member(name: str) -> tuple[str, str]:
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def iter_jsonl_captions(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """(key, caption) from a JSONL file with one {"key": ..., "caption": ...} object per line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                yield str(record["key"]), str(record.get("caption") or "")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                log.warning("%s line %d: skipped (%s)", path, line_no, e)


def _caption_of(members: dict[str, bytes]) -> str | None:
    if "txt" in members:
        return members["txt"].decode("utf-8", errors="replace")
    if "json" in members:
        try:
            caption = json.loads(members["json"]).get("caption")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            return None
        return caption if isinstance(caption, str) else None
    return None


def _grouped_members(tar: tarfile.TarFile, path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members with the same key, as {extension: bytes} (caption members only)."""
    current, members = None, {}
    try:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = _split_member(info.name)
            if key != current:
                if current is not None:
                    yield current, members
                current, members = key, {}
            if ext in ("txt", "json"):
                members[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("shard %s is truncated or corrupt after sample %s: %s", path, current, e)
    if current is not None:
        yield current, members


def iter_tar_captions(paths: Sequence[str | os.PathLike]) -> Iterator[tuple[str, str]]:
    """(key, caption) from webdataset shards; only the caption members are read into memory."""
    for path in paths:
        try:
            tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError) as e:
            log.warning("skipped unreadable shard %s: %s", path, e)
            continue
        skipped = 0
        with tar:
            for key, members in _grouped_members(tar, path):
                caption = _caption_of(members)
                if caption is None:
                    skipped += 1
                    continue
                yield key, caption
        if skipped:
            log.warning("%s: %d samples without a caption skipped", path, skipped)


def iter_captions(inputs: Sequence[str | os.PathLike]) -> Iterator[tuple[str, str]]:
    """Dispatch on the file type: ``.jsonl`` files or ``.tar`` shards (in the order given)."""
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"caption input {path} does not exist")
        if path.suffix == ".jsonl":
            yield from iter_jsonl_captions(path)
        elif path.name.endswith((".tar", ".tar.gz", ".tgz")):
            yield from iter_tar_captions([path])
        else:
            raise ValueError(f"caption input {path}: expected a .jsonl file or .tar webdataset shards")
