"""Evaluation results: one JSON file per task run (config, per-sample predictions, metrics per shot count and
trial, mean and standard deviation over trials, queries per draw and a 95 % interval) and a PNG plot of a metric
against the number of shots.

Intervals (``ci95``, a half-width in the metric's units, beside ``mean``): from the per-query scores of every draw
of demonstrations pooled together, in percent like the headline score. A hit-or-miss metric (close-ended accuracy,
exact match: every query scores 0 or 100) gets a Wilson score interval for the proportion (``ci95_method:
"wilson"``); any other per-query score (CIDEr, VQA accuracy) a percentile bootstrap of the mean, 2000 resamples with
a fixed seed (``"bootstrap"``), even when every query happened to score 0. Without per-query scores (ROC-AUC)
``ci95`` is null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frozenvl.files import atomic_path, read_json, write_text_atomic

FORMAT_VERSION = 2  # 2: VQA-accuracy and exact-match per-query scores in percent (format 1: fractions, read too)
FRACTION_SCORES_V1 = ("vqa_accuracy", "exact_match")  # metrics whose format-1 per-query scores were in [0, 1]


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays to Python, non-finite floats to None, keys to strings."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
BOOTSTRAP_RESAMPLES = 2000


def wilson_half_width(successes: int, n: int, z: float = Z95) -> float:
    """Half the width of the Wilson score interval of a proportion ``successes / n`` (as a fraction)."""
    if n <= 0:
        raise ValueError("a proportion needs n > 0")
    p = successes / n
    return z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)


def bootstrap_half_width(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = 0) -> float | None:
    """Half the width of the 95 % percentile-bootstrap interval of the mean of ``values`` (None for < 2)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return None
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(hi - lo) / 2


HIT_OR_MISS_METRICS = ("accuracy", "exact_match")  # task metrics whose per-query scores are 0 or 100


def interval95(values: Sequence[float], hit_or_miss: bool) -> tuple[float | None, str]:
    """(half-width, method) of per-query scores in percent: Wilson for a hit-or-miss metric (every score 0 or
    100), else bootstrap."""
    if hit_or_miss:
        if not all(v in (0.0, 100.0) for v in values):
            raise ValueError("a hit-or-miss metric's per-query scores must be 0 or 100")
        return 100.0 * wilson_half_width(sum(1 for v in values if v == 100.0), len(values)), "wilson"
    return bootstrap_half_width(values), "bootstrap"


def per_query_scores(run: Mapping[str, Any]) -> list[float] | None:
    """The per-query headline scores of one run (percent): the ``score`` its metric gave each query, or 100 / 0 for
    a close-ended answer that is / is not its target; None when the run has neither."""
    samples = run.get("predictions") or []
    if samples and all(_is_number(s.get("score")) for s in samples):
        return [float(s["score"]) for s in samples]
    if samples and all("target" in s and "answer" in s for s in samples):
        return [100.0 if s["answer"] == s["target"] else 0.0 for s in samples]
    return None


def chance_level(results: EvalResults) -> float | None:
    """Percent correct of a uniform guess among each query's candidates (close-ended runs that kept their
    candidates' scores), else None."""
    counts = [len(s["scores"]) for r in results.runs for s in r.get("predictions") or []
              if isinstance(s.get("scores"), Mapping) and s["scores"]]
    return 100.0 * float(np.mean([1.0 / c for c in counts])) if counts else None


@dataclass
class EvalResults:
    """All runs of one task: ``runs`` holds one entry per (shots, trial)."""

    task: str
    config: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def add_run(self, shots: int, trial: int, metrics: Mapping[str, Any],
                predictions: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                seed: int | None = None) -> None:
        """Record one run. ``metrics`` is a metric dict (e.g. from ``TaskSpec.score``); its ``per_sample``
        scores, if any, are moved next to the predictions. ``predictions``: ``{key: prediction}`` or a list of
        per-sample dicts (``{"key", "prediction", ...}``)."""
        if any(r["shots"] == shots and r["trial"] == trial for r in self.runs):
            raise ValueError(f"{self.task}: a run with shots={shots}, trial={trial} is already recorded")
        metrics = dict(metrics)
        per_sample = metrics.pop("per_sample", None) or {}
        if predictions is None:
            samples: list[dict[str, Any]] = []
        elif isinstance(predictions, Mapping):
            samples = [{"key": str(k), "prediction": v} for k, v in predictions.items()]
        else:
            samples = [dict(p) for p in predictions]
        for sample in samples:
            if sample.get("key") in per_sample:
                sample["score"] = per_sample[sample["key"]]
        self.runs.append(_clean({"shots": int(shots), "trial": int(trial), "seed": seed, "metrics": metrics,
                                 "predictions": samples}))

    def shots(self) -> list[int]:
        return sorted({r["shots"] for r in self.runs})

    def summary(self) -> dict[int, dict[str, dict[str, Any]]]:
        """Per shot count and numeric metric: ``{"mean", "std", "values", "trials", "n", "ci95", "ci95_method"}``
        over the trials (population standard deviation, 0 for a single trial; ``n`` queries per draw; ``ci95`` the
        half-width of the 95 % interval of the headline score, and of a metric equal to it, from the per-query
        scores of every draw, see the module's docstring; null for other metrics)."""
        out: dict[int, dict[str, dict[str, Any]]] = {}
        for shots in self.shots():
            runs = sorted((r for r in self.runs if r["shots"] == shots), key=lambda r: r["trial"])
            names = dict.fromkeys(k for r in runs for k, v in r["metrics"].items() if _is_number(v))
            per_query = [per_query_scores(r) for r in runs]
            pooled = [v for scores in per_query for v in scores] if all(per_query) else None
            metric = (self.config.get("task") or {}).get("metric")
            hit_or_miss = metric in HIT_OR_MISS_METRICS if metric else all(v in (0.0, 100.0) for v in pooled or [])
            ci, method = interval95(pooled, hit_or_miss) if pooled else (None, None)
            score_values = [r["metrics"].get("score") for r in runs]
            out[shots] = {}
            for name in names:
                kept = [r for r in runs if _is_number(r["metrics"].get(name))]
                values = [float(r["metrics"][name]) for r in kept]
                same_as_score = [r["metrics"].get(name) for r in runs] == score_values
                out[shots][name] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                    "values": values, "trials": [r["trial"] for r in kept],
                                    "n": len(kept[0].get("predictions") or []) or None,
                                    "ci95": ci if same_as_score else None,
                                    "ci95_method": method if same_as_score else None}
        return out

    def to_dict(self) -> dict[str, Any]:
        return _clean({"format_version": FORMAT_VERSION, "task": self.task, "config": self.config,
                       "summary": self.summary(), "runs": self.runs})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (a kill leaves the previous file or the new one, never half of one)."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvalResults:
        data = read_json(path, "results file")
        if not isinstance(data, dict):
            raise ValueError(f"results file {path} is not a JSON object")
        version = data.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"{path}: unsupported results format {version!r}")
        config, runs = data.get("config", {}), data.get("runs", [])
        if version == 1 and (config.get("task") or {}).get("metric") in FRACTION_SCORES_V1:
            for sample in (s for r in runs for s in r.get("predictions") or []):
                if _is_number(sample.get("score")):
                    sample["score"] = 100.0 * sample["score"]  # to percent, like the headline
        return cls(task=data["task"], config=config, runs=runs)


def plot_metric_vs_shots(results: EvalResults | Sequence[EvalResults], path: str | os.PathLike,
                         metric: str = "score", reference: Mapping[str, Mapping[int, float]] | None = None,
                         title: str | None = None, chance: float | None = None, ylabel: str | None = None) -> Path:
    """PNG of ``metric`` (mean over trials; error bars: the 95 % interval where there is one, else the std over
    trials) against the number of shots (integer ticks), one line per results object; the y-axis is named by the
    task's metric; ``chance`` (default: a uniform guess among close-ended candidates, :func:`chance_level`) is a
    dotted line; ``reference`` adds dashed lines for published numbers, e.g.
    ``{"Flamingo-3B": {0: 73.0, 4: 85.0, 32: 99.0}}``."""
    fig = shots_figure(results, metric, reference, title, chance, ylabel)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


METRIC_LABELS = {"accuracy": "accuracy (%)", "cider": "CIDEr", "vqa_accuracy": "VQA accuracy (%)",
                 "exact_match": "exact match (%)", "roc_auc": "ROC-AUC (%)"}


def _metric_label(results: Sequence[EvalResults], metric: str) -> str:
    """The y-axis: the task's metric by name when ``metric`` is the headline ``score`` of tasks that share it."""
    if metric != "score":
        return metric
    names = {(r.config.get("task") or {}).get("metric") for r in results}
    name = names.pop() if len(names) == 1 else None
    return METRIC_LABELS.get(name, name) if name else metric


def shots_figure(results: EvalResults | Sequence[EvalResults], metric: str = "score",
                 reference: Mapping[str, Mapping[int, float]] | None = None, title: str | None = None,
                 chance: float | None = None, ylabel: str | None = None):
    """The matplotlib Figure :func:`plot_metric_vs_shots` saves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    all_results = [results] if isinstance(results, EvalResults) else list(results)
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no pyplot, no global backend switch
    ax = fig.add_subplot(1, 1, 1)
    plotted = 0
    ticks: set[int] = set()
    for res in all_results:
        summary = res.summary()
        shots = [s for s in summary if metric in summary[s]]
        if not shots:
            continue
        means = [summary[s][metric]["mean"] for s in shots]
        errors = [summary[s][metric]["ci95"] if summary[s][metric].get("ci95") is not None
                  else summary[s][metric]["std"] for s in shots]
        ax.errorbar(shots, means, yerr=errors, marker="o", capsize=3, label=res.task)
        ticks.update(shots)
        plotted += 1
    for name, points in (reference or {}).items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], linestyle="--", marker="x", label=name)
        ticks.update(xs)
    if plotted == 0:
        raise ValueError(f"no results hold the metric {metric!r}")
    if chance is None and metric == "score" and len(all_results) == 1:
        chance = chance_level(all_results[0])
    if chance is not None:
        ax.axhline(chance, linestyle=":", color="gray", label=f"chance ({chance:.1f})")
    ax.set_xticks(sorted(ticks))  # shot counts are integers: no half-shot ticks
    ax.set_xlabel("shots (demonstrations in the prompt)")
    ax.set_ylabel(ylabel or _metric_label(all_results, metric))
    ax.set_title(title or ", ".join(r.task for r in all_results))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
