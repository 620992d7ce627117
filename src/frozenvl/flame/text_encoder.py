"""The FLAME text encoder: a frozen causal LLM read at the last token of each facet prompt.

Which hidden state: ``layer`` indexes the ``hidden_states`` tuple of a transformers base model, where entry 0 is
the token embeddings and entry i (1 <= i <= n) is the output of decoder block i (1-based); the last entry, n, has
the model's final norm applied. The default is ``layer = n - 1``: the output of the penultimate block, which
never passes through the final norm. This is what the official code reads ("layer 39" of the 40-block
Mistral-Nemo, a hook on block index 38).

Four modes compute the same embeddings (fp32, relative error <= 1e-5):

- ``"fda"``: one pass over prefix + all K segments with the facet-decoupled mask (``facet_mask.py``);
- ``"packed"``: FDA with several captions per row and no padding between them (``pack_facets_dense``; rows of
  at most ``pack_tokens`` tokens), for batches of captions of different lengths;
- ``"prefix_cache"``: the prefix once, its KV cache repeated K times, then all segments in one pass;
- ``"naive"``: one pass per prompt (the reference), each row prefix + one segment with a 2D padding mask.

Tokens: the prefix text before the caption (with the tokenizer's leading special tokens, e.g. BOS), the
caption, the prefix text after it, and every prompt are tokenised separately and concatenated; segment
boundaries are therefore known exactly, never searched for in the ids. Only the caption is truncated so that
prefix + all segments fit ``max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from frozenvl.backbones.language import cache_argument, output_cache
from frozenvl.flame.facet_mask import OFFICIAL_BACKENDS, pack_facets, pack_facets_dense, prefix_cache_masks
from frozenvl.flame.prompts import PromptSet, clean_caption, load_prompt_set
from frozenvl.tensors import pad_sequences

DEFAULT_LM = "embedded:smollm2-135m"
MODES = ("fda", "packed", "prefix_cache", "naive")


@dataclass
class FacetTokens:
    prefix: list[int]  # leading special tokens + text before the caption + caption (truncated) + text after
    segments: list[list[int]]  # one token list per prompt


def _num_layers(model: nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if n is None:
        raise ValueError(f"cannot tell the number of layers of {type(model).__name__} from its config")
    return int(n)


def _leading_special_ids(tokenizer) -> list[int]:
    """Special tokens the tokenizer puts before a text (e.g. BOS); trailing ones (e.g. EOS) are dropped."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def _official_backend(official_compat: bool | str | None) -> str | None:
    """``official_compat`` -> the official backend it reproduces (True: "sdpa", the official runs' default)."""
    if official_compat is True:
        return "sdpa"
    if official_compat is False or official_compat is None:
        return None
    if official_compat not in OFFICIAL_BACKENDS:
        raise ValueError(f"official_compat must be True, False or one of {OFFICIAL_BACKENDS}, got {official_compat!r}")
    return official_compat


class FacetTextEncoder:
    """Frozen LLM + prompt set -> (B, K, D) facet embeddings (not normalised)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        prompt_set: PromptSet | str = "long",
        layer: int | None = None,
        max_length: int = 1024,
        mode: str = "fda",
        padding_side: str | None = None,
        official_compat: bool | str = False,
        source: str = "<instance>",
        pack_tokens: int | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        official = _official_backend(official_compat)
        if official and mode != "fda":
            raise ValueError("official_compat only applies to mode='fda'")
        if official and padding_side == "right":
            raise ValueError("official_compat pads on the left, as the official code does")
        padding_side = padding_side or ("left" if official else "right")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.base = model.base_model  # the decoder without the LM head: no logits are computed
        self.tokenizer = tokenizer
        self.prompt_set = load_prompt_set(prompt_set)
        self.num_layers = _num_layers(model)
        self.layer = self.num_layers - 1 if layer is None else int(layer)
        if not 1 <= self.layer <= self.num_layers:
            raise ValueError(f"layer must be in 1..{self.num_layers} (hidden_states index), got {self.layer}")
        self.mode = mode
        self.pack_tokens = pack_tokens  # "packed" mode: tokens per row (default and minimum: the longest caption's)
        self.padding_side = padding_side
        self.official_compat: str | bool = official or False  # "sdpa" | "eager" | False (recorded in stores)
        self.source = source
        # The official code pads with id 0; otherwise the id of padding never matters (it is masked out).
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if official_compat or pad is None else int(pad)
        before, after = self.prompt_set.split_prefix()
        self._lead = _leading_special_ids(tokenizer) + self._ids(before)
        self._after = self._ids(after)
        self._segments = [self._ids(p) for p in self.prompt_set.prompts]
        fixed = len(self._lead) + len(self._after) + sum(len(s) for s in self._segments)
        if fixed >= max_length:
            raise ValueError(f"max_length={max_length} leaves no room for the caption: the prompts alone take "
                             f"{fixed} tokens (prompts are never truncated)")
        self.max_length = max_length
        self.max_caption_tokens = max_length - fixed

    @classmethod
    def from_source(cls, source: str = DEFAULT_LM, prompt_set: PromptSet | str = "long",
                    dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
                    **kwargs) -> FacetTextEncoder:
        """The encoder of the LM ``source`` (see :func:`frozenvl.backbones.language.load_causal_lm`), loaded in
        ``dtype`` and moved to ``device`` (default: where it loads, the CPU)."""
        from frozenvl.backbones.language import load_causal_lm

        model, tokenizer = load_causal_lm(source, dtype=dtype)
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, prompt_set, source=source if isinstance(source, str) else "<instance>",
                   **kwargs)

    @property
    def num_facets(self) -> int:
        return self.prompt_set.num_facets

    @property
    def hidden_size(self) -> int:
        return int(self.base.get_input_embeddings().weight.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize(self, caption: str, clean: bool = True) -> FacetTokens:
        text = clean_caption(caption) if clean else caption
        caption_ids = self._ids(text)[: self.max_caption_tokens]
        return FacetTokens(self._lead + caption_ids + self._after, [list(s) for s in self._segments])

    @torch.no_grad()
    def encode(self, captions: Sequence[str], mode: str | None = None, clean: bool = True) -> torch.Tensor:
        """Captions -> (B, K, D) float32 facet embeddings on the CPU (hidden state at the last token of each
        prompt; the LM runs on its own device, in its own dtype)."""
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not one string")
        prefixes = [self.tokenize(c, clean).prefix for c in captions]
        if not prefixes:
            return torch.zeros(0, self.num_facets, self.hidden_size)
        run = {"fda": self._encode_fda, "packed": self._encode_packed, "prefix_cache": self._encode_prefix_cache,
               "naive": self._encode_naive}
        return run[mode](prefixes).float().cpu()

    def _hidden(self, **inputs) -> tuple[torch.Tensor, object]:
        out = self.base(**inputs, output_hidden_states=True)
        return out.hidden_states[self.layer], output_cache(out)  # (B, L, D)

    def _encode_fda(self, prefixes: list[list[int]]) -> torch.Tensor:
        packed = pack_facets(prefixes, self._segments, self.pad_id, self.dtype, self.padding_side,
                             official=self.official_compat or None)
        hidden, _ = self._hidden(input_ids=packed.input_ids.to(self.device),
                                 attention_mask=packed.attention_mask.to(self.device),
                                 position_ids=packed.position_ids.to(self.device), use_cache=False)
        rows = torch.arange(len(prefixes), device=self.device)[:, None]  # (B, 1)
        return hidden[rows, packed.last_index.to(self.device)]  # (B, K, D)

    def _encode_packed(self, prefixes: list[list[int]]) -> torch.Tensor:
        packed = pack_facets_dense(prefixes, self._segments, self.pad_id, self.dtype, self.pack_tokens)
        hidden, _ = self._hidden(input_ids=packed.input_ids.to(self.device),
                                 attention_mask=packed.attention_mask.to(self.device),
                                 position_ids=packed.position_ids.to(self.device), use_cache=False)
        return hidden[packed.row.to(self.device)[:, None], packed.last_index.to(self.device)]  # (B, K, D)

    def _encode_prefix_cache(self, prefixes: list[list[int]]) -> torch.Tensor:
        batch, n_facets = len(prefixes), self.num_facets
        p_lens = [len(p) for p in prefixes]
        s_lens = [len(s) for s in self._segments]
        prefix_mask, seg_mask = prefix_cache_masks(p_lens, s_lens, self.dtype, self.padding_side)
        p_ids, p_real = pad_sequences(prefixes, self.pad_id, self.padding_side)
        p_pos = (p_real.cumsum(1) - 1).clamp(min=0)  # (B, P)
        _, cache = self._hidden(input_ids=p_ids.to(self.device), attention_mask=prefix_mask.to(self.device),
                                position_ids=p_pos.to(self.device), use_cache=True)
        cache.batch_repeat_interleave(n_facets)  # (B*K, H, P, d) per layer; row b*K + k
        s_ids, s_real = pad_sequences(self._segments, self.pad_id, self.padding_side)  # (K, S)
        s_ids, s_real = s_ids.repeat(batch, 1), s_real.repeat(batch, 1)  # (B*K, S)
        offsets = torch.tensor(p_lens).repeat_interleave(n_facets)[:, None]  # (B*K, 1)
        s_pos = offsets + (s_real.cumsum(1) - 1).clamp(min=0)  # (B*K, S)
        hidden, _ = self._hidden(input_ids=s_ids.to(self.device), attention_mask=seg_mask.to(self.device),
                                 position_ids=s_pos.to(self.device), use_cache=True,
                                 **{cache_argument(self.base): cache})
        last = s_real.shape[1] - 1 if self.padding_side == "left" else s_real.sum(1) - 1  # (B*K,)
        rows = torch.arange(batch * n_facets)
        last = torch.as_tensor(last).expand(batch * n_facets)
        return hidden[rows.to(self.device), last.to(self.device)].reshape(batch, n_facets, -1)  # (B, K, D)

    def _encode_naive(self, prefixes: list[list[int]]) -> torch.Tensor:
        out = []
        for segment in self._segments:
            rows = [p + segment for p in prefixes]
            ids, real = pad_sequences(rows, self.pad_id, self.padding_side)
            pos = (real.cumsum(1) - 1).clamp(min=0)
            hidden, _ = self._hidden(input_ids=ids.to(self.device), attention_mask=real.to(self.device),
                                     position_ids=pos.to(self.device), use_cache=False)
            last = ids.shape[1] - 1 if self.padding_side == "left" else real.sum(1) - 1
            last = torch.as_tensor(last).expand(len(rows))
            out.append(hidden[torch.arange(len(rows), device=self.device), last.to(self.device)])  # (B, D)
        return torch.stack(out, dim=1)  # (B, K, D)

    def describe(self) -> dict:
        """What determines the embeddings: stored as store metadata and in model checkpoints."""
        return {"lm": self.source, "layer": self.layer, "num_layers": self.num_layers,
                "prompt_set": self.prompt_set.name, "prompt_set_hash": self.prompt_set.stable_hash(),
                "num_facets": self.num_facets, "dim": self.hidden_size, "max_length": self.max_length,
                "official_compat": self.official_compat}
