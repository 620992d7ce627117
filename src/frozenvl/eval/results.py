"""Evaluation results: one JSON file per task run (config, per-sample predictions, metrics per shot count and
trial, mean and standard deviation over trials) and a PNG plot of a metric against the number of shots."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frozenvl.files import atomic_path, write_text_atomic

FORMAT_VERSION = 1


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
        """Per shot count and numeric metric: ``{"mean", "std", "values", "trials"}`` over the trials
        (population standard deviation, 0 for a single trial)."""
        out: dict[int, dict[str, dict[str, Any]]] = {}
        for shots in self.shots():
            runs = sorted((r for r in self.runs if r["shots"] == shots), key=lambda r: r["trial"])
            names = dict.fromkeys(k for r in runs for k, v in r["metrics"].items() if _is_number(v))
            out[shots] = {}
            for name in names:
                kept = [r for r in runs if _is_number(r["metrics"].get(name))]
                values = [float(r["metrics"][name]) for r in kept]
                out[shots][name] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                    "values": values, "trials": [r["trial"] for r in kept]}
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
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a valid results file: {err}") from None
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported results format {data.get('format_version')!r}")
        return cls(task=data["task"], config=data.get("config", {}), runs=data.get("runs", []))


def plot_metric_vs_shots(results: EvalResults | Sequence[EvalResults], path: str | os.PathLike,
                         metric: str = "score", reference: Mapping[str, Mapping[int, float]] | None = None,
                         title: str | None = None) -> Path:
    """PNG of ``metric`` (mean over trials, std as error bars) against the number of shots, one line per
    results object; ``reference`` adds dashed lines for published numbers, e.g.
    ``{"Flamingo-3B": {0: 73.0, 4: 85.0, 32: 99.0}}``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    all_results = [results] if isinstance(results, EvalResults) else list(results)
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)  # attaches an Agg canvas: no pyplot, no global backend switch
    ax = fig.add_subplot(1, 1, 1)
    plotted = 0
    for res in all_results:
        summary = res.summary()
        shots = [s for s in summary if metric in summary[s]]
        if not shots:
            continue
        means = [summary[s][metric]["mean"] for s in shots]
        stds = [summary[s][metric]["std"] for s in shots]
        ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=res.task)
        plotted += 1
    for name, points in (reference or {}).items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], linestyle="--", marker="x", label=name)
    if plotted == 0:
        raise ValueError(f"no results hold the metric {metric!r}")
    ax.set_xlabel("shots")
    ax.set_ylabel(metric)
    ax.set_title(title or ", ".join(r.task for r in all_results))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
