"""Honest statistics in results: n and a 95 % interval beside each mean, and few-shot plots a reader can trust
(integer shot ticks, the metric's name on the y-axis, chance level drawn). Oracles: scipy's Wilson interval, the
normal approximation of the mean's interval for the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from frozenvl.eval.results import EvalResults, bootstrap_half_width, shots_figure, wilson_half_width


def _accuracy_results(correct_per_trial: list[int], n: int = 50, shots=(0, 4, 8)) -> EvalResults:
    """A multiple-choice task of 3 candidates: close-ended samples with answer, target and candidate scores."""
    res = EvalResults("synth_icl_words", config={"task": {"metric": "accuracy"}})
    for s in shots:
        for trial, k in enumerate(correct_per_trial):
            samples = [{"key": f"q{i}", "prediction": "dax" if i < k else "wug", "answer": "dax" if i < k else "wug",
                        "target": "dax", "scores": {"dax": -1.0, "wug": -2.0, "fep": -3.0}} for i in range(n)]
            res.add_run(s, trial, {"score": 100.0 * k / n, "accuracy": 100.0 * k / n}, samples, seed=trial)
    return res


@pytest.mark.parametrize("k, n", [(0, 10), (7, 24), (120, 200), (200, 200)])
def test_wilson_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_half_width(k, n) == pytest.approx((ci.high - ci.low) / 2, rel=1e-9)


def test_summary_cells_have_n_and_a_wilson_interval_for_accuracy():
    summary = _accuracy_results([30, 20]).summary()  # 2 draws of 50 queries: 50 / 100 correct pooled
    cell = summary[4]["score"]
    assert cell["n"] == 50 and cell["mean"] == pytest.approx(50.0) and cell["ci95_method"] == "wilson"
    ci = binomtest(50, 100).proportion_ci(method="wilson")
    assert cell["ci95"] == pytest.approx(100 * (ci.high - ci.low) / 2)
    assert summary[4]["accuracy"]["ci95"] == cell["ci95"]  # the same metric under its own name


def test_bootstrap_interval_for_cider_like_scores():
    rng = np.random.default_rng(1)
    res = EvalResults("synth_captioning", config={"task": {"metric": "cider"}})
    scores = rng.gamma(2.0, 30.0, size=300)
    res.add_run(0, 0, {"score": float(scores.mean()), "CIDEr": float(scores.mean()), "tokenizer": "ptb",
                       "per_sample": {f"q{i}": float(v) for i, v in enumerate(scores)}},
                {f"q{i}": "a cube" for i in range(300)})
    cell = res.summary()[0]["CIDEr"]
    assert cell["n"] == 300 and cell["ci95_method"] == "bootstrap"
    normal = 1.96 * scores.std(ddof=1) / np.sqrt(len(scores))
    assert cell["ci95"] == pytest.approx(normal, rel=0.1)
    assert res.summary()[0]["CIDEr"]["ci95"] == cell["ci95"]  # deterministic (fixed seed)
    assert bootstrap_half_width([3.0]) is None


def test_results_json_keeps_its_structure(tmp_path):
    path = _accuracy_results([30]).save(tmp_path / "r.json")
    loaded = EvalResults.load(path)
    cell = loaded.to_dict()["summary"]["8"]["score"]
    assert {"mean", "std", "values", "trials", "n", "ci95", "ci95_method"} <= set(cell)


def test_plot_has_integer_shot_ticks_the_metric_name_and_chance():
    fig = shots_figure(_accuracy_results([30]))
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0, 4, 8]
    assert ax.get_ylabel() == "accuracy (%)"
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(100 / 3)
    captioning = EvalResults("synth_captioning", config={"task": {"metric": "cider"}})
    captioning.add_run(0, 0, {"score": 10.0})
    captioning.add_run(2, 0, {"score": 20.0})
    ax = shots_figure(captioning).axes[0]
    assert ax.get_ylabel() == "CIDEr" and list(ax.get_xticks()) == [0, 2]
    assert not [line for line in ax.get_lines() if line.get_label().startswith("chance")]  # no candidates


def test_cider_scoring_zero_everywhere_is_not_a_proportion():
    """CIDEr is a mean of unbounded scores: 50 queries that all score 0 have no spread (bootstrap, 0), not the Wilson
    interval of 0 hits in 50 (3.6 points) that an all-0-or-100 rule would give."""
    res = EvalResults("synth_captioning", config={"task": {"metric": "cider"}})
    res.add_run(0, 0, {"score": 0.0, "CIDEr": 0.0, "per_sample": {f"q{i}": 0.0 for i in range(50)}},
                {f"q{i}": "" for i in range(50)})
    cell = res.summary()[0]["CIDEr"]
    assert cell["ci95_method"] == "bootstrap" and cell["ci95"] == 0.0


@pytest.mark.parametrize("task", ["synth_vqa", "synth_video_qa"])
def test_per_query_scores_are_in_percent_like_the_headline(task):
    """VQA accuracy (0, 30, 60, 90 or 100 per query) and exact match (0 or 100): the interval is in the headline's
    units (percent), a bootstrap for VQA and Wilson for exact match (oracle: scipy's binomial interval)."""
    from frozenvl.eval.records import EvalRecord
    from frozenvl.eval.tasks import get_task

    spec = get_task(task)
    records = [EvalRecord(key=f"q{i}", question="what?", answers=["cube"] * 10) for i in range(60)]
    predictions = {r.key: "cube" if i % 3 == 0 else "sphere" for i, r in enumerate(records)}  # 20 of 60 right
    res = EvalResults(task, config={"task": {"metric": spec.metric}})
    res.add_run(0, 0, spec.score(records, predictions), predictions)
    cell = res.summary()[0]["score"]
    assert cell["mean"] == pytest.approx(100 / 3)
    assert sorted(set(s["score"] for s in res.runs[0]["predictions"])) == [0.0, 100.0]
    if spec.metric == "exact_match":
        ci = binomtest(20, 60).proportion_ci(method="wilson")
        assert cell["ci95_method"] == "wilson" and cell["ci95"] == pytest.approx(100 * (ci.high - ci.low) / 2)
    else:
        normal = 1.96 * 100 * np.sqrt((1 / 3) * (2 / 3) / 59)
        assert cell["ci95_method"] == "bootstrap" and cell["ci95"] == pytest.approx(normal, rel=0.15)


def test_format_1_results_with_fractional_scores_load_in_percent(tmp_path):
    """A results file written before per-query scores were in percent (format 1: exact match 0 / 1) loads with the
    same interval as a format-2 file of the same answers (Wilson of 20 hits in 60, in percent)."""
    import json

    samples = [{"key": f"q{i}", "prediction": "cube", "score": 1.0 if i < 20 else 0.0} for i in range(60)]
    old = {"format_version": 1, "task": "synth_video_qa", "config": {"task": {"metric": "exact_match"}},
           "runs": [{"shots": 0, "trial": 0, "seed": 0, "metrics": {"score": 100 / 3}, "predictions": samples}]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    cell = EvalResults.load(path).summary()[0]["score"]
    ci = binomtest(20, 60).proportion_ci(method="wilson")
    assert cell["ci95_method"] == "wilson" and cell["ci95"] == pytest.approx(100 * (ci.high - ci.low) / 2)
