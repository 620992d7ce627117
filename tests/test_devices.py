"""Devices and dtypes: ``--device`` / ``--dtype`` on every command that runs a model, ``build(dtype=, device=)``,
``from_pretrained(dtype=, device=)``, the models' ``.device`` / ``.dtype``, and bf16 forward, generation and
training of a tiny Flamingo on the CPU (compared with the same model in float32)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from frozenvl.cli import main
from frozenvl.flame.baseline import ClipBaseline, baseline_config
from frozenvl.flame.model import FlameModel, flame_config
from frozenvl.flamingo import Flamingo, build
from frozenvl.testing import (
    TINY_FLAMINGO,
    images,
    open_all_gates,
    save_tiny_backbones,
    tiny_lm,
    tiny_tokenizer,
    tiny_vision,
)

MODEL_COMMANDS = [["demo"], ["generate"], ["train"], ["eval", "flamingo"], ["flame", "embed"], ["flame", "eval"],
                  ["compare"]]
# These write, convert or count shards and run no model, so they take neither option.
DATA_COMMANDS = [["data", "synth"], ["data", "convert", "folder"], ["data", "convert", "coco"],
                 ["data", "convert", "vqav2"], ["data", "convert", "mmc4"], ["data", "convert", "video"],
                 ["data", "inspect"]]
BF16 = torch.bfloat16


def _floating(model: torch.nn.Module) -> set[torch.dtype]:
    return {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}


def _tiny(dtype: torch.dtype | None = None, **kwargs):
    model, processor = build(lm=tiny_lm("llama", seed=1), tokenizer=tiny_tokenizer(), vision=tiny_vision(seed=1),
                             dtype=dtype, **{**TINY_FLAMINGO, **kwargs})
    open_all_gates(model)  # 0 at init: open, so that the images matter
    return model.eval(), processor


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without a GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def backbone_folders(tmp_path_factory):
    """A tiny LM (with its tokenizer) and a tiny transformers vision model saved as folders: sources for the
    commands' --lm and --vision hf:FOLDER."""
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


# ------------------------------------------------------------------------------------------ the commands
def _leaf_commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command of ``frozenvl`` down to its last subcommand, with its parser (a delegated group's own)."""
    import importlib

    from frozenvl.cli.main import DELEGATED, build_parser

    def leaves(parser, path):
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not groups:
            return {path: parser}
        found = {}
        for name, sub in groups[0].choices.items():
            if not path and name in DELEGATED:  # the group parses its own arguments
                sub = importlib.import_module(DELEGATED[name][0]).build_parser()
            found.update(leaves(sub, (*path, name)))
        return found

    return leaves(build_parser(), ())


def test_every_command_is_listed_and_exactly_the_model_commands_take_device_and_dtype():
    commands = _leaf_commands()
    assert sorted(commands) == sorted(tuple(c) for c in MODEL_COMMANDS + DATA_COMMANDS)  # a new command is listed
    for command, parser in commands.items():
        options = {o for action in parser._actions for o in action.option_strings}
        takes = {"--device", "--dtype"} <= options
        assert takes == (list(command) in MODEL_COMMANDS), command


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_every_model_command_takes_device_and_dtype(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--device" in out and "--dtype" in out and "bfloat16" in out


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_cuda_without_a_gpu_is_one_error_line(command, no_gpu, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"key": "a", "caption": "a red cube"}) + "\n")
    rest = {"generate": ["--prompt", "hello"], "demo": ["--out", str(tmp_path / "demo")], "train": [],
            "eval": ["--task", "synth_icl_words", "--data", str(tmp_path)],
            "embed": ["--input", str(captions), "--out", str(tmp_path / "store")],
            "eval-flame": ["--checkpoint", str(tmp_path), "--task", "retrieval", "--format", "karpathy",
                           "--data", str(captions)],
            "compare": [f"out={tmp_path / 'cmp'}"]}
    key = "eval-flame" if command == ["flame", "eval"] else command[-1] if command[0] != "eval" else "eval"
    code = main([*command, *rest[key], "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert "--device cuda: CUDA is not available" in err
    assert not (tmp_path / "demo").exists()  # refused before any work


def test_train_reads_device_and_dtype_as_train_device_and_precision(no_gpu, capsys):
    from frozenvl.cli.train import main as train

    config = ["--config", str(Path(__file__).parents[1] / "configs" / "flamingo_tiny_cpu.yaml"), "--print-config"]
    for flags, device, precision in ((["--device", "cpu", "--dtype", "bfloat16"], "cpu", "bf16"),
                                     (["--dtype", "auto"], "auto", "fp32"),  # auto on the CPU: float32
                                     (["train.precision=bf16"], "auto", "bf16")):  # without flags: the config's
        assert train([*config, *flags]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)["train"]
        assert (printed["device"], printed["precision"]) == (device, precision), flags
    assert train([*config, "--device", "cpu", "train.device=cuda"]) == 2
    assert "--device and the override train.device= both given" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the engine trains in float32 or bfloat16 autocast
        train([*config, "--dtype", "float16"])


def test_demo_runs_every_stage_on_the_chosen_device_and_dtype(tmp_path, monkeypatch, capsys):
    """Every stage gets --device (training as its run config's train.device), the evaluated Flamingo and FLAME's
    LLM get --dtype; without --dtype they keep the plan's: the Flamingo is evaluated in flamingo_eval_dtype's dtype
    (bfloat16 where bf16 products are native), FLAME's stage gets None (its own rule, flame_llm_dtype)."""
    from types import SimpleNamespace

    from frozenvl.cli import demo
    from frozenvl.train.config import RunConfig

    seen = {}

    def fake_flamingo(out, world, plan, device):  # the run config the training stage writes, read by the engine
        seen["train.device"] = RunConfig.from_dict(demo.flamingo_run_config(world, out, plan, device)).train.device
        return out / "checkpoint"

    def fake_load(path, device=None, dtype=None):
        seen["eval"] = (path, device, dtype)
        return torch.nn.Identity(), None

    monkeypatch.setattr("frozenvl.cli.threads.apply_thread_policy", lambda: SimpleNamespace(describe=lambda: "1"))
    monkeypatch.setattr("frozenvl.data.synth.split_glob", lambda world, split: [f"{split}.tar"])
    monkeypatch.setattr(demo, "_pair_shards", lambda world: ["a.tar", "b.tar"])
    monkeypatch.setattr(demo, "stage_world", lambda out, plan: out / "world")
    monkeypatch.setattr(demo, "stage_flamingo", fake_flamingo)
    monkeypatch.setattr(demo, "stage_fewshot", lambda out, world, trained, plan: trained() and {})
    monkeypatch.setattr(demo, "stage_image_reliance", lambda *args: {})
    monkeypatch.setattr(demo, "stage_flame", lambda out, plan, device, dtype: seen.update(flame=(device, dtype)))
    monkeypatch.setattr(demo, "write_report", lambda *args: seen.update(report=args[-2:]) or args[0] / "report.md")
    monkeypatch.setattr("frozenvl.flamingo.load_pretrained", fake_load)
    out, cpu = tmp_path / "demo", torch.device("cpu")
    plan_dtype = getattr(torch, demo.flamingo_eval_dtype(cpu))
    for flags, dtype, evaluated in ((["--dtype", "bfloat16"], BF16, BF16), ([], None, plan_dtype)):
        seen.clear()
        assert main(["demo", "--out", str(out), "--device", "cpu", *flags]) == 0, capsys.readouterr().err
        assert seen == {"train.device": "cpu", "eval": (out / "checkpoint", cpu, evaluated), "flame": (cpu, dtype),
                        "report": ("cpu", str(evaluated).removeprefix("torch."))}, flags


def test_generate_runs_the_model_in_the_chosen_dtype(backbone_folders, monkeypatch, capsys):
    lm_dir, vit_dir = backbone_folders
    seen = []
    original = Flamingo.generate

    def spy(self, *args, **kwargs):
        seen.append((self.dtype, _floating(self), self.device, kwargs["pixel_values"].device))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Flamingo, "generate", spy)
    code = main(["generate", "--prompt", "<image>Output:", "--image", "skimage:chelsea", "--lm", str(lm_dir),
                 "--vision", f"hf:{vit_dir}", "--cross-attn-every", "2", "--max-new-tokens", "3", "--num-beams", "2",
                 "--dtype", "bfloat16", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert seen == [(BF16, {BF16}, torch.device("cpu"), torch.device("cpu"))]


def test_eval_flamingo_loads_the_model_in_the_chosen_dtype(backbone_folders, tmp_path):
    from frozenvl.cli.devices import resolve_device
    from frozenvl.cli.eval import build_parser, load_model

    lm_dir, vit_dir = backbone_folders
    args = build_parser().parse_args(["flamingo", "--task", "synth_icl_words", "--data", str(tmp_path),
                                      "--lm", str(lm_dir), "--vision", f"hf:{vit_dir}", "--dtype", "bfloat16",
                                      "--device", "cpu"])
    model, _ = load_model(args)
    assert model.dtype == BF16 and _floating(model) == {BF16} and model.device == torch.device("cpu")
    model.save_pretrained(tmp_path / "saved")
    args = build_parser().parse_args(["flamingo", "--task", "synth_icl_words", "--data", str(tmp_path),
                                      "--model", str(tmp_path / "saved"), "--dtype", "float16"])
    model, _ = load_model(args)  # the saved model and its backbones (by source), in float16
    assert _floating(model) == {torch.float16} and model.device == resolve_device(None)


def test_flame_embed_and_eval_in_bfloat16(backbone_folders, tmp_path, capsys):
    from PIL import Image

    lm_dir, _ = backbone_folders
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"key": f"k{i}", "caption": f"a red cube {i}"}) + "\n"
                                for i in range(3)))
    stores = {}
    for dtype in ("float32", "bfloat16"):
        assert main(["flame", "embed", "--input", str(captions), "--out", str(tmp_path / dtype), "--lm", str(lm_dir),
                     "--prompts", "short", "--no-progress", "--dtype", dtype, "--device", "cpu"]) == 0
        capsys.readouterr()
        from frozenvl.flame.store import EmbeddingStore

        stores[dtype] = EmbeddingStore(tmp_path / dtype).get_batch(["k0", "k1", "k2"])  # (3, K, D) unit rows
    # The LM in bf16 gives the float32 embeddings up to bf16 rounding (cosine of each facet near 1).
    cosine = (stores["float32"] * stores["bfloat16"]).sum(-1)
    assert cosine.min() > 0.98 and not torch.equal(stores["float32"], stores["bfloat16"])

    (tmp_path / "cls" / "red").mkdir(parents=True)
    Image.new("RGB", (36, 36), (255, 0, 0)).save(tmp_path / "cls" / "red" / "0.png")
    FlameModel(flame_config("tiny", text_dim=32, text={"lm": str(lm_dir), "layer": 3})).save_pretrained(
        tmp_path / "ckpt")
    assert main(["flame", "eval", "--checkpoint", str(tmp_path / "ckpt"), "--task", "zero-shot", "--format",
                 "imagefolder", "--data", str(tmp_path / "cls"), "--dtype", "bfloat16", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 1


def test_compare_embeds_in_the_chosen_dtype(backbone_folders, tmp_path, monkeypatch, capsys):
    import yaml

    from frozenvl.cli.compare import ComparisonConfig
    from frozenvl.flame.text_encoder import FacetTextEncoder

    lm_dir, _ = backbone_folders
    toy = ComparisonConfig(out=str(tmp_path / "cmp"), lm=str(lm_dir), n_pairs=16, n_eval=4, image_size=32, steps=1,
                           batch_size=8, warmup_steps=1, sampled_facets=2, head_hidden=32,
                           vision={"patch_size": 8, "width": 32, "layers": 1, "heads": 2},
                           text={"width": 32, "layers": 1, "heads": 2}, threads=None)
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(toy.to_dict()))
    encoders = []
    original = FacetTextEncoder.encode
    monkeypatch.setattr(FacetTextEncoder, "encode", lambda self, *a, **k: encoders.append(
        (self.dtype, self.device)) or original(self, *a, **k))
    assert main(["compare", "--config", str(tmp_path / "toy.yaml"), "--dtype", "bfloat16", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert set(encoders) == {(BF16, torch.device("cpu"))}
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert (results["device"], results["llm_dtype"]) == ("cpu", "bfloat16")


# ------------------------------------------------------------------------------------------ the helpers
def test_device_and_dtype_names(no_gpu, monkeypatch):
    from frozenvl.cli.devices import resolve_device, resolve_dtype
    from frozenvl.pretrained import as_device

    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32 and resolve_dtype("bfloat16") == BF16
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        as_device("gpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        as_device(0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device(None) == torch.device("cuda") and as_device(1) == torch.device("cuda", 1)
    assert resolve_dtype("auto", torch.device("cuda")) == BF16
    with pytest.raises(ValueError, match="2 GPU"):
        as_device("cuda:3")
    from frozenvl.cli.devices import engine_device

    assert engine_device(torch.device("cuda", 0)) == "cuda" and engine_device(torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        engine_device(torch.device("cuda", 1))  # the engine trains on GPU LOCAL_RANK


# ------------------------------------------------------------------------------------------ the API
def test_build_casts_the_whole_model_and_keeps_instances_as_they_are_by_default():
    model, _ = _tiny(BF16)
    assert _floating(model) == {BF16} and model.dtype == BF16  # frozen backbones and trainable parts alike
    assert all(p.dtype == BF16 for p in model.parameters() if p.requires_grad)
    lm = tiny_lm("llama").to(BF16)
    model, _ = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY_FLAMINGO)
    assert model.lm.model.embed_tokens.base.weight.dtype == BF16  # an instance is left as it came
    assert model.resampler.latents.dtype == torch.float32  # and the new parts in float32, as before
    model, _ = build(lm=tiny_lm("llama"), tokenizer=tiny_tokenizer(), vision=tiny_vision(), dtype="float16",
                     device="cpu", **TINY_FLAMINGO)
    assert _floating(model) == {torch.float16} and model.device == torch.device("cpu")


def test_bf16_forward_and_generate_on_cpu_match_float32():
    fp32, processor = _tiny()
    bf16, _ = _tiny(BF16)
    batch = processor(["<image>a cat<|endofchunk|><image>a"], [images(2, seed=2)])
    with torch.no_grad():
        ref = fp32(**batch).logits  # (1, L, V)
        out = bf16(**batch).logits
    assert out.dtype == BF16 and torch.isfinite(out).all()
    # bf16 keeps 8 bits of mantissa: the logits agree to a few thousandths (0.003 of 0.34 measured; moving the
    # resampler's weights by 0.05 moves them by 0.07).
    assert (out.float() - ref).abs().max() < 0.03 * ref.abs().max()
    for num_beams in (1, 2):
        tokens = bf16.generate(**batch, max_new_tokens=4, num_beams=num_beams)
        prompt = batch["input_ids"].shape[1]
        assert tokens.shape[0] == 1 and prompt < tokens.shape[1] <= prompt + 4
        assert torch.equal(tokens[:, :prompt], batch["input_ids"])
        assert (tokens[:, prompt:] != bf16.image_token_id).all()


def test_few_shot_evaluation_with_rices_in_bf16():
    from frozenvl.eval import get_task
    from frozenvl.eval.harness import EvalConfig, FewShotHarness, TaskData
    from frozenvl.eval.records import EvalRecord

    model, processor = _tiny()
    model.to(BF16)  # the vision encoder too: the harness feeds it bf16 pixels
    imgs = images(6, seed=9)
    pool = [EvalRecord(key=f"p{i}", image=img, label=i % 2) for i, img in enumerate(imgs[:4])]
    twin = EvalRecord(key="twin", image=imgs[5].clone(), label=1)
    data = TaskData(queries=[EvalRecord(key="q", image=imgs[5], label=1)], pool=[*pool, twin],
                    class_names=["red circle", "blue star"])
    results = FewShotHarness(model, processor, EvalConfig(shots=(2,), rices=True)).run(
        get_task("synth_classification"), data, progress=False)
    prediction = results.runs[0]["predictions"][0]
    assert prediction["demos"][-1] == "twin"  # the encoder ran in bf16 and found the same image
    assert prediction["answer"] in data.class_names


def test_bf16_training_steps_on_cpu():
    model, processor = _tiny(BF16)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = processor(["<image>a red cube<|endofchunk|>", "<image>two blue stars<|endofchunk|>"],
                      [images(1, seed=4), images(1, seed=5)])
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None or (p.grad.dtype == BF16 and torch.isfinite(p.grad).all()) for p in trainable)
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.dtype == BF16 for p in trainable)
    assert sum(not torch.equal(a, p) for a, p in zip(before, trainable)) > len(trainable) // 2


def test_from_pretrained_in_bf16_on_cpu(tmp_path, no_gpu):
    model, _ = _tiny()
    model.save_pretrained(tmp_path / "fp32")
    backbones = dict(lm=tiny_lm("llama", seed=1), tokenizer=tiny_tokenizer(), vision=tiny_vision(seed=1))
    loaded = Flamingo.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16, device="cpu", **backbones)
    assert _floating(loaded) == {BF16} and (loaded.dtype, loaded.device) == (BF16, torch.device("cpu"))
    saved = model.saved_state_dict()
    for name, tensor in loaded.saved_state_dict().items():
        assert torch.equal(tensor, saved[name].to(BF16)), name  # the saved weights, rounded to bf16

    loaded.save_pretrained(tmp_path / "bf16")  # "auto": the dtype of the saved tensors, as in transformers
    backbones = dict(lm=tiny_lm("llama", seed=1), tokenizer=tiny_tokenizer(), vision=tiny_vision(seed=1))
    assert Flamingo.from_pretrained(tmp_path / "bf16", dtype="auto", **backbones).dtype == BF16
    backbones = dict(lm=tiny_lm("llama", seed=1), tokenizer=tiny_tokenizer(), vision=tiny_vision(seed=1))
    again = Flamingo.from_pretrained(tmp_path / "bf16", torch_dtype=torch.float16, device_map="cpu", **backbones)
    assert _floating(again) == {torch.float16}  # transformers' older names
    with pytest.raises(ValueError, match="CUDA is not available"):
        Flamingo.from_pretrained(tmp_path / "bf16", device="cuda")  # before anything loads
    with pytest.raises(ValueError, match="per-module map"):
        Flamingo.from_pretrained(tmp_path / "bf16", device_map={"lm": 0})


@pytest.mark.parametrize("kind", ["flame", "clip_baseline"])
def test_device_and_dtype_of_the_towers(kind, tmp_path):
    model = (FlameModel(flame_config("tiny", text_dim=16)) if kind == "flame"
             else ClipBaseline(baseline_config("tiny", embed_dim=16)))
    assert (model.dtype, model.device) == (torch.float32, torch.device("cpu"))
    model.save_pretrained(tmp_path / "saved")
    loaded = type(model).from_pretrained(tmp_path / "saved", dtype=torch.bfloat16, device="cpu")
    assert _floating(loaded) == {BF16} and (loaded.dtype, loaded.device) == (BF16, torch.device("cpu"))
    state = model.state_dict()
    assert all(torch.equal(t, state[n].to(t.dtype)) for n, t in loaded.state_dict().items())
    assert model.to(torch.float16).dtype == torch.float16
