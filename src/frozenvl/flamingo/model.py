"""The Flamingo model: frozen vision encoder -> resampler -> gated cross-attention inside a frozen causal LM.

Trainable: the resampler (and its optional input projection), the cross-attention blocks, the rows of the
new tokens in the LM's embedding and output head, and LoRA adapters in the LM with ``config.lora_rank``
(:mod:`frozenvl.flamingo.lora`). Everything else is frozen and referenced by source when saved.

A call may continue an earlier one: pass the :class:`FlamingoCache` it returned (``frozenvl.flamingo.cache``
says how long a cache lives). The cache carries the LM's KV cache, the visual tokens, the cross-attention
keys/values and the media bookkeeping, so generation and prefix-cached scoring never recompute the prompt, the
images, or the visual keys/values.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers.utils import ModelOutput

from frozenvl.backbones.language import (
    FrozenLanguageModel,
    build_frozen_lm,
    cache_argument,
    find_decoder_layers,
    output_cache,
)
from frozenvl.backbones.vision import VisionEncoder, build_vision
from frozenvl.flamingo.activation_checkpointing import enable_gradient_checkpointing
from frozenvl.flamingo.cache import FlamingoCache
from frozenvl.flamingo.config import FlamingoConfig
from frozenvl.flamingo.cross_attention import GatedCrossAttentionBlock
from frozenvl.flamingo.fusion import FusedDecoderLayer, VisualContext, conditioning, fused_layer_indices
from frozenvl.flamingo.generation import generate
from frozenvl.flamingo.lora import add_lora
from frozenvl.flamingo.loss import causal_lm_loss, flamingo_labels
from frozenvl.flamingo.media_mask import build_media_mask, image_documents, single_image_mask, text_time
from frozenvl.flamingo.processor import check_extra_arguments
from frozenvl.flamingo.resampler import build_resampler
from frozenvl.pretrained import PretrainedModel
from frozenvl.tensors import as_frames


@dataclass
class FlamingoOutput(ModelOutput):
    """What :meth:`Flamingo.forward` returns, a transformers ``ModelOutput``: read as attributes (``out.logits``),
    keys (``out["logits"]``) or a tuple of the fields that are set, in this order (``out[0]``, ``out.to_tuple()``;
    ``out[0]`` is the loss when labels were given, as in transformers)."""

    loss: torch.Tensor | None = None  # () mean over the kept targets, when labels were given
    logits: torch.Tensor | None = None  # (B, L, V) (or the last logits_to_keep positions)
    cache: FlamingoCache | None = None  # with use_cache=True: pass it back to continue the sequence
    hidden_states: tuple[torch.Tensor, ...] | None = None  # with output_hidden_states: the LM's, each (B, L, D)


class Flamingo(PretrainedModel, nn.Module):
    """Saved by :meth:`save_pretrained` as its config (which names the backbones' sources) and its trainable
    tensors; :meth:`from_pretrained` loads the backbones again from those sources or takes them as arguments."""

    model_type = "flamingo"
    config_class = FlamingoConfig

    def __init__(self, config: FlamingoConfig, lm: FrozenLanguageModel, vision: VisionEncoder):
        super().__init__()
        self.config = config
        self.lm = lm.model
        self.tokenizer = lm.tokenizer
        self.lm_source = lm.source
        self.image_token_id = lm.image_token_id
        self.end_of_chunk_token_id = lm.end_of_chunk_token_id
        self.pad_token_id = lm.pad_token_id
        self.eos_token_id = lm.eos_token_id
        self.vision = vision
        dim_visual = config.resampler_dim or vision.feature_dim
        self.vision_proj = (nn.Linear(vision.feature_dim, dim_visual) if dim_visual != vision.feature_dim
                            else nn.Identity())
        self.resampler = build_resampler(config.resampler, dim_visual, config.resampler_depth,
                                         config.resampler_dim_head, config.resampler_heads, config.num_latents,
                                         config.max_frames, config.ff_mult)
        self.decoder_layers_path, layers = find_decoder_layers(self.lm)
        if config.lora_rank > 0:  # before fusing: adapters in the LM's own layers only, never in cross-attention
            targets = add_lora(self.lm, self.decoder_layers_path, config)
            self.config = config = replace(config, lora_target_modules=targets)  # saved as resolved
        self.fused_indices = fused_layer_indices(len(layers), config.cross_attn_every, config.placement)
        hidden = lm.hidden_size
        fused = []
        for i, layer in enumerate(layers):
            if i in self.fused_indices:
                block = GatedCrossAttentionBlock(hidden, dim_visual, config.xattn_dim_head, config.xattn_heads,
                                                 config.ff_mult, config.gating, config.xattn_kind)
                layer = FusedDecoderLayer(layer, block, i)
            fused.append(layer)
        self.lm.set_submodule(self.decoder_layers_path, nn.ModuleList(fused))
        if config.placement == "upper":
            # Nothing trainable below the lowest block, so that the backward pass stops there: the new tokens'
            # input rows (<image>, <|endofchunk|>) keep their initial value, the mean of the LM's embeddings.
            self.lm.get_input_embeddings().new_weight.requires_grad_(False)
        self._lm_takes_position_ids = "position_ids" in inspect.signature(self.lm.forward).parameters
        self._lm_cache_argument = cache_argument(self.lm)  # "cache" (transformers >= 5.24) or "past_key_values"
        self.vocab_size = self.lm.get_output_embeddings().vocab_size

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The LM's decoder layers, the fused ones wrapped (FSDP units, activation checkpointing)."""
        return self.lm.get_submodule(self.decoder_layers_path)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the activations of the decoder layers and cross-attention blocks in the backward pass instead
        of keeping them (as transformers models do); see :mod:`frozenvl.flamingo.activation_checkpointing`."""
        enable_gradient_checkpointing(self)

    # ----------------------------------------------------------------------------------------------- media
    def encode_media(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T_img, C, H, W) images or (B, T_img, F, C, H, W) videos -> visual tokens (B, T_img, n, Dv).

        ``frame_mask`` (B, T_img, F), True on real frames, when media of different frame counts share the batch
        (the processor pads them): padded frames are neither encoded nor read by the resampler."""
        pixel_values = as_frames(pixel_values)  # (B, T_img, F, C, H, W)
        B, T, Fr = pixel_values.shape[:3]
        vision_dtype = next(self.vision.parameters(), torch.empty(0)).dtype
        # A frozen encoder builds no graph; one unfrozen for fine-tuning gets its gradients.
        tune_vision = any(p.requires_grad for p in self.vision.parameters())
        frames = pixel_values.flatten(0, 2).to(vision_dtype)  # (B*T*F, C, H, W)
        real = None if frame_mask is None else frame_mask.to(frames.device).flatten()  # (B*T*F,)
        with torch.set_grad_enabled(tune_vision and torch.is_grad_enabled()):
            feats = self.vision(frames if real is None else frames[real])  # (B*T*F or real frames, N, D)
        if real is not None:  # padded frames stay zero: the resampler does not read them
            feats = feats.new_zeros(len(frames), *feats.shape[1:]).index_copy(0, real.nonzero().squeeze(1), feats)
        return self.resample(feats.reshape(B, T, Fr, *feats.shape[1:]), frame_mask)  # (B, T, F, N, D) in

    def resample(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The vision encoder's features (B, T_img, F, N, D) -> visual tokens (B, T_img, n, Dv): the projection
        and the resampler. Fed by :meth:`encode_media`, or by a feature cache of a frozen encoder
        (``forward(vision_features=...)``, :mod:`frozenvl.flamingo.feature_cache`)."""
        proj_dtype = next(self.resampler.parameters()).dtype
        mask = None if frame_mask is None else frame_mask.to(features.device)
        return self.resampler(self.vision_proj(features.to(proj_dtype)), mask)  # (B, T, n, Dv)

    # --------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), or (B, 1, L, L_cache + L): see below
        pixel_values: torch.Tensor | None = None,  # (B, T_img, [F,] C, H, W)
        labels: torch.Tensor | None = None,  # (B, L); masked as flamingo.loss says
        document_ids: torch.Tensor | None = None,  # (B, L) packed documents never see each other's images
        cache: FlamingoCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        media: torch.Tensor | None = None,  # precomputed visual tokens instead of pixel_values
        vision_features: torch.Tensor | None = None,  # (B, T_img, F, N, D) encoder outputs instead of pixel_values
        frame_mask: torch.Tensor | None = None,  # (B, T_img, F) real frames, when media of different lengths mix
        output_hidden_states: bool = False,  # the LM's hidden states (embeddings, then each layer), as transformers
        return_dict: bool = True,  # False: the tuple of the output's fields that are set
        position_ids: torch.Tensor | None = None,  # (B, L) the LM's positions (default: from the attention mask);
        # without attention_mask and cache, positions that restart with document_ids are a packed row (packing.py)
        **extra: object,
    ) -> FlamingoOutput | tuple:
        """A 4D ``attention_mask`` (B, 1, L, L_cache + L), additive (0 where a token may attend, the dtype's
        minimum elsewhere), is the LM's whole mask over the cache and these tokens, given as it is (e.g. a tree of
        continuations packed in one row); it needs ``position_ids`` and gives no cache."""
        check_extra_arguments("Flamingo.forward", extra)
        B, L = input_ids.shape
        device = input_ids.device
        # transformers' padding-free convention: no attention mask and positions that restart, one sequence per
        # document of a packed row (frozenvl.flamingo.packing); the LM builds the block-diagonal causal mask.
        padding_free = attention_mask is None and position_ids is not None and cache is None and not use_cache
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.dim() == 4 and (position_ids is None or use_cache or labels is not None):
            raise ValueError("a 4D attention_mask needs position_ids, and gives no cache and no loss")
        if document_ids is None:
            document_ids = (cache.last_doc.unsqueeze(1).expand(B, L) if cache is not None
                            else torch.zeros_like(input_ids))

        if pixel_values is not None:
            new_media = self.encode_media(pixel_values, frame_mask)
        elif vision_features is not None:  # a frozen encoder's cached outputs
            new_media = self.resample(vision_features, frame_mask)
        else:
            new_media = media
        past_media = cache.media if cache is not None else None
        # Images of this chunk: numbered after those already in the cache.
        start_time = cache.last_time if cache is not None else torch.zeros(B, dtype=torch.long, device=device)
        token_time = start_time.unsqueeze(1) + text_time(input_ids, self.image_token_id)  # (B, L)
        past_kv = cache.xattn_kv if past_media is not None else {}  # per fused layer, over the cached images
        if new_media is not None:
            chunk_docs = image_documents(input_ids, self.image_token_id, document_ids, new_media.shape[1])
            media_all = new_media if past_media is None else torch.cat([past_media, new_media], dim=1)
            docs_all = chunk_docs if cache is None else torch.cat([cache.media_docs, chunk_docs], dim=1)
        elif past_media is not None:
            media_all, docs_all = past_media, cache.media_docs
        else:
            media_all, docs_all = None, None
        if media_all is not None and int(token_time.max()) > media_all.shape[1]:
            raise ValueError(f"the text has {int(token_time.max())} <image> tokens but only "
                             f"{media_all.shape[1]} images were given")

        full_mask = (attention_mask if cache is None or attention_mask.dim() == 4
                     else torch.cat([cache.attention_mask, attention_mask], dim=1))
        lm_kwargs = dict(input_ids=input_ids, attention_mask=None if padding_free else full_mask, use_cache=use_cache,
                         logits_to_keep=logits_to_keep)
        if output_hidden_states:
            lm_kwargs["output_hidden_states"] = True
        if cache is not None:
            lm_kwargs[self._lm_cache_argument] = cache.past_key_values
        if position_ids is not None:
            lm_kwargs["position_ids"] = position_ids
        elif self._lm_takes_position_ids:
            # Positions from the mask, so left padding does not shift a row (a batch equals its rows).
            lm_kwargs["position_ids"] = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -L:]

        mask = None
        if media_all is not None:
            dtype = media_all.dtype
            if L == 1 and self.config.only_attend_immediate and media_all.shape[1] > 0:  # a decoding step:
                # each row's token sees one image at most
                mask = single_image_mask(token_time[:, 0], document_ids[:, 0], docs_all, media_all.shape[2], dtype)
            else:
                mask = build_media_mask(token_time, document_ids, docs_all, media_all.shape[2],
                                        self.config.only_attend_immediate, dtype)
        # Always a context, also without any image: the dense FFW of each block acts on every token, so a token's
        # output never depends on whether an image comes later in the sequence (or in a continuation). With new
        # images, each fused layer appends their keys/values to the cached ones and reports them in the context.
        context = VisualContext(mask=mask, past_keys_values=past_kv,
                                media=media_all if new_media is not None else None)
        with conditioning(context):
            out = self.lm(**lm_kwargs)
        xattn_kv = context.projected if new_media is not None else past_kv
        logits = out.logits

        loss = None
        if labels is not None:
            target = flamingo_labels(labels, input_ids, attention_mask, self.image_token_id,
                                     self.end_of_chunk_token_id, document_ids)
            loss = causal_lm_loss(logits, target)

        new_cache = None
        if use_cache:
            lm_cache = output_cache(out)
            if lm_cache is None:
                raise ValueError(f"{type(self.lm).__name__} returns no cache (it keeps its recurrent state inside "
                                 "its modules), so a Flamingo cannot continue or select it: use use_cache=False "
                                 "(generate(..., use_cache=False) recomputes the sequence at every step)")
            new_cache = FlamingoCache(
                past_key_values=lm_cache,
                media=media_all,
                media_docs=docs_all if docs_all is not None else torch.zeros(B, 0, dtype=torch.long, device=device),
                attention_mask=full_mask,
                last_time=token_time[:, -1],
                last_doc=document_ids[:, -1],
                xattn_kv=xattn_kv,
            )
        output = FlamingoOutput(loss=loss, logits=logits, cache=new_cache,
                                hidden_states=out.hidden_states if output_hidden_states else None)
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------------ generation
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, **kwargs) -> torch.Tensor | ModelOutput:
        """Greedy, sampling or beam search, with transformers' controls (``repetition_penalty``,
        ``no_repeat_ngram_size``, ``min_new_tokens``, ``bad_words_ids``, ``eos_token_id``, ``num_return_sequences``,
        ``streamer``, ``output_scores`` / ``return_dict_in_generate``); see
        :func:`frozenvl.flamingo.generation.generate` and docs/generation.md. Returns the prompts followed by the new
        tokens, or with ``return_dict_in_generate=True`` a transformers ``GenerateDecoderOnlyOutput`` (greedy,
        sampling) or ``GenerateBeamDecoderOnlyOutput`` (beam search)."""
        return generate(self, input_ids, attention_mask, pixel_values, **kwargs)

    # ------------------------------------------------------------------------------------- save and load
    @classmethod
    def from_backbones(cls, config: FlamingoConfig, lm: str | nn.Module, vision: str | nn.Module, tokenizer=None,
                       dtype: torch.dtype | None = None) -> Flamingo:
        """A fresh Flamingo around frozen backbones given as sources (see :func:`frozenvl.flamingo.build`) or
        instances; ``config.lm`` / ``config.vision`` record the sources (``<instance:...>`` for instances).
        ``dtype``: the whole model in it (a source LM is loaded in it; instances are cast in place, as
        ``nn.Module.to`` does); ``None`` leaves instances as they are and builds the rest in float32."""
        config = replace(config, lm=describe_source(lm), vision=describe_source(vision))
        model = cls(config, build_frozen_lm(lm, tokenizer, dtype or torch.float32), build_vision(vision))
        return model if dtype is None else model.to(dtype)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable(self, tensors: dict[str, torch.Tensor], strict: bool = True) -> None:
        tensors = self._without_legacy_gates(tensors)
        self._load_named({n: p for n, p in self.named_parameters() if p.requires_grad}, tensors, strict)

    def _without_legacy_gates(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints written before ``gating="none"`` stopped building a gate hold an unused ``alpha`` per gate;
        it never acted on the output, so it is dropped rather than refused."""
        if self.config.gating != "none":
            return tensors
        return {n: t for n, t in tensors.items() if not n.endswith(("attn_gate.alpha", "ff_gate.alpha"))}

    @staticmethod
    def _load_named(own: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor], strict: bool = True,
                    optional: dict[str, nn.Parameter] | None = None) -> None:
        """Copy ``tensors`` into ``own`` (all of them expected) and ``optional`` (loaded when present)."""
        missing = sorted(set(own) - set(tensors))
        own = {**(optional or {}), **own}
        unexpected = sorted(set(tensors) - set(own))
        if strict and (missing or unexpected):
            raise KeyError(f"checkpoint does not match the model: missing {missing[:10]}"
                           f"{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                           f"{'...' if len(unexpected) > 10 else ''}")
        with torch.no_grad():
            for name, tensor in tensors.items():
                if name in own:
                    if own[name].shape != tensor.shape:
                        raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape "
                                         f"{tuple(own[name].shape)}")
                    own[name].copy_(tensor)

    # The save/load contract (frozenvl.pretrained): the trainable tensors are saved, the backbones are referenced
    # by source in the config. With ``config.save_lm_embeddings`` the LM's base embedding rows are saved too. A
    # backbone that trained (a run's ``model.train_lm`` / ``train_vision``) saved its weights with the trainable
    # ones: loading puts them over the weights of its source.
    def _saved_frozen(self) -> dict[str, nn.Parameter]:
        """The frozen LM tensors ``config.save_lm_embeddings`` saves: the base rows of the input embedding and of
        an untied output head (trained outside frozenvl, e.g. by OpenFlamingo, so the LM's source lacks them)."""
        if not self.config.save_lm_embeddings:
            return {}
        wanted = {id(self.lm.get_input_embeddings().base.weight), id(self.lm.get_output_embeddings().base.weight)}
        return {n: p for n, p in self.named_parameters() if id(p) in wanted and not p.requires_grad}

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.trainable_state_dict(), **{n: p.detach() for n, p in self._saved_frozen().items()}}

    def load_saved_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`saved_state_dict` gave: every trainable tensor (and ``save_lm_embeddings``' rows) must
        be there; a frozen backbone parameter that is there too was trained (``train_lm``) and is loaded; a name
        that is no parameter of this model is an error."""
        params = dict(self.named_parameters())
        own = {n: p for n, p in params.items() if p.requires_grad}
        self._load_named({**own, **self._saved_frozen()}, self._without_legacy_gates(tensors), optional=params)

    @classmethod
    def from_config(cls, config: FlamingoConfig, lm=None, tokenizer=None, vision=None, *,
                    dtype: torch.dtype | None = None, **overrides) -> Flamingo:
        """A fresh Flamingo of ``config`` (fields replaced by ``overrides``) around its backbones: loaded from the
        sources in the config, or taken from ``lm``/``tokenizer``/``vision`` (instances or sources) when given;
        all of it in ``dtype`` when given (see :meth:`from_backbones`).
        ``Flamingo.from_pretrained(folder, lm=..., vision=..., num_latents=...)`` passes its arguments here."""
        if overrides:
            config = replace(config, **overrides)
        return cls.from_backbones(config, lm=lm if lm is not None else config.lm, tokenizer=tokenizer,
                                  vision=vision if vision is not None else config.vision, dtype=dtype)


def describe_source(source) -> str:
    """How a backbone is recorded in a saved config: its source string, or the class of an instance."""
    return source if isinstance(source, str) else f"<instance:{type(source).__name__}>"

