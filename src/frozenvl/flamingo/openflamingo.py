"""Load OpenFlamingo checkpoints (``checkpoint.pt``) into a frozenvl Flamingo.

OpenFlamingo's layout, which this loader maps (read from its source; none of its code is used here):

- cross-attention before decoder layer ``i`` when ``(i + 1) % N == 0`` (our ``placement="openflamingo"``);
- a Perceiver Resampler in the vision width (6 layers, 8 heads of 64, 64 latents, FFW x4), no temporal
  embeddings; the visual features are open_clip patch tokens;
- names ``perceiver.*`` and, per fused layer, either ``lang_encoder.<layers>.{i}.gated_cross_attn_layer.*``
  or ``lang_encoder.gated_cross_attn_layers.{i}.*``; gates ``attn_gate``/``ff_gate`` are tensors of shape (1,);
- the LM's input embedding was resized and trained whole: its base rows replace the LM's (they were trained),
  its new rows become our decoupled rows. With tied embeddings the output head uses the same rows.

The ``.pt`` file is read with ``torch.load(weights_only=True)``: tensors only, no code runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from frozenvl.flamingo.config import FlamingoConfig
from frozenvl.flamingo.model import Flamingo

log = logging.getLogger(__name__)

_XATTN = re.compile(r"^lang_encoder\.(?:.+\.(\d+)\.gated_cross_attn_layer|gated_cross_attn_layers\.(\d+))\.(.+)$")
_IGNORED = re.compile(r"^(vision_encoder\.|lang_encoder\.old_decoder_blocks\.)")
_EMBED = ("embed_tokens.weight", "wte.weight", "embed_in.weight")
_HEAD = ("lm_head.weight", "embed_out.weight")


def openflamingo_config(cross_attn_every: int, **overrides) -> FlamingoConfig:
    """The FlamingoConfig that matches OpenFlamingo's architecture."""
    fields = dict(cross_attn_every=cross_attn_every, placement="openflamingo", resampler="perceiver",
                  resampler_dim=None, resampler_depth=6, resampler_heads=8, resampler_dim_head=64, num_latents=64,
                  max_frames=None, xattn_heads=8, xattn_dim_head=64, ff_mult=4, only_attend_immediate=True,
                  gating="tanh", xattn_kind="gated_dense")
    fields.update(overrides)
    return FlamingoConfig(**fields)


def _xattn_name(rest: str) -> str:
    """OpenFlamingo's name inside a GatedCrossAttentionBlock -> ours."""
    if rest in ("attn_gate", "ff_gate"):
        return rest + ".alpha"
    return rest  # attn.{norm,to_q,to_kv,to_out}.*, ff.{0,1,3}.* are laid out alike


def map_openflamingo_state_dict(model: Flamingo, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenFlamingo names -> our trainable parameter names; embedding matrices are handled separately."""
    fused = {i: f"lm.{model.decoder_layers_path}.{i}.xattn" for i in model.fused_indices}  # index -> block name
    mapped, unexpected, origin = {}, [], {}
    for key, tensor in state.items():
        if _IGNORED.match(key) or key.endswith(_EMBED + _HEAD):
            continue
        if key.startswith("perceiver."):
            name = "resampler." + key[len("perceiver."):]
            mapped[name], origin[name] = tensor, key
            continue
        m = _XATTN.match(key)
        if m:
            index = int(m.group(1) or m.group(2))
            if index not in fused:
                unexpected.append(f"{key} (no cross-attention before layer {index}: check cross_attn_every)")
                continue
            name = f"{fused[index]}.{_xattn_name(m.group(3))}"
            mapped[name], origin[name] = tensor, key
            continue
        unexpected.append(key)
    own = {n for n, p in model.named_parameters() if p.requires_grad}
    own_mapped = {n for n in own if not n.endswith(("new_weight", "new_bias"))}
    missing = sorted(own_mapped - set(mapped))
    unknown = sorted(origin[n] for n in set(mapped) - own)
    if missing or unexpected or unknown:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected or unknown:
            extra = unexpected + unknown
            parts.append(f"unexpected {len(extra)}: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        raise KeyError("OpenFlamingo checkpoint does not match the model: " + "; ".join(parts))
    return mapped


def _load_embedding_rows(model: Flamingo, state: dict[str, torch.Tensor]) -> None:
    emb = model.lm.get_input_embeddings()
    head = model.lm.get_output_embeddings()
    emb_key = next((k for k in state if k.startswith("lang_encoder.") and k.endswith(_EMBED)), None)
    head_key = next((k for k in state if k.startswith("lang_encoder.") and k.endswith(_HEAD)), None)
    new_ids = torch.tensor(emb.new_token_ids)
    with torch.no_grad():
        if emb_key is not None:
            full = state[emb_key]
            if full.shape[0] <= int(new_ids.max()):
                raise ValueError(f"{emb_key} has {full.shape[0]} rows; the tokenizer's new tokens need "
                                 f"{int(new_ids.max()) + 1}: use the tokenizer the checkpoint was trained with")
            base = emb.base.weight
            rows = min(base.shape[0], full.shape[0])
            base[:rows].copy_(full[:rows])  # OpenFlamingo trained the whole matrix
            emb.new_weight.copy_(full[new_ids])
        else:
            log.warning("no input embedding in the checkpoint: the new tokens keep their initial rows")
        head_full = state[head_key] if head_key is not None else None
        tied = getattr(model.lm.config, "tie_word_embeddings", False)
        if head_full is None and tied and emb_key is not None:
            head_full = state[emb_key]
        if head_full is not None:
            head.new_weight.copy_(head_full[new_ids])
            head.new_bias.zero_()
            base_head = head.base.weight
            if base_head.data_ptr() != emb.base.weight.data_ptr():
                rows = min(base_head.shape[0], head_full.shape[0])
                base_head[:rows].copy_(head_full[:rows])
        else:
            log.warning("no output rows for the new tokens in the checkpoint: they keep their initial rows")


def load_openflamingo(checkpoint: str | Path | dict, lm, vision, tokenizer=None, cross_attn_every: int = 1,
                      **config_overrides) -> tuple[Flamingo, object]:
    """Build a Flamingo with OpenFlamingo's architecture around ``lm``/``vision`` and load its checkpoint.

    ``lm``/``vision`` are sources or instances as for :func:`frozenvl.flamingo.build` (for the released models:
    the open_clip ViT-L/14 and the matching MPT / RedPajama LM). Returns ``(model, processor)``.
    """
    from frozenvl.flamingo.build import build

    if isinstance(checkpoint, dict):
        state = checkpoint
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"OpenFlamingo checkpoint {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if "model_state_dict" in state:  # training checkpoints wrap the weights
        state = state["model_state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    # OpenFlamingo trained the LM's whole embedding matrix: a saved conversion must carry its base rows.
    trained_embedding = any(k.startswith("lang_encoder.") and k.endswith(_EMBED + _HEAD) for k in state)
    config = openflamingo_config(cross_attn_every, **{"save_lm_embeddings": trained_embedding, **config_overrides})
    model, processor = build(lm=lm, vision=vision, tokenizer=tokenizer, config=config)
    mapped = map_openflamingo_state_dict(model, state)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in mapped.items():
            target: nn.Parameter = params[name]
            if target.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(target.shape)}")
            target.copy_(tensor)
    _load_embedding_rows(model, state)
    return model, processor
