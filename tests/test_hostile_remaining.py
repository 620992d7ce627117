"""The hostile inputs experiments/hostile_inputs.py still found after the readers were hardened: each is one
error naming the file (or, in a stream, a skip), never a traceback. Every test fails on the code before the fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from frozenvl.cli.main import main

DEEP_JSON = "[" * 100_000 + "]" * 100_000
BINARY = bytes(range(256)) * 16


@pytest.fixture()
def flame_folder(tmp_path):
    """A saved FLAME model (config.json + model.safetensors, the layout of every saved frozenvl model)."""
    from frozenvl.flame.model import FlameModel, flame_config

    folder = tmp_path / "saved"
    FlameModel(flame_config("tiny", text_dim=32, text={"lm": "unused", "layer": 3})).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name, data, message", [
    ("config.json", DEEP_JSON, "is nested too deeply"),
    ("config.json", BINARY, "is not UTF-8 text"),
    ("model.safetensors", BINARY, "is corrupt"),
    ("model.safetensors", None, "is corrupt"),  # cut short, as a kill during a copy leaves it
])
def test_a_damaged_saved_model_is_one_error_naming_the_file(flame_folder, name, data, message):
    from frozenvl.pretrained import read_folder

    path = flame_folder / name
    path.write_bytes(path.read_bytes()[:300] if data is None else data.encode() if isinstance(data, str) else data)
    with pytest.raises(ValueError, match=message) as e:  # was RecursionError / UnicodeDecodeError / SafetensorError
        read_folder(flame_folder, ("flame",))
    assert str(path) in str(e.value)


def test_a_deeply_nested_trainer_state_is_a_corrupt_checkpoint(tmp_path):
    """A corrupt checkpoint is skipped by --resume for the previous one; a RecursionError stopped the run."""
    from frozenvl.train import checkpoint as C

    step = tmp_path / "step-00000002"
    step.mkdir()
    for name in (C.CONFIG_NAME, C.WEIGHTS_NAME, C.OPTIMIZER, C.OPTIMIZER_META, C.RNG):
        (step / name).write_bytes(b"")
    (step / C.STATE).write_text(DEEP_JSON)
    with pytest.raises(C.CorruptCheckpointError, match="step-00000002"):
        C.load_checkpoint(step, "flamingo")


def test_a_deeply_nested_metrics_line_is_dropped_on_resume(tmp_path):
    from frozenvl.train.loop import METRICS_NAME, MetricsWriter

    (tmp_path / METRICS_NAME).write_text('{"step": 1, "loss": 2.0}\n' + DEEP_JSON + "\n" + '{"step": 3}\n')
    MetricsWriter(tmp_path, enabled=True, tensorboard=False, resume_step=2)
    assert (tmp_path / METRICS_NAME).read_text() == '{"step": 1, "loss": 2.0}\n'


@pytest.mark.parametrize("manifest", [DEEP_JSON, BINARY, "[1]", '{"shards": [1]}', '{"shards": 3}'])
def test_a_damaged_store_manifest_is_one_error_naming_it(tmp_path, manifest):
    from frozenvl.flame.store import EmbeddingStore

    store = tmp_path / "store"
    store.mkdir()
    (store / "meta.json").write_text("{}")
    path = store / "manifest.json"
    path.write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    with pytest.raises(ValueError) as e:  # was RecursionError, UnicodeDecodeError, TypeError or KeyError
        EmbeddingStore(store)
    assert str(path) in str(e.value)


def test_embedding_into_a_store_with_a_damaged_manifest_is_one_line(tmp_path, capsys):
    from frozenvl.testing import tiny_lm, tiny_tokenizer

    lm = tmp_path / "lm"
    tiny_lm("llama").save_pretrained(lm)
    tiny_tokenizer().save_pretrained(lm)
    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"key": "a", "caption": "a red cube"}) + "\n")
    args = ["flame", "embed", "--input", str(captions), "--out", str(tmp_path / "store"), "--lm", str(lm),
            "--prompts", "short", "--no-progress"]
    assert main(args) == 0
    (tmp_path / "store" / "manifest.json").write_text(DEEP_JSON)
    capsys.readouterr()
    assert main(args) == 2  # was a RecursionError traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert "manifest.json" in err[-1] and "nested too deeply" in err[-1]


def test_a_damaged_results_file_is_one_error_naming_it(tmp_path):
    from frozenvl.eval.results import EvalResults

    for data in (DEEP_JSON, BINARY, "[1]"):
        path = tmp_path / "results.json"
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        with pytest.raises(ValueError) as e:  # was RecursionError / UnicodeDecodeError / AttributeError
            EvalResults.load(path)
        assert str(path) in str(e.value)


@pytest.mark.parametrize("damage", ["deep config", "corrupt weights"])
def test_an_lm_folder_with_a_damaged_file_is_one_error_naming_the_lm(tmp_path, damage):
    from frozenvl.backbones.language import load_causal_lm
    from frozenvl.testing import tiny_lm, tiny_tokenizer

    lm = tmp_path / "lm"
    tiny_lm("llama").save_pretrained(lm)
    tiny_tokenizer().save_pretrained(lm)
    if damage == "deep config":
        (lm / "config.json").write_text(DEEP_JSON)
    else:
        (lm / "model.safetensors").write_bytes(BINARY)
    with pytest.raises(ValueError, match="could not load causal LM") as e:  # RecursionError / SafetensorError
        load_causal_lm(str(lm))
    assert str(lm) in str(e.value)


def test_a_deeply_nested_world_json_is_one_error_naming_it(tmp_path):
    from frozenvl.data.synth import world_split_shards

    (tmp_path / "world.json").write_text(DEEP_JSON)
    with pytest.raises(ValueError, match="nested too deeply") as e:
        world_split_shards(tmp_path, "vqa")
    assert "world.json" in str(e.value)


def test_a_damaged_prompt_set_file_is_one_error_naming_it(tmp_path):
    from frozenvl.flame.prompts import load_prompt_set

    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply") as e:  # was RecursionError
        load_prompt_set(deep)
    assert str(deep) in str(e.value)
    partial = tmp_path / "partial.yaml"
    partial.write_text("prefix: hi\n")
    with pytest.raises(ValueError, match="needs the fields") as e:
        load_prompt_set(partial)
    assert str(partial) in str(e.value)  # the message did not say which file


def test_a_dataset_that_yields_nothing_is_a_user_error():
    """Every shard skipped (a FIFO, all corrupt): one line from the CLI, not a RuntimeError traceback."""
    from frozenvl.train.mixture import CyclingLoader

    class Empty:  # a StreamingLoader's interface: its dataset's shards, the skip counts, batches
        class dataset:  # noqa: N801
            shards = ["data/pairs-fifo.tar"]

        class skips:  # noqa: N801 - the loader's attribute
            @staticmethod
            def report() -> str:
                return "not_a_file: 1"

        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match="yields no samples in data/pairs-fifo.tar.*not_a_file"):
        CyclingLoader(Empty(), "pairs").next()


@pytest.mark.parametrize("flags", [["--min-new-tokens", "-1"], ["--no-repeat-ngram-size", "-1"],
                                   ["--repetition-penalty", "0"]])
def test_generate_refuses_negative_decoding_controls_before_loading(monkeypatch, capsys, flags):
    from frozenvl.cli import generate

    def no_model(args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(generate, "_load_flamingo", no_model)
    assert main(["generate", "--prompt", "x", *flags]) == 2  # was: accepted (exit 0) or a transformers traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flags[0] in err[0]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_train_threads_must_be_positive(tmp_path, value):
    from frozenvl.config import ConfigError
    from frozenvl.train.config import load_config

    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": {"datasets": [{"name": "p", "shards": "x-*.tar"}]}}))
    with pytest.raises(ConfigError, match="train.threads must be >= 1"):  # 0 was torch's default, silently
        load_config(config, [f"train.threads={value}"])


def test_train_prints_a_multi_line_error_on_one_line(tmp_path, monkeypatch, capsys):
    import frozenvl.train.loop as loop

    def fails(*args, **kwargs):
        raise OSError("could not load causal LM 'x': no files.\nCheck your internet connection.")

    monkeypatch.setattr(loop, "train", fails)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": {"datasets": [{"name": "p", "shards": "x-*.tar"}]},
                                  "train": {"run_dir": str(tmp_path / "run")}}))
    assert main(["train", "--config", str(config)]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["frozenvl train: error: could not load causal LM 'x': no files. Check your internet connection."]


def test_the_exercise_classifies_outcomes():
    """experiments/hostile_inputs.py's classifier: one error line is clear, a traceback is not, exit 0 where
    an error was due is silently wrong."""
    import importlib.util
    import tempfile

    path = Path(__file__).parents[1] / "experiments" / "hostile_inputs.py"
    spec = importlib.util.spec_from_file_location("hostile_inputs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_inputs"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        case = module.Case("paths", "x", [], names="nope.png")
        run = module.Running(case, d, 0, 0.0)
        for err, code, outcome in (("frozenvl generate: error: image nope.png does not exist\n", 2, "clear error"),
                                   ("WARNING x\nerror: image nope.png does not exist\n", 2, "clear error"),
                                   ("frozenvl generate: error: no such image\n", 2, "vague error"),
                                   ("Traceback (most recent call last):\n  ...\nRecursionError: x\n", 1,
                                    "traceback"),
                                   ("", 0, "silently wrong")):
            (d / "stdout").write_text("")
            (d / "stderr").write_text(err)
            assert module.classify(run, code)[0] == outcome


def test_extending_a_store_with_a_damaged_shard_is_refused(tmp_path):
    """Extending checks each committed shard's header: a damaged one was left in place, exit 0."""
    import numpy as np

    from frozenvl.flame.store import EmbeddingStoreWriter

    meta = {"lm": "x", "layer": 1, "prompt_set_hash": "h", "num_facets": 2, "dim": 4}
    with EmbeddingStoreWriter(tmp_path / "store", meta) as writer:
        writer.write_shard(["a", "b"], np.zeros((2, 2, 4), dtype=np.float16))
    shard = next((tmp_path / "store").glob("*.npy"))
    shard.write_bytes(BINARY)
    with pytest.raises(ValueError, match="is damaged") as e:
        EmbeddingStoreWriter(tmp_path / "store", meta)
    assert str(shard) in str(e.value)
