"""A deliberately broken shard set: every kind of bad data is skipped and counted, never a crash or a hang."""

from __future__ import annotations

import io
import json
import tarfile
import time

from datafixtures import noisy, solid, write_pairs

from frozenvl.data import (
    LoaderConfig,
    ShardDataset,
    ShardWriter,
    StreamingLoader,
    interleaved_sample,
    pair_sample,
    read_shard,
)
from frozenvl.data.skips import SKIP_REASONS, SkipCounter


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def build_broken(tmp_path):
    good_png = png(noisy(0, 32))
    bad = {
        "corrupt": {"png": b"this is not an image", "txt": b"caption"},
        "truncimg": {"png": good_png[: len(good_png) // 2], "txt": b"caption"},
        "nocaption": {"png": good_png, "json": b'{"kind": "pair"}'},
        "noimage": {"txt": b"caption", "json": b'{"kind": "pair"}'},
        "emptytext": {"png": good_png, "txt": b"   \n"},
        "badjson": {"png": good_png, "txt": b"c", "json": b"{not json"},
        "listjson": {"png": good_png, "txt": b"c", "json": b"[1, 2]"},
        "badkind": {"png": good_png, "json": b'{"kind": "hologram"}'},
        "mistyped": {"png": good_png, "json": json.dumps({"kind": "caption", "captions": "not a list"}).encode()},
        "mistyped2": {"png": good_png, "txt": b"c", "json": b'{"kind": "pair", "similarity": "high"}'},
        "vqanoanswer": {"png": good_png, "json": b'{"kind": "vqa", "question": "why?"}'},
        "badutf8": {"png": good_png, "txt": b"\xff\xfe\xfa"},
        "longtext": {"png": good_png, "txt": ("word " * 500).encode()},
        "nullpage": {"json": b'{"kind": "interleaved", "texts": [null], "images": [null]}'},
        "missingframe": {"json": b'{"kind": "video", "fps": 1, "frames": ["frame000.png"]}', "txt": b"c"},
    }
    expected = {"corrupt_image": 2, "missing_field": 4, "empty_text": 1, "bad_json": 2, "unknown_kind": 1,
                "bad_field": 4, "text_too_long": 1, "too_many_images": 1}
    with ShardWriter(tmp_path, "mixed", max_samples=100) as w:
        for i, (key, members) in enumerate(bad.items()):
            w.write(pair_sample(f"good{i}", solid((i, 0, 0)), f"good caption {i}"))
            w.write({"__key__": key, **members})
        imgs = [solid((9, 9, 9))] * 6
        texts: list = [None, "t"] * 6
        w.write(interleaved_sample("sixpics", texts, [x for im in imgs for x in (im, None)]))
    # A shard cut in the middle of a member, one that is not a tar at all, an empty one and one that is missing.
    clean = write_pairs(tmp_path, 12, per_shard=12, prefix="tocut")[0]
    data = open(clean, "rb").read()
    open(clean, "wb").write(data[: int(len(data) * 0.55)])
    (tmp_path / "garbage.tar").write_bytes(b"\x00\x01garbage" * 100)
    (tmp_path / "empty.tar").write_bytes(b"")
    with tarfile.open(tmp_path / "noext.tar", "w") as tar:  # a member without extension
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    shards = sorted(str(p) for p in tmp_path.glob("*.tar")) + [str(tmp_path / "missing.tar")]
    expected.update({"truncated_shard": 1, "unreadable_shard": 2, "missing_shard": 1, "bad_member": 1})
    return shards, len(bad), expected


def test_broken_shards_are_skipped_and_counted(tmp_path):
    shards, n_good, expected = build_broken(tmp_path)
    cfg = LoaderConfig(max_images=5, truncate=False, max_tokens=100, shuffle_shards=False)
    ds = ShardDataset(shards, cfg)
    t0 = time.perf_counter()
    out = list(ds)
    assert time.perf_counter() - t0 < 10
    got_keys = [s["key"] for s in out]
    good = [k for k in got_keys if k.startswith("good")]
    assert good == [f"good{i}" for i in range(n_good)]
    cut = [k for k in got_keys if k.startswith("p")]  # the samples before the cut survive, in order
    assert 0 < len(cut) < 12 and cut == [f"p{i:05d}" for i in range(len(cut))]
    assert len(got_keys) == len(good) + len(cut)
    assert ds.skips.as_dict() == expected
    assert set(expected) <= set(SKIP_REASONS)
    report = ds.skips.report()
    assert "corrupt_image: 2" in report and "missing_shard: 1" in report


def test_broken_shards_with_workers_report_the_same_counts(tmp_path):
    shards, n_good, expected = build_broken(tmp_path)
    cfg = LoaderConfig(max_images=5, truncate=False, max_tokens=100)
    loader = StreamingLoader(ShardDataset(shards, cfg), batch_size=4, num_workers=2, timeout=60)
    batches = list(loader)
    assert sum(len(b) for b in batches) >= n_good
    assert loader.skips.as_dict() == expected
    # The counters survive a resume through the state dict.
    restored = StreamingLoader(ShardDataset(shards, cfg), batch_size=4, num_workers=2)
    restored.load_state_dict(loader.state_dict())
    assert restored.skips.as_dict() == expected


def test_read_shard_never_raises_on_garbage(tmp_path):
    for i, data in enumerate([b"", b"x", b"\x1f\x8b" + b"\x00" * 600, b"ustar" * 1000]):
        p = tmp_path / f"g{i}.tar"
        p.write_bytes(data)
        skips = SkipCounter()
        assert list(read_shard(p, skips)) == []
        assert skips.total == 1
