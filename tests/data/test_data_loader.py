"""Streaming loader: determinism, rank/worker splitting, resume, sampling policies, collators."""

from __future__ import annotations

import pytest
import torch
from datafixtures import fake_processor, interrupted_run, solid, write_pages, write_pairs

from frozenvl.data import (
    LoaderConfig,
    ShardDataset,
    ShardWriter,
    StreamingLoader,
    interleaved_sample,
    pair_sample,
    video_sample,
)
from frozenvl.flame.baseline import baseline_config
from frozenvl.tasks import ClipBaselineCollator, FlamingoCollator


def keys(loader) -> list[str]:
    return [s["key"] for batch in loader for s in batch]


def test_deterministic_for_a_seed(tmp_path):
    write_pairs(tmp_path, 60, per_shard=10)
    cfg = lambda seed: LoaderConfig(seed=seed, shuffle_buffer=16)
    run = lambda seed, workers: keys(StreamingLoader(ShardDataset(tmp_path, cfg(seed)), 4, num_workers=workers))
    a, b = run(0, 0), run(0, 0)
    assert a == b and sorted(a) == sorted(f"p{i:05d}" for i in range(60))
    assert run(1, 0) != a  # another seed, another order
    assert a != sorted(a)  # shuffled
    assert run(0, 2) == run(0, 2)  # with workers too

    loader = StreamingLoader(ShardDataset(tmp_path, cfg(0)), 4)
    first, second = keys(loader), keys(loader)  # two epochs
    assert sorted(first) == sorted(second) and first != second and loader.epoch == 2


@pytest.mark.parametrize("n_shards", [8, 2])  # by shard, and by sample when shards < streams
def test_two_ranks_two_workers_see_every_sample_once(tmp_path, n_shards):
    write_pairs(tmp_path, 40, per_shard=40 // n_shards)
    seen = []
    for rank in range(2):
        ds = ShardDataset(tmp_path, LoaderConfig(seed=3, shuffle_buffer=4), rank=rank, world_size=2)
        per_rank = keys(StreamingLoader(ds, 3, num_workers=2))
        assert per_rank  # each rank gets work
        seen += per_rank
    assert sorted(seen) == sorted(f"p{i:05d}" for i in range(40))  # exactly once


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_exactly_the_remaining_samples(tmp_path, workers):
    write_pairs(tmp_path, 50, per_shard=10)
    cfg = LoaderConfig(seed=5, shuffle_buffer=8)
    full = keys(StreamingLoader(ShardDataset(tmp_path, cfg), 4, num_workers=workers))

    head, tail, resumed, state = interrupted_run(
        lambda: StreamingLoader(ShardDataset(tmp_path, cfg), 4, num_workers=workers), 4)
    assert head + tail == full  # same order, nothing repeated, nothing lost
    assert len(head) == 16 and resumed.epoch == 1
    assert sorted(keys(resumed)) == sorted(full)  # and the next epoch is whole again

    other = StreamingLoader(ShardDataset(tmp_path, cfg), 4, num_workers=3)
    with pytest.raises(ValueError, match="n_streams"):
        other.load_state_dict(state)


def test_max_images_truncation_and_skip(tmp_path):
    write_pages(tmp_path, 4, per_shard=4, n_images=5)
    ds = ShardDataset(tmp_path, LoaderConfig(max_images=2, shuffle_shards=False))
    pages = list(ds)
    assert len(pages) == 4 and all(len(p["images"]) == 2 for p in pages)
    assert pages[0]["text"] == "intro text<image>text 0 of page 0<|endofchunk|><image>text 1 of page 0<|endofchunk|>"
    strict = ShardDataset(tmp_path, LoaderConfig(max_images=2, truncate=False))
    assert list(strict) == [] and strict.skips.as_dict() == {"too_many_images": 4}


def test_max_tokens(tmp_path):
    write_pages(tmp_path, 2, per_shard=2, n_images=4)
    write_pairs(tmp_path, 2, per_shard=2)
    counter = lambda text: len(text)  # characters as tokens: exact control in the test
    ds = ShardDataset(tmp_path, LoaderConfig(max_tokens=60), token_counter=counter)
    out = list(ds)
    pages = [s for s in out if s["kind"] == "interleaved"]
    assert len(pages) == 2 and all(len(p["text"]) <= 60 and p["text"].endswith("<|endofchunk|>") for p in pages)
    assert all(p["text"].count("<image>") == len(p["images"]) for p in pages)
    ds = ShardDataset(tmp_path, LoaderConfig(max_tokens=20), token_counter=counter)
    assert [s["kind"] for s in ds] == []  # pairs are 34 chars, no page prefix fits
    assert ds.skips.as_dict() == {"text_too_long": 4}


def test_single_image_drop_probability(tmp_path):
    with ShardWriter(tmp_path, "pages") as w:
        for i in range(200):
            n = 1 if i % 2 == 0 else 2
            texts, imgs = [], []
            for _ in range(n):
                texts += [None, "t"]
                imgs += [solid((1, 2, 3), 4), None]
            w.write(interleaved_sample(f"pg{i}", texts, imgs))
    count = lambda p: sum(len(s["images"]) == 1 for s in ShardDataset(tmp_path, LoaderConfig(
        single_image_drop_prob=p, seed=1)))
    assert count(0.0) == 100 and count(1.0) == 0
    assert 30 < count(0.5) < 70
    ds = ShardDataset(tmp_path, LoaderConfig(single_image_drop_prob=1.0))
    assert len(list(ds)) == 100 and ds.skips.as_dict() == {"dropped_single_image": 100}
    assert ds.skips.total == 0  # a policy, not bad data


def test_similarity_threshold(tmp_path):
    with ShardWriter(tmp_path, "s") as w:
        w.write(pair_sample("good", solid((1, 1, 1)), "c", similarity=0.3))
        w.write(pair_sample("bad", solid((1, 1, 1)), "c", similarity=0.1))
        w.write(pair_sample("unknown", solid((1, 1, 1)), "c"))
        w.write(interleaved_sample("page", ["a", None, "b", None, "c"], [None, solid((9, 9, 9)), None,
                                                                         solid((8, 8, 8)), None],
                                   similarities=[None, 0.1, None, 0.4, None]))
        w.write(interleaved_sample("lowpage", [None, "b"], [solid((9, 9, 9)), None], similarities=[0.05, None]))
    ds = ShardDataset(tmp_path, LoaderConfig(min_similarity=0.2, shuffle_shards=False))
    out = {s["key"]: s for s in ds}
    assert sorted(out) == ["good", "page", "unknown"]
    assert out["page"]["text"] == "a b<image>c<|endofchunk|>" and out["page"]["images"][0].getpixel((0, 0)) == (
        8, 8, 8)
    assert ds.skips.as_dict() == {"low_similarity": 1, "no_images": 1}


def test_flamingo_and_flame_collators(tmp_path):
    write_pairs(tmp_path / "p", 6, per_shard=6)
    write_pages(tmp_path / "p", 2, per_shard=2, n_images=2)
    with ShardWriter(tmp_path / "v", "v") as w:
        for i in range(3):
            w.write(video_sample(f"v{i}", [solid((i, f, 0)) for f in range(i + 2)], "moves" + " far" * i, fps=1.0))

    ds = ShardDataset(tmp_path / "p", LoaderConfig(shuffle_shards=False))
    batches = list(StreamingLoader(ds, 4, collate_fn=FlamingoCollator(fake_processor)))
    assert [len(b["keys"]) for b in batches] == [4, 4]
    b = batches[0]  # shards in name order: pages-000000.tar, then pairs-000000.tar
    assert b["keys"] == ["page00000", "page00001", "p00000", "p00001"]
    assert b["attention_mask"].sum(1).tolist()[2] == len("<image>caption number 0<|endofchunk|>")
    assert b["pixel_values"].shape[:2] == (4, 2)  # (B, T_img = most images in the batch, ...)
    assert batches[1]["pixel_values"].shape[:2] == (4, 1) and set(batches[1]["kinds"]) == {"pair"}

    vids = next(iter(StreamingLoader(ShardDataset(tmp_path / "v"), 3, collate_fn=FlamingoCollator(
        fake_processor, padding_side="left"))))
    assert vids["pixel_values"].shape == (3, 1, 4, 3, 8, 8)  # (B, T_img, F, C, H, W)
    assert (vids["attention_mask"][:, 0] == 0).any()  # left padding

    clip_config = baseline_config("tiny")
    clip_config.vision.image_size = 12
    clip = next(iter(StreamingLoader(ShardDataset(tmp_path / "p", LoaderConfig(shuffle_shards=False,
                                                                                kinds=("pair",))),
                                     6, collate_fn=ClipBaselineCollator(clip_config))))
    assert clip["images"].shape == (6, 3, 12, 12) and clip["images"].dtype == torch.float32
    assert clip["input_ids"].shape[0] == 6 and clip["keys"][0] == "p00000"
    with pytest.raises(ValueError, match="no Flamingo text"):
        FlamingoCollator(fake_processor)([{"key": "k", "kind": "vqa", "images": []}])


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="single_image_drop_prob"):
        LoaderConfig(single_image_drop_prob=2)
    with pytest.raises(ValueError, match="no shards"):
        ShardDataset(tmp_path / "nothing-*.tar")
    write_pairs(tmp_path, 2, per_shard=2)
    with pytest.raises(ValueError, match="rank"):
        ShardDataset(tmp_path, rank=2, world_size=2)


def test_collate_with_the_real_flamingo_processor(tmp_path):
    from frozenvl.backbones.vision import ImageTransform
    from frozenvl.flamingo.processor import FlamingoProcessor
    from frozenvl.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_tokens(["<image>", "<|endofchunk|>"], special_tokens=True)
    processor = FlamingoProcessor(tok, ImageTransform(8), max_images=5, max_length=512)
    write_pages(tmp_path, 3, per_shard=3, n_images=2)
    write_pairs(tmp_path, 3, per_shard=3)
    batches = list(StreamingLoader(ShardDataset(tmp_path, LoaderConfig(shuffle_shards=False)), 3,
                                   collate_fn=FlamingoCollator(processor)))
    pages, pairs = batches
    assert pages["pixel_values"].shape == (3, 2, 1, 3, 8, 8) and pairs["pixel_values"].shape == (3, 1, 1, 3, 8, 8)
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (pages["input_ids"] == image_id).sum(1).tolist() == [2, 2, 2]
    assert tok.decode(pairs["input_ids"][0][pairs["attention_mask"][0].bool()]) == (
        "<image>caption number 0<|endofchunk|>")
