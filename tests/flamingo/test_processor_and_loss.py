import io

import numpy as np
import pytest
import torch
from PIL import Image

from frozenvl.flamingo.loss import IGNORE_INDEX, flamingo_labels
from frozenvl.testing import images, tiny_flamingo


@pytest.fixture(scope="module")
def processor():
    return tiny_flamingo(max_images=3)[1]


def test_markers_and_images_must_agree(processor):
    with pytest.raises(ValueError, match=r"sample 1: the text has 2 <image> markers but 1 images"):
        processor(["<image>ok", "<image>a<image>b"], [images(1), images(1)])


def test_too_many_images(processor):
    with pytest.raises(ValueError, match=r"sample 0: 4 images, more than the maximum of 3"):
        processor(["<image>" * 4], [images(4)])


def test_undecodable_image_names_the_sample(processor):
    with pytest.raises(ValueError, match=r"sample 0 image 1: image cannot be decoded"):
        processor(["<image>a<image>b"], [[images(1)[0], b"\x89PNG not really a png"]])


def test_too_long_and_bad_padding_side(processor):
    with pytest.raises(ValueError, match="more than max_length=5"):
        processor(["a long sentence here"], max_length=5)
    with pytest.raises(ValueError, match="padding_side"):
        processor(["a"], padding_side="middle")


def test_images_from_bytes_arrays_and_videos(processor):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(buf, format="PNG")
    batch = processor(["<image>x<image>y"], [[buf.getvalue(), np.zeros((20, 30, 3), dtype=np.uint8)]])
    assert batch["pixel_values"].shape == (1, 2, 1, 3, 32, 32)
    video = processor(["<image>moving"], [[[np.zeros((32, 32, 3), dtype=np.uint8)] * 3]])
    assert video["pixel_values"].shape == (1, 1, 3, 3, 32, 32)  # (B, T_img, F, C, H, W)
    assert "frame_mask" not in video and "frame_mask" not in batch  # one frame count: no mask
    mixed = processor(["<image>a", "<image>b"], [[[images(1)[0]] * 2], images(1)])  # a video beside an image
    assert mixed["pixel_values"].shape == (2, 1, 2, 3, 32, 32)
    assert mixed["frame_mask"].tolist() == [[[True, True]], [[True, False]]]


def test_left_and_right_padding(processor):
    right = processor(["<image>a", "<image>abcdef"], [images(1), images(1)])
    left = processor(["<image>a", "<image>abcdef"], [images(1), images(1)], padding_side="left")
    assert right["attention_mask"][0].tolist()[-1] == 0 and left["attention_mask"][0].tolist()[0] == 0
    assert right["attention_mask"].sum() == left["attention_mask"].sum()


def test_loss_masking_rules():
    IMG, EOC, PAD = 90, 91, 0
    # text before the first image | <image> cap <eoc> | gap text | <image> cap <eoc> | padding
    ids = torch.tensor([[5, 6, IMG, 7, 8, EOC, 9, 10, IMG, 11, EOC, PAD, PAD]])
    mask = torch.tensor([[1] * 11 + [0, 0]])
    out = flamingo_labels(ids.clone(), ids, mask, IMG, EOC)[0].tolist()
    I = IGNORE_INDEX  # noqa: E741
    assert out == [I, I, I, 7, 8, EOC, I, I, I, 11, EOC, I, I]


def test_loss_ignores_masked_targets():
    model, processor = tiny_flamingo()
    batch = processor(["<image>a b<|endofchunk|>"], [images(1)])
    out = model(**batch, labels=batch["input_ids"])
    # Recompute by hand over the kept targets only.
    labels = flamingo_labels(batch["input_ids"], batch["input_ids"], batch["attention_mask"], model.image_token_id,
                             model.end_of_chunk_token_id)
    logp = out.logits[0, :-1].log_softmax(-1)
    target = labels[0, 1:]
    keep = target != IGNORE_INDEX
    expected = -logp[keep].gather(-1, target[keep].unsqueeze(-1)).mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert keep.sum() == 4  # "a", " ", "b", <|endofchunk|>


def test_misspelt_arguments_are_not_ignored():
    model, processor = tiny_flamingo()
    batch = processor(["<image>a"], [images(1)], padding_side="left")
    with pytest.raises(TypeError, match="unexpected arguments: pixel_value"):
        model(batch["input_ids"], pixel_value=batch["pixel_values"])
    with pytest.raises(TypeError, match="unexpected arguments: max_new_token"):
        model.generate(**batch, max_new_token=3)
    model(**batch, keys=["k"], kinds=["pair"])  # a collated batch's metadata is accepted
