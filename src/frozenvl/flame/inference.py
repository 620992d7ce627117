"""FLAME inference: image and text embeddings, their similarity, and zero-shot class embeddings.

Text aggregation over the K facets of a caption:

- ``"mean_embedding"`` (official): mean of the L2-normalised facet embeddings, then L2-normalised -> (N, D);
- ``"mean_similarity"``: keep the normalised facets (N, K, D); the similarity to an image is the mean over
  facets of the per-facet cosine similarities.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from frozenvl.constants import CLIP_MEAN, CLIP_STD

AGGREGATIONS = ("mean_embedding", "mean_similarity")
DEFAULT_CLASS_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


def image_transform(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """PIL image -> (3, S, S) float tensor: resize the shorter side to S (bicubic), centre crop, normalise."""
    from frozenvl.backbones.vision import ImageTransform

    return ImageTransform(image_size, mean, std)


@torch.no_grad()
def encode_image(model, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, 3, H, W) -> (N, D) L2-normalised image embeddings."""
    model.eval()
    weight = next(model.parameters())  # the images go to the model's device, in its dtype
    out = [model.encode_image(images[i:i + batch_size].to(weight.device, weight.dtype)).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.config.text_dim)


def aggregate_facets(facets: torch.Tensor, aggregate: str = "mean_embedding") -> torch.Tensor:
    """(N, K, D) raw facet embeddings -> (N, D) for ``mean_embedding`` or normalised (N, K, D) for
    ``mean_similarity``."""
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    facets = F.normalize(facets.float(), dim=-1)
    if aggregate == "mean_similarity":
        return facets
    return F.normalize(facets.mean(dim=1), dim=-1)


@torch.no_grad()
def encode_text(encoder, captions: Sequence[str], aggregate: str = "mean_embedding",
                batch_size: int = 32) -> torch.Tensor:
    """Captions -> (N, D) or (N, K, D) text embeddings (see the module docstring for ``aggregate``)."""
    chunks = [encoder.encode(list(captions[i:i + batch_size])) for i in range(0, len(captions), batch_size)]
    facets = torch.cat(chunks) if chunks else torch.zeros(0, encoder.num_facets, encoder.hidden_size)
    return aggregate_facets(facets, aggregate)


def similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """(M, D) images x (N, D) or (N, K, D) texts -> (M, N) cosine similarities (mean over facets if K)."""
    if text_features.ndim == 2:
        return image_features @ text_features.T
    return torch.einsum("md,nkd->mnk", image_features, text_features).mean(dim=2)


def check_class_template(template: str) -> None:
    """A class-name template holds exactly one ``{}`` (literal braces doubled): without it every class would get
    the same prompt, with two or a named field formatting fails. A ValueError names the template otherwise."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # a single { or }
        raise ValueError(f"{template!r} must hold exactly one '{{}}' for the class name (literal braces doubled), "
                         f"found an invalid field ({e})") from None
    if fields != [""]:
        raise ValueError(f"{template!r} must hold exactly one '{{}}' for the class name (literal braces doubled), "
                         f"found {len(fields)} fields")


@torch.no_grad()
def zero_shot_classifier(encoder, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_CLASS_TEMPLATES,
                         aggregate: str = "mean_embedding", batch_size: int = 32) -> torch.Tensor:
    """Class embeddings from class-name templates (each wrapped in the encoder's prompt set, normally ``raw``).

    Facets of every template are normalised and averaged over templates: (C, D) for ``mean_embedding``
    (also averaged over facets, then normalised), (C, K, D) for ``mean_similarity``.
    """
    if not classnames or not templates:
        raise ValueError("zero-shot classification needs class names and at least one template")
    for template in templates:  # checked before any caption is encoded
        check_class_template(template)
    captions = [t.format(c) for c in classnames for t in templates]
    chunks = [encoder.encode(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)]
    facets = F.normalize(torch.cat(chunks).float(), dim=-1)  # (C*T, K, D)
    per_class = facets.reshape(len(classnames), len(templates), *facets.shape[1:]).mean(dim=1)  # (C, K, D)
    return aggregate_facets(per_class, aggregate)
