"""The CLIP baseline's tokenizer: CLIP's byte-pair encoding, as open_clip ships it (``open_clip.tokenizer.
SimpleTokenizer``: the 49,408-token vocabulary file is part of the package, nothing is downloaded).

A text becomes ``[SOT] tokens [EOT]``, lower-cased and cleaned by open_clip, cut to ``max_length`` (EOT kept) and
padded with 0 to ``max_length``: exactly open_clip's ``tokenize``. The text tower reads the hidden state at EOT,
the largest id of the vocabulary (open_clip's ``argmax`` pooling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from frozenvl.config import Config, ConfigError, check_choice


@dataclass
class TokenizerConfig(Config):
    kind: str = "bpe"  # CLIP's BPE (open_clip's SimpleTokenizer); the only kind
    max_length: int = 77  # open_clip's context length, SOT and EOT included

    def validate(self, where: str) -> None:
        check_choice(f"{where}.kind", self.kind, ("bpe",))
        if self.max_length < 3:
            raise ConfigError(f"{where}.max_length must be >= 3; got {self.max_length}")


@lru_cache(maxsize=8)
def _open_clip_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer as OpenClipTokenizer

    return OpenClipTokenizer(context_length=context_length)


class SimpleTokenizer:
    """Texts -> ``{"input_ids", "attention_mask"}``, both (B, max_length): open_clip's token ids, and 1 on the
    tokens up to EOT."""

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()
        self._tokenizer = _open_clip_tokenizer(self.config.max_length)

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.vocab_size)

    @property
    def eot_id(self) -> int:
        return int(self._tokenizer.eot_token_id)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("the tokenizer takes a list of texts, not one string")
        ids = self._tokenizer(list(texts))  # (B, max_length) long, 0 after EOT
        eot = (ids == self.eot_id).int().argmax(dim=1)  # (B,) the first EOT of each row
        mask = (torch.arange(ids.shape[1])[None] <= eot[:, None]).long()  # (B, max_length)
        return {"input_ids": ids, "attention_mask": mask}
