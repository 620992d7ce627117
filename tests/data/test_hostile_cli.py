"""Hostile command lines: every user error of a command is one line on stderr (exit code 2), bugs keep their
traceback; `generate --sample` works with the default beam width; bad decoding values and configs are named."""

from __future__ import annotations

import pytest
import torch

from frozenvl.cli import generate
from frozenvl.cli.main import main


@pytest.fixture()
def tiny_flamingo(monkeypatch):
    """`frozenvl generate` on a tiny random Flamingo (the real model and processor, nothing downloaded)."""
    import frozenvl.flamingo as fl
    from frozenvl.testing import tiny_lm, tiny_tokenizer, tiny_vision

    model, processor = fl.build(lm=tiny_lm("llama"), tokenizer=tiny_tokenizer(), vision=tiny_vision(),
                                cross_attn_every=2)
    monkeypatch.setattr(generate, "_load_flamingo", lambda args: (model, processor))
    return model


def test_generate_sample_works_with_the_default_beams(tiny_flamingo, capsys):
    args = ["generate", "--prompt", "<image>Output:", "--image", "skimage:astronaut", "--max-new-tokens", "3"]
    assert main([*args, "--sample", "--top-p", "0.9"]) == 0  # was: beam search with sampling is not supported
    assert main([*args, "--sample", "--num-beams", "3"]) == 2
    assert "--sample draws one sequence" in capsys.readouterr().err
    assert main(args) == 0  # beam search (3) stays the default without --sample


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--max-frames", "0"], "--max-frames"),
    (["--num-beams", "0"], "--num-beams"),
])
def test_generate_rejects_bad_values_before_loading_a_model(tmp_path, capsys, monkeypatch, flags, message):
    def no_model(args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(generate, "_load_flamingo", no_model)
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "0.png").write_bytes(b"")
    assert main(["generate", "--prompt", "<image>x", "--video", str(tmp_path / "frames"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_library_generate_rejects_top_p_outside_0_1(tiny_flamingo):
    ids = torch.ones(1, 3, dtype=torch.long)
    for top_p in (0.0, 2.0):
        with pytest.raises(ValueError, match="top_p must be in"):
            tiny_flamingo.generate(ids, max_new_tokens=2, do_sample=True, top_p=top_p)


def test_a_binary_or_deep_config_is_one_line_naming_the_file(tmp_path, capsys):
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 50_000)
    for path, message in ((binary, "is not UTF-8 text"), (deep, "is nested too deeply")):
        assert main(["train", "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert str(path) in err and message in err and len(err.splitlines()) == 1


def test_user_errors_of_any_command_are_one_line_bugs_keep_their_traceback(capsys, monkeypatch):
    from frozenvl.cli.errors import run_command

    def fails(error):
        def command():
            raise error
        return command

    assert run_command("data", fails(OSError(28, "No space left on device", "out/x.tar"))) == 2
    assert capsys.readouterr().err == "frozenvl data: error: [Errno 28] No space left on device: 'out/x.tar'\n"
    assert run_command("eval", fails(ValueError("a\n  multi-line   message"))) == 2
    assert capsys.readouterr().err == "frozenvl eval: error: a multi-line message\n"
    from PIL import Image

    assert run_command("flame", fails(Image.DecompressionBombError("Image size (1600000000 pixels) exceeds"))) == 2
    assert capsys.readouterr().err.startswith("frozenvl flame: error: Image size (1600000000 pixels)")
    with pytest.raises(TypeError):  # a bug: not dressed up as a user error
        run_command("eval", fails(TypeError("unsupported operand")))
    monkeypatch.setenv("FROZENVL_TRACEBACK", "1")
    with pytest.raises(ValueError):
        run_command("eval", fails(ValueError("shown with its traceback")))


def test_delegated_commands_go_through_the_same_handler(capsys, monkeypatch):
    import frozenvl.cli.data as data_cli

    def command(argv):
        raise OSError(5, "I/O error", "shards/x.tar")  # raised past whatever the command itself catches

    monkeypatch.setattr(data_cli, "main", command)
    assert main(["data", "inspect", "shards"]) == 2
    assert capsys.readouterr().err == "frozenvl data: error: [Errno 5] I/O error: 'shards/x.tar'\n"


@pytest.mark.parametrize("command, key", [("train", "train.steps"), ("compare", "steps")])
def test_a_deeply_nested_override_value_is_one_line(capsys, command, key):
    """An override's value is YAML: 100k '[' was a RecursionError traceback after 9 s of PyYAML recursion."""
    assert main([command, f"{key}=" + "[" * 100_000]) == 2
    err = capsys.readouterr().err.strip()
    assert f"override {key}" in err and "nested too deeply" in err and len(err.splitlines()) == 1


def test_flame_and_data_print_an_error_spanning_lines_on_one_line(tmp_path, capsys, monkeypatch):
    """A loader's message may span lines (transformers' 'could not load ... Check your internet connection ...'):
    flame embed --lm printed it on two."""
    from frozenvl.cli import flame as flame_cli
    from frozenvl.data import convert as conv

    def fails(*args, **kwargs):
        raise OSError("could not load causal LM 'x':\nCheck your internet connection")

    monkeypatch.setattr(flame_cli, "_run_embed", fails)
    monkeypatch.setattr(conv, "convert_folder", fails)
    (tmp_path / "c.jsonl").write_text('{"key": "a", "caption": "b"}\n')
    for argv in (["flame", "embed", "--input", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "s"), "--lm", "x"],
                 ["data", "convert", "folder", str(tmp_path), str(tmp_path / "c.jsonl"), str(tmp_path / "o")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("could not load causal LM 'x': Check your internet connection") and "\n" not in err
