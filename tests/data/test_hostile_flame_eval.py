"""Hostile `flame eval` inputs: annotation files, image files, --limit and --templates. A malformed entry is
skipped and counted in one warning naming the file; anything that leaves nothing to evaluate is one error naming
the file, before a model is loaded."""

from __future__ import annotations

import json

import pytest
from test_hostile_shards import bomb_png, deadline

from frozenvl.cli.main import main
from frozenvl.flame import evaluate as ev

DEEP = "[" * 50_000 + "]" * 50_000


def write(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_unreadable_karpathy_and_sharegpt4v_files_are_one_error_naming_them(tmp_path):
    for loader in (ev.load_karpathy, ev.load_sharegpt4v):
        with pytest.raises(ValueError, match="deep.json is nested too deeply"):
            loader(write(tmp_path / "deep.json", DEEP))
        (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
        with pytest.raises(ValueError, match="binary.json is not UTF-8"):
            loader(str(tmp_path / "binary.json"))
        with pytest.raises(ValueError, match="cut.json is not valid JSON"):
            loader(write(tmp_path / "cut.json", '{"images": [{"filename": "a.jpg", "sent'))


def test_malformed_karpathy_entries_are_skipped_and_counted(tmp_path):
    data = {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "A cat."}]},
                       {"filename": "b.jpg", "split": "test"},  # no sentences
                       {"split": "test", "sentences": [{"raw": "No file."}]},
                       {"filename": "c.jpg", "split": "test", "sentences": [{"raw": 3}]},
                       "not an image",
                       {"filename": "d.jpg", "split": "train", "sentences": [{"raw": "Other split."}]},
                       {"filename": "e.jpg", "split": "test", "sentences": [{"raw": "A dog."}, {"raw": "Dog."}]}]}
    path = write(tmp_path / "karpathy.json", data)
    with pytest.warns(UserWarning, match="karpathy.json: skipped 4 entries"):
        got = ev.load_karpathy(path, "imgs")
    assert got.images == ["imgs/a.jpg", "imgs/e.jpg"]
    assert got.captions == ["A cat.", "A dog.", "Dog."] and got.text_to_image == [0, 1, 1]
    with pytest.raises(ValueError, match=r"karpathy.json: no usable images in split 'val' \(splits in the file: "
                                         r"test, train\)"):
        ev.load_karpathy(path, split="val")
    listed = write(tmp_path / "list.json", [{"image": "a.jpg", "caption": "A cat."}, {"image": 5, "caption": "x"},
                                             {"caption": "no image"}, {"image": "b.jpg", "caption": ["B.", "b."]}])
    with pytest.warns(UserWarning, match="list.json: skipped 2 entries"):
        got = ev.load_karpathy(listed)
    assert got.captions == ["A cat.", "B.", "b."]


def test_sharegpt4v_limit_and_malformed_entries(tmp_path):
    data = [{"image": "a.jpg", "conversations": [{"from": "human", "value": "Describe."},
                                                 {"from": "gpt", "value": " A long caption. "}]},
            {"image": "b.jpg", "conversations": ["not a turn", {"from": "gpt", "value": 7}]}]
    path = write(tmp_path / "s4v.json", data)
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        ev.load_sharegpt4v(path, limit=0)
    assert ev.load_sharegpt4v(path, limit=1).captions == ["A long caption."]
    with pytest.raises(ValueError, match="s4v.json: entry .* has no 'gpt' caption"):
        ev.load_sharegpt4v(path)
    with pytest.raises(ValueError, match="obj.json: expected a JSON list"):
        ev.load_sharegpt4v(write(tmp_path / "obj.json", {"a": 1}))


def test_a_bomb_image_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    with pytest.raises(OSError, match="bomb.png"):
        ev.load_images([str(tmp_path / "bomb.png")], 32)


@pytest.mark.parametrize("lines, message", [
    ("a photo of {}.\na {} and a {}.\n", r"t.txt:2: 'a \{\} and a \{\}.' must hold exactly one '\{\}'"),
    ("a photo.\n", r"t.txt:1: 'a photo.' must hold exactly one"),
    ("a {photo of {}.\n", "t.txt:1"),
    ("\n\n", "holds no template"),
    (None, "t.txt is not a file"),  # a FIFO: never opened
])
def test_bad_templates_and_limit_are_one_line_before_any_model_loads(tmp_path, capsys, lines, message):
    if lines is None:
        import os

        os.mkfifo(tmp_path / "t.txt")
    else:
        (tmp_path / "t.txt").write_text(lines)
    args = ["flame", "eval", "--checkpoint", str(tmp_path / "no-checkpoint"), "--task", "zero-shot", "--format",
            "imagefolder", "--data", str(tmp_path), "--templates", str(tmp_path / "t.txt")]
    with deadline(60):  # a FIFO read would block forever
        assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert main([*args[:-2], "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("template", ["a photo.", "a {} and a {}.", "a {name}.", "a {photo of {}."])
def test_the_library_zero_shot_classifier_refuses_a_template_without_exactly_one_field(template):
    """Without '{}' every class got the same prompt (silently); with two or a named field formatting failed with
    IndexError/KeyError. Refused before anything is encoded."""
    from frozenvl.flame.inference import zero_shot_classifier

    class Encoder:
        def encode(self, captions):
            raise AssertionError(f"encoded {captions} before the templates were checked")

    with pytest.raises(ValueError, match=r"must hold exactly one '\{\}'"):
        zero_shot_classifier(Encoder(), ["cat", "dog"], ["a photo of a {}.", template])
