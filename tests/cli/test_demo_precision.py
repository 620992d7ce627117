"""The demo trains in bf16 autocast only where bf16 matrix products are native: an AVX2-only CPU emulates them
(measured 10-100x slower than float32), so there it trains in float32 and says so in its report."""

import json

import pytest
import torch
import yaml

from frozenvl.cli import demo, devices
from frozenvl.train.config import RunConfig


def test_fast_bf16_on_the_cpu_is_what_the_cpu_offers():
    offered = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    assert devices.fast_bf16(torch.device("cpu")) == any(check is not None and check() for check in offered)
    assert devices.fast_bf16(torch.device("meta")) is False


@pytest.mark.parametrize("fast, precision, llm", [(True, "bf16", "bfloat16"), (False, "fp32", "float32")])
def test_the_run_config_and_the_llm_follow_the_cpu(monkeypatch, tmp_path, fast, precision, llm):
    monkeypatch.setattr(devices, "fast_bf16", lambda device: fast)
    monkeypatch.setattr(demo, "_pair_shards", lambda world: ["a.tar", "b.tar"])
    config = demo.flamingo_run_config(tmp_path / "world", tmp_path / "run", demo.FULL, "cpu")
    assert RunConfig.from_dict(config).train.precision == precision
    assert demo.flame_llm_dtype() == llm
    assert demo.flamingo_eval_dtype() == llm  # the trained Flamingo is evaluated in the same dtype


@pytest.mark.parametrize("precision, text", [("fp32", "float32."), ("bf16", "bf16 autocast.")])
def test_the_report_names_the_precision_the_run_trained_in(tmp_path, precision, text):
    run = tmp_path / "flamingo"
    checkpoint = run / "checkpoints" / "step-00000006"
    checkpoint.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"precision": precision}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/loss": 6.5}) + "\n")
    report = demo.write_report(tmp_path, demo.QUICK, checkpoint, {}, {"table": "t", "headline": "h"}, {"world": 1.0})
    assert f"tanh-gate lr 2e-2, AdamW betas (0.9, 0.95), packed batches; {text}" in report.read_text()
    two_stages = demo.DemoPlan(**{**demo.QUICK.__dict__, "icl_steps": 4})
    report = demo.write_report(tmp_path, two_stages, checkpoint, {}, {"table": "t", "headline": "h"}, {"world": 1.0})
    assert f"then 4 steps of {two_stages.icl_pairs_batch} pairs + {two_stages.icl_pages_batch} pages (lr 0.001, " \
           f"tanh-gate lr 0.005), `flamingo_icl/`; {text}" in report.read_text()


def test_the_report_and_results_name_the_evaluation_dtype(tmp_path):
    checkpoint = tmp_path / "flamingo" / "checkpoints" / "step-00000006"
    checkpoint.mkdir(parents=True)
    report = demo.write_report(tmp_path, demo.QUICK, checkpoint, {}, {"table": "t", "headline": "h"}, {"world": 1.0},
                               eval_dtype="bfloat16")
    assert "The trained Flamingo was evaluated in bfloat16." in report.read_text()
    assert json.loads((tmp_path / "results.json").read_text())["eval_dtype"] == "bfloat16"
