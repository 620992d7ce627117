"""Images and videos of different lengths in one batch: the processor pads frames and returns ``frame_mask``, and
each medium then gives exactly what it gives in a batch of its own (padded frames are neither encoded nor read),
for every resampler, in forward and in generation (cached and recomputed)."""

import pytest
import torch

from frozenvl.testing import images, tiny_flamingo


def _video(seed: int, frames: int) -> list[torch.Tensor]:
    return images(frames, seed=seed)


@pytest.mark.parametrize("resampler", ["perceiver", "mlp", "transformer"])
def test_a_medium_gives_the_same_visual_tokens_beside_longer_videos(resampler):
    model, processor = tiny_flamingo(resampler=resampler)
    image, short, long = images(1, seed=1)[0], _video(2, 2), _video(3, 3)
    mixed = processor(["<image>a<image>b", "<image>c"], [[image, short], [long]])
    assert mixed["pixel_values"].shape[:3] == (2, 2, 3) and mixed["frame_mask"].sum().item() == 1 + 2 + 3
    with torch.no_grad():
        together = model.encode_media(mixed["pixel_values"], mixed["frame_mask"])  # (2, 2, n, D)
        alone = [model.encode_media(processor(["<image>"], [[m]])["pixel_values"])[0, 0] for m in (image, short, long)]
        # without the mask the padded frames would be read: the test can tell the difference
        unmasked = model.encode_media(mixed["pixel_values"])
    for got, want in zip((together[0, 0], together[0, 1], together[1, 0]), alone):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[0, 0], alone[0], atol=1e-3)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_mixed_batch_generates_what_each_row_generates_alone(use_cache):
    model, processor = tiny_flamingo(open_gates=True)
    prompts = ["<image>a photo of", "<image>a clip of"]
    media = [[images(1, seed=4)[0]], [_video(5, 3)]]
    batch = processor(prompts, media, padding_side="left")
    assert "frame_mask" in batch
    greedy = model.generate(**batch, max_new_tokens=4, use_cache=use_cache, output_scores=True,
                            return_dict_in_generate=True)
    beams = model.generate(**batch, max_new_tokens=4, num_beams=2, use_cache=use_cache)
    logits = model(**batch).logits
    for row, (prompt, medium) in enumerate(zip(prompts, media)):
        alone = processor([prompt], [medium], padding_side="left")
        want = model.generate(**alone, max_new_tokens=4, use_cache=use_cache, output_scores=True,
                              return_dict_in_generate=True)
        for got_step, want_step in zip(greedy.scores, want.scores):  # every step's next-token scores
            torch.testing.assert_close(got_step[row], want_step[0], atol=1e-4, rtol=1e-4)
        want_beams = model.generate(**alone, max_new_tokens=4, num_beams=2, use_cache=use_cache)[0]
        assert beams[row, -want_beams.shape[0]:].tolist() == want_beams.tolist()
        real = batch["attention_mask"][row].bool()
        torch.testing.assert_close(logits[row, real], model(**alone).logits[0], atol=1e-4, rtol=1e-4)


def test_the_training_task_passes_the_frame_mask():
    """A training batch that mixes an image and a video gives each sample's loss as if it were alone."""
    from frozenvl.tasks import FlamingoCollator
    from frozenvl.tasks.flamingo import FlamingoTask

    model, processor = tiny_flamingo(open_gates=True)
    task = FlamingoTask.__new__(FlamingoTask)  # the loss needs only the model
    task.model = model
    samples = [{"key": "a", "kind": "pair", "text": "<image>a red square<|endofchunk|>", "images": [images(1)[0]]},
               {"key": "b", "kind": "video", "text": "<image>a moving circle<|endofchunk|>", "images": [_video(6, 3)]}]
    batch = FlamingoCollator(processor)(samples)
    assert "frame_mask" in batch
    with torch.no_grad():
        mixed = task.loss(model, batch)["loss"]
        alone = [task.loss(model, FlamingoCollator(processor)([s]))["loss"] for s in samples]
        tokens = [FlamingoCollator(processor)([s])["attention_mask"].sum() - 1 for s in samples]
    # the batch loss is the token-weighted mean of the two rows' losses (both masks drop the <image> target)
    assert torch.isclose(mixed, sum(a * n for a, n in zip(alone, tokens)) / sum(tokens), atol=1e-4)
