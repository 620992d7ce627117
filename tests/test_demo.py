"""The main job end to end: ``frozenvl demo --quick`` on the embedded default (slow: real models, real training)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_end_to_end_and_rerun_reuses(tmp_path, capsys):
    from frozenvl.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for section in ("## Setup", "## Training", "## Few-shot evaluation", "## Does it look at the images?",
                    "## FLAME vs CLIP baseline", "## Time"):
        assert section in report
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for task in ("synth_icl_words", "synth_captioning"):
        assert (out / "fewshot" / f"{task}.png").exists() and f"| {task} |" in report
    results = json.loads((out / "results.json").read_text())
    assert len(results["held_out_loss"]) >= 2 and set(results["fewshot"]) == {"synth_icl_words", "synth_captioning"}
    reliance = results["image_reliance"]
    assert reliance["samples"] >= 2 and reliance["gain"] == reliance["shuffled"] - reliance["right"]
    assert reliance["gain_ci95"] is not None
    for summary in results["fewshot"].values():  # every cell: mean, n (queries per draw) and a 95 % interval
        for cell in summary.values():
            assert {"mean", "n", "ci95"} <= set(cell["score"]) and cell["score"]["n"] >= 1
    assert "Threads: " in report and results["threads"]
    capsys.readouterr()
    # A second run reuses every stage instead of recomputing.
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic world: reusing" in printed and "Flamingo: reusing" in printed
    assert "few-shot synth_icl_words: reusing" in printed and "image reliance: reusing" in printed
