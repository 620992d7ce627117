"""Hostile inputs across every command, tried as a new user would: the closing measurement of the 'nothing lost,
nothing crashes' work (docs/data.md 'Bad data', docs/training.md 'What is never lost').

Each case runs the real command line (``frozenvl.cli.main``, the ``frozenvl`` entry point) in a child process with a
deadline and a memory bound, on tiny random models and a tiny synthetic world built first (nothing downloaded), and
is classified:

- ``clear error``: exit code 2 and one ``frozenvl CMD: error: ...`` line (naming the file where the case says which);
- ``skip+count``: exit 0, the bad record skipped and counted, the good ones kept (checked on the output);
- ``traceback``: a Python traceback, or an exit code other than 0/2;
- ``hang``: still running at the deadline (killed);
- ``memory``: resident memory over the bound (killed);
- ``silently wrong``: exit 0 where it should have failed, or an output that the case's check finds wrong;
- ``vague error``: one line, but it does not name the file the case gave.

By default a child is forked from this process after the heavy imports (the CLI's code and behaviour are the same
as a fresh ``frozenvl`` process; only the import time is saved); ``--exec`` runs ``python -m frozenvl`` instead.

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/hostile_inputs.py [--workers 2] [--exec] [--only SUBSTRING]

Not part of the test suite (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEADLINE_S = 90.0
MEMORY_BOUND = 3 << 30  # resident bytes of one child
DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP_YAML = "a: " + "[" * 100_000
BINARY = bytes(range(256)) * 64


# ------------------------------------------------------------------------------------------------ fixtures


def png(colour=(200, 30, 30), size: int = 32) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels (over PIL's decompression-bomb limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tar_with(path: Path, members: list[tuple[str, bytes]], declared: dict[str, int] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if declared:  # rewrite a header's size field to declare far more than is there
        raw = bytearray(path.read_bytes())
        for name, size in declared.items():
            at = raw.find(name.encode())
            raw[at + 124:at + 136] = tarfile.itn(size, 12, tarfile.GNU_FORMAT)  # base-256 past 8 GiB, 12 bytes
            header = raw[at:at + 512]
            header[148:156] = b" " * 8
            raw[at + 148:at + 156] = f"{sum(header):06o}\0 ".encode()
        path.write_bytes(bytes(raw))
    return path


def pairs(n: int, start: int = 0, caption: Callable[[int], str] = lambda i: f"a red square {i}") -> list:
    image = png()
    out = []
    for i in range(start, start + n):
        out += [(f"s{i:04d}.png", image), (f"s{i:04d}.txt", caption(i).encode())]
    return out


def setup(root: Path) -> None:
    """Tiny models, a tiny world, a trained tiny Flamingo, a FLAME checkpoint and store, good and bad files."""
    import torch

    torch.set_num_threads(1)
    import yaml

    from frozenvl.data import WorldConfig, generate_world
    from frozenvl.flame.model import FlameModel, flame_config
    from frozenvl.testing import tiny_lm, tiny_tokenizer

    generate_world(root / "world", WorldConfig(n_pairs=24, n_interleaved=8, n_video=4, n_eval=8, image_size=32,
                                               shard_size=8, frames=2, n_episodes=4,
                                               splits=("pairs", "interleaved", "video", "captioning", "vqa",
                                                       "classification", "retrieval", "heldout")),
                   progress=False, log=None)
    lm = root / "lm"
    tiny_lm("llama").save_pretrained(lm)
    tiny_tokenizer().save_pretrained(lm)
    # The Flamingo's backbones are folders (a saved tiny LM, a FLAME image tower) so that its checkpoint loads
    # again in generate / eval; tiny:llama is a name only the training config knows.
    FlameModel(flame_config("tiny", text_dim=32, text={"lm": str(lm), "layer": 3})).save_pretrained(root / "flame")
    tree = {"model": {"lm": str(lm), "vision": f"flame:{root / 'flame'}", "feature_cache": False,
                      "flamingo": dict(cross_attn_every=2, resampler_depth=1, num_latents=4, resampler_dim_head=8,
                                       resampler_heads=2, xattn_dim_head=8, xattn_heads=2, ff_mult=2, max_frames=4,
                                       max_length=96)},
            "data": {"datasets": [{"name": "pairs", "shards": str(root / "world/train/pairs-*.tar"), "weight": 1.0,
                                   "batch_size": 2}], "shuffle_buffer": 2},
            "optim": {"lr": 1e-3, "warmup_steps": 1},
            "train": {"run_dir": str(root / "base_run"), "steps": 2, "log_every": 1, "checkpoint_every": 2,
                      "progress": False, "threads": 1}}
    (root / "train.yaml").write_text(yaml.safe_dump(tree))
    from frozenvl.cli.main import main

    assert main(["train", "--config", str(root / "train.yaml")]) == 0
    ckpt = sorted((root / "base_run" / "checkpoints").glob("step-*"))[-1]
    shutil.copytree(ckpt, root / "model")
    caps = root / "caps.jsonl"
    caps.write_text("".join(json.dumps({"key": f"k{i}", "caption": f"a red cube {i}"}) + "\n" for i in range(6)))
    assert main(["flame", "embed", "--input", str(caps), "--out", str(root / "store"), "--lm", str(lm),
                 "--prompts", "short", "--commit-every", "3", "--no-progress"]) == 0

    images = root / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.png").write_bytes(png((60 * i, 100, 200)))
    (images / "bomb.png").write_bytes(bomb_png())
    (images / "trunc.png").write_bytes(png()[:40])
    (root / "binary.bin").write_bytes(BINARY)
    (root / "deep.json").write_text(DEEP_JSON)
    (root / "deep.yaml").write_text(DEEP_YAML)
    (root / "file.txt").write_text("a regular file\n")
    (root / "empty_dir").mkdir()
    os.mkfifo(root / "fifo")
    # A Karpathy file for flame eval / eval coco.
    karpathy = {"images": [{"filename": f"{i}.png", "split": "test", "sentences": [{"raw": f"picture {i}"}]}
                           for i in range(4)]}
    (root / "karpathy.json").write_text(json.dumps(karpathy))
    cls = root / "classes"
    for c, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (cls / c).mkdir(parents=True)
        (cls / c / "0.png").write_bytes(png(colour))


# ------------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]
    expect: str = "error"  # error | skip | ok
    names: str | None = None  # an error must contain this (the file it is about)
    check: Callable[[Path, str, str], bool] | None = None  # (case dir, stdout, stderr) -> output right?
    prepare: Callable[[Path], None] | None = None  # builds the case's own files in its folder
    env: dict[str, str] = field(default_factory=dict)


def flame_store_intact(expected: int):
    def check(d: Path, out: str, err: str) -> bool:
        from frozenvl.flame.store import EmbeddingStore

        return len(EmbeddingStore(d / "store")) == expected
    return check


def cases(root: Path) -> list[Case]:  # noqa: C901 - one flat list, read top to bottom
    R = str(root)
    model, lm, flame, world = f"{R}/model", f"{R}/lm", f"{R}/flame", f"{R}/world"
    img = f"{R}/images/0.png"
    out: list[Case] = []

    def add(category: str, name: str, argv: list[str], **kw) -> None:
        out.append(Case(category, name, argv, **kw))

    def copy_model(src: str, edit: Callable[[Path], None]):
        def prepare(d: Path) -> None:
            shutil.copytree(src, d / "model_copy")
            edit(d / "model_copy")
        return prepare

    def write(name: str, data: bytes | str):
        def edit(folder: Path) -> None:
            p = folder / name
            p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
        return edit

    def files(**contents: bytes | str | Callable[[Path], None]):
        def prepare(d: Path) -> None:
            for name, data in contents.items():
                p = d / name.replace("__", "/")
                p.parent.mkdir(parents=True, exist_ok=True)
                if callable(data):
                    data(p)
                elif isinstance(data, bytes):
                    p.write_bytes(data)
                else:
                    p.write_text(data)
        return prepare

    # ---------------------------------------------------------------- generate
    gen = ["generate", "--prompt", "<image>Output:", "--max-new-tokens", "2"]
    G = [*gen, "--model", model]
    add("paths", "generate --image missing", [*G, "--image", f"{R}/nope.png"], names="nope.png")
    add("paths", "generate --image folder", [*G, "--image", f"{R}/images"], names="images")
    add("paths", "generate --image FIFO", [*G, "--image", f"{R}/fifo"], names="fifo")
    add("paths", "generate --video missing", [*G.copy(), "--video", f"{R}/nope.mp4"], names="nope.mp4")
    add("paths", "generate --video empty folder", [*G, "--video", f"{R}/empty_dir"], names="empty_dir")
    add("paths", "generate --model missing", [*gen, "--model", f"{R}/nope", "--image", img], names="nope")
    add("paths", "generate --model a file", [*gen, "--model", f"{R}/file.txt", "--image", img], names="file.txt")
    add("corrupt files", "generate --image binary", [*G, "--image", f"{R}/binary.bin"], names="binary.bin")
    add("corrupt files", "generate --image truncated png", [*G, "--image", f"{R}/images/trunc.png"], names="trunc")
    add("hostile images", "generate --image decompression bomb", [*G, "--image", f"{R}/images/bomb.png"])
    add("corrupt files", "generate --video corrupt mp4", [*G, "--video", f"{R}/binary.bin"], names="binary.bin")
    for what, edit in (("corrupt safetensors", write("model.safetensors", BINARY)),
                       ("truncated safetensors", lambda m: (m / "model.safetensors").write_bytes(
                           (m / "model.safetensors").read_bytes()[:300])),
                       ("binary config.json", write("config.json", BINARY)),
                       ("deep config.json", write("config.json", DEEP_JSON)),
                       ("config.json a list", write("config.json", "[1, 2]")),
                       ("no config.json", lambda m: (m / "config.json").unlink())):
        add("corrupt files", f"generate --model with {what}", [*gen, "--model", "model_copy", "--image", img],
            prepare=copy_model(model, edit), names="model_copy")
    for flags in (["--top-p", "0"], ["--top-p", "2"], ["--max-frames", "0"], ["--num-beams", "0"],
                  ["--max-new-tokens", "0"], ["--max-new-tokens", "-3"], ["--sample", "--temperature", "0"],
                  ["--sample", "--temperature", "-1"], ["--video-fps", "0"], ["--repetition-penalty", "0"],
                  ["--no-repeat-ngram-size", "-1"], ["--min-new-tokens", "-1"]):
        add("bad numbers", "generate " + " ".join(flags), [*G, "--image", img, *flags])
    add("bad numbers", "generate --cross-attn-every 0", [*gen, "--lm", lm, "--vision", "tiny", "--image", img,
                                                         "--cross-attn-every", "0"])
    add("unloadable names", "generate --lm unknown", [*gen, "--lm", "no-such-org/no-such-lm", "--image", img],
        names="no-such-lm")
    add("unloadable names", "generate --vision unknown", [*gen, "--lm", lm, "--vision", "nosuchvision_xyz",
                                                          "--image", img], names="nosuchvision_xyz")
    add("unloadable names", "generate --lm a folder without a model", [*gen, "--lm", f"{R}/empty_dir",
                                                                       "--image", img], names="empty_dir")
    add("bad numbers", "generate two <image> one image", ["generate", "--prompt", "<image>a<image>b", "--model",
                                                           model, "--image", img])
    add("device", "generate --device cuda", [*G, "--image", img, "--device", "cuda"])
    add("device", "generate --device nonsense", [*G, "--image", img, "--device", "gpu7"])

    # ---------------------------------------------------------------- eval flamingo
    ev = ["eval", "flamingo", "--model", model, "--no-progress"]
    EV = [*ev, "--task", "synth_vqa", "--data", world, "--shots", "0", "--trials", "1", "--limit", "2"]
    add("paths", "eval --data missing", [*ev, "--task", "synth_vqa", "--data", f"{R}/nope"], names="nope")
    add("paths", "eval --data FIFO (coco)", [*ev, "--task", "coco", "--data", f"{R}/fifo", "--image-root",
                                             f"{R}/images"], names="fifo")
    add("paths", "eval --data a file for a world task", [*ev, "--task", "synth_vqa", "--data", f"{R}/file.txt"],
        names="file.txt")
    add("paths", "eval --out under a file", [*EV, "--out", f"{R}/file.txt/out"], names="file.txt")
    add("paths", "eval --out is a file", [*EV, "--out", f"{R}/file.txt"], names="file.txt")
    add("paths", "eval --out in /proc", [*EV, "--out", "/proc/frozenvl-out"], names="/proc/frozenvl-out")
    add("paths", "eval --image-root missing", [*ev, "--task", "coco", "--data", f"{R}/karpathy.json", "--split",
                                               "test", "--image-root", f"{R}/nope", "--limit", "2", "--shots", "0"],
        names="nope")
    add("paths", "eval --class-names missing", [*ev, "--task", "imagenet", "--data", f"{R}/classes",
                                                "--class-names", f"{R}/nope.txt"], names="nope.txt")
    add("paths", "eval --model missing", ["eval", "flamingo", "--model", f"{R}/nope", "--task", "synth_vqa",
                                          "--data", world], names="nope")
    add("corrupt files", "eval coco JSON binary", [*ev, "--task", "coco", "--data", f"{R}/binary.bin",
                                                   "--image-root", f"{R}/images"], names="binary.bin")
    add("deep nesting", "eval coco JSON deeply nested", [*ev, "--task", "coco", "--data", f"{R}/deep.json",
                                                         "--image-root", f"{R}/images"], names="deep.json")
    add("corrupt files", "eval coco JSON a list", [*ev, "--task", "coco", "--data", "l.json", "--image-root",
                                                   f"{R}/images"], prepare=files(**{"l.json": "[1,2,3]"}),
        names="l.json")
    add("corrupt files", "eval vqav2 JSON without questions", [*ev, "--task", "vqav2", "--data", "q.json",
                                                               "--image-root", f"{R}/images"],
        prepare=files(**{"q.json": '{"info": {}}'}), names="q.json")
    add("corrupt files", "eval world.json deeply nested", [*ev, "--task", "synth_vqa", "--data", "w"],
        prepare=lambda d: (shutil.copytree(world, d / "w"), (d / "w/world.json").write_text(DEEP_JSON)),
        names="world.json")
    add("corrupt files", "eval world.json binary", [*ev, "--task", "synth_vqa", "--data", "w"],
        prepare=lambda d: (shutil.copytree(world, d / "w"), (d / "w/world.json").write_bytes(BINARY)),
        names="world.json")
    add("corrupt files", "eval world record file binary", [*ev, "--task", "synth_vqa", "--data", "w"],
        prepare=lambda d: (shutil.copytree(world, d / "w"),
                           [p.write_bytes(BINARY) for p in (d / "w/eval").glob("vqa*")]), names="vqa")
    for what, edit in (("corrupt safetensors", write("model.safetensors", BINARY)),
                       ("deep config.json", write("config.json", DEEP_JSON))):
        add("corrupt files", f"eval --model with {what}",
            ["eval", "flamingo", "--model", "model_copy", "--task", "synth_vqa", "--data", world],
            prepare=copy_model(model, edit), names="model_copy")
    for flags in (["--limit", "0"], ["--limit", "-1"], ["--shots", "-1"], ["--trials", "0"], ["--batch-size", "0"]):
        add("bad numbers", "eval " + " ".join(flags), [*EV, *flags])
    add("bad numbers", "eval --task unknown", [*ev, "--task", "nosuchtask", "--data", world])
    add("unloadable names", "eval --lm unknown", ["eval", "flamingo", "--lm", "no-such-org/no-such-lm", "--vision",
                                                  "tiny", "--task", "synth_vqa", "--data", world], names="no-such-lm")
    add("device", "eval --device cuda", [*EV, "--device", "cuda"])
    add("control", "eval synth_vqa good run", [*EV, "--out", "res"],
        expect="ok", check=lambda d, o, e: bool(list((d / "res").glob("*.json"))))

    # ---------------------------------------------------------------- train
    with open(root / "train.yaml") as f:
        import yaml

        base = yaml.safe_load(f)

    def train_cfg(**edits):
        """A prepare that writes the tiny train config (run_dir in the case folder) with dotted edits."""
        def prepare(d: Path) -> None:
            tree = json.loads(json.dumps(base))
            tree["train"]["run_dir"] = str(d / "run")
            for key, value in edits.items():
                node = tree
                parts = key.split("__")
                for p in parts[:-1]:
                    node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
                if callable(value):
                    value = value(d)
                node[parts[-1]] = value
            (d / "t.yaml").write_text(yaml.safe_dump(tree))
        return prepare

    T = ["train", "--config", "t.yaml"]
    add("paths", "train --config missing", ["train", "--config", f"{R}/nope.yaml"], names="nope.yaml")
    add("paths", "train --config folder", ["train", "--config", f"{R}/empty_dir"], names="empty_dir")
    add("paths", "train --config FIFO", ["train", "--config", f"{R}/fifo"], names="fifo")
    add("corrupt files", "train --config binary", ["train", "--config", f"{R}/binary.bin"], names="binary.bin")
    add("deep nesting", "train --config deeply nested YAML", ["train", "--config", f"{R}/deep.yaml"],
        names="deep.yaml")
    add("deep nesting", "train --config deeply nested JSON", ["train", "--config", f"{R}/deep.json"],
        names="deep.json")
    add("corrupt files", "train --config a YAML list", ["train", "--config", "l.yaml"],
        prepare=files(**{"l.yaml": "- 1\n- 2\n"}), names="l.yaml")
    add("corrupt files", "train --config unknown key", [*T], prepare=train_cfg(train__no_such_key=1))
    add("paths", "train run_dir under a file", [*T, f"train.run_dir={R}/file.txt/run"], prepare=train_cfg(),
        names="file.txt")
    add("paths", "train run_dir in /proc", [*T, "train.run_dir=/proc/frozenvl-run"], prepare=train_cfg(),
        names="/proc/frozenvl-run")
    add("paths", "train shards missing", [*T], prepare=train_cfg(data__datasets__0__shards="nope-*.tar"),
        names="nope")
    add("paths", "train shards a FIFO", [*T], prepare=train_cfg(data__datasets__0__shards=f"{R}/fifo"),
        names="fifo")
    for key, value in (("train.steps", "0"), ("train.steps", "-1"), ("data.datasets.0.batch_size", "0"),
                       ("optim.lr", "-1"), ("train.grad_accum", "0"), ("train.keep_checkpoints", "0"),
                       ("model.flamingo.cross_attn_every", "0"), ("train.threads", "0"), ("data.num_workers", "-1"),
                       ("data.datasets.0.weight", "-1"), ("optim.warmup_steps", "-1"), ("train.threads", "-2"),
                       ("train.precision", "fp64"), ("data.datasets.0.max_images", "0")):
        add("bad numbers", f"train {key}={value}", [*T, f"{key}={value}"], prepare=train_cfg())
    add("bad numbers", "train train.checkpoint_every=0 (documented: only at the end)", [*T, "train.checkpoint_every=0"],
        prepare=train_cfg(), expect="ok", check=lambda d, o, e: (d / "run/checkpoints/step-00000002").is_dir())
    add("bad numbers", "train override without =", [*T, "train.steps"], prepare=train_cfg())
    add("bad numbers", "train override of an unknown key", [*T, "train.stepz=3"], prepare=train_cfg())
    add("unloadable names", "train model.lm unknown", [*T, "model.lm=no-such-org/no-such-lm"], prepare=train_cfg(),
        names="no-such-lm")
    add("unloadable names", "train model.vision unknown", [*T, "model.vision=nosuchvision_xyz"], prepare=train_cfg(),
        names="nosuchvision_xyz")
    add("unloadable names", "train model.init_from missing", [*T, f"model.init_from={R}/nope"], prepare=train_cfg(),
        names="nope")
    add("corrupt files", "train model.init_from corrupt safetensors", [*T, "model.init_from=model_copy"],
        prepare=lambda d: (train_cfg()(d), copy_model(model, write("model.safetensors", BINARY))(d)),
        names="model_copy")
    add("device", "train train.device=cuda", [*T, "train.device=cuda"], prepare=train_cfg())

    def run_of(d: Path) -> Path:
        return d / "run"

    def trained(then: Callable[[Path], None] | None = None):
        """A finished 2-step run in the case folder, then ``then(run folder)``."""
        def prepare(d: Path) -> None:
            train_cfg()(d)
            shutil.copytree(root / "base_run", d / "run")
            if then:
                then(d / "run")
        return prepare

    def newest_ckpt(run: Path) -> Path:
        return sorted((run / "checkpoints").glob("step-*"))[-1]

    add("run folders", "train into an existing run without --resume", [*T], prepare=trained(),
        check=None, names="run")
    add("run folders", "train --resume with a corrupt trainer_state", [*T, "--resume", "train.steps=3"],
        prepare=trained(lambda r: [p.write_bytes(BINARY) for p in newest_ckpt(r).iterdir()
                                   if p.name.startswith("trainer_state")]), names="step-")
    add("deep nesting", "train --resume with a deeply nested trainer_state", [*T, "--resume", "train.steps=3"],
        prepare=trained(lambda r: [p.write_text(DEEP_JSON) for p in newest_ckpt(r).iterdir()
                                   if p.name.startswith("trainer_state") and p.suffix == ".json"]), names="step-")
    add("run folders", "train --resume with a partial metrics line", [*T, "--resume", "train.steps=3"],
        prepare=trained(lambda r: open(r / "metrics.jsonl", "a").write('{"step": 3, "lo')), expect="ok",
        check=lambda d, o, e: '"step": 3' in (d / "run/metrics.jsonl").read_text().replace('"step":3', '"step": 3'))
    add("run folders", "train --resume with a deeply nested metrics line", [*T, "--resume", "train.steps=3"],
        prepare=trained(lambda r: open(r / "metrics.jsonl", "a").write(DEEP_JSON + "\n")), expect="ok",
        check=lambda d, o, e: (d / "run/checkpoints").exists())
    add("run folders", "train --resume with a binary config.yaml in the run", [*T, "--resume", "train.steps=3"],
        prepare=trained(lambda r: (r / "config.yaml").write_bytes(BINARY)), expect="ok",
        check=lambda d, o, e: True)

    def shard_run(members_fn: Callable[[Path], None], **edits):
        def prepare(d: Path) -> None:
            (d / "shards").mkdir()
            members_fn(d / "shards")
            train_cfg(**{"data__datasets__0__shards": str(d / "shards" / "*.tar"), **edits})(d)
        return prepare

    def skipped(reason: str):
        def check(d: Path, o: str, e: str) -> bool:
            return reason in e or reason in o or reason in (d / "run/metrics.jsonl").read_text()
        return check

    good = pairs(6)
    add("hostile shards", "train on a garbage tar", [*T], prepare=shard_run(
        lambda s: ((s / "a.tar").write_bytes(BINARY), tar_with(s / "b.tar", good))), expect="skip",
        check=skipped("unreadable_shard"))
    add("hostile shards", "train on a shard cut mid-member", [*T], prepare=shard_run(
        lambda s: ((s / "a.tar").write_bytes(tar_with(s / "a.tar", good).read_bytes()[:3000]),
                   tar_with(s / "b.tar", good))), expect="skip", check=skipped("truncated_shard"))
    add("hostile shards", "train on a shard declaring a 50 GB member", [*T], prepare=shard_run(
        lambda s: (tar_with(s / "a.tar", [*pairs(1, 90), *good], declared={"s0090.txt": 50 << 30}),
                   tar_with(s / "b.tar", good))), expect="skip", check=skipped("_shard"))
    add("duplicate keys", "train on a shard with duplicate keys", [*T], prepare=shard_run(
        lambda s: tar_with(s / "a.tar", [*pairs(2), *good])), expect="skip", check=skipped("duplicate_key"))
    add("control tokens", "train on captions with a literal <image>", [*T], prepare=shard_run(
        lambda s: tar_with(s / "a.tar", [*pairs(1, 50, lambda i: "look <image> here"), *good])),
        expect="skip", check=skipped("image_token_in_text"))
    add("control tokens", "train on captions with a literal <|endofchunk|>", [*T], prepare=shard_run(
        lambda s: tar_with(s / "a.tar", pairs(6, 0, lambda i: f"a<|endofchunk|>b {i}"))), expect="ok",
        check=lambda d, o, e: (d / "run/metrics.jsonl").exists())
    add("hostile images", "train on a shard with a bomb image", [*T], prepare=shard_run(
        lambda s: tar_with(s / "a.tar", [("s0099.png", bomb_png()), ("s0099.txt", b"boom"), *good])),
        expect="skip", check=skipped("image_too_large"))
    add("memory", "train on a gzip shard with a 400 MB caption", [*T], prepare=shard_run(
        lambda s: (s / "a.tar.gz").write_bytes(gzip.compress(tar_with(s / "x", [
            ("s0098.png", png()), ("s0098.txt", b"a" * (400 << 20)), *good]).read_bytes(), 1)),
        data__datasets__0__shards=lambda d: str(d / "shards" / "*.tar.gz")), expect="skip",
        check=skipped("member_too_large"))

    # ---------------------------------------------------------------- data synth
    S = ["data", "synth", "--quiet", "--pairs", "4", "--interleaved", "2", "--video", "2", "--eval", "4",
         "--episodes", "2", "--image-size", "24", "--frames", "2"]
    add("paths", "synth out under a file", [*S, f"{R}/file.txt/w"], names="file.txt")
    add("paths", "synth out is a file", [*S, f"{R}/file.txt"], names="file.txt")
    add("paths", "synth out is a FIFO", [*S, f"{R}/fifo"], names="fifo")
    add("paths", "synth out in /proc", [*S, "/proc/frozenvl-world"], names="/proc/frozenvl-world")
    for flags in (["--pairs", "-1"], ["--eval", "0"], ["--eval", "-2"], ["--shard-size", "0"],
                  ["--image-size", "0"], ["--frames", "0"], ["--n-way", "0"], ["--k-shot", "0"],
                  ["--episodes", "-1"], ["--workers", "0"], ["--page-themes", "nosuch=1"],
                  ["--page-themes", "caption=-1"], ["--video", "-1"]):
        add("bad numbers", "synth " + " ".join(flags), [*S, "w", *flags])

    def stale_check(d: Path, o: str, e: str) -> bool:
        listed = json.loads((d / "w/world.json").read_text())
        return not (d / "w/train/pairs-000001.tar").exists() or "pairs-000001" in json.dumps(listed)
    add("run folders", "synth into an existing bigger world", [*S, "--shard-size", "2", "w"],
        prepare=lambda d: subprocess.run([sys.executable, "-m", "frozenvl", *S, "--pairs", "12",
                                          "--shard-size", "2", str(d / "w")], check=True, capture_output=True),
        expect="ok", check=stale_check)

    # ---------------------------------------------------------------- data convert
    imgs = f"{R}/images"
    C = ["data", "convert", "--quiet"] if False else ["data", "convert"]
    fold = [*C, "folder"]

    def written(n: int, reason: str | None = None):
        def check(d: Path, o: str, e: str) -> bool:
            ok = True
            if reason:
                ok = reason in o or reason in e
            from frozenvl.data import ShardDataset  # noqa: F401 - counts from the tars themselves
            count = 0
            for t in sorted((d / "out").glob("*.tar")):
                with tarfile.open(t) as tar:
                    count += len({m.name.split(".")[0] for m in tar.getmembers()})
            return ok and count == n
        return check

    csv_ok = "image,caption\n" + "".join(f"{i}.png,picture {i}\n" for i in range(4))
    add("paths", "convert folder images missing", [*fold, f"{R}/nope", "c.csv", "out"],
        prepare=files(**{"c.csv": csv_ok}), names="nope")
    add("paths", "convert folder captions missing", [*fold, imgs, f"{R}/nope.csv", "out"], names="nope.csv")
    add("paths", "convert folder captions FIFO", [*fold, imgs, f"{R}/fifo", "out"], names="fifo")
    add("paths", "convert folder captions a folder", [*fold, imgs, f"{R}/empty_dir", "out"], names="empty_dir")
    add("paths", "convert folder out under a file", [*fold, imgs, "c.csv", f"{R}/file.txt/out"],
        prepare=files(**{"c.csv": csv_ok}), names="file.txt")
    add("corrupt files", "convert folder captions binary", [*fold, imgs, f"{R}/binary.bin", "out"],
        names="binary.bin")
    add("corrupt files", "convert folder headerless CSV", [*fold, imgs, "c.csv", "out"],
        prepare=files(**{"c.csv": "".join(f"{i}.png,picture {i}\n" for i in range(4))}), names="c.csv")
    add("corrupt files", "convert folder CSV without caption column", [*fold, imgs, "c.csv", "out"],
        prepare=files(**{"c.csv": "image,label\n0.png,x\n"}), names="c.csv")
    add("corrupt files", "convert folder empty CSV", [*fold, imgs, "c.csv", "out"], prepare=files(**{"c.csv": ""}),
        names="c.csv")
    add("bad numbers", "convert folder --shard-size 0", [*fold, imgs, "c.csv", "out", "--shard-size", "0"],
        prepare=files(**{"c.csv": csv_ok}))
    add("bad numbers", "convert folder --max-size 0", [*fold, imgs, "c.csv", "out", "--max-size", "0"],
        prepare=files(**{"c.csv": csv_ok}))
    add("corrupt files", "convert folder CSV field over 131072 chars", [*fold, imgs, "c.csv", "out"],
        prepare=files(**{"c.csv": csv_ok + f'1.png,"{"x" * 200_000}"\n'}), expect="skip", check=written(4))
    add("deep nesting", "convert folder JSONL deep line", [*fold, imgs, "c.jsonl", "out"],
        prepare=files(**{"c.jsonl": "".join(json.dumps({"image": f"{i}.png", "caption": f"p {i}"}) + "\n"
                                            for i in range(4)) + DEEP_JSON + "\n"}),
        expect="skip", check=written(4, "bad_json"))
    add("corrupt files", "convert folder JSONL non-object line", [*fold, imgs, "c.jsonl", "out"],
        prepare=files(**{"c.jsonl": "[1,2]\n" + json.dumps({"image": "0.png", "caption": "p"}) + "\n"}),
        expect="skip", check=written(1))
    add("duplicate keys", "convert folder duplicate keys", [*fold, imgs, "c.csv", "out"],
        prepare=files(**{"c.csv": "image,caption,key\n0.png,a,k1\n1.png,b,k1\n2.png,c,k2\n"}),
        expect="ok", check=written(3))  # a repeated key is made unique (k1_1): every row kept once
    add("control tokens", "convert folder caption with literal <image>", [*fold, imgs, "c.csv", "out"],
        prepare=files(**{"c.csv": csv_ok + "1.png,see <image> here\n"}), expect="skip",
        check=lambda d, o, e: written(4)(d, o, e) or (written(5)(d, o, e) and "image_token_in_text" in subprocess.run(
            [sys.executable, "-m", "frozenvl", "data", "inspect", str(d / "out")], capture_output=True,
            text=True).stderr))  # written as is, and counted where it is read
    add("hostile images", "convert folder bomb and truncated images", [*fold, imgs, "c.csv", "out"],
        prepare=files(**{"c.csv": csv_ok + "bomb.png,boom\ntrunc.png,cut\n"}), expect="skip", check=written(4))
    add("paths", "convert folder image missing from folder", [*fold, imgs, "c.csv", "out"],
        prepare=files(**{"c.csv": csv_ok + "gone.png,x\n"}), expect="skip", check=written(4, "missing"))

    coco_ok = json.dumps({"images": [{"id": i, "file_name": f"{i}.png"} for i in range(4)],
                          "annotations": [{"id": i, "image_id": i, "caption": f"c {i}"} for i in range(4)]})
    CO = [*C, "coco"]
    add("paths", "convert coco JSON missing", [*CO, f"{R}/nope.json", imgs, "out"], names="nope.json")
    add("paths", "convert coco JSON FIFO", [*CO, f"{R}/fifo", imgs, "out"], names="fifo")
    add("corrupt files", "convert coco JSON binary", [*CO, f"{R}/binary.bin", imgs, "out"], names="binary.bin")
    add("deep nesting", "convert coco JSON deep", [*CO, f"{R}/deep.json", imgs, "out"], names="deep.json")
    add("corrupt files", "convert coco JSON a list", [*CO, "c.json", imgs, "out"],
        prepare=files(**{"c.json": "[]"}), names="c.json")
    add("corrupt files", "convert coco JSON without annotations", [*CO, "c.json", imgs, "out"],
        prepare=files(**{"c.json": '{"images": []}'}), names="c.json")
    add("corrupt files", "convert coco annotation without image_id", [*CO, "c.json", imgs, "out"],
        prepare=files(**{"c.json": coco_ok[:-2] + ', {"id": 9, "caption": "x"}]}'}), expect="skip",
        check=written(4))
    add("bad numbers", "convert coco --shard-size -1", [*CO, "c.json", imgs, "out", "--shard-size", "-1"],
        prepare=files(**{"c.json": coco_ok}))
    add("control tokens", "convert coco caption with <|endofchunk|>", [*CO, "c.json", imgs, "out"],
        prepare=files(**{"c.json": coco_ok.replace("c 0", "c <|endofchunk|> 0")}), expect="ok",
        check=written(4))

    VQ = [*C, "vqav2"]
    q_ok = json.dumps({"questions": [{"question_id": i, "image_id": i, "question": f"q {i}?"} for i in range(4)]})
    add("paths", "convert vqav2 questions missing", [*VQ, f"{R}/nope.json", imgs, "out"], names="nope.json")
    add("deep nesting", "convert vqav2 questions deep", [*VQ, f"{R}/deep.json", imgs, "out"], names="deep.json")
    add("corrupt files", "convert vqav2 questions binary", [*VQ, f"{R}/binary.bin", imgs, "out"], names="binary.bin")
    add("deep nesting", "convert vqav2 annotations deep", [*VQ, "q.json", imgs, "out", "--annotations",
                                                           f"{R}/deep.json"], prepare=files(**{"q.json": q_ok}),
        names="deep.json")
    add("paths", "convert vqav2 annotations FIFO", [*VQ, "q.json", imgs, "out", "--annotations", f"{R}/fifo"],
        prepare=files(**{"q.json": q_ok}), names="fifo")

    MM = [*C, "mmc4"]
    doc = json.dumps({"text_list": ["a page", "more"], "image_info": [{"image_name": "0.png",
                                                                        "matched_text_index": 0}]})
    add("paths", "convert mmc4 JSONL missing", [*MM, f"{R}/nope.jsonl", imgs, "out"], names="nope.jsonl")
    add("corrupt files", "convert mmc4 JSONL binary", [*MM, f"{R}/binary.bin", imgs, "out"], names="binary.bin",
        expect="skip", check=lambda d, o, e: "bad_json" in o + e)  # each line skipped and counted
    add("deep nesting", "convert mmc4 JSONL deep line", [*MM, "m.jsonl", imgs, "out"],
        prepare=files(**{"m.jsonl": doc + "\n" + DEEP_JSON + "\n" + doc.replace("a page", "b page") + "\n"}),
        expect="skip", check=written(2))
    add("corrupt files", "convert mmc4 document without text_list", [*MM, "m.jsonl", imgs, "out"],
        prepare=files(**{"m.jsonl": doc + "\n" + '{"image_info": []}\n'}), expect="skip", check=written(1))

    VI = [*C, "video"]
    add("paths", "convert video folder missing", [*VI, f"{R}/nope", "c.csv", "out"],
        prepare=files(**{"c.csv": "video,caption\na,x\n"}), names="nope")
    add("corrupt files", "convert video corrupt file", [*VI, "v", "c.csv", "out"],
        prepare=files(**{"c.csv": "video,caption\na.mp4,x\n", "v__a.mp4": BINARY}), expect="skip",
        check=lambda d, o, e: "corrupt_video" in o + e)
    add("bad numbers", "convert video --fps 0", [*VI, "v", "c.csv", "out", "--fps", "0"],
        prepare=files(**{"c.csv": "video,caption\na.mp4,x\n", "v__a.mp4": BINARY}))
    add("bad numbers", "convert video --max-frames 0", [*VI, "v", "c.csv", "out", "--max-frames", "0"],
        prepare=files(**{"c.csv": "video,caption\na.mp4,x\n", "v__a.mp4": BINARY}))

    # ---------------------------------------------------------------- data inspect
    INS = ["data", "inspect"]

    def inspect_counts(reason: str, good_n: int | None = None):
        def check(d: Path, o: str, e: str) -> bool:
            return reason in o + e and (good_n is None or f'"samples": {good_n}' in o or f'"good": {good_n}' in o
                                    or str(good_n) in o)
        return check

    add("paths", "inspect a FIFO", [*INS, f"{R}/fifo"], expect="skip", check=inspect_counts("not_a_file"))
    add("paths", "inspect an empty folder", [*INS, f"{R}/empty_dir"], expect="skip",
        check=lambda d, o, e: json.loads(o)["shards"] == 0)
    add("paths", "inspect a missing file", [*INS, f"{R}/nope.tar"], expect="skip",
        check=inspect_counts("missing_shard"))
    add("corrupt files", "inspect a binary file", [*INS, "a.tar"], prepare=files(**{"a.tar": BINARY}),
        expect="skip", check=inspect_counts("unreadable_shard"))
    add("hostile shards", "inspect a shard declaring a 50 GB member", [*INS, "a.tar"],
        prepare=lambda d: tar_with(d / "a.tar", [*pairs(1, 90), *good], declared={"s0090.txt": 50 << 30}),
        expect="skip", check=inspect_counts("_shard"))
    add("duplicate keys", "inspect duplicate keys", [*INS, "a.tar"],
        prepare=lambda d: tar_with(d / "a.tar", [*good, *pairs(2)]), expect="skip",
        check=inspect_counts("duplicate_key"))
    add("control tokens", "inspect a literal <image> caption", [*INS, "a.tar"],
        prepare=lambda d: tar_with(d / "a.tar", [*pairs(1, 50, lambda i: "x <image> y"), *good]),
        expect="skip", check=inspect_counts("image_token_in_text"))
    add("deep nesting", "inspect a deeply nested .json member", [*INS, "a.tar"],
        prepare=lambda d: tar_with(d / "a.tar", [("s0077.json", DEEP_JSON[:8000].encode() + b"]" * 0),
                                                 ("s0077.png", png()), *good]),
        expect="skip", check=inspect_counts("bad_json"))
    add("memory", "inspect a gzip shard with a 400 MB caption", [*INS, "a.tar.gz"],
        prepare=lambda d: (d / "a.tar.gz").write_bytes(gzip.compress(tar_with(d / "x", [
            ("s0098.png", png()), ("s0098.txt", b"a" * (400 << 20)), *good]).read_bytes(), 1)),
        expect="skip", check=inspect_counts("member_too_large"))

    # ---------------------------------------------------------------- flame embed
    FE = ["flame", "embed", "--lm", lm, "--prompts", "short", "--no-progress"]
    caps = f"{R}/caps.jsonl"
    add("paths", "embed --input missing", [*FE, "--input", f"{R}/nope.jsonl", "--out", "store"], names="nope.jsonl")
    add("paths", "embed --input FIFO", [*FE, "--input", f"{R}/fifo", "--out", "store"], names="fifo")
    add("paths", "embed --input a folder", [*FE, "--input", f"{R}/empty_dir", "--out", "store"], names="empty_dir")
    add("paths", "embed --out under a file", [*FE, "--input", caps, "--out", f"{R}/file.txt/store"],
        names="file.txt")
    add("paths", "embed --out is a file", [*FE, "--input", caps, "--out", f"{R}/file.txt"], names="file.txt")
    add("corrupt files", "embed --input binary", [*FE, "--input", f"{R}/binary.bin", "--out", "store"],
        names="binary.bin")
    add("deep nesting", "embed --input deep JSONL line", [*FE, "--input", "c.jsonl", "--out", "store"],
        prepare=files(**{"c.jsonl": open(caps).read() + DEEP_JSON + "\n"}), expect="skip",
        check=flame_store_intact(6))
    add("corrupt files", "embed JSONL line without caption", [*FE, "--input", "c.jsonl", "--out", "store"],
        prepare=files(**{"c.jsonl": open(caps).read() + '{"key": "z"}\n'}), expect="skip",
        check=flame_store_intact(6))
    add("duplicate keys", "embed duplicate keys", [*FE, "--input", "c.jsonl", "--out", "store"],
        prepare=files(**{"c.jsonl": open(caps).read() + open(caps).read().replace("cube", "ball")}), expect="skip",
        check=lambda d, o, e: flame_store_intact(6)(d, o, e) and "duplicate" in o + e)
    add("control tokens", "embed caption with <|endofchunk|> and <image>", [*FE, "--input", "c.jsonl", "--out",
                                                                           "store"],
        prepare=files(**{"c.jsonl": json.dumps({"key": "a", "caption": "x <|endofchunk|> <image> y"}) + "\n"}),
        expect="ok", check=flame_store_intact(1))
    for what, data in (("binary manifest", BINARY), ("deep manifest", DEEP_JSON), ("list manifest", "[1]")):
        def prep(d: Path, data=data) -> None:
            shutil.copytree(root / "store", d / "store")
            man = d / "store" / "manifest.json"
            man.write_bytes(data) if isinstance(data, bytes) else man.write_text(data)
        add("corrupt files" if what != "deep manifest" else "deep nesting", f"embed into a store with a {what}",
            [*FE, "--input", caps, "--out", "store"], prepare=prep, names="store")
    add("corrupt files", "embed into a store with a binary meta.json", [*FE, "--input", caps, "--out", "store"],
        prepare=lambda d: (shutil.copytree(root / "store", d / "store"),
                           (d / "store/meta.json").write_bytes(BINARY)), names="meta.json")
    add("corrupt files", "embed into a store with a corrupt shard", [*FE, "--input", "c2.jsonl", "--out", "store"],
        prepare=lambda d: (shutil.copytree(root / "store", d / "store"),
                           [p.write_bytes(BINARY) for p in (d / "store").glob("*.npy")],
                           (d / "c2.jsonl").write_text(json.dumps({"key": "new", "caption": "x"}) + "\n")),
        names="store")
    for flags in (["--batch-size", "0"], ["--max-length", "0"], ["--layer", "99"], ["--commit-every", "0"],
                  ["--layer", "-99"]):
        add("bad numbers", "embed " + " ".join(flags), [*FE, "--input", caps, "--out", "store", *flags])
    add("paths", "embed --prompts YAML missing", [*FE[:-3], "--prompts", f"{R}/nope.yaml", "--input", caps, "--out",
                                                  "store"], names="nope.yaml")
    add("deep nesting", "embed --prompts YAML deep", [*FE[:-3], "--prompts", f"{R}/deep.yaml", "--input", caps,
                                                      "--out", "store"], names="deep.yaml")
    add("corrupt files", "embed --prompts YAML without prompts", [*FE[:-3], "--prompts", "p.yaml", "--input", caps,
                                                                  "--out", "store"],
        prepare=files(**{"p.yaml": "prefix: hi\n"}), names="p.yaml")
    add("unloadable names", "embed --lm unknown", ["flame", "embed", "--lm", "no-such-org/no-such-lm", "--input",
                                                   caps, "--out", "store"], names="no-such-lm")
    add("corrupt files", "embed --lm folder with deep config.json",
        ["flame", "embed", "--lm", "model_copy", "--input", caps, "--out", "store"],
        prepare=copy_model(lm, write("config.json", DEEP_JSON)), names="model_copy")
    add("corrupt files", "embed --lm folder with corrupt safetensors",
        ["flame", "embed", "--lm", "model_copy", "--input", caps, "--out", "store"],
        prepare=copy_model(lm, write("model.safetensors", BINARY)), names="model_copy")
    add("device", "embed --device cuda", [*FE, "--input", caps, "--out", "store", "--device", "cuda"])

    # ---------------------------------------------------------------- flame eval
    FV = ["flame", "eval", "--checkpoint", flame]
    ZS = [*FV, "--task", "zero-shot", "--format", "imagefolder", "--data", f"{R}/classes"]
    RT = [*FV, "--task", "retrieval", "--format", "karpathy", "--image-root", imgs]
    add("paths", "flame eval --checkpoint missing", ["flame", "eval", "--checkpoint", f"{R}/nope", "--task",
                                                     "zero-shot", "--format", "imagefolder", "--data",
                                                     f"{R}/classes"], names="nope")
    add("paths", "flame eval --data missing", [*RT, "--data", f"{R}/nope.json"], names="nope.json")
    add("paths", "flame eval --data FIFO", [*RT, "--data", f"{R}/fifo"], names="fifo")
    add("paths", "flame eval --out under a file", [*ZS, "--out", f"{R}/file.txt/r.json"], names="file.txt")
    add("paths", "flame eval --out a folder", [*ZS, "--out", f"{R}/empty_dir"], names="empty_dir")
    add("paths", "flame eval --templates FIFO", [*ZS, "--templates", f"{R}/fifo"], names="fifo")
    add("corrupt files", "flame eval karpathy binary", [*RT, "--data", f"{R}/binary.bin"], names="binary.bin")
    add("deep nesting", "flame eval karpathy deep", [*RT, "--data", f"{R}/deep.json"], names="deep.json")
    add("corrupt files", "flame eval karpathy no test split", [*RT, "--data", "k.json"],
        prepare=files(**{"k.json": open(root / "karpathy.json").read().replace('"test"', '"train"')}), names="k.json")
    add("corrupt files", "flame eval karpathy entry without sentences", [*RT, "--data", "k.json", "--out", "r.json"],
        prepare=files(**{"k.json": json.dumps({"images": [
            *json.loads(open(root / "karpathy.json").read())["images"], {"filename": "1.png", "split": "test"}]})}),
        expect="skip", check=lambda d, o, e: (d / "r.json").exists())
    add("bad numbers", "flame eval --limit 0", [*FV, "--task", "retrieval", "--format", "sharegpt4v", "--data",
                                                "s.json", "--image-root", imgs, "--limit", "0"],
        prepare=files(**{"s.json": "[]"}))
    add("bad numbers", "flame eval template with two {}", [*ZS, "--templates", "t.txt"],
        prepare=files(**{"t.txt": "a {} and a {}\n"}), names="t.txt")
    add("bad numbers", "flame eval template without {}", [*ZS, "--templates", "t.txt"],
        prepare=files(**{"t.txt": "a photo\n"}), names="t.txt")
    add("bad numbers", "flame eval --batch-size 0", [*ZS, "--batch-size", "0"])
    for what, edit in (("corrupt safetensors", write("model.safetensors", BINARY)),
                       ("deep config.json", write("config.json", DEEP_JSON)),
                       ("binary config.json", write("config.json", BINARY))):
        add("corrupt files", f"flame eval checkpoint with {what}",
            ["flame", "eval", "--checkpoint", "model_copy", "--task", "zero-shot", "--format", "imagefolder", "--data",
             f"{R}/classes"], prepare=copy_model(flame, edit), names="model_copy")
    add("unloadable names", "flame eval --lm unknown", [*ZS, "--lm", "no-such-org/no-such-lm"], names="no-such-lm")
    add("device", "flame eval --device cuda", [*ZS, "--device", "cuda"])
    add("corrupt files", "flame eval world without world.json", [*FV, "--task", "zero-shot", "--format", "world",
                                                                 "--data", f"{R}/empty_dir"], names="empty_dir")
    add("control", "flame eval zero-shot good run", [*ZS, "--out", "r.json"], expect="ok",
        check=lambda d, o, e: json.loads((d / "r.json").read_text())["num_classes"] == 2)

    # ---------------------------------------------------------------- compare
    CM = ["compare", f"lm={lm}", "n_pairs=8", "n_eval=4", "steps=1", "batch_size=4", "image_size=32",
          "prompts=short", "progress=false", "threads=1"]
    add("paths", "compare --config missing", ["compare", "--config", f"{R}/nope.yaml"], names="nope.yaml")
    add("corrupt files", "compare --config binary", ["compare", "--config", f"{R}/binary.bin"], names="binary.bin")
    add("deep nesting", "compare --config deep", ["compare", "--config", f"{R}/deep.yaml"], names="deep.yaml")
    add("paths", "compare --config FIFO", ["compare", "--config", f"{R}/fifo"], names="fifo")
    add("paths", "compare out under a file", [*CM, f"out={R}/file.txt/c"], names="file.txt")
    for kv in ("steps=0", "n_pairs=-1", "n_eval=0", "batch_size=0", "lr=-1", "loss=bogus", "nosuchkey=1",
               "languages=[xx]", "prompts=nosuchset"):
        add("bad numbers", f"compare {kv}", [*CM, "out=c", kv])
    add("unloadable names", "compare lm unknown", [*CM, "out=c", "lm=no-such-org/no-such-lm"], names="no-such-lm")
    add("device", "compare --device cuda", [*CM, "out=c", "--device", "cuda"])
    return out


# ------------------------------------------------------------------------------------------------ running


def child(argv: list[str], d: Path, env: dict[str, str]) -> None:
    """In the forked child: the frozenvl entry point on ``argv`` in folder ``d``, stdout/stderr to files."""
    os.chdir(d)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        f = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", 0), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", 0), write_through=True)
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = 1
    try:
        from frozenvl.cli.main import main

        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what Python prints for an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rss(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    total = rss(pid)
    try:
        for child_pid in open(f"/proc/{pid}/task/{pid}/children").read().split():
            total += tree_rss(int(child_pid))
    except OSError:
        pass
    return total


@dataclass
class Running:
    case: Case
    d: Path
    pid: int
    start: float
    proc: subprocess.Popen | None = None
    peak: int = 0
    killed: str | None = None


def start(case: Case, d: Path, use_exec: bool) -> Running:
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FROZENVL_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", **case.env}
    if use_exec:
        with open(d / "stdout", "wb") as o, open(d / "stderr", "wb") as e:
            proc = subprocess.Popen([sys.executable, "-m", "frozenvl", *case.argv], cwd=d, stdout=o, stderr=e,
                                    env={**os.environ, **env}, start_new_session=True)
        return Running(case, d, proc.pid, time.monotonic(), proc)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        child(case.argv, d, env)
    return Running(case, d, pid, time.monotonic())


def classify(r: Running, code: int) -> tuple[str, str]:
    out = (r.d / "stdout").read_text(errors="replace")
    err = (r.d / "stderr").read_text(errors="replace")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if r.killed:
        return r.killed, last
    if "Traceback (most recent call last)" in err or code < 0:
        return "traceback", last or f"exit {code}"
    # The command's one line: "frozenvl CMD: error: ..." (argparse's and run_command's) or "error: ..." (data, flame).
    error_lines = [ln for ln in lines if re.match(r"(frozenvl[\w .-]*: )?(config )?error: ", ln)]
    if code != 0:  # 2, or 1 where a command means "the run failed" (a full disk during training)
        if r.case.expect == "ok":
            return "silently wrong", f"refused a valid input: {last}"
        if len(error_lines) != 1:
            return "traceback", f"{len(error_lines)} error lines: {last}"
        if r.case.names and r.case.names not in error_lines[0]:
            return "vague error", error_lines[0]
        return "clear error", error_lines[0]
    # code == 0
    if r.case.expect == "error":
        return "silently wrong", f"exit 0: {last}"
    try:
        right = r.case.check(r.d, out, err) if r.case.check else True
    except Exception as e:  # the output the check reads is missing or broken
        right = False
        last = f"check failed: {type(e).__name__}: {e}"
    if not right:
        return "silently wrong", f"wrong output: {last}"
    return ("skip+count" if r.case.expect == "skip" else "correct"), last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--exec", dest="use_exec", action="store_true", help="python -m frozenvl per case")
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--setup-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup_only:
        setup(Path(args.setup_only))
        return 0
    work = Path(args.keep or tempfile.mkdtemp(prefix="frozenvl-hostile-"))
    root = work / "fixtures"
    if not (root / "model").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t0 = time.monotonic()
        # Setup in its own process: this one must not start torch's thread pool before forking.
        subprocess.run([sys.executable, __file__, "--setup-only", str(root)], check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                            "FROZENVL_THREADS": "1"})
        print(f"setup {time.monotonic() - t0:.0f} s", flush=True)
    if not args.use_exec:  # the imports every command needs, done once before forking
        import torch  # noqa: F401
        import transformers  # noqa: F401

        import frozenvl.cli.main  # noqa: F401
        import frozenvl.data  # noqa: F401
        import frozenvl.flame  # noqa: F401
        import frozenvl.flamingo  # noqa: F401
    todo = [c for c in cases(root) if not args.only or args.only in c.name]
    print(f"{len(todo)} cases, {args.workers} at a time", flush=True)
    results: list[tuple[Case, str, str, float]] = []
    running: list[Running] = []
    queue = list(enumerate(todo))
    t_all = time.monotonic()
    while queue or running:
        while queue and len(running) < args.workers:
            i, case = queue.pop(0)
            d = work / "cases" / f"{i:03d}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            (d / "case.txt").write_text(f"{case.category}: {case.name}\n{json.dumps(case.argv)}\n")
            try:
                if case.prepare:
                    case.prepare(d)
            except Exception as e:
                results.append((case, "setup failed", f"{type(e).__name__}: {e}", 0.0))
                continue
            running.append(start(case, d, args.use_exec))
        time.sleep(0.05)
        for r in list(running):
            pid, status = os.waitpid(r.pid, os.WNOHANG)
            if pid == 0:
                r.peak = max(r.peak, tree_rss(r.pid))
                if r.peak > MEMORY_BOUND:
                    r.killed = "memory"
                elif time.monotonic() - r.start > DEADLINE_S:
                    r.killed = "hang"
                if r.killed:
                    os.killpg(r.pid, signal.SIGKILL)
                continue
            code = os.waitstatus_to_exitcode(status)
            if code < 0 and not r.killed and -code == signal.SIGKILL:
                r.killed = "memory"  # the kernel's OOM killer
            outcome, line = classify(r, code)
            (r.d / "outcome.txt").write_text(f"{outcome}\nexit {code}\n{line}\n")
            seconds = time.monotonic() - r.start
            results.append((r.case, outcome, line, seconds))
            running.remove(r)
            print(f"{outcome:15s} {seconds:5.1f}s  {r.case.category:17s} {r.case.name}  | {line[:150]}", flush=True)
    report(results, time.monotonic() - t_all, args)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


OUTCOMES = ["clear error", "skip+count", "correct", "vague error", "traceback", "hang", "memory", "silently wrong",
            "setup failed"]


def report(results: list[tuple[Case, str, str, float]], seconds: float, args) -> None:
    table: dict[str, Counter] = defaultdict(Counter)
    for case, outcome, _, _ in results:
        table[case.category][outcome] += 1
    used = [o for o in OUTCOMES if any(table[c][o] for c in table)]
    width = max(len(c) for c in table) if table else 10
    print(f"\n{len(results)} cases in {seconds:.0f} s ({'exec' if args.use_exec else 'fork'}, {args.workers} workers)")
    print(f"{'category':{width}s} " + " ".join(f"{o:>14s}" for o in used) + f" {'total':>6s}")
    total: Counter = Counter()
    for category in sorted(table):
        row = table[category]
        total.update(row)
        print(f"{category:{width}s} " + " ".join(f"{row[o]:>14d}" for o in used) + f" {sum(row.values()):>6d}")
    print(f"{'all':{width}s} " + " ".join(f"{total[o]:>14d}" for o in used) + f" {sum(total.values()):>6d}")
    bad = [(c, o, line) for c, o, line, _ in results if o not in ("clear error", "skip+count", "correct")]
    if bad:
        print("\nto fix:")
        for case, outcome, line in bad:
            print(f"  {outcome:15s} {case.name}: {line[:200]}")


if __name__ == "__main__":
    sys.exit(main())
