"""Run config: YAML + dotted overrides, clear errors for unknown keys and bad values, the CLI's handling."""

from __future__ import annotations

import pytest
from trainfixtures import tiny_tree, write_config

from frozenvl.cli.train import main
from frozenvl.train.config import ConfigError, dump_config, load_config


def test_yaml_and_overrides(tmp_path, world):
    path = write_config(tmp_path / "c.yaml", tiny_tree(world, tmp_path / "run"))
    cfg = load_config(path, ["optim.lr=5e-4", "data.datasets.video.weight=0.25", "data.datasets.0.batch_size=3",
                             "model.flamingo.cross_attn_every=1", "train.precision=bf16", "optim.grad_clip=null",
                             "data.mixing=round_robin"])
    assert cfg.optim.lr == 5e-4
    assert [d.weight for d in cfg.data.datasets] == [1.0, 0.5, 0.25]
    assert cfg.data.datasets[0].batch_size == 3
    assert cfg.model.flamingo.cross_attn_every == 1
    assert cfg.model.flamingo.num_latents == 4  # untouched siblings stay
    assert (cfg.model.flamingo.lm, cfg.model.flamingo.vision) == ("tiny:llama", "tiny")  # the run's sources
    assert cfg.train.precision == "bf16" and cfg.optim.grad_clip is None
    assert cfg.data.mixing == "round_robin"


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key optim.lrr"),
    ("training.steps=3", "unknown key training"),
    ("train.steps=many", "train.steps must be an integer"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("optim.schedule=linear", "optim.schedule must be one of constant, cosine"),
    ("data.datasets.nope.weight=1", "no entry named 'nope'"),
    ("data.datasets.7.weight=1", "index 7 out of range"),
    ("data.datasets.pairs.weight=-1", "data.datasets.0.weight must be >= 0"),
    ("model.flamingo.gating=sigmoid", "model.flamingo.gating must be one of tanh, none; got 'sigmoid'"),
    ("model.flamingo.resamplr=mlp", "unknown key model.flamingo.resamplr; FlamingoConfig has"),
    ("train.progress=maybe", "train.progress must be true or false"),
    ("model.flame.vision.widht=8", "unknown key model.flame.vision.widht; VisionTransformerConfig has"),
    ("model.clip_baseline.tokenizer.kind=word", "model.clip_baseline.tokenizer.kind must be one of bpe"),
    ("model.clip_baseline.text.layerz=2", "unknown key model.clip_baseline.text.layerz"),
    ("optim.lr", "must look like key.path=value"),
])
def test_bad_overrides_name_the_key(tmp_path, world, override, message):
    path = write_config(tmp_path / "c.yaml", tiny_tree(world, tmp_path / "run"))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(path, [override])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="data.datasets is empty"):
        load_config(tmp_path / "empty.yaml")


def test_cli_print_config_and_error_exit(tmp_path, world, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_tree(world, tmp_path / "run"))
    assert main(["--config", str(path), "--print-config", "train.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out
    assert main(["--config", str(path), "optim.nope=1"]) == 2
    assert "unknown key optim.nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_printed_config_loads_back_to_the_same_config(tmp_path, world, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_tree(world, tmp_path / "run"))
    overrides = ["model.flamingo.cross_attn_every=1", "model.flame.vision.patch_size=4",
                 "model.clip_baseline.tokenizer.max_length=32", "data.datasets.pairs.weight=0.5",
                 "optim.grad_clip=null"]
    config = load_config(path, overrides)
    (tmp_path / "dumped.yaml").write_text(dump_config(config))
    assert load_config(tmp_path / "dumped.yaml") == config
    assert main(["--config", str(path), "--print-config", *overrides]) == 0
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    assert load_config(tmp_path / "printed.yaml") == config


def test_shipped_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("flamingo_tiny_cpu.yaml", "flamingo_look_cpu.yaml", "flamingo_icl_cpu.yaml",
                 "openflamingo_3b_like.yaml"):
        cfg = load_config(root / name)
        assert cfg.data.datasets and cfg.train.steps > 0
