"""FLAME losses: several positive text embeddings (facets) per image.

Both losses take L2-normalised ``image_features`` (N, D) and ``text_features`` (N, S, D), where row i of the
text features holds the S facets of image i, and return a dict. With ``torch.distributed`` initialised and
several ranks, the text features of all ranks are gathered and serve as negatives; the mean over ranks of the
per-rank losses then equals the loss of the whole global batch on one process.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_all_ranks(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) of every rank along dim 0 (rank order); identity on one process.

    Gradient-safe: a tensor that needs gradients goes through the autograd-aware all_gather, so gradients
    reach every rank's own rows; otherwise (the frozen text side) a plain all_gather is enough. Either way the
    local rows are the local tensor itself.
    """
    rank, world = _world()
    if world == 1:
        return x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        parts = list(all_gather(x))
    else:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


class MultiPositiveSigmoidLoss(nn.Module):
    """Sigmoid loss with S positives per image: every (image, facet) pair is a binary problem.

    loss = -sum_{i, j, s} log sigmoid(y_ijs * (exp(t) * <x_i, z_js> + b)) / (N * S), with y = +1 when facet s
    belongs to image i (j == i) and -1 otherwise; t and b start at log 10 and -10.
    """

    def __init__(self, init_logit_scale: float = math.log(10.0), init_logit_bias: float = -10.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, torch.Tensor]:
        n, s, d = text_features.shape
        rank, _ = _world()
        all_text = gather_all_ranks(text_features)  # (W*N, S, D)
        logits = self.logit_scale.exp() * image_features @ all_text.reshape(-1, d).T + self.logit_bias  # (N, W*N*S)
        owner = torch.arange(all_text.shape[0], device=logits.device).repeat_interleave(s)  # (W*N*S,)
        mine = torch.arange(n, device=logits.device) + rank * n  # (N,)
        labels = (owner[None, :] == mine[:, None]).to(logits.dtype) * 2 - 1  # (N, W*N*S), +1 / -1
        loss = -F.logsigmoid(labels * logits).sum() / (n * s)
        return {"loss": loss, "logit_scale": self.logit_scale.exp().detach(), "logit_bias": self.logit_bias.detach()}


class MultiPositiveInfoNCELoss(nn.Module):
    """InfoNCE with S positives per image: for each facet slot s, a CLIP loss between the images and the s-th
    facet of every caption (image->text and text->image cross-entropy, averaged), then the mean over s."""

    def __init__(self, init_logit_scale: float = math.log(1 / 0.07), max_logit_scale: float = math.log(100.0)):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_logit_scale = max_logit_scale

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, torch.Tensor]:
        n, s, _ = text_features.shape
        rank, _ = _world()
        scale = self.logit_scale.clamp(max=self.max_logit_scale).exp()
        all_images = gather_all_ranks(image_features)  # (W*N, D)
        all_text = gather_all_ranks(text_features)  # (W*N, S, D)
        targets = torch.arange(n, device=image_features.device) + rank * n  # (N,)
        loss = image_features.new_zeros(())
        for slot in range(s):
            i2t = scale * image_features @ all_text[:, slot].T  # (N, W*N)
            t2i = scale * text_features[:, slot] @ all_images.T  # (N, W*N)
            loss = loss + (F.cross_entropy(i2t, targets) + F.cross_entropy(t2i, targets)) / 2
        return {"loss": loss / s, "logit_scale": scale.detach()}


def build_loss(name: str) -> nn.Module:
    losses = {"sigmoid": MultiPositiveSigmoidLoss, "infonce": MultiPositiveInfoNCELoss}
    if name not in losses:
        raise ValueError(f"unknown FLAME loss {name!r}; known: {', '.join(losses)}")
    return losses[name]()
