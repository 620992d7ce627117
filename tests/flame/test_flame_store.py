import io
import json
import tarfile

import numpy as np
import pytest
import torch

from frozenvl.data.skips import SkipCounter
from frozenvl.flame.caption_sources import iter_captions
from frozenvl.flame.store import EmbeddingStore, EmbeddingStoreWriter, StoreMismatchError, embed_to_store
from frozenvl.flame.text_encoder import FacetTextEncoder
from frozenvl.testing import tiny_lm, tiny_tokenizer

RECORDS = [(f"k{i:03d}", f"a {c} object number {i}") for i, c in enumerate(["red", "blue", "green"] * 4)]


@pytest.fixture(scope="module")
def encoder():
    return FacetTextEncoder(tiny_lm("llama"), tiny_tokenizer(), "short")


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_store_roundtrip_and_join(tmp_path, encoder):
    report = embed_to_store(RECORDS, encoder, tmp_path / "s", batch_size=3, shard_size=5, progress=False)
    assert report.written == 12 and len(report.shards) == 3
    store = EmbeddingStore(tmp_path / "s")
    assert len(store) == 12 and store.meta["num_facets"] == 3 and store.meta["dim"] == 32
    assert isinstance(store._shard(0), np.memmap) and store["k000"].dtype == np.float16
    expected = torch.nn.functional.normalize(encoder.encode([RECORDS[7][1]]), dim=-1)[0]
    assert torch.allclose(store.get_batch(["k007"])[0], expected, atol=2e-3)
    samples = [{"__key__": "k007", "jpg": b"x"}, {"__key__": "nope"}, {"__key__": "k001"}]
    joined = list(store.join(samples))
    assert [s["__key__"] for s in joined] == ["k007", "k001"] and store.missing == 1
    assert joined[0]["text_embeddings"].shape == (3, 32) and joined[0]["jpg"] == b"x"


def test_many_small_shards_keep_few_files_open(tmp_path, encoder):
    """One shard per commit: a reader keeps at most max_open memory maps (file descriptors) open at once."""
    embed_to_store(RECORDS, encoder, tmp_path / "s", batch_size=2, commit_every=2, progress=False)
    everything = EmbeddingStore(tmp_path / "s")
    keys = everything.keys()
    assert len(keys) == 12 and len(everything._files) == 6
    bounded = EmbeddingStore(tmp_path / "s", max_open=2)
    for order in (keys, keys[::-1], keys[::3] + keys):
        assert torch.equal(bounded.get_batch(order), everything.get_batch(order))
        assert len(bounded._open) <= 2
    held = bounded["k000"]  # a row returned before its shard is closed stays readable
    bounded.get_batch(keys[::-1])
    assert np.array_equal(held, everything["k000"])
    (tmp_path / "s" / "shard-00003.npy").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        EmbeddingStore(tmp_path / "s")


def test_killed_run_resumes_to_identical_store(tmp_path, encoder, monkeypatch):
    embed_to_store(RECORDS, encoder, tmp_path / "full", batch_size=2, shard_size=4, progress=False)

    # Kill 1: an exception while reading input after the first shard (the partial second shard is lost).
    def killed(records, n):
        for i, r in enumerate(records):
            if i == n:
                raise KeyboardInterrupt
            yield r

    with pytest.raises(KeyboardInterrupt):
        embed_to_store(killed(RECORDS, 6), encoder, tmp_path / "resumed", batch_size=2, shard_size=4,
                       progress=False)
    assert len(EmbeddingStore(tmp_path / "resumed")) == 4
    # Kill 2: the shard file is committed but the process dies before it is recorded in the manifest.
    original = EmbeddingStoreWriter._record

    def die_before_record(self, name, rows):
        raise SystemExit("killed")

    monkeypatch.setattr(EmbeddingStoreWriter, "_record", die_before_record)
    with pytest.raises(SystemExit):
        embed_to_store(RECORDS, encoder, tmp_path / "resumed", batch_size=2, shard_size=4, progress=False)
    assert (tmp_path / "resumed" / "shard-00001.npy").exists()
    assert len(EmbeddingStore(tmp_path / "resumed")) == 4
    monkeypatch.setattr(EmbeddingStoreWriter, "_record", original)
    report = embed_to_store(RECORDS, encoder, tmp_path / "resumed", batch_size=2, shard_size=4, progress=False)
    assert report.already_stored == 4 and report.written == 8
    assert _files(tmp_path / "resumed") == _files(tmp_path / "full")
    # A rerun of a complete store adds nothing.
    again = embed_to_store(RECORDS + RECORDS[:2], encoder, tmp_path / "full", shard_size=4, progress=False)
    assert again.written == 0 and again.already_stored == 12 and again.duplicates == 2
    assert len(EmbeddingStore(tmp_path / "full").keys()) == 12


def test_store_refuses_other_metadata(tmp_path, encoder):
    embed_to_store(RECORDS[:2], encoder, tmp_path / "s", progress=False)
    other = FacetTextEncoder(encoder.model, encoder.tokenizer, "long")
    with pytest.raises(StoreMismatchError, match="prompt_set_hash"):
        embed_to_store(RECORDS, other, tmp_path / "s", progress=False)
    layer = FacetTextEncoder(encoder.model, encoder.tokenizer, "short", layer=2)
    with pytest.raises(StoreMismatchError, match="layer: store has 3, this run has 2"):
        embed_to_store(RECORDS, layer, tmp_path / "s", progress=False)
    assert len(EmbeddingStore(tmp_path / "s")) == 2


def test_duplicates_and_empty_captions_are_skipped_and_counted(tmp_path, encoder):
    records = [("a", "one"), ("b", "  "), ("a", "again"), ("c", "three")]
    report = embed_to_store(records, encoder, tmp_path / "s", progress=False)
    assert (report.written, report.duplicates, report.empty) == (2, 1, 1)
    assert sorted(EmbeddingStore(tmp_path / "s").keys()) == ["a", "c"]
    # A key repeated after its first occurrence was committed is still a duplicate of this run, not "stored".
    records = [("x", "one"), ("y", "two"), ("z", "three"), ("x", "again"), ("a", "stored before")]
    report = embed_to_store(records, encoder, tmp_path / "s", commit_every=2, progress=False)
    assert (report.written, report.duplicates, report.already_stored) == (3, 1, 1)
    assert len(report.shards) == 2


def test_progress_counts_captions_encoded(tmp_path, encoder, capsys):
    records = RECORDS[:4] + RECORDS[:2]  # 4 captions to encode, 2 duplicates
    report = embed_to_store(records, encoder, tmp_path / "s", batch_size=3, commit_every=4, progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "4captions" in bar and "captions/s" in bar, bar
    assert report.to_dict()["captions_per_s"] > 0


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_caption_sources_jsonl_and_tar(tmp_path):
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text(json.dumps({"key": "x1", "caption": "a cat"}) + "\nnot json\n\n"
                     + json.dumps({"key": "x2", "caption": "a dog"}) + "\n")
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "s/0001.jpg", b"\xff\xd8")
        _add(tar, "s/0001.txt", b"first caption")
        _add(tar, "s/0002.jpg", b"\xff\xd8")
        _add(tar, "s/0002.json", json.dumps({"caption": "second caption"}).encode())
        _add(tar, "s/0003.jpg", b"\xff\xd8")  # no caption: skipped
        _add(tar, "s/0004.seg.txt", b"extension is seg.txt, not txt")  # no caption: skipped
    got = list(iter_captions([jsonl, shard]))
    assert got == [("x1", "a cat"), ("x2", "a dog"), ("s/0001", "first caption"),
                   ("s/0002", "second caption")]
    skips = SkipCounter()  # the data package's bad-data policy: skipped and counted
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar")
    assert list(iter_captions([jsonl, shard, broken], skips)) == got
    assert skips.as_dict() == {"bad_json": 1, "missing_field": 2, "unreadable_shard": 1}
    (tmp_path / "caps.csv").write_text("k,c\n")
    with pytest.raises(ValueError, match="jsonl"):
        list(iter_captions([tmp_path / "caps.csv"]))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        list(iter_captions([tmp_path / "missing.jsonl"]))
