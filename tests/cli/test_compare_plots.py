"""The demo's FLAME figures and report section from a comparison's results (no model runs): every bar a
proportion with its 95 % Wilson interval and n, chance drawn, axes named; the report says which model is higher
only where the intervals do not overlap; results.json keeps the numbers under "flame"."""

import json

import pytest

from frozenvl.cli import demo
from frozenvl.cli.compare_plots import flame_summary, languages_figure, long_captions_figure, verdict, wilson_interval
from frozenvl.eval.results import wilson_half_width

N = 100  # images (and long captions) per evaluation split


def _retrieval(i2t: float, t2i: float) -> dict:
    return {"task": "retrieval", "num_images": N, "num_captions": N,
            **{f"{d}_R@{k}": min(100.0, v * k) for d, v in (("image_to_text", i2t), ("text_to_image", t2i))
               for k in (1, 5, 10)}}


def _model(r1: tuple[float, float], zero_shot: float) -> dict:
    return {"training": {"steps": 150, "final_loss": 2.0, "seconds": 60.0, "trainable_parameters": 1000},
            "eval_seconds": 5.0, "retrieval/long": _retrieval(*r1),
            "zero_shot/heldout": {"top1": zero_shot, "top5": 50.0, "num_images": N, "num_classes": 36},
            "zero_shot/classification": {"top1": 20.0, "top5": 50.0, "num_images": N, "num_classes": 36}}


def _results() -> dict:
    models = {"flame": _model((10.0, 8.0), 2.0), "clip_baseline": _model((14.0, 12.0), 18.0)}
    languages = {"en": {k: m["retrieval/long"] for k, m in models.items()},
                 **{lang: {"flame": _retrieval(9.0, 7.0), "clip_baseline": _retrieval(0.0, 1.0)}
                    for lang in ("fr", "es", "de")}}
    results = {"config": {"n_pairs": 500, "steps": 150, "batch_size": 64, "language_captions": "long"},
               "models": models, "languages": languages,
               "chance": {"zero_shot_top1": 100 / 36, "retrieval_R@1": 100 / N},
               "embedding": {"captions": 500, "embedded_now": 500, "seconds": 40.0, "captions_per_s": 12.5},
               "seconds": 300.0, "llm_dtype": "bfloat16"}
    from frozenvl.cli.compare import headline

    results["headline"] = headline(results)
    return results


def test_wilson_interval_is_the_projects_interval_not_a_symmetric_band():
    low, high = wilson_interval(12.0, N)
    assert high - low == pytest.approx(200 * wilson_half_width(12, N))
    assert low < 12.0 < high
    low0, high0 = wilson_interval(0.0, N)  # none found: the interval starts at 0, not below it
    assert low0 == pytest.approx(0.0, abs=1e-9) and high0 == pytest.approx(200 * wilson_half_width(0, N))


def test_verdict_names_a_winner_only_when_the_intervals_do_not_overlap():
    cell = lambda value: {"value": value, "n": N, "ci95": list(wilson_interval(value, N))}  # noqa: E731
    assert verdict(cell(10.0), cell(14.0)) == "intervals overlap"
    assert verdict(cell(9.0), cell(0.0)) == "FLAME higher"
    assert verdict(cell(2.0), cell(18.0)) == "CLIP higher"


def test_figures_carry_intervals_chance_and_named_axes():
    summary = flame_summary(_results())
    cell = summary["languages"]["fr"]["flame"]["image_to_text_R@1"]
    assert cell["n"] == N and cell["ci95"][0] < cell["value"] < cell["ci95"][1]
    assert summary["chance"]["retrieval_R@1"] == 100 / N
    ax = languages_figure(summary).axes[0]
    assert ax.get_ylabel() == f"Recall@1 (%), n={N} per bar" and "language" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["en", "fr", "es", "de"]
    assert len(ax.patches) == 4 * 4  # 2 models x 2 directions per language
    assert any(line.get_linestyle() == ":" and line.get_ydata()[0] == 100 / N for line in ax.get_lines())
    left, right = long_captions_figure(summary).axes
    assert left.get_ylabel() == f"Recall@K (%), n={N} per bar" and right.get_ylabel().startswith("top-1 accuracy")
    assert left.get_xlabel() and right.get_xlabel()
    assert len(left.patches) == 2 * 6 and len(right.patches) == 2 * 2


def test_the_flame_stage_reuses_its_results_draws_the_figures_and_the_report_reads_them(tmp_path):
    (tmp_path / "flame").mkdir()
    (tmp_path / "flame" / "results.json").write_text(json.dumps(_results()))
    flame = demo.stage_flame(tmp_path, demo.QUICK)
    for path in flame["figures"].values():
        assert (tmp_path / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = "\n".join(demo.flame_section(flame))
    for path in flame["figures"].values():
        assert f"]({path})" in lines
    assert "| fr captions R@1 image->text | 9.0 % [" in lines and "(n=100) | FLAME higher |" in lines
    assert "| long captions (en) R@1 image->text | 10.0 % [" in lines
    long_row = next(row for row in lines.splitlines() if row.startswith("| long captions (en) R@1 image->text"))
    assert long_row.endswith("| intervals overlap |")  # 10 vs 14 of 100: no winner claimed
    zero_row = next(row for row in lines.splitlines() if row.startswith("| zero-shot top-1"))
    assert zero_row.endswith("| CLIP higher |")
    assert "bfloat16" in lines and "Chance: retrieval R@1 1.0 % (100 images)" in lines

    run = tmp_path / "flamingo"
    checkpoint = run / "checkpoints" / "step-00000006"
    checkpoint.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/loss": 6.5}) + "\n")
    demo.write_report(tmp_path, demo.QUICK, checkpoint, {}, flame, {"FLAME": 1.0})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["flame"]["languages"]["de"]["clip_baseline"]["text_to_image_R@1"] == {
        "value": 1.0, "n": N, "ci95": [round(v, 2) for v in wilson_interval(1.0, N)]}
    assert saved["flame"]["long_captions"]["flame"]["image_to_text_R@5"]["n"] == N
    assert {"fewshot", "held_out_loss", "image_reliance", "seconds"} <= set(saved)


def test_an_older_demos_english_only_results_are_reused_with_the_figures_they_allow(tmp_path):
    results = _results()
    del results["languages"]
    (tmp_path / "flame").mkdir()
    (tmp_path / "flame" / "results.json").write_text(json.dumps(results))
    flame = demo.stage_flame(tmp_path, demo.QUICK)
    assert list(flame["figures"]) == ["long_captions"] and flame["languages"] == {}
    assert "| long captions (en) R@1 text->image |" in "\n".join(demo.flame_section(flame))
