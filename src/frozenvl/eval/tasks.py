"""Evaluation tasks as data: a :class:`TaskSpec` per benchmark and a registry (protocol: docs/evaluation.md).

A task says how a record becomes a demonstration or a query (a prompt template whose last field is the
target), how to decode (beam search with 3 beams; at most 20 new tokens for captions, 5 for short answers),
how to clean a generation and which metric scores it. Close-ended tasks (classification, multiple choice)
are not decoded: the harness ranks candidates by length-normalised log-likelihood.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.eval import records as readers
from frozenvl.eval.metrics import VQA_NORMALIZATIONS, accuracy, cider, exact_match, roc_auc, vqa_score
from frozenvl.eval.postprocess import POSTPROCESSORS
from frozenvl.eval.records import EvalRecord

KINDS = ("captioning", "vqa", "classification", "multiple_choice", "video_captioning", "video_qa")
METRICS = ("cider", "vqa_accuracy", "exact_match", "accuracy", "roc_auc")
CLOSE_ENDED = ("classification", "multiple_choice")

CAPTION_TEMPLATE = IMAGE_TOKEN + "Output:{caption}" + END_OF_CHUNK
VQA_TEMPLATE = IMAGE_TOKEN + "Question:{question} Short answer:{answer}" + END_OF_CHUNK
CLASSIFICATION_TEMPLATE = IMAGE_TOKEN + "Output:{answer}" + END_OF_CHUNK
HATEFUL_MEMES_TEMPLATE = (
    IMAGE_TOKEN + "is an image with: '{text}' written on it. Is it hateful? Answer:{answer}" + END_OF_CHUNK
)

READERS: dict[str, Callable[..., Any]] = {
    "coco_captions": readers.read_coco_captions,
    "vqav2": readers.read_vqav2,
    "textvqa": readers.read_textvqa,
    "vizwiz": readers.read_vizwiz,
    "class_folder": readers.read_class_folder,
    "hateful_memes": readers.read_hateful_memes,
    "video_captions": readers.read_video_captions,
    "video_qa": readers.read_video_qa,
}


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark. ``prompt_template`` holds ``<image>``, the record's fields (``{question}``, ``{text}``)
    and, last, the target field (``{caption}`` or ``{answer}``) followed by ``<|endofchunk|>``.

    ``candidates``: fixed answer set of a close-ended task (e.g. ``("no", "yes")``); None for classification
    means the class names come with the data, and for multiple choice each record's ``meta["choices"]``.
    ``positive``: the candidate whose probability ROC-AUC ranks by. ``vqa_normalization``: when VQA accuracy
    normalises answers, ``"official"`` (the official VQA evaluation) or ``"openflamingo"`` (OpenFlamingo's
    published numbers); see :func:`frozenvl.eval.metrics.vqa_accuracy`.
    """

    name: str
    kind: str
    prompt_template: str
    metric: str
    max_new_tokens: int = 0
    num_beams: int = 3
    postprocess: str = "none"
    reader: str | None = None
    candidates: tuple[str, ...] | None = None
    positive: str | None = None
    length_normalize: bool = True
    vqa_normalization: str = "official"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: metric must be one of {METRICS}, got {self.metric!r}")
        if self.postprocess not in POSTPROCESSORS:
            raise ValueError(f"task {self.name!r}: unknown post-processing {self.postprocess!r}")
        if self.reader is not None and self.reader not in READERS:
            raise ValueError(f"task {self.name!r}: unknown reader {self.reader!r}; known: {sorted(READERS)}")
        if not self.prompt_template.startswith(IMAGE_TOKEN):
            raise ValueError(f"task {self.name!r}: the prompt template must start with {IMAGE_TOKEN}")
        fields = [f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f is not None]
        if not fields or fields[-1] not in ("caption", "answer") or fields.count(fields[-1]) != 1:
            raise ValueError(f"task {self.name!r}: the template's last field must be {{caption}} or "
                             "{answer}, once")
        if not self.prompt_template.endswith("{" + fields[-1] + "}" + END_OF_CHUNK):
            raise ValueError(f"task {self.name!r}: the template must end with the target and {END_OF_CHUNK}")
        if self.kind not in CLOSE_ENDED and self.max_new_tokens < 1:
            raise ValueError(f"task {self.name!r}: a generative task needs max_new_tokens >= 1")
        if self.metric == "roc_auc" and (self.candidates is None or self.positive not in self.candidates):
            raise ValueError(f"task {self.name!r}: roc_auc needs candidates and a positive one among them")
        if self.vqa_normalization not in VQA_NORMALIZATIONS:
            raise ValueError(f"task {self.name!r}: vqa_normalization must be one of {', '.join(VQA_NORMALIZATIONS)}, "
                             f"got {self.vqa_normalization!r}")

    @property
    def target_field(self) -> str:
        return [f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f is not None][-1]

    @property
    def close_ended(self) -> bool:
        return self.kind in CLOSE_ENDED

    @property
    def is_video(self) -> bool:
        return self.kind.startswith("video")

    def candidates_for(self, record: EvalRecord, class_names: Sequence[str] | None = None) -> list[str]:
        """The answers a close-ended query chooses from."""
        if self.candidates is not None:
            return list(self.candidates)
        if self.kind == "multiple_choice":
            if not record.meta.get("choices"):
                raise ValueError(f"task {self.name!r}: record {record.key!r} has no meta['choices']")
            return list(record.meta["choices"])
        if class_names is None:
            raise ValueError(f"task {self.name!r}: classification needs the class names")
        return list(class_names)

    def target(self, record: EvalRecord, class_names: Sequence[str] | None = None) -> str:
        """The answer a demonstration shows: first caption, most common human answer, or the label's name."""
        if self.kind in ("captioning", "video_captioning"):
            value = record.caption
        elif self.kind in ("vqa", "video_qa"):
            value = record.answer
        elif record.label is None:
            value = None
        else:
            value = self.candidates_for(record, class_names)[record.label]
        if value is None:
            raise ValueError(f"task {self.name!r}: record {record.key!r} has no target to show")
        return value

    def score(self, records: Sequence[EvalRecord], predictions: Mapping[str, Any],
              class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Score predictions keyed by record key: generated text for generative tasks, the chosen candidate
        for accuracy, the probability of ``positive`` for ROC-AUC. Returns the metric's dict with the headline
        number under ``"score"``, in percent as papers report it (ROC-AUC included)."""
        missing = [r.key for r in records if r.key not in predictions]
        if missing:
            raise ValueError(f"task {self.name!r}: no prediction for {len(missing)} records, "
                             f"e.g. {missing[:3]}")
        if self.metric == "cider":
            out = cider({r.key: predictions[r.key] for r in records}, {r.key: r.captions for r in records})
            return {"score": out["CIDEr"], **out}
        if self.metric == "vqa_accuracy":
            out = vqa_score({r.key: predictions[r.key] for r in records}, {r.key: r.answers for r in records},
                            self.vqa_normalization)
            per = {k: 100.0 * v for k, v in out["per_sample"].items()}  # percent, like the headline score
            return {"score": out["accuracy"], **out, "per_sample": per}
        if self.metric == "exact_match":
            per = {r.key: 100.0 * exact_match(predictions[r.key], r.answers) for r in records}  # 0 or 100
            return {"score": sum(per.values()) / len(per), "per_sample": per}
        if self.metric == "accuracy":
            labels = [self.target(r, class_names) for r in records]
            value = 100.0 * accuracy([predictions[r.key] for r in records], labels)
            return {"score": value, "accuracy": value}
        labels = [int(self.target(r, class_names) == self.positive) for r in records]
        value = 100.0 * roc_auc(labels, [float(predictions[r.key]) for r in records])
        return {"score": value, "roc_auc": value}


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Add a task to the registry (a user's own benchmark, or a variant of a built-in one)."""
    if spec.name in TASKS and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def _captioning(name: str, kind: str = "captioning", reader: str = "coco_captions") -> TaskSpec:
    return TaskSpec(name, kind, CAPTION_TEMPLATE, metric="cider", max_new_tokens=20, postprocess="caption",
                    reader=reader)


def _vqa(name: str, reader: str, kind: str = "vqa", metric: str = "vqa_accuracy") -> TaskSpec:
    return TaskSpec(name, kind, VQA_TEMPLATE, metric=metric, max_new_tokens=5, postprocess="vqa",
                    reader=reader)


for _spec in (
    _captioning("coco"),
    _captioning("flickr30k"),
    _vqa("vqav2", "vqav2"),
    _vqa("okvqa", "vqav2"),
    _vqa("textvqa", "textvqa"),
    _vqa("vizwiz", "vizwiz"),
    TaskSpec("imagenet", "classification", CLASSIFICATION_TEMPLATE, metric="accuracy", reader="class_folder"),
    TaskSpec("hateful_memes", "classification", HATEFUL_MEMES_TEMPLATE, metric="roc_auc",
             reader="hateful_memes", candidates=("no", "yes"), positive="yes"),
    _captioning("msvd_captioning", kind="video_captioning", reader="video_captions"),
    _captioning("msrvtt_captioning", kind="video_captioning", reader="video_captions"),
    _vqa("msvd_qa", "video_qa", kind="video_qa", metric="exact_match"),
    _vqa("msrvtt_qa", "video_qa", kind="video_qa", metric="exact_match"),
):
    register_task(_spec)

# The synthetic world's evaluation splits (frozenvl.data.generate_world), read by frozenvl.eval.synthetic.
# synth_icl_words: in-context learning; demonstrations from the query's episode, candidates are its words.
for _spec in (
    TaskSpec("synth_captioning", "captioning", CAPTION_TEMPLATE, metric="cider", max_new_tokens=20,
             postprocess="caption"),
    TaskSpec("synth_vqa", "vqa", VQA_TEMPLATE, metric="vqa_accuracy", max_new_tokens=5, postprocess="vqa"),
    TaskSpec("synth_classification", "classification", CLASSIFICATION_TEMPLATE, metric="accuracy"),
    TaskSpec("synth_heldout", "classification", CLASSIFICATION_TEMPLATE, metric="accuracy"),
    TaskSpec("synth_video_qa", "video_qa", VQA_TEMPLATE, metric="exact_match", max_new_tokens=5,
             postprocess="vqa"),
    TaskSpec("synth_icl_words", "multiple_choice", CLASSIFICATION_TEMPLATE, metric="accuracy"),
):
    register_task(_spec)
