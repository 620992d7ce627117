"""The synthetic world: deterministic, held-out compositions, pixels that match the text, the in-context task."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from frozenvl.cli.data import main
from frozenvl.data import LoaderConfig, ShardDataset, ShardWriter, SkipCounter, read_shard
from frozenvl.data.synth import (
    COLOURS,
    EVAL_WORDS,
    HELDOUT,
    SHAPES,
    TRAIN_WORDS,
    WorldConfig,
    generate_world,
    iter_world_split,
    split_folder,
    world_split_shards,
)

SMALL = dict(n_pairs=300, n_interleaved=60, n_video=30, n_eval=60, n_episodes=40, shard_size=100, frames=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    meta = generate_world(out, WorldConfig(seed=7, **SMALL), progress=False, log=None)
    return out, meta


def load(out, split) -> list[dict]:
    config = LoaderConfig(shuffle_shards=False, max_images=10, max_tokens=1000)
    return list(ShardDataset(out / split_folder(split) / f"{split}-*.tar", config))


def test_layout_and_metadata(world):
    out, meta = world
    saved = json.loads((out / "world.json").read_text())
    assert saved["splits"]["pairs"]["samples"] == 300 and len(saved["splits"]["pairs"]["shards"]) == 3
    assert set(saved["splits"]) == {"pairs", "interleaved", "video", "captioning", "vqa", "classification",
                                    "retrieval", "video_qa", "icl_words", "heldout"}
    for split, info in saved["splits"].items():
        assert len(load(out, split)) == info["samples"], split  # every sample decodes: nothing skipped


def test_evaluation_split_reader(world, tmp_path):
    """One reader of the evaluation splits (the Flamingo tasks and the FLAME sets both use it)."""
    out, meta = world
    keys = [s["key"] for s in iter_world_split(out, "vqa")]
    assert len(keys) == meta["splits"]["vqa"]["samples"] and len(set(keys)) == len(keys)
    assert [s["key"] for s in iter_world_split(out / "eval", "vqa")] == keys  # the eval folder
    assert [s["key"] for s in iter_world_split(str(out / "eval" / "vqa-*.tar"), "vqa")] == keys  # a shard spec
    # Bad samples are skipped and counted, never raised.
    raw = list(read_shard(out / "eval" / "vqa-000000.tar"))[:3]
    with ShardWriter(tmp_path / "bad" / "eval", "vqa") as w:
        for i, sample in enumerate(raw):
            w.write({k: (b"not an image" if i == 1 and k == "png" else v) for k, v in sample.items()
                     if k != "__shard__"})
    skips = SkipCounter()
    assert [s["key"] for s in iter_world_split(tmp_path / "bad", "vqa", skips)] == [keys[0], keys[2]]
    assert skips.as_dict() == {"corrupt_image": 1}
    with pytest.raises(FileNotFoundError, match="no retrieval-"):
        list(iter_world_split(tmp_path / "bad", "retrieval"))
    # Training splits are found the same way, in their own folder.
    assert world_split_shards(out, "pairs") == [str(out / "train" / f"pairs-00000{i}.tar") for i in range(3)]


def test_same_seed_same_bytes(world, tmp_path):
    out, _ = world
    cfg = dict(SMALL, n_pairs=120, n_interleaved=20, n_video=10, n_eval=20, n_episodes=4)
    splits = ("pairs", "interleaved", "video", "icl_words")
    generate_world(tmp_path / "a", WorldConfig(seed=7, splits=splits, **cfg), progress=False, log=None)
    generate_world(tmp_path / "b", WorldConfig(seed=7, splits=splits, workers=2, **cfg), progress=False, log=None)
    generate_world(tmp_path / "c", WorldConfig(seed=8, splits=splits, **cfg), progress=False, log=None)
    for sub, name in [("train", "pairs-000000.tar"), ("train", "video-000000.tar"), ("eval", "icl_words-000000.tar")]:
        a = (tmp_path / "a" / sub / name).read_bytes()
        assert a == (tmp_path / "b" / sub / name).read_bytes()  # also with 2 generator processes
        assert a != (tmp_path / "c" / sub / name).read_bytes()
    # The first 100 pairs do not depend on how many were asked for.
    assert (tmp_path / "a/train/pairs-000000.tar").read_bytes() == (out / "train/pairs-000000.tar").read_bytes()


def test_heldout_compositions_never_in_training(world):
    out, _ = world
    names = [f"{c} {s}" for c, s in HELDOUT]
    texts = [s["caption"] + " " + s["long_caption"] for s in load(out, "pairs")]
    texts += [s["text"] for s in load(out, "interleaved")] + [s["caption"] for s in load(out, "video")]
    assert not [t for t in texts for n in names if n in t]
    train_pairs = {(o["colour"], o["shape"]) for s in load(out, "pairs") for o in s["objects"]}
    assert len(train_pairs) == len(COLOURS) * len(SHAPES) - len(HELDOUT)  # all others are seen
    pages = load(out, "interleaved")
    shown = {(o["colour"], o["shape"]) for s in pages if s.get("theme") == "words" for o in s["objects"]}
    assert shown and not shown & set(HELDOUT)  # the one-object pictures of `words` pages too
    heldout = load(out, "heldout")
    assert all(s["heldout"] and (s["colour"], s["shape"]) in HELDOUT for s in heldout)
    assert any(s["heldout"] for s in load(out, "classification"))


def test_words_pages_reuse_the_names_they_give(world):
    out, _ = world
    pages = [s for s in load(out, "interleaved") if s.get("theme") == "words"]
    assert len(pages) > 5
    repeats = 0
    for page in pages:
        texts = [e for e in page["elements"] if isinstance(e, str) and any(n in e for n in page["names"])]
        objects = page["objects"]
        assert 4 <= len(objects) == len(texts) <= 9 and set(page["names"]) <= set(TRAIN_WORDS)
        seen: dict[str, str] = {}
        for obj, chunk in zip(objects, texts):
            word = next(n for n in page["names"] if n in chunk)
            value = obj[page["attribute"]]
            assert page["names"][word] == value  # the text names what the picture shows
            repeats += word in seen
            seen[word] = value
        assert set(seen) == set(page["names"])  # every name is given
    assert repeats > len(pages)  # later pictures reuse names given earlier: copying them is learnable


def _mask(img, colour) -> np.ndarray:
    arr = np.asarray(img, dtype=int)
    return (np.abs(arr - np.asarray(COLOURS[colour])).sum(-1) < 30)  # (H, W) pixels of that colour


def test_pixels_match_the_text(world):
    out, _ = world
    for s in load(out, "classification")[:30]:
        masks = {c: _mask(s["images"][0], c).sum() for c in COLOURS}
        assert max(masks, key=masks.get) == s["colour"] and masks[s["colour"]] > 20
    for s in load(out, "vqa"):
        if s["question"] == "How many shapes are there?":
            assert s["answers"] == [str(len(s["objects"]))] * 10
        if s["question_type"] == "colour":
            assert _mask(s["images"][0], s["answers"][0]).sum() > 20
    for s in load(out, "video_qa"):
        obj = next(o for o in s["objects"] if f"the {o['colour']} {o['shape']} " in s["question"])
        if [o["colour"] for o in s["objects"]].count(obj["colour"]) > 1:
            continue  # two objects of one colour: the colour mask cannot tell them apart
        frames = s["images"][0]
        first, last = (np.argwhere(_mask(f, obj["colour"])).mean(0) for f in (frames[0], frames[-1]))
        dy, dx = last - first
        moved = {"left": dx < -5, "right": dx > 5, "up": dy < -5, "down": dy > 5,
                 "still": abs(dx) < 1 and abs(dy) < 1}[s["answers"][0]]
        assert moved, (s["key"], s["answers"][0], dx, dy)


def test_in_context_task_is_not_solvable_from_the_query(world):
    out, _ = world
    records = load(out, "icl_words")
    episodes: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        episodes[r["episode"]].append(r)
    assert len(episodes) == 40
    # Within an episode the demonstrations define the mapping, and the queries follow it.
    correct = 0
    for recs in episodes.values():
        support = {r["concept"]: r["label"] for r in recs if r["role"] == "support"}
        assert len(set(support.values())) == len(support) == 3
        assert all(len([r for r in recs if r["role"] == "support" and r["concept"] == c]) == 4 for c in support)
        for q in (r for r in recs if r["role"] == "query"):
            assert q["label"] in q["choices"] and sorted(q["choices"]) == sorted(support.values())
            correct += support[q["concept"]] == q["label"]
    queries = [r for r in records if r["role"] == "query"]
    assert correct == len(queries)  # 100% with the demonstrations
    # Without them: even knowing the true concept of the query, the best fixed concept -> word rule is near chance.
    by_concept: dict[str, Counter] = defaultdict(Counter)
    for q in queries:
        by_concept[q["concept"]][q["label"]] += 1
    best_fixed_rule = sum(c.most_common(1)[0][1] for c in by_concept.values()) / len(queries)
    assert best_fixed_rule < 0.5
    labels_per_concept = [len(c) for c in by_concept.values()]
    assert np.mean(labels_per_concept) > 3  # the same shape/colour carries many names across episodes
    assert not set(r["label"] for r in records) & set(TRAIN_WORDS) and set(r["label"] for r in records) <= set(
        EVAL_WORDS)


def test_synth_cli(tmp_path):
    rc = main(["synth", str(tmp_path), "--pairs", "20", "--interleaved", "5", "--video", "3", "--eval", "5",
               "--episodes", "2", "--splits", "pairs", "vqa", "icl_words", "--quiet"])
    assert rc == 0
    meta = json.loads((tmp_path / "world.json").read_text())
    assert set(meta["splits"]) == {"pairs", "vqa", "icl_words"} and meta["splits"]["icl_words"]["samples"] == 36
    assert meta["heldout_compositions"] == [list(p) for p in HELDOUT]


def test_page_themes_weights(tmp_path, capsys):
    rc = main(["synth", str(tmp_path), "--pairs", "1", "--interleaved", "12", "--video", "1", "--eval", "1",
               "--episodes", "1", "--splits", "interleaved", "--page-themes", "caption=0", "qa=0", "count=0",
               "--quiet"])
    assert rc == 0
    pages = load(tmp_path, "interleaved")
    assert len(pages) == 12 and {p["theme"] for p in pages} == {"words"}
    meta = json.loads((tmp_path / "world.json").read_text())
    assert meta["config"]["page_themes"] == {"caption": 0.0, "qa": 0.0, "count": 0.0, "words": 1.0}
    for bad in (["poems=1"], ["words=-1"], ["words"], ["caption=0", "qa=0", "count=0", "words=0"]):
        assert main(["synth", str(tmp_path / "x"), "--splits", "pairs", "--page-themes", *bad, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("frozenvl data: error:") and "themes" in err, err
