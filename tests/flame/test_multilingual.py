"""FLAME vs CLIP per caption language and per prompt set (`frozenvl compare languages=... prompt_sets=...`), at a toy
scale (tiny random LM): one row per language and model, one per prompt set, the set chosen on validation.
(Two prompt sets and short captions per language keep it fast: the tiny tokenizer is byte-level.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from frozenvl.cli.compare import ComparisonConfig, format_table, run_comparison
from frozenvl.config import ConfigError
from frozenvl.data.synth import iter_world_split
from frozenvl.flame.evaluate import retrieval_metrics
from frozenvl.flame.inference import encode_image, encode_text, similarity
from frozenvl.testing import tiny_lm, tiny_tokenizer

LANGUAGES = ["en", "fr", "es", "de"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multilingual")
    tiny_lm("llama").save_pretrained(tmp / "lm")
    tiny_tokenizer().save_pretrained(tmp / "lm")
    config = ComparisonConfig(out=str(tmp / "cmp"), lm=str(tmp / "lm"), n_pairs=24, n_eval=4, image_size=32,
                              steps=2, batch_size=8, warmup_steps=1, sampled_facets=1,
                              vision={"patch_size": 8, "width": 32, "layers": 1, "heads": 2}, head_hidden=32,
                              text={"width": 32, "layers": 1, "heads": 2}, threads=None,
                              languages=LANGUAGES, language_captions="short", prompt_sets=["raw", "short"])
    return config, run_comparison(config)


def test_one_row_per_language_and_model(compared):
    config, results = compared
    assert list(results["languages"]) == LANGUAGES
    table = format_table(results).splitlines()
    start = next(i for i, line in enumerate(table) if line.startswith("retrieval per language"))
    rows = [line.split()[:2] for line in table[start + 2:start + 2 + 2 * len(LANGUAGES)]]
    assert rows == [[lang, model] for lang in LANGUAGES for model in ("FLAME", "CLIP")]
    for models in results["languages"].values():
        assert set(models) == {"flame", "clip_baseline"}
        for m in models.values():
            assert m["num_images"] == m["num_captions"] == config.n_eval
            assert {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)} <= set(m)
    saved = json.loads((Path(config.out) / "results.json").read_text())
    assert saved["languages"] == results["languages"]


def test_a_language_is_scored_on_its_own_captions(compared):
    """The French row equals Recall@K computed here from the French captions of the world's test split (the
    first short caption of each image)."""
    config, results = compared
    from frozenvl.flame.baseline import ClipBaseline
    from frozenvl.flame.synthetic_eval import world_retrieval

    world = Path(results["world"])
    records = list(iter_world_split(world, "retrieval"))
    french = [r["translations"]["fr"]["captions"][0] for r in records]
    clip = ClipBaseline.from_pretrained(results["models"]["clip_baseline"]["training"]["checkpoint"]).eval()
    images = world_retrieval(world, config.image_size, long=True).images
    with torch.no_grad():
        sim = similarity(encode_image(clip, images, 64), encode_text(clip.text_encoder(), french, "mean_embedding", 64))
    expected = retrieval_metrics(sim, list(range(len(records))))
    got = results["languages"]["fr"]["clip_baseline"]
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    assert results["languages"]["en"]["flame"] == results["prompt_ablation"]["rows"][
        results["prompt_ablation"]["chosen"]]["test/short"]  # English short captions: the prompts table's


def test_number_of_prompts_table_and_choice_on_validation(compared):
    config, results = compared
    ablation = results["prompt_ablation"]
    rows = ablation["rows"]
    assert list(rows) == ["raw", "short", "clip_baseline"]
    assert [rows[p]["facets"] for p in rows] == [1, 3, 1]
    # The choice is the best validation score, never a test one; the main table's FLAME is that run.
    flame_sets = ["raw", "short"]
    assert ablation["chosen"] == max(flame_sets, key=lambda p: rows[p]["validation_R@1"])
    assert results["models"]["flame"]["retrieval/long"] == rows[ablation["chosen"]]["metrics"]["retrieval/long"]
    for p in rows:
        val = rows[p]["validation/long"]
        assert val["num_images"] == config.n_eval
        directions = ("image_to_text", "text_to_image")
        assert rows[p]["validation_R@1"] == pytest.approx(sum(
            rows[p][f"validation/{c}"][f"{d}_R@1"] for c in ("long", "short") for d in directions) / 4)
        assert rows[p]["test/short"]["num_captions"] == config.n_eval  # the first short caption of each image
    # Validation scenes are not test scenes.
    world = Path(results["world"])
    val_keys = {r["long_captions"][0] for r in iter_world_split(world, "retrieval_val")}
    test_keys = {r["long_captions"][0] for r in iter_world_split(world, "retrieval")}
    assert val_keys != test_keys
    # Each prompt set has its own store and run, with its own number of facets.
    stores = {rows[p]["store"] for p in flame_sets}
    assert len(stores) == 2 and all(Path(s).is_dir() for s in stores)
    assert all((Path(config.out) / f"run-flame-{p}").is_dir() for p in flame_sets)
    table = format_table(results).splitlines()
    start = next(i for i, line in enumerate(table) if line.startswith("number of prompts"))
    labels = [line.split()[:2] for line in table[start + 2:start + 5]]
    assert [label[1] if label[0] == "FLAME" else label[0] for label in labels] == [
        p + ("*" if p == ablation["chosen"] else "") for p in flame_sets] + ["CLIP"]


@pytest.mark.parametrize("override, message", [
    ({"languages": ["en", "it"]}, "languages"), ({"prompt_sets": ["raw", "medium"]}, "prompt_sets"),
    ({"prompt_sets": ["raw", "raw"]}, "prompt_sets"), ({"language_captions": "both"}, "language_captions")])
def test_bad_options_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        ComparisonConfig.from_dict(override)


def test_a_world_without_the_validation_split_is_reused_unless_prompt_sets_need_it(tmp_path):
    from frozenvl.cli.compare import prepare_world
    from frozenvl.data.synth import WorldConfig, generate_world

    world = tmp_path / "w"
    generate_world(world, WorldConfig(seed=0, image_size=32, n_pairs=8, n_eval=4, shard_size=500,
                                      splits=("pairs", "classification", "heldout", "retrieval")),
                   progress=False, log=None)
    config = ComparisonConfig(out=str(tmp_path / "o"), world=str(world), n_pairs=8, n_eval=4, image_size=32)
    assert prepare_world(config) == world and not list(world.glob("eval/retrieval_val-*"))
    with pytest.raises(ValueError, match="other settings"):
        prepare_world(ComparisonConfig.from_dict({**config.to_dict(), "prompt_sets": ["raw", "short"]}))
