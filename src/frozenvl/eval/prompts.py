"""Few-shot prompts: demonstrations rendered with the task's template, then the query left open at its target.

A prompt is returned in two parts so that a harness can encode the demonstrations once and reuse them for
every query that shares them: ``context`` (the demonstrations) and ``query`` (the query, ending where the
answer starts), plus the media in the order of their ``<image>`` markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.eval.records import EvalRecord
from frozenvl.eval.tasks import TaskSpec

# "0-shot" as in Flamingo / OpenFlamingo: two demonstrations shown as text only (no image, no <image> marker)
ZERO_SHOT_TEXT_DEMOS = 2


@dataclass
class Prompt:
    context: str
    query: str
    media: list[Any]
    num_context_media: int

    @property
    def text(self) -> str:
        return self.context + self.query


def demos_for_shots(shots: int) -> tuple[int, bool]:
    """How many demonstrations a shot count uses, and whether they are text-only: 0 -> (2, True)."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    return (ZERO_SHOT_TEXT_DEMOS, True) if shots == 0 else (shots, False)


def _fields(spec: TaskSpec, record: EvalRecord) -> dict[str, str]:
    fields = {}
    if "{question}" in spec.prompt_template:
        if record.question is None:
            raise ValueError(f"task {spec.name!r}: record {record.key!r} has no question")
        fields["question"] = record.question
    if "{text}" in spec.prompt_template:
        if record.text is None:
            raise ValueError(f"task {spec.name!r}: record {record.key!r} has no text")
        fields["text"] = record.text
    return fields


def render_demonstration(spec: TaskSpec, record: EvalRecord, with_image: bool = True,
                         class_names: Sequence[str] | None = None) -> str:
    """One demonstration, target included, e.g. ``<image>Output:a red cube.<|endofchunk|>``."""
    target = {spec.target_field: spec.target(record, class_names)}
    text = spec.prompt_template.format(**_fields(spec, record), **target)
    return text if with_image else text.replace(IMAGE_TOKEN, "")


def render_query(spec: TaskSpec, record: EvalRecord) -> str:
    """The query, cut right before its target, e.g. ``<image>Question:what colour? Short answer:``."""
    head = spec.prompt_template.split("{" + spec.target_field + "}", 1)[0]
    return head.format(**_fields(spec, record))


def candidate_continuation(candidate: str) -> str:
    """What a close-ended candidate is scored as after the query: the answer and the end of the chunk, so that
    a candidate is not rewarded for being the prefix of a longer answer."""
    return candidate + END_OF_CHUNK


def build_prompt(spec: TaskSpec, demos: Sequence[EvalRecord], query: EvalRecord,
                 text_only_demos: bool = False, class_names: Sequence[str] | None = None) -> Prompt:
    """Demonstrations in the given order, then the query. Text-only demonstrations contribute no media."""
    context = "".join(render_demonstration(spec, d, not text_only_demos, class_names) for d in demos)
    media = [] if text_only_demos else [d.media for d in demos]
    return Prompt(context=context, query=render_query(spec, query), media=[*media, query.media],
                  num_context_media=len(media))


def build_few_shot_prompt(spec: TaskSpec, demos: Sequence[EvalRecord], query: EvalRecord, shots: int,
                          class_names: Sequence[str] | None = None) -> Prompt:
    """:func:`build_prompt` for a shot count: ``shots`` demonstrations with images, or for 0 shots the two
    text-only ones (``demos`` must hold exactly :func:`demos_for_shots` ``(shots)[0]`` records)."""
    count, text_only = demos_for_shots(shots)
    if len(demos) != count:
        raise ValueError(f"{shots}-shot needs {count} demonstrations, got {len(demos)}")
    return build_prompt(spec, demos, query, text_only_demos=text_only, class_names=class_names)
