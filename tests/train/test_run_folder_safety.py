"""Nothing in a run folder is lost: a new run refuses a folder holding another run (--overwrite deletes it,
saying so), one writer at a time (a lock), pruning killed midway never leaves a listed checkpoint without its
weights, a corrupt newest checkpoint makes --resume fall back to the previous one, a cut last metrics line does not
block a resume, a resumed run logs the same metrics as an uninterrupted one, NaN is never logged as 0 nor written
as a bare NaN, resume refuses other shards, and a full disk or a missing GPU is one line."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainfixtures import tiny_config

from frozenvl.cli import train as cli_train
from frozenvl.constants import WEIGHTS_NAME
from frozenvl.files import LOCK_NAME
from frozenvl.train import checkpoint as ckpt
from frozenvl.train.loop import CHECKPOINTS_DIR, METRICS_NAME, RunFolderError, Trainer, train

TIMING = ("samples_per_s", "tokens_per_s", "elapsed_s")  # wall-clock fields: never equal between two runs


@pytest.fixture(scope="module")
def template(tmp_path_factory, world) -> Path:
    """A finished 4-step run: checkpoints at steps 2 and 4, metrics every step."""
    run = tmp_path_factory.mktemp("template") / "run"
    train(tiny_config(world, run, steps=4, checkpoint_every=2, keep_checkpoints=2)[0])
    return run


def _copy(template: Path, world: Path, dest: Path, **train_options):
    shutil.copytree(template, dest)
    return tiny_config(world, dest, steps=4, checkpoint_every=2, keep_checkpoints=2, **train_options)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("frozenvl train:")]


def test_a_new_run_refuses_a_folder_holding_a_run_and_overwrite_replaces_it(tmp_path, world, template, capsys):
    _, cfg_path = _copy(template, world, tmp_path / "run")
    before = _files(tmp_path / "run")
    assert cli_train.main(["--config", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "Traceback" not in err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert "checkpoints/ (2 checkpoints, newest step-00000004)" in err and METRICS_NAME in err
    after = {k: v for k, v in _files(tmp_path / "run").items() if k != LOCK_NAME}
    assert after == {k: v for k, v in before.items() if k != LOCK_NAME}  # nothing touched

    assert cli_train.main(["--config", str(cfg_path), "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err

    # --overwrite: the old run's metrics and checkpoints are deleted (said in the log), other files are kept.
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert cli_train.main(["--config", str(cfg_path), "--overwrite", "train.steps=2"]) == 0
    out = capsys.readouterr().out
    found = ckpt.list_checkpoints(tmp_path / "run" / CHECKPOINTS_DIR)
    assert [p.name for p in found] == ["step-00000002"]  # the old step-4 no longer outranks the new run's
    assert f"checkpoint {found[-1]}" in out
    records = [json.loads(x) for x in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


HOLD = """
import sys, time
from frozenvl.files import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_while_another_process_holds_the_run_folder(tmp_path, world):
    cfg, _ = tiny_config(world, tmp_path / "run", steps=2)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"run folder {tmp_path / 'run'} is in use"):
            Trainer(cfg)
        assert not (tmp_path / "run" / METRICS_NAME).exists()
    finally:
        holder.kill()
        holder.wait()
    trainer = Trainer(cfg)  # the holder is gone: the OS released its lock
    trainer.close()


def test_a_kill_while_pruning_never_leaves_a_listed_checkpoint_without_weights(tmp_path, world, template,
                                                                               monkeypatch):
    _copy(template, world, tmp_path / "run")
    root = tmp_path / "run" / CHECKPOINTS_DIR
    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):  # deletes the weights first, then the process dies
        (Path(path) / WEIGHTS_NAME).unlink(missing_ok=True)
        raise KeyboardInterrupt("killed while pruning")

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune(root, keep=1)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    listed = ckpt.list_checkpoints(root)
    assert [p.name for p in listed] == ["step-00000004"]
    assert all((p / WEIGHTS_NAME).exists() for p in listed)
    ckpt.prune(root, keep=1)  # the next save cleans what the kill left
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004"]


def test_resume_falls_back_from_a_corrupt_newest_checkpoint(tmp_path, world, template, caplog):
    cfg, _ = _copy(template, world, tmp_path / "run")
    newest = tmp_path / "run" / CHECKPOINTS_DIR / "step-00000004"
    weights = newest / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a disk error cut it
    trainer = Trainer(cfg, resume=True)
    try:
        assert trainer.resumed_from == tmp_path / "run" / CHECKPOINTS_DIR / "step-00000002"
        assert any("corrupt checkpoint" in r.getMessage() and str(newest) in r.getMessage() for r in caplog.records)
        result = trainer.fit()
    finally:
        trainer.close()
    assert result.step == 4
    a = load_file(str(template / CHECKPOINTS_DIR / "step-00000004" / WEIGHTS_NAME))
    b = load_file(str(newest / WEIGHTS_NAME))
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=0, msg=n)  # retrained from step 2: the same weights


def test_a_cut_last_metrics_line_does_not_block_resume(tmp_path, world, template, caplog):
    cfg, _ = _copy(template, world, tmp_path / "run")
    metrics = tmp_path / "run" / METRICS_NAME
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines) + '\n{"step": 5, "loss": 3.1')  # killed mid-write
    trainer = Trainer(cfg, resume=True)
    trainer.close()
    assert metrics.read_text().splitlines() == lines  # every complete line kept, the cut one dropped
    assert any("not complete JSON" in r.getMessage() for r in caplog.records)


class _Interrupt(Exception):
    pass


def test_an_interrupted_and_resumed_run_writes_the_metrics_of_an_uninterrupted_one(tmp_path, world, monkeypatch):
    # Checkpoints every 2 steps, records every 3: the checkpoint at step 4 falls inside a window (steps 4-6).
    options = dict(steps=6, log_every=3, checkpoint_every=2, keep_checkpoints=3)
    reference = train(tiny_config(world, tmp_path / "ref", **options)[0])
    assert reference.step == 6

    cfg, _ = tiny_config(world, tmp_path / "cut", **options)
    real_step = Trainer.train_step

    def dies_at_step_5(self):
        if self.step == 5:
            raise _Interrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_5)
    with pytest.raises(_Interrupt):
        train(cfg)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert train(cfg, resume=True).step == 6

    def records(run):
        rows = [json.loads(x) for x in (run / METRICS_NAME).read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    ref, cut = records(tmp_path / "ref"), records(tmp_path / "cut")
    assert [r["step"] for r in ref] == [3, 6]
    assert cut == ref  # exactly: the window of steps 4-6 was checkpointed with step 4


class _NaNAt:
    """A task whose loss is NaN at the given optimizer steps."""

    def __init__(self, task, steps):
        self.inner, self.steps, self.trainer = task, set(steps), None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, model, batch):
        out = self.inner.loss(model, batch)
        if self.trainer.step in self.steps:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_a_nan_step_is_left_out_of_the_logged_means_and_never_written_as_nan(tmp_path, world, monkeypatch):
    from frozenvl.tasks import build_task

    cfg, _ = tiny_config(world, tmp_path / "run", steps=4, log_every=2, checkpoint_every=0)
    task = _NaNAt(build_task(cfg.model), steps=[1])  # the second step's losses are NaN
    trainer = Trainer(cfg, task=task)
    task.trainer = trainer
    seen = []
    real_step = Trainer.train_step

    def recording(self):
        seen.append(real_step(self))
        return seen[-1]

    monkeypatch.setattr(Trainer, "train_step", recording)
    try:
        trainer.fit()
    finally:
        trainer.close()

    def no_nan(token):
        raise AssertionError(f"bare {token} in {METRICS_NAME}")

    text = (tmp_path / "run" / METRICS_NAME).read_text()
    first, second = [json.loads(x, parse_constant=no_nan) for x in text.splitlines()]
    assert seen[1]["skipped"] == 1.0
    for key in ("loss", "loss/pairs", "loss/video", "grad_norm"):
        assert first[key] == pytest.approx(seen[0][key], rel=1e-12), key  # the NaN step is left out, not a 0
        assert second[key] == pytest.approx((seen[2][key] + seen[3][key]) / 2, rel=1e-12), key
    assert first["skipped_steps"] == 1 and first["nonfinite_steps"] == 1


def test_resume_refuses_other_shards_even_as_many(tmp_path, world, template):
    other = tmp_path / "other"
    other.mkdir()
    for shard in sorted(world.glob("pairs-*.tar")):  # as many shards, other files
        shutil.copy(shard, other / shard.name.replace("pairs", "renamed"))
    cfg, _ = _copy(template, world, tmp_path / "run")
    cfg.data.datasets[0].shards = str(other / "renamed-*.tar")
    with pytest.raises(ValueError, match="dataset 'pairs' now reads other shards.*renamed-000000.tar"):
        Trainer(cfg, resume=True)
    same, _ = tiny_config(world, tmp_path / "run", steps=4, checkpoint_every=2, keep_checkpoints=2)
    trainer = Trainer(same, resume=True)  # the refused trainer released the run folder's lock
    assert trainer.resumed_from.name == "step-00000004"
    trainer.close()


def test_overrides_may_follow_resume(tmp_path, world, capsys):
    import yaml

    _, cfg_path = tiny_config(world, tmp_path / "run", steps=2)
    argv = ["--config", str(cfg_path), "train.steps=3", "--resume", "--print-config", "optim.lr=0.5"]
    assert cli_train.main(argv) == 0  # before: "unrecognized arguments: optim.lr=0.5"
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 3 and printed["optim"]["lr"] == 0.5


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporary_folder(tmp_path, world, monkeypatch,
                                                                                   capsys):
    _, cfg_path = tiny_config(world, tmp_path / "run", steps=2, checkpoint_every=2)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    assert cli_train.main(["--config", str(cfg_path)]) == 1
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err
    assert "checkpoint of step 2" in lines[0] and "No space left on device" in lines[0]
    assert list((tmp_path / "run" / CHECKPOINTS_DIR).iterdir()) == []  # no .tmp left


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, world, capsys):
    _, cfg_path = tiny_config(world, tmp_path / "run", steps=1)
    start = time.perf_counter()
    assert cli_train.main(["--config", str(cfg_path), "train.device=cuda"]) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == ["frozenvl train: error: train.device=cuda but this machine has no usable CUDA GPU "
                                 "(torch.cuda.is_available() is False): set train.device=cpu or auto"]
    assert time.perf_counter() - start < 30
