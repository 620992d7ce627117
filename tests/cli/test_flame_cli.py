import json

import numpy as np
from PIL import Image

from frozenvl.cli.flame import build_parser, main
from frozenvl.flame.model import FlameModel, flame_config
from frozenvl.flame.store import EmbeddingStore
from frozenvl.testing import tiny_lm, tiny_tokenizer


def test_embed_and_eval_from_the_command_line(tmp_path, capsys):
    lm_dir = tmp_path / "lm"
    tiny_lm("llama").save_pretrained(lm_dir)
    tiny_tokenizer().save_pretrained(lm_dir)
    captions = tmp_path / "caps.jsonl"
    captions.write_text("".join(json.dumps({"key": f"s{i}", "caption": f"a red cube {i}"}) + "\n" for i in range(5)))
    args = ["embed", "--input", str(captions), "--out", str(tmp_path / "store"), "--lm", str(lm_dir),
            "--prompts", "short", "--shard-size", "2", "--no-progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == 5 and report["num_facets"] == 3
    assert len(EmbeddingStore(tmp_path / "store")) == 5
    # Same store, another prompt set: one clear error, exit code 2.
    assert main([a if a != "short" else "long" for a in args]) == 2
    assert "refusing to extend" in capsys.readouterr().err

    for c, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / "cls" / c).mkdir(parents=True)
        Image.fromarray(np.full((36, 36, 3), colour, dtype=np.uint8)).save(tmp_path / "cls" / c / "0.png")
    model = FlameModel(flame_config("tiny", text_dim=32, text={"lm": str(lm_dir), "layer": 3}))
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--task", "zero-shot", "--format", "imagefolder",
                 "--data", str(tmp_path / "cls"), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["num_classes"] == 2 and 0 <= results["top1"] <= 100
    assert results["text"]["prompt_set"] == "raw" and results["text"]["layer"] == 3
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--task", "zero-shot", "--format", "imagefolder",
                 "--data", "x"]) == 2
    assert "not a FLAME checkpoint" in capsys.readouterr().err


def test_help_lists_both_subcommands():
    text = build_parser().format_help()
    assert "embed" in text and "eval" in text
