import torch

from frozenvl.flame.model import FlameModel, flame_config, sample_facets


def test_model_forward_shapes_norm_and_training_step(tmp_path):
    torch.manual_seed(0)
    model = FlameModel(flame_config("tiny", text_dim=24))
    images = torch.randn(4, 3, 32, 32)
    text = torch.randn(4, 11, 24)
    out = model(images, text)
    assert out["image_features"].shape == (4, 24) and out["text_features"].shape == (4, 6, 24)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(4), atol=1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = out["loss"].item()
    for _ in range(8):
        opt.zero_grad()
        loss = model(images, text, generator=torch.Generator().manual_seed(0))["loss"]
        loss.backward()
        opt.step()
    assert loss.item() < first
    model.eval()
    assert model(images, text)["text_features"].shape == (4, 11, 24)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = FlameModel.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    assert torch.equal(loaded.encode_image(images), model.encode_image(images))


def test_image_embedding_is_mean_over_patch_tokens():
    model = FlameModel(flame_config("tiny", text_dim=16)).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = model.head(model.visual(images))  # (B, N, D)
    assert tokens.shape == (2, 16, 16)
    expected = torch.nn.functional.normalize(tokens.mean(1), dim=-1)
    assert torch.allclose(model.encode_image(images), expected, atol=1e-6)


def test_sample_facets_draws_distinct_facets_per_row():
    text = torch.arange(3 * 11, dtype=torch.float32).reshape(3, 11, 1).expand(3, 11, 4)
    picked = sample_facets(text, 6, torch.Generator().manual_seed(0))
    assert picked.shape == (3, 6, 4)
    for row in range(3):
        values = picked[row, :, 0].tolist()
        assert len(set(values)) == 6 and all(row * 11 <= v < row * 11 + 11 for v in values)
    assert not torch.equal(picked[0, :, 0] - 0, picked[1, :, 0] - 11)  # rows draw independently
