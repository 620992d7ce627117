import pytest

from frozenvl.cli import DELEGATED, main


@pytest.mark.parametrize("command", ["demo", "generate"])
def test_help_of_own_commands(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: frozenvl" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(DELEGATED))
def test_help_of_delegated_commands(command, capsys):
    try:
        code = main([command, "--help"])
    except SystemExit as e:
        code = e.code
    assert code == 0
    assert f"usage: frozenvl {command}" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_generate_errors_name_the_problem(tmp_path, capsys):
    assert main(["generate", "--prompt", "<image>x", "--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["generate", "--prompt", "<image>x", "--image", str(bad)]) == 2
    assert "cannot be decoded" in capsys.readouterr().err
    assert main(["generate", "--prompt", "<image>x", "--image", "skimage:nothing"]) == 2
    assert "unknown scikit-image sample" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--prompt", "x", "--video", str(tmp_path / "empty")]) == 2
    assert "has no image files" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_on_the_embedded_default(capsys):
    code = main(["generate", "--prompt", "<image>Output: a cat.<|endofchunk|><image>Output:", "--image",
                 "skimage:chelsea", "--image", "skimage:coffee", "--max-new-tokens", "5", "--num-beams", "1"])
    out = capsys.readouterr().out.strip()
    assert code == 0 and out  # a non-empty continuation


def test_train_help_lists_the_keys_of_every_section(capsys):
    """The key list of `frozenvl train --help` is read from the config classes, so it names every section's keys,
    nested ones included (a key added to a config class appears without editing the help)."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "optim: lr, weight_decay, betas, eps, warmup_steps, schedule, min_lr_ratio, grad_clip, gate_lr" in out
    assert "data.datasets.NAME: name, shards, weight, batch_size" in out
    for key in ("init_from", "gradient_checkpointing", "max_nonfinite_steps", "eval_datasets.NAME.*"):
        assert key in out


def test_generate_passes_the_decoding_controls(monkeypatch, capsys):
    """--repetition-penalty, --no-repeat-ngram-size and --min-new-tokens reach the model's generate."""
    import torch

    from frozenvl.cli import generate

    seen = {}

    from transformers import BatchFeature

    class Processor:
        def __call__(self, texts, media, padding_side):
            return BatchFeature({"input_ids": torch.ones(1, 3, dtype=torch.long)})

        def batch_decode_new(self, out, length):
            return ["done"]

    class Model:
        device = torch.device("cpu")  # the batch is moved here

        def generate(self, **kwargs):
            seen.update(kwargs)
            return torch.ones(1, 5, dtype=torch.long)

    monkeypatch.setattr(generate, "_load_flamingo", lambda args: (Model(), Processor()))
    assert main(["generate", "--prompt", "Output:", "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "3",
                 "--min-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.strip() == "done"
    assert (seen["repetition_penalty"], seen["no_repeat_ngram_size"], seen["min_new_tokens"]) == (1.3, 3, 2)
