"""Bad-data policy: every sample the loader or a converter cannot use is skipped and counted by reason.

Nothing in a shard may crash or hang a run. Readers raise `BadSample(reason)` for a sample they cannot use; the
loop that drives them catches it, counts it in a `SkipCounter` and moves on. Counters travel from DataLoader
workers to the main process inside the batches, so the trainer can log them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

logger = logging.getLogger("frozenvl.data")

# Reasons a sample (or a whole shard) is skipped. Keys of SkipCounter are these strings.
SKIP_REASONS: dict[str, str] = {
    "missing_shard": "the shard file does not exist",
    "not_a_file": "the shard path is not a regular file (a FIFO, a device, a folder): not opened",
    "unreadable_shard": "the shard is not a readable tar archive",
    "truncated_shard": "the shard ends in the middle of a member; samples before the cut were kept",
    "bad_member": "a tar member has no key/extension or could not be read",
    "member_too_large": "a tar member (or a JSONL line) is larger than the reader's cap; its sample is skipped unread",
    "duplicate_key": "a sample key (or one of its members) appears again in a shard or source; the first is kept",
    "bad_json": "the json member is not valid UTF-8 JSON object",
    "missing_field": "a required field or member is absent",
    "bad_field": "a field has the wrong type or an invalid value",
    "unknown_kind": "the sample's kind is not one of frozenvl's formats",
    "missing_image": "an image file the source refers to does not exist",
    "corrupt_image": "an image could not be decoded (corrupt, truncated or not an image)",
    "image_too_large": "an image has more pixels than the loader's limit",
    "missing_video": "a video file the source refers to does not exist",
    "corrupt_video": "a video file could not be decoded (corrupt, truncated, not a video, or frames too large)",
    "empty_text": "the text (caption, question, page) is empty after stripping",
    "image_token_in_text": "the text holds a literal <image> marker, which would not match the sample's images",
    "too_many_images": "more images than max_images (and truncation is off or impossible)",
    "text_too_long": "more tokens than max_tokens (and truncation is off or impossible)",
    "no_images": "no image left after filtering and truncation",
    "low_similarity": "image-text similarity below min_similarity",
    "transform_failed": "the loader's transform raised an exception on this sample",
}
# Not bad data: samples removed on purpose by a sampling policy. Counted in the same counter under these names.
POLICY_REASONS: dict[str, str] = {
    "dropped_single_image": "single-image interleaved page dropped with probability single_image_drop_prob",
}


class BadSample(Exception):
    """A sample (or shard) that must be skipped; `reason` is a key of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in SKIP_REASONS and reason not in POLICY_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts skipped samples by reason; logs the first occurrence of each reason once."""

    def __init__(self, counts: Mapping[str, int] | None = None):
        self.counts: Counter[str] = Counter(counts or {})

    def add(self, reason: str, detail: str = "", n: int = 1) -> None:
        if self.counts[reason] == 0 and reason in SKIP_REASONS:
            logger.warning("skipping bad data (%s): %s; further ones are only counted", reason, detail or "-")
        self.counts[reason] += n

    def update(self, other: SkipCounter | Mapping[str, int]) -> None:
        self.counts.update(other.counts if isinstance(other, SkipCounter) else other)

    @property
    def total(self) -> int:
        """Number of skips for bad data (policy drops excluded)."""
        return sum(n for r, n in self.counts.items() if r in SKIP_REASONS)

    def as_dict(self) -> dict[str, int]:
        return {r: n for r, n in sorted(self.counts.items()) if n}

    def report(self) -> str:
        """One line per reason, e.g. for a log: `corrupt_image: 3 (an image could not be decoded ...)`."""
        if not any(self.counts.values()):
            return "nothing skipped"
        lines = []
        for reason, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            if n:
                why = SKIP_REASONS.get(reason) or POLICY_REASONS.get(reason, "")
                lines.append(f"{reason}: {n} ({why})")
        return "\n".join(lines)

    @classmethod
    def merged(cls, counters: Iterable[SkipCounter | Mapping[str, int]]) -> SkipCounter:
        out = cls()
        for c in counters:
            out.update(c)
        return out

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"
