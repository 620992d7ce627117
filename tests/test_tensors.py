"""The one padding helper and the one media stacker (processor, scorer, FLAME text encoder, tokenizers)."""

import pytest
import torch

from frozenvl.tensors import pad_sequences, stack_media


def test_pad_sequences_right_and_left():
    rows = [[5, 6, 7], [8], []]
    ids, mask = pad_sequences(rows, pad_value=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]] and mask.dtype == torch.long
    ids, mask = pad_sequences(rows, pad_value=9, side="left", length=4)
    assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8], [9, 9, 9, 9]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    ids, _ = pad_sequences([torch.tensor([3, 4]), torch.tensor([2])], pad_value=1)  # tensor rows too
    assert ids.tolist() == [[3, 4], [2, 1]]
    assert pad_sequences([], pad_value=0)[0].shape == (0, 0)
    with pytest.raises(ValueError, match="padding_side"):
        pad_sequences(rows, 0, side="middle")
    with pytest.raises(ValueError, match="length=2"):
        pad_sequences(rows, 0, length=2)


def test_stack_media_pads_rows_with_zero_media():
    image, video = torch.ones(1, 3, 4, 4), torch.ones(2, 3, 4, 4)
    pixels, frame_mask = stack_media([[image, 2 * image], [], [3 * image]])
    assert pixels.shape == (3, 2, 1, 3, 4, 4)  # (B, T_img, F, C, H, W)
    assert pixels[:, :, 0, 0, 0, 0].tolist() == [[1, 2], [0, 0], [3, 0]]
    assert frame_mask is None  # every medium has one frame: nothing to mask
    assert stack_media([[], []]) == (None, None)
    # an image beside a video: padded to the video's frames, the mask says which are real
    pixels, frame_mask = stack_media([[image], [5 * video, 7 * image]])
    assert pixels.shape == (2, 2, 2, 3, 4, 4)
    assert frame_mask.tolist() == [[[True, False], [False, False]], [[True, True], [True, False]]]
    assert pixels[:, :, :, 0, 0, 0].tolist() == [[[1, 0], [0, 0]], [[5, 5], [7, 0]]]
    with pytest.raises(ValueError, match="one shape"):
        stack_media([[image], [torch.ones(1, 3, 8, 8)]])


def test_as_frames_gives_images_one_frame_and_refuses_other_shapes():
    import pytest
    import torch

    from frozenvl.tensors import as_frames

    assert as_frames(torch.zeros(2, 3, 3, 8, 8)).shape == (2, 3, 1, 3, 8, 8)
    assert as_frames(torch.zeros(2, 3, 4, 3, 8, 8)).shape == (2, 3, 4, 3, 8, 8)
    with pytest.raises(ValueError, match="got shape \\(3, 8, 8\\)"):
        as_frames(torch.zeros(3, 8, 8))
