"""LoRA on the frozen LM (frozenvl.flamingo.lora), on Llama (nn.Linear) and GPT-2 (Conv1D): a fresh Flamingo with
adapters equals its LM; the adapters sit in the LM's own decoder layers only; they and the usual Flamingo parts are
all that trains; they are saved and loaded with the trainable tensors; the run config switches them on and the
optimizer gives them a group of their own; a target name that is not there is one clear error."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from frozenvl.config import ConfigError
from frozenvl.constants import CONFIG_NAME, WEIGHTS_NAME
from frozenvl.flamingo import Flamingo, FlamingoConfig, build
from frozenvl.flamingo.lora import lora_modules
from frozenvl.testing import TINY_FLAMINGO as TINY
from frozenvl.testing import gap_to_frozen_lm, images, tiny_flamingo, tiny_lm, tiny_tokenizer, tiny_vision

FAMILIES = ("llama", "gpt2")
LORA = dict(lora_rank=4, lora_alpha=8.0)
DEFAULT_TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}  # peft's defaults for these model types
TEXT = "a dog<image>a cat sat<|endofchunk|> then<image>on the mat<|endofchunk|>"


def adapters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_model_with_lora_equals_the_frozen_lm(family):
    lm = tiny_lm(family, seed=1)
    reference = copy.deepcopy(lm)  # the frozen LM before any wrapping
    model, proc = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY, **LORA)
    lora = adapters(model)
    n_layers = len(model.decoder_layers)
    assert len(lora) == 2 * n_layers * len(DEFAULT_TARGETS[family])  # A and B per targeted layer
    assert all(p.abs().sum() > 0 for n, p in lora.items() if ".lora_A." in n)
    assert all(torch.count_nonzero(p) == 0 for n, p in lora.items() if ".lora_B." in n)  # B starts at zero
    with_images, plain_text = gap_to_frozen_lm(model, proc, reference, TEXT, images(2))
    assert with_images <= 1e-5 and plain_text <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_sit_in_the_lms_own_layers_and_are_all_that_is_added_to_training(family):
    plain, _ = tiny_flamingo(family)
    model, _ = tiny_flamingo(family, **LORA)
    assert model.config.lora_target_modules == DEFAULT_TARGETS[family]  # peft's default, recorded
    lora = adapters(model)
    assert trainable(model) == trainable(plain) | set(lora)
    layers = f"lm.{model.decoder_layers_path}."
    for name in lora:
        assert name.startswith(layers) and ".xattn." not in name, name  # never in cross-attention
        module = name.split(".lora_")[0]
        assert module.rsplit(".", 1)[-1] in DEFAULT_TARGETS[family]
        assert f"{module}.base_layer.weight" not in trainable(model)  # the LM's weight stays frozen
    assert not any(".lora_" in n for n, _ in model.resampler.named_parameters())
    # The LM's module paths are unchanged: only a targeted layer's weight moves under base_layer.
    plain_names = {n.replace(".weight", "").replace(".bias", "") for n, _ in plain.named_parameters()}
    model_names = {n.replace(".base_layer", "") for n, _ in model.named_parameters() if n not in lora}
    assert {n.replace(".weight", "").replace(".bias", "") for n in model_names} == plain_names


@pytest.mark.parametrize("family", FAMILIES)
def test_training_moves_the_adapters_and_the_output_and_nothing_frozen(family):
    model, proc = tiny_flamingo(family, **LORA)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    text = proc(["just some words"])  # no image, no new token: only the adapters can change these logits
    logits_before = model(**text).logits.detach()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = proc([TEXT], [images(2)])
    for step in range(2):
        opt.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        if step == 0:
            assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
            assert all(p.grad.abs().sum() > 0 for n, p in adapters(model).items() if ".lora_B." in n)
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed <= trainable(model)
    assert set(adapters(model)) <= changed  # A moves once B is no longer zero
    # Gates closed: the resampler and cross-attention contribute exactly 0 to text without images, adapters do not.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gate.alpha"):
                p.zero_()
    assert (model(**text).logits - logits_before).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_from_pretrained_round_trip_with_lora(tmp_path, family):
    model, proc = tiny_flamingo(family, open_gates=True, **LORA)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    batch = proc([TEXT], [images(2)])
    expected = model(**batch).logits
    model.save_pretrained(tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS_NAME))
    assert set(adapters(model)) <= set(stored)
    assert not any("base_layer" in k for k in stored)  # the LM's weights are referenced, not copied
    saved_config = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    saved_config = saved_config.get("config", saved_config)
    assert saved_config["lora_rank"] == 4 and saved_config["lora_target_modules"] == DEFAULT_TARGETS[family]
    loaded = Flamingo.from_pretrained(tmp_path / "ckpt", lm=tiny_lm(family, seed=0), tokenizer=tiny_tokenizer(),
                                      vision=tiny_vision(seed=0)).eval()
    assert torch.equal(loaded(**batch).logits, expected)
    for name, p in adapters(loaded).items():
        assert torch.equal(p, stored[name]) and p.requires_grad
    with pytest.raises(KeyError, match="unexpected.*lora_A"):  # the adapters are part of the checkpoint contract
        Flamingo.from_pretrained(tmp_path / "ckpt", lm=tiny_lm(family, seed=0), tokenizer=tiny_tokenizer(),
                                 vision=tiny_vision(seed=0), lora_rank=0)


def test_a_target_that_is_not_a_linear_layer_of_the_lm_is_one_clear_error():
    with pytest.raises(ValueError, match=r"q_prj matches no linear layer .* named: .*q_proj"):
        tiny_flamingo("llama", lora_rank=4, lora_target_modules=["q_proj", "q_prj"])
    with pytest.raises(ValueError, match=r"q_proj matches no linear layer .* named: c_attn, c_fc, c_proj"):
        tiny_flamingo("gpt2", lora_rank=4, lora_target_modules=["q_proj"])
    for outside in ("to_q", "to_kv", "lm_head"):  # cross-attention, resampler, output head: not the LM's layers
        with pytest.raises(ValueError, match=f"{outside} matches no linear layer"):
            tiny_flamingo("llama", lora_rank=4, lora_target_modules=[outside])


def test_config_values_are_checked():
    for bad, key in ((dict(lora_rank=-1), "lora_rank"), (dict(lora_alpha=0.0), "lora_alpha"),
                     (dict(lora_dropout=1.0), "lora_dropout"), (dict(lora_target_modules=[]), "lora_target_modules"),
                     (dict(lora_target_modules=[""]), "lora_target_modules")):
        with pytest.raises(ConfigError, match=f"FlamingoConfig.{key} must"):
            FlamingoConfig(**bad)
    assert FlamingoConfig().lora_rank == 0  # off by default


def test_run_config_switches_lora_on_the_optimizer_groups_it_and_train_mode_runs_its_dropout():
    from frozenvl.tasks import build_task
    from frozenvl.train.config import load_config
    from frozenvl.train.optim import build_optimizer

    overrides = ["data.datasets=[{name: a, shards: x.tar}]", "model.lm=tiny:gpt2", "model.vision=tiny",
                 "model.lm_lr=1e-6", "optim.lr=1e-3", "optim.weight_decay=0.1", "model.flamingo.lora_rank=4",
                 "model.flamingo.lora_dropout=0.1", "model.flamingo.lora_target_modules=[c_attn, c_proj]",
                 *(f"model.flamingo.{k}={v}" for k, v in TINY.items())]
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match="model.flamingo.lora_rank must"):
        load_config(None, [*overrides, "model.flamingo.lora_rank=-2"])
    task = build_task(cfg.model)
    model = task.model
    lora = adapters(model)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == {"c_attn", "c_proj"}
    opt = build_optimizer(model.named_parameters(), cfg.optim, cfg.model)
    group = {g["name"]: g for g in opt.param_groups}["lora/decay"]
    assert set(group["names"]) == set(lora)
    assert group["lr"] == 1e-3 and group["weight_decay"] == 0.1  # the base lr (not lm_lr), decayed
    in_opt = {n for g in opt.param_groups for n in g["names"]}
    assert in_opt == trainable(model) and not any("base_layer" in n for n in in_opt)
    task.set_train_mode()
    assert not model.lm.training and lora_modules(model.lm)
    assert all(m.training for m in lora_modules(model.lm))  # the adapters' dropout is on
    assert not any(m.training for n, m in model.lm.named_modules() if n.endswith("base_layer"))
    samples = [{"text": TEXT, "images": images(2), "key": "k", "kind": "interleaved"}]
    before = {n: p.detach().clone() for n, p in lora.items()}
    task.loss(model, task.collate(samples))["loss"].backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in lora.items() if ".lora_B." in n)


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model, proc = tiny_flamingo("llama", open_gates=True, **LORA)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in adapters(model).values():
                p.add_(torch.randn_like(p) * 0.05)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        batch = proc([TEXT], [images(2)])
        model(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in adapters(model).items()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6)


def test_a_short_engine_run_trains_the_adapters_and_checkpoints_them_with_their_optimizer_state(tmp_path):
    from frozenvl.data import WorldConfig, generate_world
    from frozenvl.train.config import load_config
    from frozenvl.train.loop import train

    generate_world(tmp_path / "world", WorldConfig(n_pairs=8, n_interleaved=0, n_video=0, image_size=32,
                                                   shard_size=8, splits=("pairs",)), progress=False, log=None)
    shards = tmp_path / "world" / "train" / "pairs-*.tar"
    overrides = [f"data.datasets=[{{name: pairs, shards: '{shards}', batch_size: 2}}]", "model.lm=tiny:gpt2",
                 "model.vision=tiny", "model.flamingo.lora_rank=4", "model.flamingo.max_length=96",
                 *(f"model.flamingo.{k}={v}" for k, v in TINY.items()), "optim.lr=3e-3",
                 f"train.run_dir={tmp_path / 'run'}", "train.steps=2", "train.checkpoint_every=2",
                 "train.log_every=1", "train.progress=false", "train.threads=1"]
    checkpoint = train(load_config(None, overrides)).checkpoint
    weights = load_file(str(checkpoint / WEIGHTS_NAME))
    lora_b = [k for k in weights if ".lora_B." in k]
    assert lora_b and all(torch.count_nonzero(weights[k]) > 0 for k in lora_b)  # moved from zero
    optimizer_state = load_file(str(checkpoint / "optimizer.safetensors"))
    assert {k.rpartition("::")[0] for k in optimizer_state} >= set(lora_b)
    loaded = Flamingo.from_pretrained(checkpoint, lm=tiny_lm("gpt2"), tokenizer=tiny_tokenizer(), vision=tiny_vision())
    assert set(adapters(loaded)) == {k for k in weights if ".lora_" in k}
    for name, p in adapters(loaded).items():
        assert torch.equal(p, weights[name])
