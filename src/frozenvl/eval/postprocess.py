"""Turning a raw generation into the answer that is scored.

Generations are decoded text that may run past the answer: into ``<|endofchunk|>``, a new demonstration
(``Output:``, ``Question:``) or a new line. Each function keeps only the answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN

_VQA_STOP = re.compile(r"Question|Short answer|Answer:")
_SPACES = re.compile(r"\s+")


def cut_at_end_of_chunk(text: str) -> str:
    """Everything before the first ``<|endofchunk|>`` (or ``<image>``), stripped."""
    for marker in (END_OF_CHUNK, IMAGE_TOKEN):
        text = text.split(marker, 1)[0]
    return text.strip()


def postprocess_caption(text: str) -> str:
    """A caption: cut at the end of the chunk, at a new ``Output`` demonstration and at the first line break;
    double quotes dropped, whitespace collapsed."""
    text = cut_at_end_of_chunk(text)
    text = text.split("Output", 1)[0].split("\n", 1)[0]
    return _SPACES.sub(" ", text.replace('"', "")).strip()


def postprocess_vqa(text: str) -> str:
    """A short answer: cut at the end of the chunk, at the first line break and where the model starts a new
    ``Question`` / ``Short answer``; stripped."""
    text = cut_at_end_of_chunk(text).split("\n", 1)[0]
    return _VQA_STOP.split(text, 1)[0].strip()


def postprocess_none(text: str) -> str:
    return cut_at_end_of_chunk(text)


POSTPROCESSORS: dict[str, Callable[[str], str]] = {
    "caption": postprocess_caption,
    "vqa": postprocess_vqa,
    "none": postprocess_none,
}


def postprocess(name: str, text: str) -> str:
    """Apply the post-processing called ``name`` (``caption``, ``vqa`` or ``none``)."""
    if name not in POSTPROCESSORS:
        raise ValueError(f"unknown post-processing {name!r}; known: {sorted(POSTPROCESSORS)}")
    return POSTPROCESSORS[name](text)
