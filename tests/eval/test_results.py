"""Results JSON round trip and the metric-vs-shots plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from frozenvl.eval.results import EvalResults, plot_metric_vs_shots


def _results() -> EvalResults:
    res = EvalResults("coco", config={"model": "tiny", "shots": [0, 4], "trials": 2})
    res.add_run(0, 0, {"score": 70.0, "CIDEr": 70.0, "tokenizer": "ptb-java",
                       "per_sample": {"a": 50.0, "b": 90.0}}, {"a": "a cube", "b": "two spheres"}, seed=0)
    res.add_run(0, 1, {"score": np.float32(74.0), "CIDEr": 74.0, "tokenizer": "ptb-java"}, {"a": "x"}, seed=1)
    res.add_run(4, 0, {"score": 80.0, "CIDEr": 80.0}, [{"key": "a", "prediction": "a red cube"}], seed=0)
    res.add_run(4, 1, {"score": 90.0, "CIDEr": 90.0, "bad": float("nan")}, seed=1)
    return res


def test_summary_mean_and_std_over_trials():
    summary = _results().summary()
    assert summary[0]["score"]["mean"] == pytest.approx(72.0)
    assert summary[0]["score"]["std"] == pytest.approx(2.0)
    assert summary[4]["CIDEr"]["values"] == [80.0, 90.0]
    assert "tokenizer" not in summary[0]  # only numeric metrics are summarised
    assert "bad" not in summary[4]  # NaN is stored as None and left out


def test_json_round_trip(tmp_path):
    res = _results()
    path = res.save(tmp_path / "out" / "coco.json")
    data = json.loads(path.read_text())
    assert data["task"] == "coco" and data["config"]["trials"] == 2
    assert data["summary"]["4"]["score"]["mean"] == pytest.approx(85.0)
    run = data["runs"][0]
    assert run["metrics"]["tokenizer"] == "ptb-java" and "per_sample" not in run["metrics"]
    assert run["predictions"] == [{"key": "a", "prediction": "a cube", "score": 50.0},
                                  {"key": "b", "prediction": "two spheres", "score": 90.0}]
    assert data["runs"][3]["metrics"]["bad"] is None  # NaN is not valid JSON
    loaded = EvalResults.load(path)
    assert loaded.runs == res.runs and loaded.config == res.config
    assert loaded.summary() == res.summary()
    assert not list(path.parent.glob(".*tmp"))  # atomic write leaves no temporary behind


def test_duplicate_run_and_bad_file(tmp_path):
    res = _results()
    with pytest.raises(ValueError, match="already recorded"):
        res.add_run(0, 1, {"score": 1.0})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        EvalResults.load(bad)


def test_plot_is_a_valid_png(tmp_path):
    path = plot_metric_vs_shots(_results(), tmp_path / "coco.png",
                                reference={"Flamingo-3B": {0: 73.0, 4: 85.0, 32: 99.0}})
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 420)
    with pytest.raises(ValueError, match="no results hold"):
        plot_metric_vs_shots(_results(), tmp_path / "x.png", metric="BLEU")
