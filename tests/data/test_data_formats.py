"""Round trip of every shard format; webdataset compatibility; the atomic writer."""

from __future__ import annotations

import numpy as np
import pytest
import webdataset as wds
from datafixtures import noisy, solid

from frozenvl.data import (
    ShardDataset,
    ShardWriter,
    caption_record,
    classification_record,
    interleaved_sample,
    interleaved_text,
    pair_sample,
    read_shard,
    retrieval_record,
    video_qa_record,
    video_sample,
    vqa_record,
)
from frozenvl.data.loader import LoaderConfig


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture
def all_formats(tmp_path):
    img, frames = noisy(1), [noisy(10 + f) for f in range(4)]
    samples = [
        pair_sample("pair", img, "a red circle", long_caption="A large red circle at the top.", language="en",
                    similarity=0.31),
        interleaved_sample("page", ["Intro.", None, "A cat.", "More.", None, None, "Dogs."],
                           [None, noisy(2), None, None, noisy(3), noisy(4), None],
                           similarities=[None, 0.3, None, None, 0.2, 0.25, None]),
        video_sample("vid", frames, "a blue square moves left", fps=1.0),
        caption_record("cap", img, ["one", "two"]),
        vqa_record("vqa", img, "What colour?", ["red"] * 9 + ["pink"], question_id=7),
        classification_record("cls", img, "dax", choices=["dax", "wug"], extra={"episode": 3}),
        retrieval_record("ret", img, ["c1", "c2", "c3"], long_captions=["long one"]),
        video_qa_record("vqa2", frames, 2.0, "Which way?", ["left"] * 10),
        pair_sample("jpgpair", solid((200, 30, 30)), "jpeg stored", image_format="jpg"),
    ]
    with ShardWriter(tmp_path, "all", max_samples=4) as w:
        for s in samples:
            w.write(s)
    return tmp_path, img, frames


def test_round_trip_every_format(all_formats):
    path, img, frames = all_formats
    got = {s["key"]: s for s in ShardDataset(path, LoaderConfig(shuffle_shards=False, max_tokens=1000))}
    assert sorted(got) == sorted(["pair", "page", "vid", "cap", "vqa", "cls", "ret", "vqa2", "jpgpair"])

    p = got["pair"]
    assert p["kind"] == "pair" and p["text"] == "<image>a red circle<|endofchunk|>"
    assert p["long_caption"] == "A large red circle at the top." and p["language"] == "en"
    assert p["similarity"] == pytest.approx(0.31) and _same(p["images"][0], img)

    page = got["page"]
    assert page["text"] == "Intro.<image>A cat. More.<|endofchunk|><image><image>Dogs.<|endofchunk|>"
    assert [_same(a, noisy(s)) for a, s in zip(page["images"], (2, 3, 4))] == [True] * 3

    vid = got["vid"]
    assert vid["fps"] == 1.0 and len(vid["images"]) == 1 and len(vid["images"][0]) == 4
    assert all(_same(a, b) for a, b in zip(vid["images"][0], frames))
    assert vid["text"] == "<image>a blue square moves left<|endofchunk|>"

    assert got["cap"]["captions"] == ["one", "two"] and "text" not in got["cap"]
    assert got["vqa"]["answers"] == ["red"] * 9 + ["pink"] and got["vqa"]["question_id"] == 7
    assert got["cls"]["label"] == "dax" and got["cls"]["choices"] == ["dax", "wug"] and got["cls"]["episode"] == 3
    assert got["ret"]["captions"] == ["c1", "c2", "c3"] and got["ret"]["long_captions"] == ["long one"]
    assert got["vqa2"]["fps"] == 2.0 and len(got["vqa2"]["images"][0]) == 4
    jpg = np.asarray(got["jpgpair"]["images"][0], dtype=float)
    assert np.abs(jpg - np.asarray(solid((200, 30, 30)), dtype=float)).max() < 6  # lossy, same picture


def test_shards_are_plain_webdataset(all_formats):
    path, img, _ = all_formats
    shards = sorted(str(p) for p in path.glob("*.tar"))
    assert len(shards) == 3  # 9 samples, 4 per shard
    ds = wds.WebDataset(shards, shardshuffle=False).decode("pil")
    by_key = {s["__key__"]: s for s in ds}
    assert by_key["pair"]["txt"] == "a red circle" and _same(by_key["pair"]["png"], img)
    assert by_key["page"]["json"]["images"] == [None, "0.png", None, None, "1.png", "2.png", None]
    assert "frame003.png" in by_key["vid"]


def test_interleaved_text_rule():
    img = object()
    assert interleaved_text([img, "a", img, "b"]) == "<image>a<|endofchunk|><image>b<|endofchunk|>"
    assert interleaved_text(["pre", img, "a", "b"]) == "pre<image>a b<|endofchunk|>"
    assert interleaved_text([img, img, "x"]) == "<image><image>x<|endofchunk|>"


def test_writer_is_atomic_and_deterministic(tmp_path):
    def write(d):
        with ShardWriter(d, "s", max_samples=2) as w:
            for i in range(5):
                w.write(pair_sample(f"k{i}", solid((i, 2, 3)), f"c{i}"))
        return w.shards

    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    assert [p.name for p in a] == ["s-000000.tar", "s-000001.tar", "s-000002.tar"]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert not list(tmp_path.rglob("*.tmp"))

    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "c", "s", max_samples=2) as w:
        for i in range(3):
            w.write(pair_sample(f"k{i}", solid((i, 2, 3)), f"c{i}"))
        raise RuntimeError("killed while writing")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["s-000000.tar"]  # no half-written shard
    assert [s["__key__"] for s in read_shard(tmp_path / "c" / "s-000000.tar")] == ["k0", "k1"]


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="parallel"):
        interleaved_sample("x", ["a"], [None, None])
    with pytest.raises(ValueError, match="exactly one"):
        interleaved_sample("x", ["a", None], [None, None])
    with pytest.raises(ValueError, match="key"):
        pair_sample("has.dot", solid((0, 0, 0)), "c")
    with pytest.raises(ValueError, match="duplicate"), ShardWriter(tmp_path, "d") as w:
        w.write(pair_sample("k", solid((0, 0, 0)), "c"))
        w.write(pair_sample("k", solid((0, 0, 0)), "c"))
