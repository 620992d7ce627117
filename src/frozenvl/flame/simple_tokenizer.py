"""Tokenizers for the CLIP baseline's text tower, built in code: nothing to download, nothing to fit.

- ``"word"``: lower-cased words and punctuation marks, each mapped to a bucket of a fixed-size vocabulary by a
  stable hash (BLAKE2b, not Python's salted ``hash``). With a few hundred distinct words and thousands of buckets,
  collisions are rare, and a word never seen in training still gets a (random, untrained) row.
- ``"byte"``: the UTF-8 bytes of the text.

Ids 0, 1, 2 are PAD, BOS and EOS in both; a sequence is ``[BOS] tokens [EOS]`` cut to ``max_length`` (EOS kept).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from frozenvl.config import Config, ConfigError, check_choice
from frozenvl.tensors import pad_sequences

PAD, BOS, EOS = 0, 1, 2
SPECIAL = 3
_WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass
class TokenizerConfig(Config):
    kind: str = "word"  # "word" (hashed words) | "byte"
    vocab_size: int = 4096  # "word" only: hash buckets + the special ids
    max_length: int = 77  # BOS and EOS included

    def validate(self, where: str) -> None:
        check_choice(f"{where}.kind", self.kind, ("word", "byte"))
        if self.max_length < 3:
            raise ConfigError(f"{where}.max_length must be >= 3; got {self.max_length}")
        if self.kind == "word" and self.vocab_size <= SPECIAL:
            raise ConfigError(f"{where}.vocab_size must be > {SPECIAL}; got {self.vocab_size}")


class SimpleTokenizer:
    """Text -> ids (``encode``) and a padded batch (``__call__`` -> input_ids, attention_mask)."""

    def __init__(self, config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size if self.config.kind == "word" else 256 + SPECIAL

    def _word_id(self, word: str) -> int:
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
        return SPECIAL + int.from_bytes(digest, "little") % (self.config.vocab_size - SPECIAL)

    def encode(self, text: str) -> list[int]:
        if self.config.kind == "word":
            body = [self._word_id(w) for w in _WORDS.findall(text.lower())]
        else:
            body = [SPECIAL + b for b in text.encode("utf-8")]
        return [BOS, *body[: self.config.max_length - 2], EOS]

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded (B, L) ``input_ids`` and ``attention_mask`` (1 on real tokens), L = longest row."""
        if isinstance(texts, str):
            raise TypeError("the tokenizer takes a list of texts, not one string")
        rows = [self.encode(t) for t in texts]
        ids, mask = pad_sequences(rows, PAD, "right", length=max((len(r) for r in rows), default=2))
        return {"input_ids": ids, "attention_mask": mask}
