"""The FLAME-vs-CLIP comparison end to end at a toy scale (tiny random LM): world, store, both trainings, scores."""

import json
from pathlib import Path

import pytest

from frozenvl.cli.compare import ComparisonConfig, format_table, run_comparison, run_config
from frozenvl.testing import tiny_lm, tiny_tokenizer


@pytest.fixture
def toy(tmp_path) -> ComparisonConfig:
    tiny_lm("llama").save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    return ComparisonConfig(out=str(tmp_path / "cmp"), lm=str(tmp_path / "lm"), n_pairs=32, n_eval=8, image_size=32,
                            steps=3, batch_size=8, warmup_steps=1, sampled_facets=2,
                            vision={"patch_size": 8, "width": 32, "layers": 1, "heads": 2}, head_hidden=32,
                            text={"width": 32, "layers": 1, "heads": 2}, threads=None)


def test_equal_data_and_steps(toy, tmp_path):
    flame, clip = (run_config(toy, kind, Path("w"), "s") for kind in ("flame", "clip_baseline"))
    assert flame.data == clip.data and flame.optim == clip.optim
    assert {**vars(flame.train), "run_dir": ""} == {**vars(clip.train), "run_dir": ""}
    shared = ("preset", "image_size", "vision", "head_hidden", "loss")
    assert ({k: getattr(flame.model.flame, k) for k in shared}
            == {k: getattr(clip.model.clip_baseline, k) for k in shared})


def test_comparison_runs_end_to_end(toy, capsys):
    results = run_comparison(toy)
    saved = json.loads((Path(toy.out) / "results.json").read_text())
    assert saved["headline"] == results["headline"]
    assert results["embedding"]["captions"] == 32  # every training caption went through the frozen LLM once
    for kind in ("flame", "clip_baseline"):
        m = results["models"][kind]
        assert m["training"]["steps"] == 3 and m["training"]["final_loss"] is not None
        assert m["zero_shot/heldout"]["num_images"] == 8 and m["zero_shot/heldout"]["num_classes"] == 36
        assert m["retrieval/long"]["num_images"] == m["retrieval/long"]["num_captions"] == 8
        assert 0 <= m["retrieval/long"]["text_to_image_R@1"] <= 100
    # FLAME's trainable parameters are the image tower alone; the baseline adds its text tower.
    assert results["models"]["clip_baseline"]["training"]["trainable_parameters"] > \
        results["models"]["flame"]["training"]["trainable_parameters"]
    table = format_table(results)
    assert table.splitlines()[-1].startswith("headline: 32 pairs, 3 steps x 8")
    # Run again: the world and the store are reused (nothing embedded a second time).
    again = run_comparison(toy)
    assert again["embedding"]["embedded_now"] == 0 and again["embedding"]["captions"] == 32


def test_command_prints_the_table(toy, tmp_path, capsys):
    """`frozenvl compare --config FILE key=value`: the config engine reads the file and the overrides."""
    import yaml

    from frozenvl.cli import main

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(toy.to_dict()))
    assert main(["compare", "--config", str(path), "steps=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("headline: 32 pairs, 2 steps") and "FLAME" in lines[-1] and "CLIP" in lines[-1]
    assert main(["compare", "--config", str(path), "stepz=2"]) == 2
    assert "unknown key stepz" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["[" * 100_000 + "]" * 100_000, bytes(range(256)), "[1]", '{"splits": {}}'])
def test_a_damaged_world_description_is_one_error_or_a_new_world(tmp_path, damage):
    """A world.json nested too deeply was a RecursionError traceback, a binary one an error without its name, a
    list or one without 'config' a TypeError/KeyError. A given world names the file; the comparison's own world
    folder is generated again."""
    from frozenvl.cli.compare import prepare_world
    from frozenvl.data.synth import world_split_shards

    given = tmp_path / "given"
    given.mkdir()
    write = (given / "world.json").write_bytes if isinstance(damage, bytes) else (given / "world.json").write_text
    write(damage)
    small = dict(n_pairs=8, n_eval=4, image_size=32, progress=False)
    with pytest.raises(ValueError, match="world.json"):
        prepare_world(ComparisonConfig(out=str(tmp_path / "out"), world=str(given), **small))
    own = tmp_path / "out" / "world"
    own.mkdir(parents=True)
    write = (own / "world.json").write_bytes if isinstance(damage, bytes) else (own / "world.json").write_text
    write(damage)
    assert prepare_world(ComparisonConfig(out=str(tmp_path / "out"), **small)) == own
    assert world_split_shards(own, "pairs")
