"""FLAME prompt sets: a caption prefix plus K facet prompts, kept as data (YAML files in ``prompt_sets/``).

A facet embedding is read at the last token of each prompt, so a prompt set fully determines the text
embeddings (together with the LLM and the layer). The official sets follow the FLAME embedding scripts:

- ``raw``: 1 facet, the overall meaning of the caption;
- ``short``: 3 facets (overall meaning, category of the main object, its prominent characteristic);
- ``long``: 7 facets (the 3 above, the minor object and its characteristic, the primary action or event, the
  overall atmosphere or emotion), each asking for the meaning "in just one word".

The official recipe stores 1 + 3 + 7 = 11 embeddings per image (raw caption, short and long re-captions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

PROMPT_SET_DIR = Path(__file__).parent / "prompt_sets"
OFFICIAL_PROMPT_SETS = ("raw", "short", "long")
CAPTION_FIELD = "{caption}"


@dataclass(frozen=True)
class PromptSet:
    """``prefix`` holds ``{caption}`` once; each prompt is a segment appended after the prefix."""

    name: str
    prefix: str
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.prefix.count(CAPTION_FIELD) != 1:
            raise ValueError(f"prompt set {self.name!r}: prefix must contain {CAPTION_FIELD} exactly once")
        if not self.prompts or any(not p for p in self.prompts):
            raise ValueError(f"prompt set {self.name!r}: needs at least one non-empty prompt")

    @property
    def num_facets(self) -> int:
        return len(self.prompts)

    def split_prefix(self) -> tuple[str, str]:
        """The prefix text before and after the caption."""
        before, after = self.prefix.split(CAPTION_FIELD)
        return before, after

    def stable_hash(self) -> str:
        """A hash of the content (prefix and prompts, in order), independent of the name and of the file."""
        payload = json.dumps({"prefix": self.prefix, "prompts": list(self.prompts)}, ensure_ascii=False,
                             separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"name": self.name, "prefix": self.prefix, "prompts": list(self.prompts)}

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")


def prompt_set_from_dict(data: dict, default_name: str = "custom") -> PromptSet:
    if not isinstance(data, dict) or "prefix" not in data or "prompts" not in data:
        raise ValueError("a prompt set needs the fields 'prefix' (with {caption}) and 'prompts' (a list)")
    prompts = data["prompts"]
    if isinstance(prompts, str) or not isinstance(prompts, list):
        raise ValueError("prompt set field 'prompts' must be a list of strings")
    return PromptSet(str(data.get("name", default_name)), str(data["prefix"]), tuple(str(p) for p in prompts))


def load_prompt_set(name_or_path: str | Path | PromptSet) -> PromptSet:
    """An official set by name (``raw``, ``short``, ``long``) or a custom set from a YAML file."""
    if isinstance(name_or_path, PromptSet):
        return name_or_path
    spec = str(name_or_path)
    path = PROMPT_SET_DIR / f"{spec}.yaml" if spec in OFFICIAL_PROMPT_SETS else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt set {spec!r} is neither an official set ({', '.join(OFFICIAL_PROMPT_SETS)}) nor a YAML file"
        )
    from frozenvl.config import load_yaml

    # load_yaml: one error naming the file for invalid or binary YAML, YAML nested too deeply, a non-mapping
    data = load_yaml(path)
    try:
        return prompt_set_from_dict(data, default_name=path.stem)
    except ValueError as e:
        raise ValueError(f"prompt set file {path}: {e}") from None


def clean_caption(caption: str) -> str:
    """Normalise a caption the way FLAME does before templating: double quotes become single quotes (the
    template quotes the caption with ``"``), and the caption ends with a full stop (a final ``?`` becomes ``.``).

    An empty or blank caption stays empty; callers skip it.
    """
    text = " ".join(caption.split()).replace('"', "'")
    if not text:
        return ""
    if text.endswith("?"):
        text = text[:-1] + "."
    if not text.endswith("."):
        text += "."
    return text
