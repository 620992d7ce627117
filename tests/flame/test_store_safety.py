"""Nothing lost in an embedding store or an evaluation's output: one writer at a time (a lock), the temporary files
of a killed commit are removed, a store is never extended with embeddings of other LM weights or another LM dtype,
`flame eval` refuses a text encoder other than the tower's, and both evaluation commands check their output path
before computing anything."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from frozenvl.cli import eval as eval_cli
from frozenvl.cli.flame import main as flame_main
from frozenvl.files import LOCK_NAME, FolderLockedError
from frozenvl.flame.model import FlameModel, flame_config
from frozenvl.flame.store import (
    EmbeddingStore,
    EmbeddingStoreWriter,
    StoreMismatchError,
    embed_to_store,
    lm_identity,
    store_meta,
)
from frozenvl.flame.text_encoder import FacetTextEncoder
from frozenvl.testing import tiny_lm, tiny_tokenizer

RECORDS = [(f"k{i:03d}", f"a {c} thing number {i}") for i, c in enumerate(["red", "blue", "green"] * 2)]

HOLD = """
import sys, time
from frozenvl.files import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _encoder(seed: int = 0, dtype: torch.dtype = torch.float32) -> FacetTextEncoder:
    return FacetTextEncoder(tiny_lm("llama", seed=seed).to(dtype), tiny_tokenizer(), "short")


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "error:" in ln]  # transformers' loading bars go to stderr too


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file() and p.name != LOCK_NAME}


def test_a_second_store_writer_is_refused_while_another_process_writes(tmp_path, capsys):
    store = tmp_path / "store"
    embed_to_store(RECORDS[:3], _encoder(), store, shard_size=2, progress=False)
    before = _files(store)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"embedding store {store} is in use"):
            embed_to_store(RECORDS[3:], _encoder(), store, shard_size=2, progress=False)
        # The command line says it in one line.
        lm = tmp_path / "lm"
        tiny_lm("llama").save_pretrained(lm)
        tiny_tokenizer().save_pretrained(lm)
        captions = tmp_path / "caps.jsonl"
        captions.write_text("".join(json.dumps({"key": k, "caption": c}) + "\n" for k, c in RECORDS[3:]))
        capsys.readouterr()
        assert flame_main(["embed", "--input", str(captions), "--out", str(store), "--lm", str(lm),
                           "--prompts", "short", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert len(_errors(err)) == 1 and "Traceback" not in err and f"embedding store {store} is in use" in err
    finally:
        holder.kill()
        holder.wait()
    assert _files(store) == before  # the refused writers changed nothing
    report = embed_to_store(RECORDS[3:], _encoder(), store, shard_size=2, progress=False)  # the holder is gone
    assert report.written == 3 and len(EmbeddingStore(store)) == 6


def test_the_temporary_files_of_a_killed_commit_are_removed_by_the_next_writer(tmp_path):
    store = tmp_path / "store"
    embed_to_store(RECORDS[:4], _encoder(), store, shard_size=2, progress=False)
    before = _files(store)
    # What a kill inside atomic writes of shard 2 and the manifest leaves behind.
    (store / ".shard-00002.npy.k3j9x1.tmp").mkdir()
    (store / ".shard-00002.npy.k3j9x1.tmp" / "shard-00002.npy").write_bytes(b"\x93NUMPY partial")
    (store / ".manifest.json.a8b7c6.tmp").mkdir()
    EmbeddingStoreWriter(store, EmbeddingStore(store).meta).close()
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME) == []
    assert _files(store) == before


def test_a_store_refuses_embeddings_of_other_lm_weights_or_another_lm_dtype(tmp_path, caplog):
    store = tmp_path / "store"
    embed_to_store(RECORDS[:3], _encoder(seed=0), store, progress=False)
    with pytest.raises(StoreMismatchError, match="lm_fingerprint: store has '[0-9a-f]{16}', this run has"):
        embed_to_store(RECORDS[3:], _encoder(seed=1), store, progress=False)  # same architecture, other weights
    with pytest.raises(StoreMismatchError, match="lm_dtype: store has 'float32', this run has 'bfloat16'"):
        embed_to_store(RECORDS[3:], _encoder(seed=0, dtype=torch.bfloat16), store, progress=False)
    assert len(EmbeddingStore(store)) == 3
    report = embed_to_store(RECORDS[3:], _encoder(seed=0), store, progress=False)  # the same LM again: extended
    assert report.written == 3 and len(EmbeddingStore(store)) == 6

    # A store written before the LM's dtype and fingerprint were recorded is extended, with a warning.
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if not k.startswith("lm_")}))
    with caplog.at_level("WARNING"):
        assert embed_to_store([("k100", "a late thing")], _encoder(seed=1), store, progress=False).written == 1
    assert "does not record lm_dtype and lm_fingerprint" in caplog.text


def _save_lm(folder, seed):
    tiny_lm("llama", seed=seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _tower(tmp_path, lm_dir):
    """A FLAME checkpoint whose config records the text encoder of its store (as FlameTask does)."""
    encoder = FacetTextEncoder.from_source(str(lm_dir), "short", layer=3)
    meta = store_meta(encoder.describe(), lm_identity(encoder))
    model = FlameModel(flame_config("tiny", text_dim=32, text=meta))
    model.save_pretrained(tmp_path / "ckpt")
    import numpy as np
    from PIL import Image

    for c, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / "cls" / c).mkdir(parents=True)
        Image.fromarray(np.full((36, 36, 3), colour, dtype=np.uint8)).save(tmp_path / "cls" / c / "0.png")
    return ["eval", "--checkpoint", str(tmp_path / "ckpt"), "--task", "zero-shot", "--format", "imagefolder",
            "--data", str(tmp_path / "cls")]


def test_flame_eval_refuses_a_text_encoder_other_than_the_towers(tmp_path, capsys):
    trained_on = _save_lm(tmp_path / "lm", seed=0)
    args = _tower(tmp_path, trained_on)
    other = _save_lm(tmp_path / "other-lm", seed=1)  # same architecture and size, other weights
    assert flame_main([*args, "--lm", str(other)]) == 2
    err = capsys.readouterr().err
    assert "another text encoder" in err and "fingerprint" in err and len(_errors(err)) == 1
    assert _errors(err)[0].startswith("frozenvl flame: error: ")  # the prefix of every command's errors
    assert flame_main([*args, "--layer", "2"]) == 2
    assert "layer 3 then, 2 now" in capsys.readouterr().err
    # The same weights under another path are the same encoder; the recorded one is the default.
    copy = _save_lm(tmp_path / "copy-of-lm", seed=0)
    assert flame_main([*args, "--lm", str(copy)]) == 0
    assert flame_main(args) == 0
    assert capsys.readouterr().out.count('"num_classes": 2') == 2


def test_flame_eval_checks_its_output_before_computing(tmp_path, capsys, monkeypatch):
    args = _tower(tmp_path, _save_lm(tmp_path / "lm", seed=0))
    (tmp_path / "file").write_text("x")

    def computed(*a, **k):
        raise AssertionError("the evaluation ran before the output was checked")

    monkeypatch.setattr(FlameModel, "from_pretrained", computed)
    assert flame_main([*args, "--out", str(tmp_path / "file" / "results.json")]) == 2
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and "--out" in err and "is a file, not a folder" in err
    assert flame_main([*args, "--out", str(tmp_path / "cls")]) == 2
    assert "is a folder: give a file name" in capsys.readouterr().err


def test_flamingo_eval_checks_its_output_folder_before_computing(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    (tmp_path / "world").mkdir()

    def computed(*a, **k):
        raise AssertionError("data or model loaded before the output was checked")

    monkeypatch.setattr(eval_cli, "load_task_data", computed)
    monkeypatch.setattr(eval_cli, "load_model", computed)
    argv = ["flamingo", "--task", "synth_captioning", "--data", str(tmp_path / "world"), "--lm", "tiny:llama",
            "--vision", "tiny", "--out", str(tmp_path / "file" / "out")]
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert _errors(err) == [f"frozenvl eval flamingo: error: --out {tmp_path / 'file' / 'out'} cannot "
                                        f"be written: {tmp_path / 'file'} is a file, not a folder"]
