"""Does a Flamingo look at its images? Held-out loss with the right images vs the same text with wrong ones.

A model that has learned only the text of its training captions (an adapter of the frozen LM, with the
cross-attention gates nearly closed) reaches a low loss too; few-shot captioning then copies a demonstration's
caption. :func:`image_reliance` measures the difference: the masked next-token loss of a batch of collated
samples with their own images, with the images rolled by one sample (every text gets another sample's image),
and with all-zero pixels. A model that uses its images has ``shuffled - right > 0``. A batch may carry
precomputed visual tokens (``media``, as :meth:`Flamingo.forward` takes them) instead of pixels; ``zero`` is then
the loss with all-zero visual tokens. Several batches may be given (hundreds of held-out samples); ``gain_ci95`` is
the half-width of a 95 % bootstrap interval of the gain over the samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from frozenvl.flamingo.loss import IGNORE_INDEX, flamingo_labels

BOOTSTRAP_RESAMPLES = 2000


@dataclass
class ImageReliance:
    right: float  # loss (nats/token) with each sample's own images
    shuffled: float  # images rolled by one sample across the batch
    zero: float  # all-zero pixels (all-zero visual tokens for a ``media`` batch)
    samples: int
    gain_ci95: float | None = None  # half-width of the 95 % interval of ``gain`` (bootstrap over samples)

    @property
    def gain(self) -> float:
        """Nats per token the right images save over wrong ones (0: the images are ignored)."""
        return self.shuffled - self.right

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "gain": self.gain, "gain_ci95_method": "bootstrap"}


def _row_nll(model: Any, ids: torch.Tensor, mask: torch.Tensor, visual: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the summed next-token NLL over its kept targets and their count (Flamingo's loss mask)."""
    logits = model(ids, attention_mask=mask, **visual).logits  # (B, L, V)
    labels = flamingo_labels(ids, ids, mask, model.image_token_id, model.end_of_chunk_token_id)[:, 1:]  # (B, L-1)
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                          reduction="none")  # (B, L-1), 0 where ignored
    kept = labels != IGNORE_INDEX
    return nll.sum(1).double().cpu(), kept.sum(1).double().cpu()


def _bootstrap_half_width(right: np.ndarray, shuffled: np.ndarray, tokens: np.ndarray, seed: int = 0) -> float | None:
    """Half-width of the percentile-bootstrap 95 % interval of the token-weighted gain, resampling samples."""
    if len(tokens) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(tokens), (BOOTSTRAP_RESAMPLES, len(tokens)))
    t = tokens[idx].sum(1)
    gains = (shuffled[idx].sum(1) - right[idx].sum(1)) / np.maximum(t, 1)
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return float(hi - lo) / 2


@torch.no_grad()
def image_reliance(model: Any, batch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                   feature_cache: Any = None) -> ImageReliance:
    """``batch``: a collated Flamingo batch (``input_ids``, ``attention_mask``, and ``pixel_values`` or
    precomputed visual tokens ``media``) of at least two samples, e.g. ``FlamingoCollator(processor)(samples)``, or a
    list of such batches (images rolled within each). The losses are token-weighted means over every sample;
    ``gain_ci95`` is the half-width of a 95 % percentile-bootstrap interval of the gain (2000 resamples of the
    samples, fixed seed). ``feature_cache``: a :class:`~frozenvl.flamingo.feature_cache.FeatureCache` of the model's
    frozen encoder, to feed the resampler its stored features (``vision_features``) instead of encoding pixels."""
    batches = [batch] if isinstance(batch, Mapping) else list(batch)
    device = next(model.parameters()).device
    sums: dict[str, list[torch.Tensor]] = {"right": [], "shuffled": [], "zero": []}
    tokens: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            key = "pixel_values" if b.get("pixel_values") is not None else "media"
            visual = b.get(key)
            if visual is None or visual.shape[0] < 2:
                raise ValueError("image_reliance needs batches of at least 2 samples with images")
            ids = b["input_ids"].to(device)  # (B, L)
            mask = b["attention_mask"].to(device)  # (B, L)
            frame_mask = b.get("frame_mask") if key == "pixel_values" else None
            if feature_cache is not None and key == "pixel_values":  # (B, T_img, F, N, D) encoder outputs
                visual, key = feature_cache.encode(visual, frame_mask), "vision_features"
                blank = feature_cache.encode(torch.zeros_like(b["pixel_values"]), frame_mask)
            visual = visual.to(device)  # pixels (B, T_img, [F,] C, H, W) or visual tokens (B, T_img, n, Dv)
            zero = blank.to(device) if key == "vision_features" else torch.zeros_like(visual)
            for name, v in (("right", visual), ("shuffled", visual.roll(1, dims=0)), ("zero", zero)):
                extra = {key: v}
                if frame_mask is not None:
                    fm = frame_mask.to(device)
                    extra["frame_mask"] = fm.roll(1, dims=0) if name == "shuffled" else fm
                nll, count = _row_nll(model, ids, mask, extra)
                sums[name].append(nll)
            tokens.append(count)
    finally:
        model.train(was_training)
    t = torch.cat(tokens).numpy()
    per = {name: torch.cat(v).numpy() for name, v in sums.items()}
    total = max(float(t.sum()), 1.0)
    return ImageReliance(right=float(per["right"].sum() / total), shuffled=float(per["shuffled"].sum() / total),
                         zero=float(per["zero"].sum() / total), samples=int(len(t)),
                         gain_ci95=_bootstrap_half_width(per["right"], per["shuffled"], t))
