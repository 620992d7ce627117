"""The training loop: one engine for any :class:`~frozenvl.tasks.Task` on one process, DDP or FSDP2.

One optimizer step = the weighted objective ``sum_d lambda_d * NLL_d`` over the step's datasets (all of them, or
one in turn with round robin), each on ``grad_accum`` micro-batches per rank. Gradients accumulate locally and
are synchronised once, in the last backward of the step; then they are clipped once and AdamW steps. A step whose
loss or gradient is not finite on any rank is skipped on every rank (counted, logged), and the run stops with a
clear message after ``train.max_nonfinite_steps`` such steps.

The run folder is the run's: one process writes it at a time (a lock, :func:`frozenvl.files.folder_lock`), a new
run refuses a folder that holds another run's metrics or checkpoints (:class:`RunFolderError`; ``overwrite=True``
deletes them first, ``resume=True`` continues), and the running averages the loop logs are checkpointed, so a
resumed run writes the metrics an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from frozenvl.files import FolderLockedError, acquire_folder_lock, write_text_atomic
from frozenvl.tasks import build_task
from frozenvl.train import checkpoint as ckpt
from frozenvl.train import distributed as D
from frozenvl.train.config import RunConfig, dump_config
from frozenvl.train.mixture import Mixture, eval_loaders
from frozenvl.train.optim import build_optimizer, lr_factor, set_lr

log = logging.getLogger("frozenvl.train")

# What a run writes into train.run_dir (the checkpoint folders' files are named in frozenvl.train.checkpoint).
RUN_CONFIG_NAME = "config.yaml"  # the resolved run config
METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"  # step-XXXXXXXX/ folders


class NonFiniteLossError(RuntimeError):
    """Too many steps had a NaN/inf loss or gradient."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


class RunFolderError(ValueError):
    """The run folder cannot be used as asked: it holds another run, or another process is writing it."""


def run_outputs(run_dir: str | Path) -> list[str]:
    """What a previous run left in ``run_dir`` (the names of its metrics, checkpoints and TensorBoard folder that
    exist); other files are not a run's."""
    run_dir = Path(run_dir)
    found = []
    if (run_dir / METRICS_NAME).exists():
        found.append(METRICS_NAME)
    for name in (CHECKPOINTS_DIR, TENSORBOARD_DIR):
        folder = run_dir / name
        if folder.is_dir() and any(folder.iterdir()):
            steps = ckpt.list_checkpoints(folder) if name == CHECKPOINTS_DIR else []
            found.append(f"{name}/ ({len(steps)} checkpoints, newest {steps[-1].name})" if steps else f"{name}/")
    return found


def _json_value(v: Any) -> Any:
    """A metric as JSON allows it: a NaN or infinity becomes null (never a bare NaN token)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsWindow:
    """The running sums behind a ``log_every`` record: the mean of each metric over the steps where it was finite
    (a skipped step's NaN loss is left out, never counted as 0), throughput over the window's seconds. Saved with
    checkpoints (:meth:`state_dict`), so a resumed run logs what an uninterrupted one would."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if math.isfinite(v):
                self.sums[k] = self.sums.get(k, 0.0) + v
                self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1

    def record(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        out: dict[str, Any] = {}
        for k, v in self.sums.items():
            if k in ("samples", "tokens"):
                out[f"{k}_per_s"] = v / elapsed
            elif k == "skipped":
                out["skipped_steps"] = int(v)
            else:
                out[k] = v / self.counts[k]
        if "loss" not in out and self.steps:
            out["loss"] = None  # every step of the window was skipped
        return out

    def reset(self) -> None:
        self.__init__()

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "steps": self.steps,
                "seconds": time.perf_counter() - self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: float(v) for k, v in state["sums"].items()}
        self.counts = {k: int(v) for k, v in state["counts"].items()}
        self.steps = int(state["steps"])
        self.start = time.perf_counter() - float(state["seconds"])


@dataclass
class TrainResult:
    step: int  # optimizer steps done (including skipped ones)
    nonfinite_steps: int
    last_loss: float | None
    eval_history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0


class MetricsWriter:
    """JSONL metrics (and TensorBoard if asked and installed), rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = run_dir / METRICS_NAME
        self.tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # Lines written after the checkpoint we resume from will be written again: drop them. A line that
            # does not parse (the last one, cut by a kill mid-write) is dropped with a warning.
            kept, bad = [], 0
            for ln in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                if not ln.strip():
                    continue
                try:
                    record = json.loads(ln)
                    step = int(record.get("step", 0))
                except (ValueError, TypeError, AttributeError, RecursionError):  # RecursionError: nested too deeply
                    bad += 1
                    continue
                if step <= resume_step:
                    kept.append(ln)
            if bad:
                log.warning("%s: dropped %d line(s) that are not complete JSON records (cut by a kill?)",
                            self.path, bad)
            write_text_atomic(self.path, "".join(ln + "\n" for ln in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
            except ImportError:
                log.warning("train.tensorboard is true but the tensorboard package is not installed: "
                            f"writing {METRICS_NAME} only (pip install tensorboard)")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _json_value(v) for k, v in record.items()}, allow_nan=False) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """``Trainer(config).fit()``; ``resume=True`` continues from the newest readable checkpoint of
    ``train.run_dir``; ``overwrite=True`` deletes a previous run's metrics, checkpoints and TensorBoard events there
    first. Without either, a folder holding a previous run is refused (:class:`RunFolderError`). The trainer holds
    the run folder's lock until :meth:`close`."""

    def __init__(self, config: RunConfig, task=None, resume: bool = False, overwrite: bool = False):
        self.config = config
        t = config.train
        if resume and overwrite:
            raise RunFolderError("resume and overwrite exclude each other: --resume continues the run in "
                                 f"{t.run_dir}, --overwrite deletes it")
        if t.threads:
            torch.set_num_threads(t.threads)
        self.dist = D.setup(t.device)
        self.run_dir = Path(t.run_dir)
        self.ckpt_root = self.run_dir / CHECKPOINTS_DIR
        self._lock = None
        self._claim_run_dir(resume, overwrite)
        try:
            self._build(task, resume)
        except BaseException:
            self._release()  # the run folder's lock is not held by a trainer that was never made
            raise

    def _build(self, task, resume: bool) -> None:
        config, t = self.config, self.config.train
        torch.manual_seed(t.seed)  # same initial trainable weights on every rank
        self.task = task if task is not None else build_task(config.model)
        self.model = self.task.model.to(self.dist.device)
        # What a checkpoint holds of the model: its saved tensors (the save/load contract, frozenvl.pretrained).
        self.saved_names = list(self.model.saved_state_dict())
        saved = set(self.saved_names)
        self.saves_frozen = any(n in saved and not p.requires_grad for n, p in self.model.named_parameters())
        units = self.task.shard_units() if hasattr(self.task, "shard_units") else []
        self.wrapped = D.wrap(self.model, self.dist, t.distributed, units)
        # After wrapping: FSDP2 replaces the parameters by sharded DTensors, the optimizer must hold those.
        self.optimizer = build_optimizer(self.model.named_parameters(), config.optim, config.model)
        counter = getattr(self.task, "token_counter", None)
        max_length = getattr(self.task, "max_length", None)
        self.mixture = Mixture(config.data, self.dist.rank, self.dist.world_size, t.grad_accum, self.task.collate,
                               counter, max_length)
        self.eval_loaders = eval_loaders(config.data, self.dist.rank, self.dist.world_size, self.task.collate,
                                         counter, max_length)
        self.step = 0
        self.nonfinite_steps = 0
        self.resumed_from: Path | None = None
        self.window = MetricsWindow()
        self._fit_start = time.perf_counter()
        self.elapsed_before = 0.0  # seconds of training before the checkpoint this run resumed from
        if resume:
            checkpoint = ckpt.load_latest(self.ckpt_root, self.model.model_type)
            if checkpoint is None:
                if self.dist.is_main:
                    log.warning("--resume: no checkpoint in %s, starting from scratch", self.ckpt_root)
            else:
                self._restore(checkpoint)
        else:
            torch.manual_seed(t.seed + 1000 * self.dist.rank)  # per-rank stream for anything random in training
        self.metrics = MetricsWriter(self.run_dir, self.dist.is_main, t.tensorboard,
                                     self.step if self.resumed_from else None)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / RUN_CONFIG_NAME, dump_config(config))

    # ------------------------------------------------------------------------------------------ run folder
    def _claim_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Rank 0 takes the run folder's lock and checks what is in it; every rank raises the same error."""
        problem = None
        if self.dist.is_main:
            try:
                self._lock = acquire_folder_lock(self.run_dir, "run folder")
                found = run_outputs(self.run_dir)
                if found and overwrite:
                    for name in (METRICS_NAME, CHECKPOINTS_DIR, TENSORBOARD_DIR):
                        path = self.run_dir / name
                        if path.is_dir():
                            shutil.rmtree(path)
                        elif path.exists():
                            path.unlink()
                    log.warning("overwrite: deleted the previous run's %s in %s", ", ".join(found), self.run_dir)
                elif found and not resume:
                    raise RunFolderError(
                        f"train.run_dir {self.run_dir} already holds a run ({', '.join(found)}): pass --resume to "
                        "continue it, --overwrite to delete it and start again, or set another train.run_dir")
            except (FolderLockedError, RunFolderError, OSError) as e:
                problem = e
                self._release()
        messages = D.all_gather_object(str(problem) if problem is not None else None)
        if problem is not None:
            raise problem if isinstance(problem, RunFolderError) else RunFolderError(str(problem)) from None
        if messages[0] is not None:
            raise RunFolderError(messages[0])

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------------------------------ state
    def _fsdp(self) -> bool:
        return self.dist.enabled and self.config.train.distributed == "fsdp"

    def _weights(self) -> dict[str, torch.Tensor]:
        if self._fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            # Frozen parameters are gathered only if the model saves some (Flamingo's save_lm_embeddings).
            options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                                       ignore_frozen_params=not self.saves_frozen)
            sd = get_model_state_dict(self.model, options=options)
            # Gathered on rank 0 only (the writer); other ranks get an empty dict.
            return {n: sd[n] for n in self.saved_names} if self.dist.is_main else {}
        return {n: t.detach().cpu() for n, t in self.model.saved_state_dict().items()}

    def _optimizer_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self) -> Path | None:
        """Collective: every rank contributes its RNG and data position; rank 0 writes."""
        weights, optim_state = self._weights(), self._optimizer_state()
        rngs = D.all_gather_object(ckpt.capture_rng())
        data: dict[str, Any] = {}
        for part in D.all_gather_object(self.mixture.state_dict()):
            data.update(part)
        path = None
        if self.dist.is_main:
            state = {"nonfinite_steps": self.nonfinite_steps, "data": data, "world_size": self.dist.world_size,
                     "config": self.config.to_dict(), "shards": self.mixture.shard_names(),
                     "metrics_window": self.window.state_dict(),
                     "elapsed_s": self.elapsed_before + time.perf_counter() - self._fit_start}
            path = ckpt.save_checkpoint(self.ckpt_root, self.step, self.model.model_type, self.model.config, weights,
                                        optim_state, rngs, state, self.config.train.keep_checkpoints)
        D.barrier()
        return path

    def _restore(self, c: ckpt.Checkpoint) -> None:
        path = c.path
        if sorted(c.weights) != sorted(self.saved_names):
            missing = sorted(set(self.saved_names) - set(c.weights))[:5]
            extra = sorted(set(c.weights) - set(self.saved_names))[:5]
            raise ValueError(f"checkpoint {path} does not match the model's saved tensors "
                             f"(missing {missing}, unexpected {extra}): was the model config changed?")
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        if self._fsdp():
            set_model_state_dict(self.model, c.weights, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            self.model.load_saved_state_dict(c.weights)
        set_optimizer_state_dict(self.model, self.optimizer, c.optimizer,
                                 options=StateDictOptions(full_state_dict=True))
        saved_shards = c.state.get("shards")  # absent in checkpoints written before shard names were recorded
        if saved_shards is not None:
            for name, now in self.mixture.shard_names().items():
                before = saved_shards.get(name)
                if before is not None and before != now:
                    diff = next(((a, b) for a, b in zip(before, now) if a != b), None)
                    detail = (f"first difference: {diff[0]} then, {diff[1]} now" if diff
                              else f"{len(before)} shards then, {len(now)} now")
                    raise ValueError(f"cannot resume from {path}: dataset {name!r} now reads other shards than the "
                                     f"checkpoint was trained on ({detail}); resume with the same shards")
        self.mixture.load_state_dict(c.state["data"])
        if len(c.rng) != self.dist.world_size:
            raise ValueError(f"checkpoint {path} was written by {len(c.rng)} ranks, this run has "
                             f"{self.dist.world_size}: resume with the same number of processes")
        ckpt.restore_rng(c.rng[self.dist.rank])
        self.step = int(c.state["step"])
        self.nonfinite_steps = int(c.state["nonfinite_steps"])
        if "metrics_window" in c.state:
            self.window.load_state_dict(c.state["metrics_window"])
        self.elapsed_before = float(c.state.get("elapsed_s", 0.0))
        self.resumed_from = path
        if self.dist.is_main:
            log.info("resumed from %s (step %d)", path, self.step)

    # ------------------------------------------------------------------------------------------ steps
    def _autocast(self):
        if self.config.train.precision == "bf16":
            return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        """One optimizer step (or a skipped one). Returns global metrics (identical on every rank)."""
        t = self.config.train
        set_lr(self.optimizer, lr_factor(self.step, self.config.optim, t.steps))
        names = self.mixture.names_for_step(self.step)
        all_names = [d.name for d in self.config.data.datasets]
        micro = [(a, name) for a in range(t.grad_accum) for name in names]
        # [nonfinite, samples, tokens, finite loss sum per dataset..., finite micro-batches per dataset...]
        stats = torch.zeros(3 + 2 * len(all_names), dtype=torch.float64)
        for i, (a, name) in enumerate(micro):
            batch = self.mixture.loaders[a][name].next()
            with D.grad_sync(self.wrapped, enabled=i == len(micro) - 1):
                with self._autocast():
                    out = self.task.loss(self.wrapped, batch)
                loss = out["loss"]
                # Backward even on a non-finite loss: every rank must join the gradient sync.
                (loss.float() * (self.mixture.weights[name] / t.grad_accum)).backward()
            value = float(loss.detach())
            k = all_names.index(name)
            stats[0] += 0.0 if math.isfinite(value) else 1.0
            # A task may count its samples (FLAME batches have no input_ids); else one per input_ids row.
            stats[1] += float(out["samples"]) if "samples" in out else len(batch.get("input_ids", ()))
            stats[2] += float(out.get("tokens", 0))
            if math.isfinite(value):  # a NaN loss is counted above, never averaged in as 0
                stats[3 + k] += value
                stats[3 + len(all_names) + k] += 1
        stats = D.all_reduce_sum(stats)
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.config.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        skipped = stats[0] > 0 or not math.isfinite(norm)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_steps += 1
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics: dict[str, float] = {"samples": float(stats[1]), "tokens": float(stats[2]), "grad_norm": norm,
                                     "skipped": float(skipped), "lr": self.optimizer.param_groups[0]["lr"]}
        total, weight = 0.0, 0.0
        for k, name in enumerate(all_names):
            if name not in names:
                continue
            n = float(stats[3 + len(all_names) + k])
            metrics[f"loss/{name}"] = float(stats[3 + k]) / n if n > 0 else float("nan")
            total += self.mixture.weights[name] * metrics[f"loss/{name}"]
            weight += self.mixture.weights[name]
        # "loss": nats per token (the datasets' per-token losses averaged with their weights), on the scale of the
        # held-out eval/loss; "objective": the weighted sum the optimizer minimises.
        metrics["objective"] = total if not skipped else float("nan")
        metrics["loss"] = total / weight if not skipped and weight > 0 else float("nan")
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean held-out loss per eval dataset (the same batches every time) and their mean."""
        if not self.eval_loaders:
            return {}
        self.model.eval()
        names = list(self.eval_loaders)
        stats = torch.zeros(2 * len(names), dtype=torch.float64)
        for k, loader in enumerate(self.eval_loaders.values()):
            loader.set_epoch(0)
            for b, batch in enumerate(loader):
                if b >= self.config.data.eval_batches:
                    break
                with self._autocast():
                    loss = float(self.task.loss(self.wrapped, batch)["loss"])
                stats[k] += loss
                stats[len(names) + k] += 1
        stats = D.all_reduce_sum(stats)
        out = {f"eval/{n}": float(stats[k] / stats[len(names) + k]) for k, n in enumerate(names)
               if stats[len(names) + k] > 0}
        if out:
            out["eval/loss"] = sum(out.values()) / len(out)
        self.task.set_train_mode()
        return out

    # ------------------------------------------------------------------------------------------ fit
    def fit(self) -> TrainResult:
        t = self.config.train
        start = self._fit_start = time.perf_counter()
        self.task.set_train_mode()
        history: list[dict[str, float]] = []
        bar = None
        if t.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=self.step, desc="train", dynamic_ncols=True)
        if self.step == 0 and self.eval_loaders:
            record = {"step": 0, **self.evaluate()}
            history.append(record)
            self.metrics.write(record)
        last_loss = None
        window = self.window
        if not self.resumed_from:
            window.reset()
        last_ckpt: Path | None = self.resumed_from
        try:
            while self.step < t.steps:
                step_start = time.perf_counter()
                m = self.train_step()
                if m["skipped"]:
                    log.warning("step %d: non-finite loss or gradient, step skipped (%d so far)", self.step,
                                self.nonfinite_steps)
                    if self.nonfinite_steps > t.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"stopping at step {self.step}: {self.nonfinite_steps} steps had a NaN/inf loss or "
                            f"gradient, more than train.max_nonfinite_steps={t.max_nonfinite_steps}. Last good "
                            f"checkpoint: {last_ckpt or 'none'}. Lower optim.lr, set optim.grad_clip, use "
                            "train.precision=fp32, or inspect the data.")
                else:
                    last_loss = m["loss"]
                window.add(m)
                if bar is not None:  # the same fields at every update: loss (nats/token), lr, samples/s
                    bar.update(1)
                    rate = m["samples"] / max(time.perf_counter() - step_start, 1e-9)
                    bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.1e}", samples_s=f"{rate:.1f}")
                if self.step % t.log_every == 0 or self.step == t.steps:
                    record = {"step": self.step, **window.record()}
                    record["nonfinite_steps"] = self.nonfinite_steps
                    record["lr"] = m["lr"]
                    record["elapsed_s"] = self.elapsed_before + time.perf_counter() - start
                    self.metrics.write(record)
                    if bar is not None:
                        loss = record.get("loss")
                        bar.set_postfix(loss=f"{loss if loss is not None else float('nan'):.3f}",
                                        lr=f"{record['lr']:.1e}", samples_s=f"{record['samples_per_s']:.1f}")
                    window.reset()
                is_last = self.step == t.steps
                if self.eval_loaders and (is_last or (t.eval_every and self.step % t.eval_every == 0)):
                    record = {"step": self.step, **self.evaluate()}
                    history.append(record)
                    self.metrics.write(record)
                    if bar is not None:
                        bar.write(f"step {self.step}: eval loss {record.get('eval/loss', float('nan')):.4f}")
                if is_last or (t.checkpoint_every and self.step % t.checkpoint_every == 0):
                    try:
                        last_ckpt = self.save() or last_ckpt
                    except OSError as e:  # the temporary folder is already gone (atomic_path)
                        raise CheckpointWriteError(
                            f"could not write the checkpoint of step {self.step} into {self.ckpt_root}: "
                            f"{e.strerror or e}; the last complete checkpoint ({last_ckpt or 'none'}) is intact"
                        ) from None
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        skips = self.mixture.skips()
        if skips and self.dist.is_main:
            log.info("skipped samples on rank 0: %s", skips)
        return TrainResult(step=self.step, nonfinite_steps=self.nonfinite_steps, last_loss=last_loss,
                           eval_history=history, checkpoint=last_ckpt, seconds=time.perf_counter() - start)

    def close(self) -> None:
        self._release()
        D.teardown(self.dist)


def train(config: RunConfig, resume: bool = False, task=None, overwrite: bool = False) -> TrainResult:
    """Run (or with ``resume`` continue) the training ``config`` describes; see :class:`Trainer`."""
    trainer = Trainer(config, task=task, resume=resume, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()
