"""Does a Flamingo look at its images? Held-out loss with the right images vs the same text with wrong ones.

A model that has learned only the text of its training captions (an adapter of the frozen LM, with the
cross-attention gates nearly closed) reaches a low loss too; few-shot captioning then copies a demonstration's
caption. :func:`image_reliance` measures the difference: the masked next-token loss of a batch of collated
samples with their own images, with the images rolled by one sample (every text gets another sample's image),
and with all-zero pixels. A model that uses its images has ``shuffled - right > 0``. A batch may carry
precomputed visual tokens (``media``, as :meth:`Flamingo.forward` takes them) instead of pixels; ``zero`` is then
the loss with all-zero visual tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class ImageReliance:
    right: float  # loss (nats/token) with each sample's own images
    shuffled: float  # images rolled by one sample across the batch
    zero: float  # all-zero pixels (all-zero visual tokens for a ``media`` batch)
    samples: int

    @property
    def gain(self) -> float:
        """Nats per token the right images save over wrong ones (0: the images are ignored)."""
        return self.shuffled - self.right

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "gain": self.gain}


@torch.no_grad()
def image_reliance(model: Any, batch: dict[str, Any]) -> ImageReliance:
    """``batch``: a collated Flamingo batch (``input_ids``, ``attention_mask``, and ``pixel_values`` or
    precomputed visual tokens ``media``) of at least two samples, e.g. ``FlamingoCollator(processor)(samples)``."""
    key = "pixel_values" if batch.get("pixel_values") is not None else "media"
    visual = batch.get(key)
    if visual is None or visual.shape[0] < 2:
        raise ValueError("image_reliance needs a batch of at least 2 samples with images")
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)  # (B, L)
    mask = batch["attention_mask"].to(device)  # (B, L)
    visual = visual.to(device)  # pixels (B, T_img, [F,] C, H, W) or visual tokens (B, T_img, n, Dv)

    def loss(v: torch.Tensor) -> float:
        return float(model(ids, attention_mask=mask, labels=ids, **{key: v}).loss)

    was_training = model.training
    model.eval()
    try:
        return ImageReliance(right=loss(visual), shuffled=loss(visual.roll(1, dims=0)),
                             zero=loss(torch.zeros_like(visual)), samples=int(ids.shape[0]))
    finally:
        model.train(was_training)
