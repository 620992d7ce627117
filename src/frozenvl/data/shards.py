"""Webdataset tar shards: an atomic writer and a reader that survives broken shards.

Writer: samples go to `{prefix}-{index:06d}.tar`; each shard is written to a temporary file and renamed into place
when complete, so a killed job never leaves a half-written shard under a final name. Member mtimes are fixed, so
the same samples give byte-identical shards (deterministic synthetic data).

Reader: groups consecutive members by key (the webdataset convention: `dir/name.ext.ext2` has key `dir/name` and
extension `ext.ext2`) and yields `{"__key__": ..., ext: bytes, ...}`. Missing, unreadable and truncated shards are
counted, never raised. A shard is a local path or a URL that webdataset's opener (``gopen``) streams:
``pipe:COMMAND`` (the command's output), ``http(s)://`` (through curl), ``gs://`` ...; a URL that cannot be read
is counted like an unreadable local shard, with the opener's error.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from frozenvl.data.skips import SkipCounter


class ShardWriter:
    """Write samples (dicts of extension -> bytes, plus `__key__`) into size-limited tar shards.

    with ShardWriter(out_dir, "pairs", max_samples=1000) as w:
        w.write(pair_sample("k0", image, "a red circle"))
    w.shards  # the paths written, in order
    """

    def __init__(self, out_dir: str | Path, prefix: str = "shard", max_samples: int = 1000,
                 max_bytes: int | None = None):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.shards: list[Path] = []
        self.samples_written = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._bytes = 0
        self._keys: set[str] = set()

    def write(self, sample: dict[str, bytes | str]) -> None:
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"sample needs a '__key__' without dots, got {key!r}")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in shard {self.prefix}")
        size = sum(len(v) for k, v in sample.items() if k != "__key__")
        too_big = bool(self.max_bytes) and self._bytes + size > self.max_bytes and self._count > 0
        if self._tar is not None and (self._count >= self.max_samples or too_big):
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for ext in sorted(k for k in sample if k != "__key__"):
            data = sample[ext]
            if isinstance(data, str):
                data = data.encode("utf-8")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self._count += 1
        self._bytes += size
        self.samples_written += 1

    def _open(self) -> None:
        final = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = final.with_name(final.name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count, self._bytes, self._keys = 0, 0, set()

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        final = self._tmp.with_name(self._tmp.name[: -len(".tmp")])
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, final)  # atomic: readers see a complete shard or none
        self.shards.append(final)
        self._tar, self._tmp = None, None

    def close(self) -> list[Path]:
        if self._tar is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its temporary file is removed); finished shards stay."""
        if self._tar is not None:
            self._tar.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)
            self._tar, self._tmp = None, None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# A shard given as a URL: "pipe:cmd ...", or "scheme://..." (local paths may be written file://).
_URL = re.compile(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]*://)")


def is_url(spec: str) -> bool:
    """True for a shard that webdataset's opener streams (``pipe:``, ``http://``, ...), not a local path."""
    return bool(_URL.match(spec)) and not spec.startswith("file://")


def _expand_braces(spec: str) -> list[str]:
    """``data-{000000..000009}.tar`` -> the ten names (zero padding kept); other strings as they are."""
    if "{" not in spec or ".." not in spec:
        return [spec]
    head, rest = spec.split("{", 1)
    rng, tail = rest.split("}", 1)
    lo, hi = rng.split("..")
    width = len(lo)
    return [name for i in range(int(lo), int(hi) + 1) for name in _expand_braces(f"{head}{i:0{width}d}{tail}")]


def expand_shards(spec: str | Path | Iterable[str | Path]) -> list[str]:
    """Shard list from a directory, a glob, a brace range `data-{000000..000009}.tar`, a URL (brace ranges
    expanded, nothing globbed: ``pipe:curl -s https://host/data-{000..009}.tar``), or a list of those."""
    if isinstance(spec, str | Path):
        spec = str(spec)
        if spec.startswith("file://"):
            spec = spec[len("file://"):]
        if is_url(spec):
            return _expand_braces(spec)
        if os.path.isdir(spec):
            return sorted(glob.glob(os.path.join(spec, "*.tar")))
        if "{" in spec and ".." in spec:
            return [p for name in _expand_braces(spec) for p in expand_shards(name)]
        if any(c in spec for c in "*?["):
            return sorted(glob.glob(spec))
        return [spec]
    return [p for s in spec for p in expand_shards(s)]


class _TailRecorder:
    """A read-only stream that remembers the last bytes it passed, so that a tar read in one pass (a pipe or a
    download cannot be read again) can be checked for its end-of-archive marker.

    A gzip stream (recognised by its first two bytes) is decompressed here with Python's ``gzip``, which raises
    ``EOFError`` when the compressed stream ends before its end-of-stream marker (tarfile's own streaming
    decompressor does not check that, so a cut .tar.gz could end cleanly after its last whole member). The cut is
    remembered, handed to tarfile as the end of the stream (the members before it are kept) and makes
    :meth:`has_end_marker` false. Offsets and the end-of-archive check are on the uncompressed tar."""

    def __init__(self, raw, keep: int = 1 << 16):
        self.raw, self.keep = raw, keep
        magic = raw.read(2)
        self.stream = _Prefixed(raw, magic)
        self.gzip = magic == b"\x1f\x8b"
        if self.gzip:
            self.stream = gzip.GzipFile(fileobj=self.stream, mode="rb")
        self.cut = False  # the gzip stream ended before its end-of-stream marker
        self.offset = 0  # (uncompressed) bytes passed so far
        self.tail = bytearray()  # the last `keep` bytes passed

    def read(self, size: int = -1) -> bytes:
        if self.cut:
            return b""
        try:
            # gzip: read1 hands over what is decompressed so far, so the bytes before a cut still reach tarfile
            # (GzipFile.read would drop them with its EOFError); the cut then reads as the end of the stream.
            data = self.stream.read1(size) if self.gzip and size and size > 0 else self.stream.read(size)
        except EOFError:
            self.cut, data = True, b""
        self.offset += len(data)
        self.tail = (self.tail + data)[-self.keep:]
        return data

    def close(self) -> None:
        self.raw.close()

    def has_end_marker(self, end: int) -> bool:
        """Are there two zero blocks right at ``end``? tarfile stops reading at the first one, and a pipe may have
        delivered no more than that: read on to the second, then drain the rest (a piped command must not die of a
        closed pipe; a cut gzip stream is found while draining)."""
        while self.offset < end + 1024 and self.read(min(end + 1024 - self.offset, 1 << 20)):
            pass
        start = self.offset - len(self.tail)
        marked = start <= end <= self.offset - 1024 and bytes(self.tail[end - start:end - start + 1024]) == bytes(1024)
        while self.read(1 << 20):
            pass
        return marked and not self.cut


class _Prefixed:
    """``stream`` with ``prefix`` (bytes already read from it) put back in front."""

    def __init__(self, stream, prefix: bytes):
        self.stream, self.prefix = stream, prefix

    def read(self, size: int = -1) -> bytes:
        if not self.prefix:
            return self.stream.read(size)
        if size is None or size < 0:
            data, self.prefix = self.prefix + self.stream.read(), b""
            return data
        data, self.prefix = self.prefix[:size], self.prefix[size:]
        return data if len(data) == size else data + self.stream.read(size - len(data))


def split_member_name(name: str) -> tuple[str, str] | None:
    """`dir/key.ext.more` -> ("dir/key", "ext.more"); None for names without an extension."""
    dirname, base = os.path.split(name)
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    return (os.path.join(dirname, stem) if dirname else stem), ext


# Caps on one member's declared size, checked on its header before a byte of it is read: a hostile shard may
# declare a 50 GB member, or hold a 400 MB caption in a few hundred kilobytes of gzip. Text members (captions,
# json) get the smaller cap. A sample with a member over its cap is skipped whole ('member_too_large').
MAX_MEMBER_BYTES = 64 << 20
MAX_TEXT_MEMBER_BYTES = 1 << 20
TEXT_MEMBER_EXTS = frozenset({"txt", "json", "jsonl", "cls", "text", "caption", "md"})


def capped_lines(stream: BinaryIO, cap: int = MAX_TEXT_MEMBER_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of a binary stream, reading at most ``cap`` bytes of a line at a time: a longer line is
    (number, None) and the rest of it is read past in chunks, never held whole (a 400 MB JSONL caption)."""
    number = 0
    while True:
        line = stream.readline(cap + 1)
        if not line:
            return
        number += 1
        if len(line) <= cap or line.endswith(b"\n") and len(line) == cap + 1:
            yield number, line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the over-long line
            line = stream.readline(1 << 20)
        yield number, None


def member_cap(ext: str, max_member_bytes: int = MAX_MEMBER_BYTES,
               max_text_bytes: int = MAX_TEXT_MEMBER_BYTES) -> int:
    """The size cap of a member with extension ``ext`` (its last part decides: ``0.png`` is an image)."""
    return max_text_bytes if ext.rsplit(".", 1)[-1].lower() in TEXT_MEMBER_EXTS else max_member_bytes


# Extended headers: tarfile reads their data whole into memory (a GNU long name, a pax record) before the member
# they describe, so a 1 MB gzip shard could make it hold a 200 MB name.
_EXTENDED_HEADERS = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                               tarfile.SOLARIS_XHDTYPE})


class _HeaderTooLarge(tarfile.ReadError):
    """An extended header declaring more bytes than its cap (the rest of the shard cannot be read without it)."""


def _capped_headers(cap: int) -> type[tarfile.TarInfo]:
    """A TarInfo class for ``tarfile.open(tarinfo=...)`` that refuses an extended header over ``cap`` bytes on its
    512-byte header block, before tarfile reads its data."""

    class CappedTarInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf, encoding, errors):
            info = super().frombuf(buf, encoding, errors)
            if info.type in _EXTENDED_HEADERS and info.size > cap:
                raise _HeaderTooLarge(f"an extended header (type {info.type.decode()}) declares {info.size} bytes "
                                      f"(cap {cap})")
            return info

    return CappedTarInfo


def _shown(name: str, limit: int = 200) -> str:
    """A member name for a message: a long one (up to the header cap) is cut."""
    return name if len(name) <= limit else f"{name[:limit]}... ({len(name)} characters)"


def _skip_member(tar: tarfile.TarFile, info: tarfile.TarInfo, chunk: int = 1 << 22) -> None:
    """Read past a member without keeping it, in large chunks: tarfile's own skip reads a streamed archive in
    10 KB steps, which takes seconds for a member that declares gigabytes (and, in a gzip stream, copies its
    decompressed buffer at every step). A member cut short is a truncated shard."""
    f = tar.extractfile(info)
    left = info.size if f is not None else 0
    while left > 0:
        data = f.read(min(left, chunk))
        if not data:
            raise tarfile.ReadError(f"member {_shown(info.name)} is cut short")
        left -= len(data)


def read_shard(path: str | Path, skips: SkipCounter | None = None, *, max_member_bytes: int = MAX_MEMBER_BYTES,
               max_text_bytes: int = MAX_TEXT_MEMBER_BYTES) -> Iterator[dict[str, bytes | str]]:
    """Yield raw samples of one shard in order; bad shards and members are counted, never raised.

    A sample is yielded as soon as the header of the next sample's first member is read, so a cut inside the
    next sample loses only that one. A key seen before in the shard is a duplicate: the first sample wins, the
    later members of that key are skipped ('duplicate_key', once per repeated sample or member). A local path
    that is not a regular file (a FIFO, a device, a folder) is skipped ('not_a_file') without being opened.
    """
    skips = skips if skips is not None else SkipCounter()
    url = is_url(str(path))
    if not url:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            skips.add("missing_shard", str(path))
            return
        except OSError as e:
            skips.add("unreadable_shard", f"{path}: {type(e).__name__}: {e}")
            return
        if not stat.S_ISREG(mode):  # opening a FIFO blocks until a writer comes: never open one
            skips.add("not_a_file", f"{path}: not a regular file")
            return
    current: dict[str, bytes | str] | None = None
    dropped: str | None = None  # the key of the sample being skipped (a member over its cap, a repeated key)
    seen: set[str] = set()  # keys of this shard so far
    n_members = 0
    stream = None
    try:
        if url:
            from webdataset.gopen import gopen

            stream = _TailRecorder(gopen(str(path), "rb"))
        else:
            stream = _TailRecorder(open(path, "rb"))
        with tarfile.open(fileobj=stream, mode="r|*",  # streaming mode: no seek, constant memory
                          tarinfo=_capped_headers(max_text_bytes)) as tar:
            for info in tar:
                if not info.isfile():
                    if info.type not in tarfile.SUPPORTED_TYPES:  # data of a type tarfile does not know
                        skips.add("bad_member", f"{path}: {_shown(info.name)} has the unknown type {info.type!r}")
                        _skip_member(tar, info)  # else tarfile steps through its declared size 10 KB at a time
                    continue
                parts = split_member_name(info.name)
                if parts is None:
                    skips.add("bad_member", f"{path}: {_shown(info.name)} has no key and extension")
                    _skip_member(tar, info)
                    continue
                key, ext = parts
                n_members += 1
                if current is not None and current["__key__"] != key:
                    yield current  # complete: the next sample's header is here (before its data, maybe cut)
                    current = None
                if dropped is not None and dropped != key:
                    dropped = None
                if dropped == key:
                    _skip_member(tar, info)  # the rest of a skipped sample
                    continue
                if current is None:
                    if key in seen:
                        skips.add("duplicate_key", f"{path}: {key} appears again; the first one was kept")
                        dropped = key
                        _skip_member(tar, info)
                        continue
                    seen.add(key)
                    current = {"__key__": key, "__shard__": str(path)}
                if ext in current:
                    skips.add("duplicate_key", f"{path}: member {_shown(info.name)} appears twice; the first was kept")
                    _skip_member(tar, info)
                    continue
                cap = member_cap(ext, max_member_bytes, max_text_bytes)
                if info.size > cap:
                    skips.add("member_too_large", f"{path}: {_shown(info.name)} declares {info.size} bytes (cap {cap})")
                    current, dropped = None, key
                    _skip_member(tar, info)
                    continue
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {_shown(info.name)} is cut short")
                current[ext] = data
            end = tar.offset
        marked = stream.has_end_marker(end)
        stream.close()  # a pipe's exit status is checked here: a failed command is an unreadable shard
        if n_members and not marked:
            # Cut at a member boundary: tarfile sees a clean end. The last sample may be incomplete: drop it.
            raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as e:
        # The sample being assembled when the cut came is incomplete: it is dropped, the ones before were kept.
        error: BaseException = e
        if stream is not None:  # a command or download that failed explains the broken stream: its exit status
            try:
                stream.close()
            except OSError as status:
                error = status
        reason = "member_too_large" if isinstance(e, _HeaderTooLarge) else \
            "truncated_shard" if n_members else "unreadable_shard"
        skips.add(reason, f"{path}: {type(error).__name__}: {error}")
        return
    finally:
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass  # already counted above (or the shard was read whole and its status checked)
    if current is not None:
        yield current
