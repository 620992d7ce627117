"""The synthetic world never mixes two worlds: generating into an existing one removes the shards it does not list,
keeps the splits of the same world, readers take a split's shards from world.json (not a glob); negative or zero
counts are refused, and a full disk is one line with no partial shard left."""

from __future__ import annotations

import errno
import json
import shutil
import tarfile

import pytest
from PIL import Image

from frozenvl.cli.data import main as data_main
from frozenvl.config import ConfigError
from frozenvl.data.synth import WorldConfig, generate_world, iter_world_split, world_split_shards

SMALL = dict(image_size=24, n_pairs=24, n_eval=8, shard_size=6, frames=2)


def _world(path, **overrides):
    return generate_world(path, WorldConfig(**{**SMALL, **overrides}), progress=False, log=None)


def _tars(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*.tar*"))


def test_synth_into_another_world_leaves_only_the_new_worlds_shards(tmp_path):
    _world(tmp_path / "w", splits=("pairs", "captioning"))  # 4 pair shards, 2 captioning shards
    meta = _world(tmp_path / "w", seed=1, n_pairs=12, splits=("pairs",))  # another world: 2 pair shards
    assert _tars(tmp_path / "w") == ["train/pairs-000000.tar", "train/pairs-000001.tar"]
    assert list(meta["splits"]) == ["pairs"]
    assert json.loads((tmp_path / "w" / "world.json").read_text())["splits"]["pairs"]["shards"] == [
        "train/pairs-000000.tar", "train/pairs-000001.tar"]
    assert len(list(iter_world_split(tmp_path / "w", "pairs"))) == 12
    with pytest.raises(FileNotFoundError, match="the world has no captioning split .*lists pairs"):
        world_split_shards(tmp_path / "w", "captioning")


def test_splits_of_the_same_world_are_added_one_call_at_a_time(tmp_path):
    _world(tmp_path / "w", splits=("pairs",))
    _world(tmp_path / "w", splits=("captioning",), workers=1)
    splits = json.loads((tmp_path / "w" / "world.json").read_text())["splits"]
    assert sorted(splits) == ["captioning", "pairs"]
    assert len(list(iter_world_split(tmp_path / "w", "pairs"))) == 24
    assert len(list(iter_world_split(tmp_path / "w", "captioning"))) == 8
    # The same samples as a world written in one call.
    _world(tmp_path / "once", splits=("pairs", "captioning"))
    for split in ("pairs", "captioning"):
        a = [s["key"] for s in iter_world_split(tmp_path / "w", split)]
        b = [s["key"] for s in iter_world_split(tmp_path / "once", split)]
        assert a == b


def test_evaluation_reads_the_shards_world_json_lists_not_a_glob(tmp_path):
    _world(tmp_path / "w", splits=("captioning",))
    _world(tmp_path / "other", seed=7, splits=("captioning",))
    # A shard of another world dropped beside this one's (a copy, an older generation by hand).
    foreign = tmp_path / "w" / "eval" / "captioning-000007.tar"
    shutil.copy(tmp_path / "other" / "eval" / "captioning-000000.tar", foreign)
    assert world_split_shards(tmp_path / "w", "captioning") == [
        str(tmp_path / "w" / "eval" / f"captioning-00000{i}.tar") for i in (0, 1)]
    assert world_split_shards(tmp_path / "w" / "eval", "captioning") == world_split_shards(tmp_path / "w", "captioning")
    assert len(list(iter_world_split(tmp_path / "w", "captioning"))) == 8  # not 12


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "-5", "--splits", "pairs"], "n_pairs must be >= 0; got -5"),
    (["--pairs", "0", "--splits", "pairs"], "the splits pairs would hold no samples"),
    (["--eval", "0", "--splits", "captioning", "vqa"], "the splits captioning, vqa would hold no samples"),
    (["--shard-size", "0"], "shard_size must be >= 1; got 0"),
    (["--frames", "-1", "--splits", "video"], "frames must be >= 1; got -1"),
])
def test_synth_refuses_negative_or_zero_counts(tmp_path, capsys, argv, message):
    assert data_main(["synth", str(tmp_path / "w"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "w" / "world.json").exists()


def test_zero_counts_of_splits_not_written_are_fine(tmp_path):
    meta = _world(tmp_path / "w", n_pairs=0, n_video=0, splits=("captioning",))
    assert list(meta["splits"]) == ["captioning"]
    with pytest.raises(ConfigError, match="WorldConfig.n_eval must be >= 0"):
        WorldConfig(n_eval=-1, splits=("pairs",))


@pytest.mark.parametrize("flag", ["--max-size", "--shard-size"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_converters_refuse_zero_or_negative_sizes(tmp_path, capsys, flag, value):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "img" / "a.png")
    (tmp_path / "caps.csv").write_text("image,caption\na.png,a red picture\n")
    argv = ["convert", "folder", str(tmp_path / "img"), str(tmp_path / "caps.csv"), str(tmp_path / "out"), "--quiet",
            flag, value]
    assert data_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"frozenvl data: error: {flag} must be >= 1; got {value}"]
    assert not list(tmp_path.glob("out/*.tar"))


def test_a_full_disk_during_synth_is_one_line_and_leaves_no_partial_shard(tmp_path, capsys, monkeypatch):
    real_addfile = tarfile.TarFile.addfile
    calls = {"n": 0}

    def addfile(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 15:  # inside the second shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_addfile(self, *args, **kwargs)

    def close(self):  # flushing the end of the archive fails too, as on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    real_close = tarfile.TarFile.close

    def close_after_failure(self):
        if calls["n"] >= 15:
            close(self)
        return real_close(self)

    monkeypatch.setattr(tarfile.TarFile, "close", close_after_failure)
    argv = ["synth", str(tmp_path / "w"), "--quiet", "--pairs", "24", "--shard-size", "6", "--image-size", "24",
            "--splits", "pairs"]
    assert data_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"frozenvl data: error: [Errno 28] could not write the synthetic world into {tmp_path / 'w'}: "
                   "No space left on device"]
    assert not list((tmp_path / "w").rglob("*.tmp")) and not (tmp_path / "w" / "world.json").exists()
