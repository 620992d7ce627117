"""The demo's help and report without running it: `demo --help` follows the plan it runs, and the report and
results.json carry n, 95 % intervals and the threads used."""

import json

import pytest

from frozenvl.cli import demo
from frozenvl.cli.main import main


def test_help_describes_the_demo_that_runs(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    plan = demo.FULL
    for fact in (f"{plan.flamingo_steps} steps of {plan.pairs_batch} pairs", f"{plan.n_pairs} image-text pairs",
                 f"synth_icl_words ({plan.icl_queries} queries x {plan.icl_trials} demonstration draws)",
                 f"{plan.pages_batch} interleaved pages", f"placement {plan.placement}",
                 f"{plan.reliance_pairs} held-out pairs",
                 f"{plan.flame_steps} steps each", "feature_cache", "threads", f"{demo.QUICK.flamingo_steps} training"):
        assert fact in " ".join(text.split()), fact
    assert ("flamingo_icl/" in text) == bool(plan.icl_steps)
    two_stages = demo.describe_demo(demo.DemoPlan(**{**plan.__dict__, "icl_steps": 300}))
    assert "flamingo_icl/ then 300 steps of 4 pairs + 6 pages" in " ".join(two_stages.split())


def _summary(mean, n, ci):
    return {4: {"score": {"mean": mean, "std": 0.0, "values": [mean], "trials": [0], "n": n, "ci95": ci,
                          "ci95_method": "wilson"}}}


def test_report_and_results_carry_n_intervals_and_threads(tmp_path):
    run = tmp_path / "flamingo"
    checkpoint = run / "checkpoints" / "step-00000006"
    checkpoint.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/loss": 6.5}) + "\n"
                                       + json.dumps({"step": 6, "loss": 3.0, "loss/pairs": 3.0}) + "\n"
                                       + json.dumps({"step": 6, "eval/loss": 3.2}) + "\n")
    plan = demo.DemoPlan(**{**demo.QUICK.__dict__, "shots": (4,)})
    fewshot = {"synth_icl_words": _summary(56.0, 200, 6.8), "synth_captioning": _summary(40.0, 50, None)}
    reliance = {"right": 1.0, "shuffled": 1.3, "zero": 1.4, "samples": 200, "gain": 0.3, "gain_ci95": 0.04}
    demo.write_report(tmp_path, plan, checkpoint, fewshot, {"table": "t", "headline": "h"}, {"world": 1.0},
                      reliance, threads="1 torch thread(s) on 2 usable core(s): busy")
    report = (tmp_path / "report.md").read_text()
    assert "| synth_icl_words | 56.0 ± 6.8 (n=200) |" in report
    assert "| synth_captioning | 40.0 (n=50) |" in report
    assert "gain 0.3000 ± 0.0400" in report and "Threads: 1 torch thread(s) on 2 usable core(s)" in report
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["fewshot"]["synth_icl_words"]["4"]["score"]["n"] == 200
    assert results["fewshot"]["synth_icl_words"]["4"]["score"]["ci95"] == 6.8
    assert {"right", "shuffled", "zero", "samples"} <= set(results["image_reliance"])
    assert results["threads"].startswith("1 torch thread")


def test_image_reliance_stage_batches_held_out_pairs_through_the_runs_feature_cache(tmp_path):
    from frozenvl.data import WorldConfig, generate_world
    from frozenvl.testing import tiny_flamingo

    world = tmp_path / "world"
    generate_world(world, WorldConfig(n_pairs=40, n_interleaved=2, n_video=2, image_size=32, shard_size=20, frames=2,
                                      splits=("pairs",)), progress=False, log=None)
    model, processor = tiny_flamingo(open_gates=True)
    result = demo.stage_image_reliance(tmp_path, world, lambda: (model, processor), n=10, batch_size=4)
    assert result["samples"] == 10 and result["gain_ci95"] is not None  # batches of 4, 4 and 2
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) >= 10  # right and blank frames stored
    assert json.loads((tmp_path / "fewshot" / "image_reliance.json").read_text()) == result


def test_damaged_reuse_files_are_one_error_and_a_cut_metrics_line_is_not_plotted(tmp_path):
    (tmp_path / "fewshot").mkdir()
    (tmp_path / "fewshot" / "image_reliance.json").write_text("[" * 5000)  # nested too deeply for json
    with pytest.raises(ValueError, match="image-reliance result .*image_reliance.json"):
        demo.stage_image_reliance(tmp_path, tmp_path / "world", trained=None)
    (tmp_path / "flame").mkdir()
    (tmp_path / "flame" / "results.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ValueError, match="FLAME result .*results.json"):
        demo.stage_flame(tmp_path, demo.QUICK)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 0, "eval/loss": 6.5}) + "\n" + json.dumps({"step": 5, "eval/loss": 3.0})
                       + "\n" + '{"step": 10, "eval/lo')  # the last line cut by a kill
    assert demo._training_curve(metrics, tmp_path / "curve.png")["held_out_loss"] == [(0, 6.5), (5, 3.0)]


def test_the_in_context_stage_continues_the_first_with_its_own_batch_and_rates(tmp_path, monkeypatch):
    from frozenvl.train.config import RunConfig

    monkeypatch.setattr(demo, "_pair_shards", lambda world: ["a.tar", "b.tar"])
    plan = demo.DemoPlan(**{**demo.FULL.__dict__, "icl_steps": 300})
    first = RunConfig.from_dict(demo.flamingo_run_config(tmp_path / "world", tmp_path / "flamingo", plan, "cpu"))
    look = tmp_path / "flamingo" / "checkpoints" / "step-00000200"
    second = RunConfig.from_dict(demo.flamingo_run_config(tmp_path / "world", tmp_path / demo.ICL_RUN, plan, "cpu",
                                                          init_from=look))
    assert first.model.init_from is None and second.model.init_from == str(look)
    assert (first.train.steps, second.train.steps) == (plan.flamingo_steps, plan.icl_steps)
    assert [d.batch_size for d in first.data.datasets] == [plan.pairs_batch, plan.pages_batch]
    assert [d.batch_size for d in second.data.datasets] == [plan.icl_pairs_batch, plan.icl_pages_batch]
    assert (second.optim.lr, second.optim.gate_lr) == (plan.icl_lr, plan.icl_gate_lr)
    assert (first.optim.lr, first.optim.gate_lr) == (plan.lr, 2.0e-2)
    # Both stages read and write one feature cache: the second stage's pairs were encoded by the first.
    assert first.model.feature_cache_dir == second.model.feature_cache_dir == str(tmp_path / "features")


def test_the_training_curve_puts_the_second_stage_after_the_first(tmp_path):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in ({"step": 0, "eval/loss": 6.5}, {"step": 10, "loss/pairs": 2.0},
                                                         {"step": 10, "eval/loss": 1.5})) + "\n")
    second.write_text("\n".join(json.dumps(r) for r in ({"step": 0, "eval/loss": 1.5}, {"step": 5, "loss/pairs": 1.0},
                                                          {"step": 5, "eval/loss": 1.2})) + "\n")
    curve = demo._training_curve([first, second], tmp_path / "curve.png")
    assert curve["held_out_loss"] == [(0, 6.5), (10, 1.5), (15, 1.2)]  # the second stage's step 0 is not repeated
    assert (tmp_path / "curve.png").stat().st_size > 0
