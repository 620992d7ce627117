"""Hostile shards: members declaring huge sizes, gzip bombs, FIFOs, repeated keys, cuts inside a sample,
literal media markers in captions and decompression-bomb images. Each is skipped and counted, never a crash,
a hang or an unbounded read."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import signal
import struct
import tarfile
import time
import tracemalloc
import zlib

import pytest
from datafixtures import solid

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.data import LoaderConfig, ShardDataset, ShardWriter, decode_sample, pair_sample, read_shard
from frozenvl.data.formats import decode_image, interleaved_sample
from frozenvl.data.skips import SKIP_REASONS, BadSample, SkipCounter


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging) when the block runs longer than `seconds`; SIGALRM interrupts a blocking open."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def png_bytes(size: int = 8) -> bytes:
    buf = io.BytesIO()
    solid((10, 20, 30), size).save(buf, format="PNG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header that declares width x height pixels, with a tiny (wrong) image body."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))



def _read_keys_traced(path) -> tuple[list[str], SkipCounter, int]:
    """The keys read_shard yields from ``path``, its skips and the peak of Python memory traced while reading."""
    skips = SkipCounter()
    tracemalloc.start()
    try:
        keys = [s["__key__"] for s in read_shard(path, skips)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return keys, skips, peak

def test_new_skip_reasons_are_documented():
    for reason in ("not_a_file", "member_too_large", "duplicate_key", "image_token_in_text"):
        assert reason in SKIP_REASONS


def test_a_member_declaring_50_gb_is_never_read(tmp_path):
    header = tarfile.TarInfo("big.png")
    header.size = 50 * 10**9
    path = tmp_path / "big.tar"
    path.write_bytes(header.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 4096)
    skips = SkipCounter()
    t0 = time.perf_counter()
    assert list(read_shard(path, skips)) == []
    assert time.perf_counter() - t0 < 2  # tarfile's own skip would step through 50 GB in 10 KB reads
    assert skips.counts["member_too_large"] == 1
    assert skips.counts["truncated_shard"] == 1  # the declared bytes are not there


def test_a_huge_caption_in_a_small_gzip_shard_is_skipped_in_bounded_memory(tmp_path):
    caption = b"a " * (24 << 20)  # 48 MiB of caption, ~220 KB of gzip
    path = tmp_path / "bomb.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        add(tar, "before.png", png_bytes())
        add(tar, "before.txt", b"a fine caption")
        add(tar, "bomb.png", png_bytes())
        add(tar, "bomb.txt", caption)
        add(tar, "after.png", png_bytes())
        add(tar, "after.txt", b"another caption")
    assert path.stat().st_size < 300_000
    keys, skips, peak = _read_keys_traced(path)
    assert keys == ["before", "after"]
    assert skips.as_dict() == {"member_too_large": 1}
    assert peak < 32 << 20  # the caption is never held whole (old: over 3 copies of it)



def test_the_member_caps_are_loader_settings(tmp_path):
    with ShardWriter(tmp_path, "caps", max_samples=10) as w:
        w.write(pair_sample("small", solid((1, 2, 3)), "a caption"))
        w.write(pair_sample("long", solid((1, 2, 3)), "word " * 1000))  # 5000 bytes of caption
    strict = ShardDataset(w.shards, LoaderConfig(shuffle_shards=False, max_text_bytes=4096, max_tokens=10_000))
    assert [s["key"] for s in strict] == ["small"]
    assert strict.skips.as_dict() == {"member_too_large": 1}
    loose = ShardDataset(w.shards, LoaderConfig(shuffle_shards=False, max_text_bytes=8192, max_tokens=10_000))
    assert [s["key"] for s in loose] == ["small", "long"]
    images = ShardDataset(w.shards, LoaderConfig(shuffle_shards=False, max_member_bytes=10, max_tokens=10_000))
    assert list(images) == [] and images.skips.as_dict() == {"member_too_large": 2}


def test_loader_caps_must_be_positive():
    from frozenvl.config import ConfigError

    with pytest.raises(ConfigError, match="max_text_bytes"):
        LoaderConfig(max_text_bytes=0)


def test_a_fifo_shard_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.tar"
    os.mkfifo(fifo)
    skips = SkipCounter()
    with deadline(3):
        assert list(read_shard(fifo, skips)) == []
    assert skips.as_dict() == {"not_a_file": 1}
    with deadline(3):  # the loader with 0 workers, through a glob that matches the FIFO
        ds = ShardDataset(str(tmp_path / "*.tar"), LoaderConfig())
        assert list(ds) == []
    assert ds.skips.as_dict() == {"not_a_file": 1}


def test_a_folder_named_like_a_shard_is_not_a_file(tmp_path):
    (tmp_path / "d.tar").mkdir()
    skips = SkipCounter()
    assert list(read_shard(tmp_path / "d.tar", skips)) == []
    assert skips.as_dict() == {"not_a_file": 1}


def test_duplicate_keys_are_yielded_once_first_wins(tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "a.png", png_bytes())
        add(tar, "a.txt", b"first a")
        add(tar, "a.txt", b"second a, same sample")  # a repeated member: merged over the first before
        add(tar, "b.png", png_bytes())
        add(tar, "b.txt", b"b")
        add(tar, "a.png", png_bytes(4))  # the key again, later: yielded twice before
        add(tar, "a.txt", b"third a")
        add(tar, "c.png", png_bytes())
        add(tar, "c.txt", b"c")
    skips = SkipCounter()
    samples = list(read_shard(path, skips))
    assert [s["__key__"] for s in samples] == ["a", "b", "c"]
    assert samples[0]["txt"] == b"first a"
    assert samples[0]["png"] == png_bytes()
    assert skips.as_dict() == {"duplicate_key": 2}


def test_a_complete_sample_before_a_cut_inside_the_next_one_is_kept(tmp_path):
    with ShardWriter(tmp_path, "cut", max_samples=10) as w:
        for i in range(3):
            w.write(pair_sample(f"k{i}", solid((i, 0, 0), 16), f"caption {i}"))
    path = w.shards[0]
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    first_of_k2 = next(m for m in members if m.name.startswith("k2."))
    data = path.read_bytes()
    # Cut inside the data of the first member of k2: k0 and k1 are whole.
    path.write_bytes(data[: first_of_k2.offset_data + first_of_k2.size // 2])
    skips = SkipCounter()
    keys = [s["__key__"] for s in read_shard(path, skips)]
    assert keys == ["k0", "k1"]
    assert skips.as_dict() == {"truncated_shard": 1}
    # A cut at a member boundary inside k2 (after its first member): k2 is incomplete and dropped.
    path.write_bytes(data[: first_of_k2.offset_data + ((first_of_k2.size + 511) // 512) * 512])
    skips = SkipCounter()
    assert [s["__key__"] for s in read_shard(path, skips)] == ["k0", "k1"]
    assert skips.as_dict() == {"truncated_shard": 1}


def test_a_literal_image_marker_in_a_caption_is_skipped_and_counted(tmp_path):
    with ShardWriter(tmp_path, "markers", max_samples=10) as w:
        w.write(pair_sample("ok", solid((1, 2, 3)), "a plain caption"))
        w.write(pair_sample("marker", solid((1, 2, 3)), f"look {IMAGE_TOKEN} here"))
        w.write(interleaved_sample("page", ["intro", None, f"text with {IMAGE_TOKEN}"],
                                   [None, solid((1, 2, 3)), None]))
        w.write(pair_sample("after", solid((1, 2, 3)), "another caption"))
    ds = ShardDataset(w.shards, LoaderConfig(shuffle_shards=False))
    assert [s["key"] for s in ds] == ["ok", "after"]
    assert ds.skips.as_dict() == {"image_token_in_text": 2}


def test_a_literal_end_of_chunk_is_escaped_not_a_control_token(tmp_path):
    from frozenvl.data.formats import ESCAPED_END_OF_CHUNK
    from frozenvl.testing import tiny_tokenizer

    caption = f"the token {END_OF_CHUNK} in a sentence"
    raw = pair_sample("k", solid((1, 2, 3)), caption)
    sample = decode_sample(raw)
    assert sample["text"] == f"{IMAGE_TOKEN}the token {ESCAPED_END_OF_CHUNK} in a sentence{END_OF_CHUNK}"
    page = decode_sample(interleaved_sample("p", [None, caption], [solid((1, 2, 3)), None]))
    assert page["text"].count(END_OF_CHUNK) == 1 and page["text"].endswith(END_OF_CHUNK)
    # The tokenizer with the media markers as special tokens (as Flamingo adds them) sees one control token.
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, END_OF_CHUNK]})
    eoc = tok.convert_tokens_to_ids(END_OF_CHUNK)
    assert tok(sample["text"])["input_ids"].count(eoc) == 1
    assert tok(raw["txt"].decode())["input_ids"].count(eoc) == 1  # unescaped, the caption's own would count


def test_a_decompression_bomb_image_is_too_large_not_a_crash(tmp_path):
    bomb = bomb_png()
    with pytest.raises(BadSample) as err:
        decode_image(bomb, max_pixels=10**12)  # above PIL's own limit: its DecompressionBombError
    assert err.value.reason == "image_too_large"
    with pytest.raises(BadSample) as err:
        decode_image(bomb_png(12_000, 12_000))  # between PIL's warning and error: the loader's max_pixels
    assert err.value.reason == "image_too_large"
    with ShardWriter(tmp_path, "bomb", max_samples=10) as w:
        w.write({"__key__": "bomb", "png": bomb, "txt": b"a caption"})
        w.write(pair_sample("ok", solid((1, 2, 3)), "a caption"))
    ds = ShardDataset(w.shards, LoaderConfig(shuffle_shards=False, max_pixels=10**12))
    assert [s["key"] for s in ds] == ["ok"]
    assert ds.skips.as_dict() == {"image_too_large": 1}


def test_the_processor_and_generate_name_a_bomb_image(tmp_path):
    from frozenvl.cli.errors import CLIError
    from frozenvl.cli.generate import _load_image
    from frozenvl.flamingo.processor import FlamingoProcessor
    from frozenvl.testing import tiny_tokenizer

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    processor = FlamingoProcessor(tiny_tokenizer(), image_transform=lambda im: im)
    with pytest.raises(ValueError, match="image cannot be decoded"):
        processor.load_image(str(path), "sample 0 image 0")
    with pytest.raises(CLIError, match="bomb.png"):
        _load_image(str(path))


def test_skip_details_name_the_shard(tmp_path, caplog):
    with ShardWriter(tmp_path, "named", max_samples=10) as w:
        w.write({"__key__": "bad", "png": b"not an image", "txt": b"a caption"})
    with caplog.at_level("WARNING", logger="frozenvl.data"):
        assert list(ShardDataset(w.shards, LoaderConfig())) == []
    assert "(corrupt_image): " + str(w.shards[0]) + ": " in caplog.text


@pytest.mark.parametrize("name, kind", [("noextension", tarfile.REGTYPE), ("odd.png", b"Z")])
def test_an_unused_member_declaring_50_gb_is_read_past_in_large_steps(tmp_path, name, kind):
    """A member the reader does not use (no extension, a type tarfile does not know) was left to tarfile's own
    skip, which steps through its declared size 10 KB at a time, on past the end of the file (over a minute for
    50 GB: the hang of experiments/hostile_inputs.py). Skipped as the capped members are, and counted."""
    def member(member_name: str, data: bytes) -> bytes:
        info = tarfile.TarInfo(member_name)
        info.size = len(data)
        return info.tobuf(format=tarfile.GNU_FORMAT) + data.ljust(512, b"\0")

    header = tarfile.TarInfo(name)
    header.type, header.size = kind, 50 * 10**9
    path = tmp_path / "odd.tar"
    path.write_bytes(member("a.txt", b"kept") + member("b.txt", b"cut") + header.tobuf(format=tarfile.GNU_FORMAT)
                     + b"x" * 4096)
    skips = SkipCounter()
    t0 = time.perf_counter()
    with deadline(60):
        assert [s["__key__"] for s in read_shard(path, skips)] == ["a"]
    assert time.perf_counter() - t0 < 2
    assert skips.counts["bad_member"] == 1 and skips.counts["truncated_shard"] == 1  # the 50 GB are not there


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_huge_extended_header_in_a_small_gzip_shard_is_refused_unread(tmp_path, kind):
    """tarfile reads a GNU long name or a pax header whole before the member it describes: a 200 MB long name in a
    915 KB .tar.gz took 1 GB of resident memory (and its 200 MB name went into the skip log). Refused on its
    header block: the shard stops there, 'member_too_large'; the samples before it are kept."""
    size = 48 << 20
    path = tmp_path / "long.tar.gz"
    def member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, size: int | None = None) -> bytes:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data) if size is None else size
        return info.tobuf(format=tarfile.USTAR_FORMAT) + (data.ljust(512, b"\0") if data else b"")

    with gzip.open(path, "wb", compresslevel=1) as gz:  # written block by block: the header is not tarfile's
        gz.write(member("a.txt", b"kept") + member("b.txt", b"being assembled when the shard stopped"))
        gz.write(member("././@LongLink", b"", kind, size))
        for _ in range(size >> 20):
            gz.write(b"n" * (1 << 20))
        gz.write(member("c.txt", b"its name is the long one") + bytes(1024))
    assert path.stat().st_size < 300_000
    keys, skips, peak = _read_keys_traced(path)
    assert keys == ["a"]
    assert skips.as_dict() == {"member_too_large": 1}
    assert peak < 16 << 20
