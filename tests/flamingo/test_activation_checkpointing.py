"""Activation checkpointing recomputes the decoder layers and cross-attention blocks in the backward pass, without
replacing any method or renaming any parameter. (Same gradients with and without: tests/train/test_train_optim.py.)"""

import torch

from frozenvl.testing import images, tiny_flamingo


def test_checkpointed_layers_recompute_in_backward_and_keep_their_names():
    model, proc = tiny_flamingo(open_gates=True)
    model.train()
    names = list(model.state_dict())
    trainable = list(model.trainable_state_dict())
    model.gradient_checkpointing_enable()
    model.gradient_checkpointing_enable()  # a second call changes nothing
    assert list(model.state_dict()) == names and list(model.trainable_state_dict()) == trainable
    assert all("forward" not in vars(m) for m in model.modules())  # no method patched on an instance
    fused, plain = model.fused_indices[0], model.fused_indices[0] + 1
    layers = model.decoder_layers
    calls = {"xattn": 0, "fused layer": 0, "plain layer": 0}
    watched = {"xattn": layers[fused].xattn.attn, "fused layer": layers[fused].layer.mlp,
               "plain layer": layers[plain].mlp}
    for key, module in watched.items():
        module.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    batch = proc(["<image>a red circle<|endofchunk|>"], [images(1)])
    out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], labels=batch["input_ids"])
    assert calls == {"xattn": 1, "fused layer": 1, "plain layer": 1}
    out.loss.backward()
    assert calls == {"xattn": 2, "fused layer": 2, "plain layer": 2}  # recomputed once in the backward pass
    with torch.no_grad():  # no backward to prepare for: nothing is recomputed
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    assert calls == {"xattn": 3, "fused layer": 3, "plain layer": 3}
