"""Evaluation metrics as published work computes them: CIDEr, VQA accuracy, ROC-AUC, accuracy, Recall@K.

Every metric takes plain Python data (predictions and references, keyed or in order) and returns floats or a
small dict; scores that papers report in percent (CIDEr, VQA accuracy, Recall@K) are returned in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from frozenvl.eval.ptb_tokenize import ptb_tokenize
from frozenvl.eval.vqa_normalize import normalize_answer, strip_whitespace


def cider(predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]],
          tokenizer: str = "auto") -> dict[str, Any]:
    """Corpus CIDEr (pycocoevalcap's CIDEr-D: n=4, sigma=6) x 100, after PTB tokenisation.

    ``predictions`` maps a sample key to one generated caption, ``references`` the same keys to the human
    captions. ``tokenizer``: ``"auto"`` (Java PTB tokenizer when Java is present, else the Python stand-in),
    ``"ptb-java"`` or ``"python-fallback"``. Returns ``{"CIDEr": float, "tokenizer": str, "per_sample":
    {key: float}}``; the document frequencies come from this corpus's references, so the score depends on
    the whole set, as in papers.
    """
    from pycocoevalcap.cider.cider import Cider

    if set(predictions) != set(references):
        missing = set(references) ^ set(predictions)
        raise ValueError(f"predictions and references must have the same keys; {len(missing)} differ")
    if not predictions:
        raise ValueError("cider needs at least one sample")
    for key, refs in references.items():
        if len(refs) == 0:
            raise ValueError(f"sample {key!r} has no reference caption")
    # pycocoevalcap's scorer wants string keys; keep a map back to the caller's keys
    names = {key: str(i) for i, key in enumerate(predictions)}
    captions = {f"r{names[k]}": list(refs) for k, refs in references.items()}
    captions.update({f"p{names[k]}": [pred] for k, pred in predictions.items()})
    tokens, used = ptb_tokenize(captions, tokenizer)
    gts = {names[k]: tokens[f"r{names[k]}"] for k in predictions}
    res = {names[k]: tokens[f"p{names[k]}"] for k in predictions}
    score, per_sample = Cider().compute_score(gts, res)
    # per-sample scores come in the order of gts' keys, which is the order of predictions
    per_key = {key: 100.0 * float(s) for key, s in zip(predictions, per_sample)}
    return {"CIDEr": 100.0 * float(score), "tokenizer": used, "per_sample": per_key}


VQA_NORMALIZATIONS = ("official", "openflamingo")


def vqa_accuracy(prediction: str, answers: Sequence[str], normalization: str = "official") -> float:
    """VQA accuracy of one prediction against the human answers (usually 10), in [0, 1].

    min(1, #matching humans / 3), averaged over the leave-one-out subsets of the human answers (each subset
    drops one annotator). With 10 answers: 0, 1, 2, 3, >=4 matches give 0, 0.3, 0.6, 0.9, 1.0. Prediction and
    answers lose surrounding whitespace; then ``normalization`` says when :func:`normalize_answer` applies to
    both:

    - ``"official"`` (the official VQA evaluation): only when the annotators disagree (the answers are not all
      the same); a unanimous answer is compared as written, so ``dont`` scores 0 against ten ``don't``;
    - ``"openflamingo"`` (OpenFlamingo's ``vqa_metric.py``, its published VQAv2 / OK-VQA / VizWiz / TextVQA
      numbers): always.

    A single reference answer scores by exact match (0 or 1) after the same normalisation.
    """
    if normalization not in VQA_NORMALIZATIONS:
        raise ValueError(f"VQA normalization must be one of {', '.join(VQA_NORMALIZATIONS)}; got {normalization!r}")
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = strip_whitespace(prediction)
    refs = [strip_whitespace(a) for a in answers]
    if normalization == "openflamingo" or len(set(refs)) > 1:
        pred = normalize_answer(pred)
        refs = [normalize_answer(r) for r in refs]
    matches = [r == pred for r in refs]
    total = sum(matches)
    if len(refs) == 1:
        return float(total)  # a single reference has no leave-one-out subset: exact match
    # leaving out annotator i removes one match exactly when annotator i matched
    return float(np.mean([min(1.0, (total - m) / 3.0) for m in matches]))


def vqa_score(predictions: Mapping[Any, str], answers: Mapping[Any, Sequence[str]],
              normalization: str = "official") -> dict[str, Any]:
    """Mean VQA accuracy over a set, in percent (``normalization``: see :func:`vqa_accuracy`).

    Returns ``{"accuracy": float, "normalization": str, "per_sample": {key: float in [0, 1]}}``.
    """
    if set(predictions) != set(answers):
        raise ValueError("predictions and answers must have the same keys")
    if not predictions:
        raise ValueError("vqa_score needs at least one sample")
    per = {k: vqa_accuracy(predictions[k], answers[k], normalization) for k in predictions}
    return {"accuracy": 100.0 * float(np.mean(list(per.values()))), "normalization": normalization,
            "per_sample": per}


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised answer (top-1 accuracy of video QA)."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(a) == pred for a in answers))


def accuracy(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Fraction of exact matches, in [0, 1]."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("accuracy needs at least one sample")
    return float(np.mean([p == y for p, y in zip(predictions, labels)]))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_vals[end + 1] == sorted_vals[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve for binary labels (1 = positive), ties counted as one half.

    Equals P(score of a random positive > score of a random negative) + 0.5 P(equal) (Mann-Whitney U).
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("labels and scores must be 1-D sequences of the same length")
    if not np.isin(y, [0, 1]).all():
        raise ValueError("roc_auc expects labels in {0, 1}")
    if not np.isfinite(s).all():
        raise ValueError("roc_auc got non-finite scores")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs at least one positive and one negative label")
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def recall_at_k(similarity: Any, text_to_image: Sequence[int],
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval Recall@K in both directions, in percent.

    ``similarity``: (num_images, num_texts) scores; ``text_to_image[j]`` is the image that caption j
    describes (several captions per image allowed). Image->text is a hit when any of the image's captions is
    among its top K texts; text->image when the caption's image is among its top K images. Ties are broken
    against the hit (a right item tied with a wrong one ranks after it), so a score never profits from ties.
    Returns ``{"i2t_R@1": ..., "t2i_R@1": ..., ...}``.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    owner = np.asarray(text_to_image)
    if sim.ndim != 2 or sim.shape[1] != len(owner):
        raise ValueError(f"similarity must be (num_images, num_texts); got {sim.shape}, {len(owner)} texts")
    n_img = sim.shape[0]
    if owner.min(initial=0) < 0 or owner.max(initial=0) >= n_img:
        raise ValueError("text_to_image holds an image index out of range")
    positive = owner[None, :] == np.arange(n_img)[:, None]  # (I, T)
    if not positive.any(axis=1).all():
        raise ValueError("every image needs at least one caption")
    # rank of the best positive = number of items scoring >= it, minus the positives counted among them
    best_pos_i2t = np.where(positive, sim, -np.inf).max(axis=1)  # (I,)
    i2t_rank = ((sim >= best_pos_i2t[:, None]) & ~positive).sum(axis=1)  # wrong texts scoring >= best right
    pos_t2i = sim[owner, np.arange(len(owner))]  # (T,)
    t2i_rank = ((sim >= pos_t2i[None, :]) & ~positive).sum(axis=0)  # wrong images at or above the right one
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * float(np.mean(i2t_rank < k))
        out[f"t2i_R@{k}"] = 100.0 * float(np.mean(t2i_rank < k))
    return out
