"""The few-shot harness end to end on a tiny synthetic world with a tiny Flamingo."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from frozenvl.cli.eval import main
from frozenvl.data import WorldConfig, generate_world
from frozenvl.eval import get_task
from frozenvl.eval.harness import EvalConfig, FewShotHarness, TaskData, evaluate
from frozenvl.eval.records import EvalRecord
from frozenvl.eval.synthetic import synthetic_task_data
from frozenvl.testing import images, tiny_flamingo


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    config = WorldConfig(seed=0, image_size=32, n_eval=10, n_episodes=2, k_shot=4, n_query=3,
                         splits=("captioning", "classification", "icl_words"))
    generate_world(path, config, progress=False, log=None)
    return path


@pytest.fixture(scope="module")
def tiny():
    return tiny_flamingo("gpt2", seed=3, open_gates=True)


def test_captioning_end_to_end_json_and_png(world, tiny, tmp_path):
    model, processor = tiny
    spec = get_task("synth_captioning")
    data = synthetic_task_data("synth_captioning", world)
    out = evaluate(model, processor, spec, data, EvalConfig(shots=(0, 2, 4), trials=2, limit=3), tmp_path,
                   progress=False)
    saved = json.loads(out.json_path.read_text())
    assert sorted(int(s) for s in saved["summary"]) == [0, 2, 4]
    assert sorted((r["shots"], r["trial"]) for r in saved["runs"]) == [(s, t) for s in (0, 2, 4) for t in (0, 1)]
    for run in saved["runs"]:
        assert run["metrics"]["tokenizer"] in ("ptb-java", "python-fallback")
        assert [p["key"] for p in run["predictions"]] == [r.key for r in data.queries[:3]]
        assert all(len(p["demos"]) == (2 if run["shots"] == 0 else run["shots"]) for p in run["predictions"])
        assert all(p["key"] not in p["demos"] for p in run["predictions"])
    assert saved["config"]["task"]["num_beams"] == 3 and saved["config"]["task"]["max_new_tokens"] == 20
    with Image.open(out.plot_path) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_zero_shot_prompts_are_text_only(world, tiny, monkeypatch):
    """What the model receives: a 0-shot prefix with the 2 demonstrations' text and no image."""
    model, processor = tiny
    calls = []
    forward = model.forward

    def spy(input_ids, attention_mask=None, pixel_values=None, cache=None, **kwargs):
        calls.append((input_ids.clone(), pixel_values, cache is None))
        return forward(input_ids, attention_mask, pixel_values, cache=cache, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    spec = get_task("synth_classification")
    data = synthetic_task_data("synth_classification", world)
    harness = FewShotHarness(model, processor, EvalConfig(shots=(0,), limit=2, save_prompts=True))
    _, samples = harness.run_once(spec, data, shots=0, trial=0)
    prefixes = [(ids, pixels) for ids, pixels, fresh in calls if fresh]
    assert prefixes, "the demonstrations were never encoded"
    for ids, pixels in prefixes:
        assert int((ids == model.image_token_id).sum()) == 0 and pixels is None
        assert int((ids == model.end_of_chunk_token_id).sum()) == 2
    for sample in samples:
        assert sample["prompt"].count("<image>") == 1 and sample["prompt"].endswith("<image>Output:")
        assert sample["prompt"].count("<|endofchunk|>") == 2
        names = [r.meta["class_name"] for r in data.pool if r.key in sample["demos"]]
        assert all(f"Output:{n}<|endofchunk|>" in sample["prompt"] for n in names)


def test_icl_words_episodes_and_cached_equals_uncached(world, tiny):
    model, processor = tiny
    spec = get_task("synth_icl_words")
    data = synthetic_task_data("synth_icl_words", world)
    assert data.episodic and {r.meta["role"] for r in data.pool} == {"support"}
    episode = {r.key: r.meta["episode"] for r in data.pool + data.queries}
    runs = {}
    for cached in (True, False):
        config = EvalConfig(shots=(4,), limit=4, prefix_cache=cached)
        runs[cached] = FewShotHarness(model, processor, config).run_once(spec, data, shots=4, trial=0)
    metrics, samples = runs[True]
    assert 0.0 <= metrics["score"] <= 100.0
    for sample, query in zip(samples, data.queries):
        assert all(episode[d] == episode[query.key] for d in sample["demos"])  # its own episode's supports
        assert list(sample["scores"]) == query.meta["choices"]  # candidates: the episode's words
        assert sample["target"] == query.meta["class_name"]
    for a, b in zip(samples, runs[False][1]):
        assert a["answer"] == b["answer"]
        assert max(abs(a["scores"][w] - b["scores"][w]) for w in a["scores"]) <= 1e-4


def test_rices_picks_the_most_similar_last_and_caches_features(tiny, monkeypatch):
    model, processor = tiny
    imgs = images(8, seed=9)
    names = ["red circle", "blue star"]
    pool = [EvalRecord(key=f"p{i}", image=img, label=i % 2) for i, img in enumerate(imgs[:6])]
    twin = EvalRecord(key="twin", image=imgs[6].clone(), label=0)
    query = EvalRecord(key="q", image=imgs[6], label=0)
    data = TaskData(queries=[query], pool=[*pool, twin], class_names=names)
    import frozenvl.eval.harness as harness_module

    loaded = []
    media_tensor = harness_module.media_tensor
    monkeypatch.setattr(harness_module, "media_tensor",
                        lambda proc, medium, *a: loaded.append(medium) or media_tensor(proc, medium, *a))
    harness = FewShotHarness(model, processor, EvalConfig(shots=(2, 4), rices=True, trials=3))
    results = harness.run(get_task("synth_classification"), data, progress=False)
    assert sorted((r["shots"], r["trial"]) for r in results.runs) == [(2, 0), (4, 0)]  # RICES: one trial
    for run in results.runs:
        demos = run["predictions"][0]["demos"]
        assert demos[-1] == "twin" and "q" not in demos  # the most similar image comes last
    assert len(loaded) == 8  # 7 pool records + the query: features computed once for both shot counts


def test_cli_writes_results_for_every_shot(world, tiny, tmp_path, monkeypatch, capsys):
    import frozenvl.cli.eval as cli

    monkeypatch.setattr(cli, "load_model", lambda args: tiny)
    code = main(["flamingo", "--task", "synth_icl_words", "--data", str(world), "--shots", "0", "2",
                 "--limit", "2", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    saved = json.loads((tmp_path / "synth_icl_words.json").read_text())
    assert sorted(int(s) for s in saved["summary"]) == [0, 2]
    assert (tmp_path / "synth_icl_words.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results:" in capsys.readouterr().out
    assert main(["flamingo", "--task", "nope", "--data", str(world)]) == 2
    assert "unknown task" in capsys.readouterr().err
