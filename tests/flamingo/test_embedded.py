"""Slow tests on the embedded real models (SmolLM2-135M, EfficientNet-Lite0): offline, from installed packages."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_smollm2_loads_offline_and_knows_paris():
    from frozenvl.backbones.language import load_causal_lm

    model, tokenizer = load_causal_lm("embedded:smollm2-135m")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_efficientnet_lite0_sees_a_cat():
    import skimage.data

    from frozenvl.backbones.vision import build_vision

    encoder = build_vision("embedded:efficientnet-lite0")
    pixels = encoder.transform(skimage.data.chelsea()).unsqueeze(0)
    with torch.no_grad():
        grid = encoder(pixels)  # (1, 49, 1280)
        logits = encoder.module.forward_head(encoder.module.forward_features(pixels))
    assert grid.shape == (1, 49, 1280)
    top5 = logits.topk(5).indices[0].tolist()
    assert top5[0] in range(281, 286), top5  # ImageNet 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert all(not p.requires_grad for p in encoder.parameters())


def test_efficientnet_lite0_runs_channels_last_with_the_same_features():
    import skimage.data

    from frozenvl.backbones.vision import build_vision

    encoder = build_vision("embedded:efficientnet-lite0")
    conv = encoder.module.conv_stem.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    pixels = torch.stack([encoder.transform(skimage.data.chelsea()), encoder.transform(skimage.data.astronaut())])
    with torch.no_grad():
        grid = encoder(pixels)  # (2, 49, 1280)
        encoder.module.to(memory_format=torch.contiguous_format)
        plain = encoder.module.forward_features(pixels).flatten(2).transpose(1, 2)
    assert torch.allclose(grid, plain, rtol=1e-4, atol=1e-4)


def test_embedded_flamingo_equals_smollm2_at_init():
    import skimage.data

    import frozenvl
    from frozenvl.backbones.language import load_causal_lm

    model, processor = frozenvl.flamingo.build(lm="embedded:smollm2-135m", vision="embedded:efficientnet-lite0",
                                               cross_attn_every=4, resampler_dim=128, resampler_depth=1,
                                               num_latents=8)
    reference, _ = load_causal_lm("embedded:smollm2-135m")
    batch = processor(["<image>Output: a cat on a blanket.<|endofchunk|><image>Output:"],
                      [[skimage.data.chelsea(), np.asarray(skimage.data.coffee())]])
    with torch.no_grad():
        ours = model(**batch).logits
        embeds = model.lm.get_input_embeddings()(batch["input_ids"])
        ref = reference(inputs_embeds=embeds).logits
    V = ref.shape[-1]
    assert (ours[..., :V] - ref).abs().max().item() <= 1e-4
    assert len(model.fused_indices) == 8  # 30 layers, every 4th from the first
