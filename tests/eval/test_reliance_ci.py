"""image_reliance over several batches (hundreds of held-out pairs) with a 95 % interval of its gain. Oracle: the
model's own loss (Flamingo.forward with labels) for each batch."""

import pytest
import torch

from frozenvl.eval.reliance import image_reliance
from frozenvl.testing import images, tiny_flamingo


def _batch(processor, n, seed):
    texts = [f"<image>item {i + seed} is {'here' if i % 2 else 'over there'}<|endofchunk|>" for i in range(n)]
    return processor(texts, [[im] for im in images(n, seed=seed)])


def test_losses_are_token_weighted_over_batches_and_match_the_model():
    model, processor = tiny_flamingo(open_gates=True)
    a, b = _batch(processor, 3, 0), _batch(processor, 5, 10)
    with torch.no_grad():
        loss_a = float(model(a["input_ids"], attention_mask=a["attention_mask"], pixel_values=a["pixel_values"],
                             labels=a["input_ids"]).loss)
        rolled = a["pixel_values"].roll(1, dims=0)
        shuffled_a = float(model(a["input_ids"], attention_mask=a["attention_mask"], pixel_values=rolled,
                                 labels=a["input_ids"]).loss)
    ra = image_reliance(model, a)
    assert ra.right == pytest.approx(loss_a, abs=1e-5) and ra.shuffled == pytest.approx(shuffled_a, abs=1e-5)
    rb, both = image_reliance(model, b), image_reliance(model, [a, b])
    assert both.samples == 8

    def targets(batch):  # kept targets per batch: the loss mask's count
        from frozenvl.flamingo.loss import IGNORE_INDEX, flamingo_labels

        labels = flamingo_labels(batch["input_ids"], batch["input_ids"], batch["attention_mask"],
                                 model.image_token_id, model.end_of_chunk_token_id)
        return int((labels[:, 1:] != IGNORE_INDEX).sum())

    ta, tb = targets(a), targets(b)
    assert both.right == pytest.approx((ra.right * ta + rb.right * tb) / (ta + tb), abs=1e-6)


def test_gain_has_an_interval_and_the_json_keeps_its_keys():
    closed, processor = tiny_flamingo()
    batches = [_batch(processor, 4, s) for s in (0, 4)]
    r = image_reliance(closed, batches)
    assert r.gain == 0.0 and r.gain_ci95 == 0.0  # the images cannot matter: no spread either
    opened, _ = tiny_flamingo(open_gates=True)
    r = image_reliance(opened, batches)
    assert r.gain != 0.0 and r.gain_ci95 is not None and r.gain_ci95 > 0
    d = r.as_dict()
    assert {"right", "shuffled", "zero", "samples", "gain", "gain_ci95"} <= set(d) and d["samples"] == 8


def test_a_feature_cache_gives_the_same_figures_without_the_encoder(tmp_path):
    from frozenvl.flamingo.feature_cache import FeatureCache

    model, processor = tiny_flamingo(open_gates=True)
    batches = [_batch(processor, 4, s) for s in (0, 4)]
    plain = image_reliance(model, batches)
    cache = FeatureCache(tmp_path, model.vision)
    first = image_reliance(model, batches, feature_cache=cache)
    calls = [0]
    model.vision.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    second = image_reliance(model, batches, feature_cache=cache)
    assert calls[0] == 0 and second == first  # all read back: the same numbers, no encoder call
    for name in ("right", "shuffled", "zero"):  # fp16-rounded features: the same losses up to rounding
        assert getattr(first, name) == pytest.approx(getattr(plain, name), rel=1e-4), name
    assert first.gain == pytest.approx(plain.gain, abs=1e-4)
