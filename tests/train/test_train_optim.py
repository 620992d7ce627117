"""AdamW groups (no decay on norms, biases, gates, latents, embedding rows; frozen parameters left out), schedule,
gradient checkpointing equivalence."""

from __future__ import annotations

import math

import torch

from frozenvl.testing import images, tiny_flamingo
from frozenvl.train.config import ModelConfig, OptimConfig
from frozenvl.train.optim import build_optimizer, lr_factor


def test_groups_only_trainable_and_no_decay_where_it_does_not_belong():
    model, _ = tiny_flamingo()
    opt = build_optimizer(model.named_parameters(), OptimConfig(weight_decay=0.1))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt == trainable  # frozen parameters have no optimizer state
    decay_of = {n: g["weight_decay"] for g in opt.param_groups for n in g["names"]}
    assert any(v > 0 for v in decay_of.values())
    for name, wd in decay_of.items():
        if any(k in name for k in ("norm", "gate", "latents", "new_weight", "new_bias")) or name.endswith("bias"):
            assert wd == 0.0, name
    assert any("to_q" in n or "to_kv" in n or "ff" in n for n, wd in decay_of.items() if wd > 0)


def test_finetuning_groups_have_their_own_learning_rates():
    model, _ = tiny_flamingo()
    for p in model.vision.parameters():
        p.requires_grad_(True)
    opt = build_optimizer(model.named_parameters(), OptimConfig(lr=1e-4), ModelConfig(vision_lr=1e-6))
    lrs = {g["name"].split("/")[0]: g["lr"] for g in opt.param_groups}
    assert lrs["vision"] == 1e-6 and lrs["adapter"] == 1e-4


def test_gate_learning_rate_applies_to_the_gates_only():
    model, _ = tiny_flamingo()
    gates = {n for n, _ in model.named_parameters() if n.endswith(("attn_gate.alpha", "ff_gate.alpha"))}
    assert gates
    opt = build_optimizer(model.named_parameters(), OptimConfig(lr=1e-4, gate_lr=1e-2))
    lr_of = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert {n for n, lr in lr_of.items() if lr == 1e-2} == gates
    assert all(lr == 1e-4 for n, lr in lr_of.items() if n not in gates)
    # One step moves a gate by about gate_lr (Adam's first step is lr * sign(grad)), the rest by about lr.
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.tensor([[model.image_token_id, 5, 6, 7, 8]])
    model(ids, pixel_values=torch.stack(images(1)).unsqueeze(0), labels=ids).loss.backward()
    opt.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters() if p.requires_grad}
    assert all(abs(moved[n] - 1e-2) < 1e-3 for n in gates), {n: moved[n] for n in gates}
    assert max(v for n, v in moved.items() if n not in gates) < 2e-4


def test_schedule_warmup_then_cosine():
    cfg = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, cfg, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg, 14) == 1.0
    assert math.isclose(lr_factor(9, cfg, 14), 0.55)
    assert math.isclose(lr_factor(14, cfg, 14), 0.1)
    assert lr_factor(100, OptimConfig(warmup_steps=2), 10) == 1.0


def test_gradient_checkpointing_gives_the_same_gradients():
    from frozenvl.flamingo.activation_checkpointing import enable_gradient_checkpointing

    def grads(checkpointing: bool):
        model, proc = tiny_flamingo(open_gates=True)
        model.train()
        if checkpointing:
            assert enable_gradient_checkpointing(model) > 0
        batch = proc(["<image>a red circle<|endofchunk|>", "text <image>two<|endofchunk|>"], [images(1), images(1, 1)])
        out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], labels=batch["input_ids"])
        out.loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    assert any(g.abs().sum() > 0 for n, g in plain.items() if ".xattn." in n)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
