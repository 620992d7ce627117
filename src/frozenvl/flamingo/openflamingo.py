"""Load OpenFlamingo checkpoints (``checkpoint.pt``) into a frozenvl Flamingo.

OpenFlamingo's layout, which this loader maps (read from its source; none of its code is used here):

- cross-attention before decoder layer ``i`` when ``(i + 1) % N == 0`` (our ``placement="openflamingo"``);
- a Perceiver Resampler in the vision width (6 layers, 8 heads of 64, 64 latents, FFW x4), no temporal
  embeddings; the visual features are open_clip patch tokens;
- names ``perceiver.*`` and, per fused layer, either ``lang_encoder.<layers>.{i}.gated_cross_attn_layer.*``
  or ``lang_encoder.gated_cross_attn_layers.{i}.*``; gates ``attn_gate``/``ff_gate`` are tensors of shape (1,);
- the LM's input embedding was resized and trained whole: its base rows replace the LM's (they were trained),
  its new rows become our decoupled rows. With tied embeddings the output head uses the same rows;
- its training script's filter keeps every tensor whose name contains ``embed``, frozen ones included (OPT's
  ``embed_positions``; an untied head named ``embed_out``, GPT-NeoX's in transformers 4), and tied duplicates
  (``lm_head.weight``). LM tensors are named as in the LM, with ``.decoder_layer`` inside fused layers; names of
  earlier transformers versions are renamed with transformers' own table. A frozen tensor must equal the LM's.

The ``.pt`` file is read with ``torch.load(weights_only=True)``: tensors only, no code runs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from frozenvl.flamingo.config import FlamingoConfig
from frozenvl.flamingo.model import Flamingo

log = logging.getLogger(__name__)

_XATTN = re.compile(r"^lang_encoder\.(?:.+\.(\d+)\.gated_cross_attn_layer|gated_cross_attn_layers\.(\d+))\.(.+)$")
_IGNORED = re.compile(r"^(vision_encoder\.|lang_encoder\.old_decoder_blocks\.)")


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


def _legacy_renamings(lm: nn.Module) -> list:
    """transformers' own renamings of the names its earlier versions wrote (GPT-NeoX's ``embed_out`` is now
    ``lm_head``), as it applies them when loading a checkpoint; none with a transformers that has no such table."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        return []
    return [t for t in get_model_conversion_mapping(lm) if isinstance(t, WeightRenaming)]


def _rename_legacy(name: str, renamings: list) -> str:
    from transformers.core_model_loading import apply_renamings

    return apply_renamings(name, renamings) if renamings else name


@dataclass
class _LMTensors:
    """The LM tensors an OpenFlamingo checkpoint carries, under the LM's own names."""

    embedding: tuple[str, torch.Tensor] | None = None  # (checkpoint key, the whole input matrix)
    head: tuple[str, torch.Tensor] | None = None  # (checkpoint key, the whole output matrix)


def _module_name(root: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in root.named_modules(remove_duplicate=False) if m is module)


def _own_lm_tensors(model: Flamingo) -> tuple[dict[str, torch.Tensor], str, str]:
    """The LM's tensors under the names it had before fusion (those OpenFlamingo saves), and the names of its
    input embedding and output head matrices."""
    emb_path = _module_name(model.lm, model.lm.get_input_embeddings())
    head_path = _module_name(model.lm, model.lm.get_output_embeddings())
    fused = re.compile(rf"^({re.escape(model.decoder_layers_path)}\.\d+)\.layer\.")  # FusedDecoderLayer.layer
    own = {}
    for name, tensor in model.lm.state_dict(keep_vars=True).items():
        name = fused.sub(r"\1.", name)
        for path in (emb_path, head_path):  # DecoupledEmbedding / DecoupledLinear keep the LM's matrix as .base
            if name.startswith(path + ".base."):
                name = path + "." + name[len(path) + len(".base."):]
        own[name] = tensor
    return own, f"{emb_path}.weight", f"{head_path}.weight"


def map_openflamingo_state_dict(model: Flamingo, state: dict[str, torch.Tensor]
                                ) -> tuple[dict[str, torch.Tensor], _LMTensors]:
    """OpenFlamingo names -> our trainable parameter names, and the LM tensors the checkpoint carries.

    OpenFlamingo's training saves every tensor whose name contains ``embed``, frozen ones included (OPT's
    ``embed_positions``, an untied head such as GPT-NeoX's ``embed_out``), and the tied duplicates of the
    state dict (``lm_head.weight``). Each LM tensor other than the embedding and head matrices (whose rows it
    trained) must equal the LM's own: a difference means another LM than the one the checkpoint was trained on.
    Names written by earlier transformers versions are renamed as transformers renames them.
    """
    fused = {i: f"lm.{model.decoder_layers_path}.{i}.xattn" for i in model.fused_indices}  # index -> block name
    own_lm, emb_name, head_name = _own_lm_tensors(model)
    renamings = _legacy_renamings(model.lm)
    layer_wrapper = re.compile(rf"^({re.escape(model.decoder_layers_path)}\.\d+)\.decoder_layer\.")
    mapped, unexpected, origin, differing = {}, [], {}, []
    lm_tensors = _LMTensors()
    for key, tensor in state.items():
        if _IGNORED.match(key):
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
        if not key.startswith("lang_encoder."):
            unexpected.append(key)
            continue
        # An LM tensor: its name in the LM (OpenFlamingo wraps each decoder layer as `.decoder_layer`).
        name = layer_wrapper.sub(r"\1.", key[len("lang_encoder."):].replace("._checkpoint_wrapped_module", ""))
        name = _rename_legacy(name, renamings)
        if name == emb_name:
            lm_tensors.embedding = (key, tensor)
        elif name == head_name:
            lm_tensors.head = (key, tensor)
        elif name not in own_lm:
            unexpected.append(f"{key} (the LM has no {name})")
        else:
            mine = own_lm[name].detach()
            if tensor.shape != mine.shape:
                differing.append(f"{key}: shape {tuple(tensor.shape)} != the LM's {tuple(mine.shape)}")
            elif not torch.equal(tensor.to(mine.device, mine.dtype), mine):
                gap = (tensor.to(mine.device, torch.float32) - mine.float()).abs().max().item()
                differing.append(f"{key} (max |difference| {gap:.3g})")
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
    if differing:
        raise ValueError(f"OpenFlamingo checkpoint holds frozen LM tensors that differ from the LM's own, so it "
                         f"was trained on another LM: {'; '.join(differing[:8])}"
                         f"{' ...' if len(differing) > 8 else ''}")
    return mapped, lm_tensors


def _load_embedding_rows(model: Flamingo, lm_tensors: _LMTensors) -> bool:
    """Copy the checkpoint's embedding and head matrices: base rows into the LM's matrices, the new tokens' rows
    into the decoupled rows. Returns whether any base row differs from the LM's (OpenFlamingo trained them)."""
    emb = model.lm.get_input_embeddings()
    head = model.lm.get_output_embeddings()
    new_ids = torch.tensor(emb.new_token_ids)
    changed = False
    with torch.no_grad():
        if lm_tensors.embedding is not None:
            emb_key, full = lm_tensors.embedding
            if full.shape[0] <= int(new_ids.max()):
                raise ValueError(f"{emb_key} has {full.shape[0]} rows; the tokenizer's new tokens need "
                                 f"{int(new_ids.max()) + 1}: use the tokenizer the checkpoint was trained with")
            base = emb.base.weight
            rows = min(base.shape[0], full.shape[0])
            changed |= not torch.equal(base[:rows], full[:rows].to(base.dtype))
            base[:rows].copy_(full[:rows])  # OpenFlamingo trained the whole matrix
            emb.new_weight.copy_(full[new_ids])
        else:
            log.warning("no input embedding in the checkpoint: the new tokens keep their initial rows")
        head_full = lm_tensors.head[1] if lm_tensors.head is not None else None
        tied = getattr(model.lm.config, "tie_word_embeddings", False)
        if head_full is None and tied and lm_tensors.embedding is not None:
            head_full = lm_tensors.embedding[1]
        if head_full is not None:
            head.new_weight.copy_(head_full[new_ids])
            head.new_bias.zero_()
            base_head = head.base.weight
            if base_head.data_ptr() != emb.base.weight.data_ptr():
                rows = min(base_head.shape[0], head_full.shape[0])
                changed |= not torch.equal(base_head[:rows], head_full[:rows].to(base_head.dtype))
                base_head[:rows].copy_(head_full[:rows])
        else:
            log.warning("no output rows for the new tokens in the checkpoint: they keep their initial rows")
    return changed


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
    config = openflamingo_config(cross_attn_every, **config_overrides)
    model, processor = build(lm=lm, vision=vision, tokenizer=tokenizer, config=config)
    mapped, lm_tensors = map_openflamingo_state_dict(model, state)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in mapped.items():
            target: nn.Parameter = params[name]
            if target.shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(target.shape)}")
            target.copy_(tensor)
    trained_rows = _load_embedding_rows(model, lm_tensors)
    if "save_lm_embeddings" not in config_overrides:
        # OpenFlamingo trained the LM's embedding matrix: a saved conversion must carry its base rows.
        model.config.save_lm_embeddings = trained_rows
    return model, processor
