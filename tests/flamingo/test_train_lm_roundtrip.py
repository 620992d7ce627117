"""A Flamingo trained with its LM unfrozen (the run config's ``model.train_lm``) saves the LM's weights with the
trainable tensors, and ``from_pretrained`` (and ``model.init_from``) loads them over the LM's source weights:
through ``save_pretrained`` and through the training engine's checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from frozenvl.constants import WEIGHTS_NAME
from frozenvl.flamingo import Flamingo, FlamingoConfig
from frozenvl.tasks.config import ModelConfig
from frozenvl.tasks.flamingo import FlamingoTask
from frozenvl.testing import TINY_FLAMINGO, images, tiny_lm, tiny_tokenizer, tiny_vision

TEXT = "a dog<image>a cat sat<|endofchunk|> then<image>on the mat<|endofchunk|>"


def lm_params(model: Flamingo) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.startswith("lm.")}


def load(folder) -> Flamingo:
    return Flamingo.from_pretrained(folder, lm=tiny_lm(), tokenizer=tiny_tokenizer(), vision=tiny_vision()).eval()


def test_save_pretrained_from_pretrained_round_trip_with_train_lm(tmp_path):
    task = FlamingoTask(ModelConfig(lm="tiny:llama", vision="tiny", train_lm=True,
                                    flamingo=FlamingoConfig(**TINY_FLAMINGO)))
    model = task.model.eval()
    assert all(p.requires_grad for p in lm_params(model).values())
    with torch.no_grad():  # as a fine-tuning step would: the LM's own weights and the new ones move
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    batch = task.processor([TEXT], [images(2)])
    expected = model(**batch).logits
    model.save_pretrained(tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS_NAME))
    assert set(lm_params(model)) <= set(stored)  # the trained LM is part of the saved model

    loaded = load(tmp_path / "ckpt")
    assert torch.equal(loaded(**batch).logits, expected)
    lm_own = {n for n, p in lm_params(loaded).items() if not p.requires_grad}  # the LM's own weights
    assert lm_own and all(torch.equal(p, stored[n]) for n, p in lm_params(loaded).items())
    # The LM's source alone gives other logits: the saved LM weights are what makes them equal.
    frozen = Flamingo.from_config(loaded.config, lm=tiny_lm(), tokenizer=tiny_tokenizer(), vision=tiny_vision())
    frozen.load_saved_state_dict({n: t for n, t in stored.items() if n not in lm_own})
    assert not torch.allclose(frozen.eval()(**batch).logits, expected)

    # A second stage starts from it (model.init_from), its LM frozen or not.
    for train_lm in (False, True):
        stage2 = FlamingoTask(ModelConfig(lm="tiny:llama", vision="tiny", train_lm=train_lm,
                                          init_from=str(tmp_path / "ckpt"),
                                          flamingo=FlamingoConfig(**TINY_FLAMINGO)))
        assert torch.equal(stage2.model.eval()(**batch).logits, expected)

    # A name that is no parameter of the model is still refused.
    with pytest.raises(KeyError, match=r"unexpected \['lm\.extra'\]"):
        loaded.load_saved_state_dict({**stored, "lm.extra": torch.zeros(1)})


def test_an_engine_checkpoint_of_a_train_lm_run_loads_with_its_lm(tmp_path):
    from frozenvl.data import WorldConfig, generate_world
    from frozenvl.train.config import load_config
    from frozenvl.train.loop import train

    generate_world(tmp_path / "world", WorldConfig(n_pairs=8, n_interleaved=0, n_video=0, image_size=32,
                                                   shard_size=8, splits=("pairs",)), progress=False, log=None)
    shards = tmp_path / "world" / "train" / "pairs-*.tar"
    overrides = [f"data.datasets=[{{name: pairs, shards: '{shards}', batch_size: 2}}]", "model.lm=tiny:llama",
                 "model.vision=tiny", "model.train_lm=true", "model.flamingo.max_length=96",
                 *(f"model.flamingo.{k}={v}" for k, v in TINY_FLAMINGO.items()), "optim.lr=3e-3",
                 f"train.run_dir={tmp_path / 'run'}", "train.steps=2", "train.checkpoint_every=2",
                 "train.log_every=1", "train.progress=false", "train.threads=1"]
    checkpoint = train(load_config(None, overrides)).checkpoint
    weights = load_file(str(checkpoint / WEIGHTS_NAME))
    source = dict(tiny_lm().named_parameters())
    trained = [n for n in weights if n.startswith("lm.")]
    assert trained and any(not torch.equal(weights[n], source[n.removeprefix("lm.")]) for n in trained
                           if n.removeprefix("lm.") in source)  # the LM trained

    loaded = load(checkpoint)
    own = dict(loaded.named_parameters())
    assert set(weights) <= set(own)
    for name, tensor in weights.items():
        assert torch.equal(own[name], tensor), name
