"""Figures of a FLAME vs CLIP comparison (``frozenvl.cli.compare`` results): each bar a proportion with its 95 %
Wilson interval and n, chance drawn, axes named.

- :func:`plot_languages`: retrieval R@1 per caption language, image->text and text->image, FLAME vs CLIP;
- :func:`plot_long_captions`: English long-caption retrieval R@1/5/10 both ways, and zero-shot top-1.

:func:`wilson_interval` gives the (low, high) bounds in % that the bars carry; :func:`flame_summary` the same
numbers as a dict (for ``results.json``), :func:`verdict` the plain-language reading of one comparison.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from frozenvl.eval.results import Z95, wilson_half_width
from frozenvl.files import atomic_path

MODEL_LABELS = {"flame": "FLAME", "clip_baseline": "CLIP baseline"}
DIRECTIONS = {"image_to_text": "image->text", "text_to_image": "text->image"}


def wilson_interval(percent: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval (low, high), in %, of a proportion measured as ``percent`` of ``n``."""
    successes = round(percent * n / 100)
    p = successes / n
    centre = (p + Z95 * Z95 / (2 * n)) / (1 + Z95 * Z95 / n)
    half = wilson_half_width(successes, n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def _cell(metrics: Mapping[str, Any], key: str, n: int) -> dict[str, Any]:
    value = float(metrics[key])
    low, high = wilson_interval(value, n)
    return {"value": value, "n": n, "ci95": [round(low, 2), round(high, 2)]}


def _queries(metrics: Mapping[str, Any], direction: str) -> int:
    """Queries of a retrieval direction: the images for image->text, the captions for text->image."""
    return int(metrics["num_images"] if direction == "image_to_text" else metrics["num_captions"])


def flame_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison's figures, each ``{"value" (%), "n", "ci95": [low, high]}``: ``long_captions`` (English,
    R@1/5/10 both ways), ``zero_shot`` (top-1 on the held-out and on all compositions) and ``languages`` (R@1
    both ways per caption language, when scored), per model; with the chance levels."""
    out: dict[str, Any] = {"long_captions": {}, "zero_shot": {}, "languages": {}}
    for kind, m in results["models"].items():
        r = m["retrieval/long"]
        out["long_captions"][kind] = {f"{d}_R@{k}": _cell(r, f"{d}_R@{k}", _queries(r, d))
                                      for d in DIRECTIONS for k in (1, 5, 10) if f"{d}_R@{k}" in r}
        out["zero_shot"][kind] = {split: _cell(m[f"zero_shot/{split}"], "top1", m[f"zero_shot/{split}"]["num_images"])
                                  for split in ("heldout", "classification")}
    for language, models in (results.get("languages") or {}).items():
        out["languages"][language] = {kind: {f"{d}_R@1": _cell(m, f"{d}_R@1", _queries(m, d)) for d in DIRECTIONS}
                                      for kind, m in models.items()}
    r = results["models"]["flame"]["retrieval/long"]
    out["chance"] = {"retrieval_R@1": 100 / r["num_images"], "retrieval_images": r["num_images"],
                     "zero_shot_top1": results["chance"]["zero_shot_top1"]}
    return out


def verdict(flame: Mapping[str, Any], clip: Mapping[str, Any]) -> str:
    """``FLAME higher`` / ``CLIP higher`` when the two 95 % intervals do not overlap, else ``intervals overlap``."""
    if flame["ci95"][0] > clip["ci95"][1]:
        return "FLAME higher"
    if clip["ci95"][0] > flame["ci95"][1]:
        return "CLIP higher"
    return "intervals overlap"


def _bars(ax, groups: list[str], series: dict[str, list[dict[str, Any]]], chance: list[float] | float,
          ylabel: str) -> None:
    """Grouped bars: one group per label in ``groups``, one bar per series, each with its Wilson error bar; n in
    the y-axis label when every bar has the same, else above each bar."""
    width = 0.8 / len(series)
    ns = {c["n"] for cells in series.values() for c in cells}
    for i, (label, cells) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        values = [c["value"] for c in cells]
        errors = [[v - c["ci95"][0] for v, c in zip(values, cells)], [c["ci95"][1] - v for v, c in zip(values, cells)]]
        ax.bar(xs, values, width, label=label, yerr=errors, capsize=2, alpha=0.85)
        if len(ns) > 1:
            for x, c in zip(xs, cells):
                ax.text(x, c["ci95"][1] + 1, f"n={c['n']}", ha="center", va="bottom", fontsize=5, rotation=90)
    if isinstance(chance, list):  # one chance level per group
        for g, level in enumerate(chance):
            ax.hlines(level, g - 0.45, g + 0.45, colors="gray", linestyles=":",
                      label="chance" if g == 0 else None)
    else:
        ax.axhline(chance, linestyle=":", color="gray", label=f"chance ({chance:.1f} %)")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel + (f", n={ns.pop()} per bar" if len(ns) == 1 else ""))
    top = max(c["ci95"][1] for cells in series.values() for c in cells)
    ax.set_ylim(0, min(112.0, max(10.0, top * 1.25 + 5)))  # room for the legend above the tallest interval
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _figure(width: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 3.6), dpi=120)
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot, no global backend
    return fig


def plot_languages(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """PNG of :func:`languages_figure`."""
    return _save(languages_figure(summary), path)


def plot_long_captions(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """PNG of :func:`long_captions_figure`."""
    return _save(long_captions_figure(summary), path)


def languages_figure(summary: Mapping[str, Any]):
    """Retrieval R@1 (%) per caption language, image->text and text->image, FLAME vs CLIP (of
    :func:`flame_summary`; needs its ``languages``): a matplotlib Figure."""
    languages = list(summary["languages"])
    if not languages:
        raise ValueError("the comparison scored no caption languages (ComparisonConfig.languages)")
    fig = _figure(7.5)
    ax = fig.add_subplot(1, 1, 1)
    series = {f"{MODEL_LABELS.get(kind, kind)} {arrow}": [summary["languages"][lang][kind][f"{d}_R@1"]
                                                          for lang in languages]
              for kind in summary["languages"][languages[0]] for d, arrow in DIRECTIONS.items()}
    _bars(ax, languages, series, summary["chance"]["retrieval_R@1"], "Recall@1 (%)")
    ax.set_xlabel("caption language (both models trained on English pairs only)")
    ax.set_title(f"Retrieval per language, long captions, {summary['chance']['retrieval_images']} images "
                 "(95 % Wilson intervals)", fontsize=9)
    return fig


def long_captions_figure(summary: Mapping[str, Any]):
    """English long-caption retrieval R@1/5/10 both ways (left) and zero-shot top-1 (right), FLAME vs CLIP (of
    :func:`flame_summary`): a matplotlib Figure."""
    fig = _figure(9.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    long = summary["long_captions"]
    models = list(long)
    keys = [f"{d}_R@{k}" for d in DIRECTIONS for k in (1, 5, 10) if f"{d}_R@{k}" in long[models[0]]]
    groups = [f"{'i2t' if key.startswith('image') else 't2i'} R@{key.rsplit('@', 1)[1]}" for key in keys]
    chance = [min(100.0, summary["chance"]["retrieval_R@1"] * int(key.rsplit("@", 1)[1])) for key in keys]
    _bars(left, groups, {MODEL_LABELS.get(m, m): [long[m][key] for key in keys] for m in models}, chance,
          "Recall@K (%)")
    left.set_xlabel("direction and K (i2t: image->text, t2i: text->image)")
    left.set_title(f"Long-caption retrieval (English), {summary['chance']['retrieval_images']} images", fontsize=9)
    zero = summary["zero_shot"]
    splits = {"heldout": "held-out compositions", "classification": "all compositions"}
    _bars(right, list(splits.values()), {MODEL_LABELS.get(m, m): [zero[m][s] for s in splits] for m in zero},
          summary["chance"]["zero_shot_top1"], "top-1 accuracy (%)")
    right.set_xlabel("zero-shot classification split")
    right.set_title("Zero-shot top-1 (95 % Wilson intervals)", fontsize=9)
    return fig
