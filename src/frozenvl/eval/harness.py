"""The few-shot harness: a :class:`TaskSpec` run over its records for several shot counts and trials.

For each (shots, trial) every query gets its demonstrations (random with a seed, or RICES), queries that share
the same demonstrations are grouped, and each group's demonstrations are encoded once
(:class:`~frozenvl.eval.scoring.FewShotScorer`). Generative tasks decode with the task's protocol (beam search
with 3 beams, 20 new tokens for captions and 5 for short answers, stop at ``<|endofchunk|>``) and are
post-processed; close-ended tasks rank their candidates by length-normalised log-likelihood. "0-shot" is two
text-only demonstrations. The task's metric scores each run; :class:`EvalResults` keeps the metrics and the
per-sample predictions (with the demonstrations used).

Several processes (torchrun; ``rank`` and ``world_size``): every process chooses the demonstrations of every query
(they depend only on the seed, the trial and the query), takes the queries ``rank, rank + world_size, ...`` and
encodes its own groups' prefixes; the predictions are gathered and rank 0 scores them, so the results are those of
one process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frozenvl.config import Config, ConfigError
from frozenvl.distributed import all_gather_object
from frozenvl.eval.demonstrations import RandomDemos, Rices
from frozenvl.eval.postprocess import postprocess
from frozenvl.eval.prompts import Prompt, build_prompt, demos_for_shots
from frozenvl.eval.records import EvalRecord
from frozenvl.eval.results import EvalResults, plot_metric_vs_shots
from frozenvl.eval.scoring import FewShotScorer, media_tensor
from frozenvl.eval.tasks import TaskSpec


@dataclass
class TaskData:
    """What a run needs besides the task: the queries, the pool demonstrations come from, the class names of
    a classification task, and whether demonstrations come from the query's own episode only
    (``meta["episode"]``, e.g. the synthetic ``icl_words`` task)."""

    queries: list[EvalRecord]
    pool: list[EvalRecord]
    class_names: list[str] | None = None
    episodic: bool = False


@dataclass
class EvalConfig(Config):
    """``shots``: shot counts (0 = two text-only demonstrations). ``trials``: random demonstration draws per
    shot count, seeded by ``seed`` (RICES is deterministic: one trial). ``limit``: the first N queries.
    ``batch_size``: queries decoded or scored together; ``candidate_batch_size``: (query, candidate)
    pairs per forward.
    ``prefix_cache=False`` recomputes the full prompt per query and per candidate (the reference path).
    ``save_prompts`` stores each query's full prompt text with its prediction."""

    shots: Sequence[int] = (0, 4, 8)
    trials: int = 1
    seed: int = 0
    rices: bool = False
    limit: int | None = None
    batch_size: int = 8
    candidate_batch_size: int = 64
    prefix_cache: bool = True
    save_prompts: bool = False

    def __post_init__(self) -> None:
        self.shots = [int(s) for s in self.shots]
        super().__post_init__()

    def validate(self, where: str) -> None:
        if not self.shots or any(s < 0 for s in self.shots):
            raise ConfigError(f"{where}.shots must be a non-empty list of counts >= 0; got {self.shots}")
        for name in ("trials", "batch_size", "candidate_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1; got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"{where}.limit must be >= 1; got {self.limit}")


class VisionFeatures:
    """RICES features: the model's frozen vision features mean-pooled over tokens (and frames), L2-normalised,
    computed once per record key for the whole run."""

    def __init__(self, model: Any, processor: Any, batch_size: int = 32):
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def __call__(self, records: Sequence[EvalRecord]) -> np.ndarray:  # -> (N, D)
        todo = list({r.key: r for r in records if r.key not in self._cache}.values())
        vision_weight = next(self.model.vision.parameters())  # the encoder's device and dtype
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            frames = [media_tensor(self.processor, r.media) for r in batch]
            pixels = torch.cat(frames).to(vision_weight.device, vision_weight.dtype)  # (sum F, C, H, W)
            feats = self.model.vision(pixels).float()  # (sum F, tokens, D)
            for record, chunk in zip(batch, feats.split([len(f) for f in frames])):
                vec = chunk.mean(dim=(0, 1))
                self._cache[record.key] = (vec / vec.norm().clamp_min(1e-12)).cpu().numpy()
        return np.stack([self._cache[r.key] for r in records])


class FewShotHarness:
    """Runs a task for every shot count and trial of an :class:`EvalConfig`; see the module docstring. ``rank`` of
    ``world_size`` processes (torchrun's process group joined, e.g. ``frozenvl.distributed.setup``): this process
    evaluates every ``world_size``-th query, and only rank 0 gets the metrics and predictions of a run."""

    def __init__(self, model: Any, processor: Any, config: EvalConfig | None = None, *, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = rank, world_size
        self.model = model.eval()
        self.processor = processor
        self.config = config or EvalConfig()
        self.scorer = FewShotScorer(model, processor, self.config.candidate_batch_size)
        self.features = VisionFeatures(model, processor) if self.config.rices else None

    # ------------------------------------------------------------------------------------ demonstrations
    def select_demos(self, data: TaskData, queries: Sequence[EvalRecord], num: int,
                     trial: int) -> list[list[EvalRecord]]:
        """``num`` demonstrations per query (:func:`select_demos` with this run's seed and RICES features)."""
        return select_demos(data, queries, num, trial, self.config.seed, self.features)

    # -------------------------------------------------------------------------------------------- a run
    def run_once(self, spec: TaskSpec, data: TaskData, shots: int, trial: int,
                 progress: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One (shots, trial): returns the task's metrics and the per-sample predictions (of every process on rank
        0; ``({}, [])`` on the other ranks)."""
        queries = data.queries[: self.config.limit]
        num, text_only = demos_for_shots(shots)
        demos = self.select_demos(data, queries, num, trial)
        groups: dict[tuple[str, ...], list[int]] = {}
        for qi in range(self.rank, len(queries), self.world_size):  # this process's share of the queries
            groups.setdefault(tuple(d.key for d in demos[qi]), []).append(qi)
        predictions: dict[str, Any] = {}
        samples: dict[str, dict[str, Any]] = {}
        for query_indices in groups.values():
            prompts = [build_prompt(spec, demos[qi], queries[qi], text_only, data.class_names)
                       for qi in query_indices]
            group = [queries[qi] for qi in query_indices]
            if spec.close_ended:
                outs = self._score_group(spec, data, group, prompts, progress)
            else:
                outs = self._generate_group(spec, prompts, progress)
            for qi, prompt, out in zip(query_indices, prompts, outs):
                record = queries[qi]
                predictions[record.key] = out.pop("prediction")
                sample = {"key": record.key, "prediction": predictions[record.key], **out,
                          "demos": [d.key for d in demos[qi]]}
                if self.config.save_prompts:
                    sample["prompt"] = prompt.text
                samples[record.key] = sample
        if self.world_size > 1:  # every process's predictions; rank 0 scores them
            gathered = all_gather_object((predictions, samples))
            if self.rank != 0:
                return {}, []
            predictions = {k: v for part, _ in gathered for k, v in part.items()}
            samples = {k: v for _, part in gathered for k, v in part.items()}
        metrics = spec.score(queries, predictions, data.class_names)
        return metrics, [samples[q.key] for q in queries]

    def _generate_group(self, spec: TaskSpec, prompts: Sequence[Prompt], progress: Any) -> list[dict[str, Any]]:
        context, context_media = prompts[0].context, prompts[0].media[: prompts[0].num_context_media]
        prefix = self.scorer.encode_prefix(context, context_media) if self.config.prefix_cache else None
        outs: list[dict[str, Any]] = []
        for start in range(0, len(prompts), self.config.batch_size):
            batch = prompts[start:start + self.config.batch_size]
            texts = [p.query for p in batch]
            media = [p.media[p.num_context_media:] for p in batch]
            if prefix is not None:
                ids = self.scorer.generate_ids(prefix, texts, media, spec.max_new_tokens, spec.num_beams)
            else:
                ids = self.scorer.generate_ids_uncached(context, context_media, texts, media, spec.max_new_tokens,
                                                        spec.num_beams)
            for raw in self.scorer.decode(ids):
                outs.append({"prediction": postprocess(spec.postprocess, raw), "raw": raw})
            if progress is not None:
                progress.update(len(batch))
        return outs

    def _score_group(self, spec: TaskSpec, data: TaskData, group: Sequence[EvalRecord],
                     prompts: Sequence[Prompt], progress: Any) -> list[dict[str, Any]]:
        context, context_media = prompts[0].context, prompts[0].media[: prompts[0].num_context_media]
        prefix = self.scorer.encode_prefix(context, context_media) if self.config.prefix_cache else None
        all_candidates = [spec.candidates_for(record, data.class_names) for record in group]
        all_scores: list[list[float]] = []
        for start in range(0, len(prompts), self.config.batch_size):  # queries on the prefix, a batch at a time
            batch = prompts[start:start + self.config.batch_size]
            media = [p.media[p.num_context_media:] for p in batch]
            if prefix is not None:
                all_scores += self.scorer.score_candidates_batch(prefix, [p.query for p in batch], media,
                                                                 all_candidates[start:start + len(batch)],
                                                                 spec.length_normalize)
            else:
                all_scores += [self.scorer.score_candidates_uncached(context, context_media, p.query, m, c,
                                                                     spec.length_normalize)
                               for p, m, c in zip(batch, media, all_candidates[start:start + len(batch)])]
        outs = []
        for record, candidates, scores in zip(group, all_candidates, all_scores):
            probs = torch.tensor(scores, dtype=torch.float64).softmax(0).tolist()
            best = int(np.argmax(scores))
            out: dict[str, Any] = {"answer": candidates[best], "target": spec.target(record, data.class_names)}
            if spec.metric == "roc_auc":  # ranks by the probability of the positive candidate
                out["prediction"] = probs[candidates.index(spec.positive)]
            else:
                out["prediction"] = candidates[best]
            if len(candidates) <= 10:
                out["scores"] = dict(zip(candidates, scores))
            outs.append(out)
            if progress is not None:
                progress.update(1)
        return outs

    def run(self, spec: TaskSpec, data: TaskData, progress: bool = True) -> EvalResults:
        """Every shot count and trial; metrics and per-sample predictions in an :class:`EvalResults`."""
        from tqdm.auto import tqdm

        if not data.queries:
            raise ValueError(f"task {spec.name!r}: no queries to evaluate")
        trials = 1 if self.config.rices else self.config.trials
        queries = len(range(self.rank, len(data.queries[: self.config.limit]), self.world_size))  # this process's
        results = EvalResults(spec.name, config=self.describe(spec, data))
        with tqdm(total=queries * trials * len(self.config.shots), desc=f"eval {spec.name}", unit="query",
                  disable=not progress or self.rank != 0) as bar:
            for shots in self.config.shots:
                for trial in range(trials):
                    bar.set_postfix(shots=shots, trial=trial)
                    metrics, samples = self.run_once(spec, data, shots, trial, bar)
                    results.add_run(shots, trial, metrics, samples, seed=self.config.seed)
        return results

    def describe(self, spec: TaskSpec, data: TaskData) -> dict[str, Any]:
        model_config = getattr(self.model, "config", None)
        return {
            "task": asdict(spec),
            "eval": asdict(self.config),
            "demonstrations": "rices" if self.config.rices else "random",
            "queries": len(data.queries[: self.config.limit]),
            "pool": len(data.pool),
            "class_names": len(data.class_names) if data.class_names else None,
            "model": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
        }


def _episodes(data: TaskData, queries: Sequence[EvalRecord]) -> dict[Any, list[int]]:
    """Pool indices of each query's demonstration pool: the whole pool, or its own episode's records."""
    if not data.episodic:
        return {None: list(range(len(data.pool)))}
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(data.pool):
        groups.setdefault(r.meta.get("episode"), []).append(i)
    missing = {q.meta.get("episode") for q in queries} - set(groups)
    if missing:
        raise ValueError(f"no demonstrations in the pool for episodes {sorted(missing, key=str)[:5]}")
    return groups


def select_demos(data: TaskData, queries: Sequence[EvalRecord], num: int, trial: int, seed: int = 0,
                 features: VisionFeatures | None = None) -> list[list[EvalRecord]]:
    """``num`` demonstrations per query, from the pool (or the query's episode): random with ``seed`` and
    ``trial``, or RICES when ``features`` are given (the most similar last)."""
    groups = _episodes(data, queries)
    out: list[list[EvalRecord]] = [[] for _ in queries]
    by_group: dict[Any, list[int]] = {}
    for qi, q in enumerate(queries):
        by_group.setdefault(q.meta.get("episode") if data.episodic else None, []).append(qi)
    for group, query_indices in by_group.items():
        pool = [data.pool[i] for i in groups[group]]
        keys = [r.key for r in pool]
        if features is not None:
            rices = Rices(features(pool), keys)
            group_queries = [queries[qi] for qi in query_indices]
            picks = rices.select(features(group_queries), num, [q.key for q in group_queries])
            for qi, picked in zip(query_indices, picks):
                out[qi] = [pool[i] for i in picked]
        else:
            sampler = RandomDemos(keys, seed=seed if group is None else _group_seed(seed, group))
            for qi in query_indices:
                out[qi] = [pool[i] for i in sampler.sample(num, trial=trial, query_key=queries[qi].key)]
    return out


def _group_seed(seed: int, group: Any) -> int:
    """A seed per episode: the same demonstrations for an episode on every machine."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(str(group).encode())) % (2**31)


@dataclass
class EvalOutput:
    results: EvalResults
    json_path: Path | None = None
    plot_path: Path | None = None
    summary: dict[int, dict[str, Any]] = field(default_factory=dict)


def evaluate(model: Any, processor: Any, spec: TaskSpec, data: TaskData, config: EvalConfig | None = None,
             out_dir: str | os.PathLike | None = None, progress: bool = True, *, rank: int = 0,
             world_size: int = 1) -> EvalOutput:
    """Run the harness; with ``out_dir``, write ``<task>.json`` (config, per-sample predictions, metrics per
    shot count and trial) and ``<task>.png`` (the task's score against the number of shots). Under torchrun
    (``rank`` of ``world_size``) the processes share the queries and rank 0 alone scores and writes."""
    results = FewShotHarness(model, processor, config, rank=rank, world_size=world_size).run(spec, data, progress)
    output = EvalOutput(results=results, summary=results.summary())
    if out_dir is not None and rank == 0:
        out = Path(out_dir)
        output.json_path = results.save(out / f"{spec.name}.json")
        output.plot_path = plot_metric_vs_shots(results, out / f"{spec.name}.png", metric="score",
                                                title=f"{spec.name} ({spec.metric})")
    return output


def format_summary(results: EvalResults) -> str:
    """A small table: shots, mean score, std over trials."""
    lines = [f"{'shots':>5}  {'score':>8}  {'std':>6}  trials"]
    for shots, metrics in results.summary().items():
        score = metrics.get("score")
        if score is None or not math.isfinite(score["mean"]):
            continue
        lines.append(f"{shots:>5}  {score['mean']:>8.2f}  {score['std']:>6.2f}  {len(score['values'])}")
    return "\n".join(lines)
