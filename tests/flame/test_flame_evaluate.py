import json

import numpy as np
import pytest
import torch
from PIL import Image

from frozenvl.flame import evaluate as ev
from frozenvl.flame.inference import aggregate_facets, similarity, zero_shot_classifier
from frozenvl.flame.text_encoder import FacetTextEncoder
from frozenvl.testing import tiny_lm, tiny_tokenizer


def test_retrieval_metrics_on_hand_made_matrix():
    owner = [0, 0, 1, 2, 2]  # image of each caption
    sim = torch.tensor([
        [0.1, 0.9, 0.8, 0.2, 0.0],  # image 0: best text is its own caption 1
        [0.5, 0.1, 0.3, 0.4, 0.2],  # image 1: its caption 2 is only third
        [0.0, 0.1, 0.2, 0.3, 0.9],  # image 2: its caption 4 first
    ])
    m = ev.retrieval_metrics(sim, owner, ks=(1, 2, 3))
    assert m["image_to_text_R@1"] == pytest.approx(200 / 3)
    assert m["image_to_text_R@2"] == pytest.approx(200 / 3)
    assert m["image_to_text_R@3"] == pytest.approx(100)
    assert m["text_to_image_R@1"] == pytest.approx(40)  # captions 1 and 4
    assert m["text_to_image_R@2"] == pytest.approx(100)
    # Any of an image's captions counts: image 0 hits at 1 through caption 1 even though caption 0 ranks low.
    only_first = ev.retrieval_metrics(sim[:, [0, 2, 4]], [0, 1, 2], ks=(1,))
    assert only_first["image_to_text_R@1"] == pytest.approx(100 / 3)


def test_classification_metrics_and_facet_aggregation():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])
    m = ev.classification_metrics(logits, [0, 1, 1], ks=(1, 2))
    assert m == {"top1": pytest.approx(200 / 3), "top2": pytest.approx(100)}
    facets = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])  # (1, K=2, D=2)
    img = torch.tensor([[1.0, 0.0]])
    mean_emb = aggregate_facets(facets, "mean_embedding")
    assert torch.allclose(mean_emb, torch.tensor([[2 ** -0.5, 2 ** -0.5]]))
    assert similarity(img, mean_emb).item() == pytest.approx(2 ** -0.5)
    assert similarity(img, aggregate_facets(facets, "mean_similarity")).item() == pytest.approx(0.5)


def test_zero_shot_classifier_wraps_templates_in_the_raw_prompt():
    enc = FacetTextEncoder(tiny_lm("llama"), tiny_tokenizer(), "raw")
    cls = zero_shot_classifier(enc, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    assert cls.shape == (2, 32)
    direct = torch.nn.functional.normalize(enc.encode(["a photo of a cat.", "a cat."]), dim=-1).mean(0)
    assert torch.allclose(cls[0], torch.nn.functional.normalize(direct.mean(0), dim=-1), atol=1e-5)


def _image(path, colour):
    Image.fromarray(np.full((40, 48, 3), colour, dtype=np.uint8)).save(path)


def test_loaders(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("a.jpg", "b.jpg"):
        _image(tmp_path / "imgs" / name, 100)
    karpathy = {"images": [
        {"filepath": "imgs", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "x"}, {"raw": "y"}]},
        {"filepath": "imgs", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "z"}]},
        {"filepath": "imgs", "filename": "b.jpg", "split": "test", "sentences": [{"raw": "w"}]},
    ]}
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    ds = ev.load_karpathy(tmp_path / "k.json", tmp_path)
    assert ds.captions == ["x", "y", "w"] and ds.text_to_image == [0, 0, 1]
    assert ds.images == [str(tmp_path / "imgs" / "a.jpg"), str(tmp_path / "imgs" / "b.jpg")]
    (tmp_path / "l.json").write_text(json.dumps([{"image": "imgs/a.jpg", "caption": ["p", "q"]}]))
    assert ev.load_karpathy(tmp_path / "l.json", tmp_path).text_to_image == [0, 0]
    s4v = [{"id": i, "image": "imgs/a.jpg", "conversations": [{"from": "human", "value": "<image>describe"},
                                                              {"from": "gpt", "value": f"long {i} "}]}
           for i in range(5)]
    (tmp_path / "s.json").write_text(json.dumps(s4v))
    ds = ev.load_sharegpt4v(tmp_path / "s.json", tmp_path, limit=3)
    assert ds.captions == ["long 0", "long 1", "long 2"] and ds.text_to_image == [0, 1, 2]
    urban = tmp_path / "urban"
    (urban / "image").mkdir(parents=True)
    (urban / "caption").mkdir()
    _image(urban / "image" / "1.jpg", 10)
    (urban / "caption" / "1.txt").write_text("a long caption\n")
    assert ev.load_urban1k(urban).captions == ["a long caption"]
    (urban / "image" / "2.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="2.txt"):
        ev.load_urban1k(urban)
    folder = tmp_path / "cls"
    for c in ("red_cube", "blue"):
        (folder / c).mkdir(parents=True)
        _image(folder / c / "0.png", 50)
    cls = ev.load_image_folder(folder)
    assert cls.classnames == ["blue", "red cube"] and cls.labels == [0, 1]
