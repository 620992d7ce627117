"""The Hugging Face Hub side of the save/load contract (frozenvl.pretrained), the same tests for every model:
``from_pretrained("org/name")`` reads a repo from a local Hugging Face cache with ``HF_HUB_OFFLINE=1`` (revisions
included), and ``push_to_hub`` uploads the saved files and a model card to a stand-in of the Hub. No test reaches
the network: every socket connection fails the test."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket

import httpx2
import huggingface_hub
import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import ModelCard, RepoUrl
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

from frozenvl.constants import CONFIG_NAME, WEIGHTS_NAME
from frozenvl.flamingo import Flamingo
from test_pretrained import CLASSES, KINDS, move, tiny


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test, even one that huggingface_hub would catch and turn into a fallback."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"a test of the Hub tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert attempts == []


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it: it reads the variable once, at import, into its constants."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def put_in_cache(cache, repo_id: str, model, ref: str = "main") -> str:
    """Lay ``model`` out in the Hugging Face cache ``cache`` as huggingface_hub's downloads do: the files in
    ``blobs/<sha256>``, the snapshot ``snapshots/<commit>/`` of links to them, and ``refs/<ref>`` naming the commit.
    Returns the commit hash."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    saved = cache / "saved"
    model.save_pretrained(saved)
    digest = hashlib.sha1()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        digest.update((saved / name).read_bytes())
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        blob = repo / "blobs" / hashlib.sha256((saved / name).read_bytes()).hexdigest()
        shutil.move(saved / name, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    saved.rmdir()
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


def same_outputs(loaded, outputs, expected) -> bool:
    with torch.no_grad():
        return torch.equal(outputs(loaded.eval()), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_a_repo_in_the_cache_loads_offline(kind, tmp_path, offline):
    model, outputs, backbones = tiny(kind)
    put_in_cache(tmp_path / "hub", "org/name", model)
    # The layout is the one huggingface_hub itself reads.
    assert [r.repo_id for r in huggingface_hub.scan_cache_dir(tmp_path / "hub").repos] == ["org/name"]
    with torch.no_grad():
        expected = outputs(model)
    loaded = CLASSES[kind].from_pretrained("org/name", cache_dir=tmp_path / "hub", **backbones())
    assert type(loaded) is CLASSES[kind] and loaded.config == model.config
    assert same_outputs(loaded, outputs, expected)


def test_the_default_cache_is_hf_hub_cache(tmp_path, offline, monkeypatch):
    model, outputs, backbones = tiny("flame")
    put_in_cache(tmp_path / "hub", "org/name", model)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with torch.no_grad():
        assert same_outputs(CLASSES["flame"].from_pretrained("org/name"), outputs, outputs(model))


@pytest.mark.parametrize("kind", KINDS)
def test_a_revision_in_the_cache_is_honoured(kind, tmp_path, offline):
    model, outputs, backbones = tiny(kind)
    first = put_in_cache(tmp_path / "hub", "org/name", model, ref="v1")
    with torch.no_grad():
        at_v1 = outputs(model)
    move(model)  # a later state on main
    put_in_cache(tmp_path / "hub", "org/name", model, ref="main")
    with torch.no_grad():
        at_main = outputs(model)
    assert not torch.equal(at_v1, at_main)

    def load(**kw):
        return CLASSES[kind].from_pretrained("org/name", cache_dir=tmp_path / "hub", **kw, **backbones())

    assert same_outputs(load(), outputs, at_main)
    assert same_outputs(load(revision="v1"), outputs, at_v1)
    assert same_outputs(load(revision=first), outputs, at_v1)  # a commit hash


@pytest.mark.parametrize("kind", KINDS)
def test_a_repo_not_in_the_cache_is_one_clear_error_offline(kind, tmp_path, offline):
    model, _, backbones = tiny(kind)
    put_in_cache(tmp_path / "hub", "org/name", model)
    cls = CLASSES[kind]
    with pytest.raises(FileNotFoundError, match=r"repo org/missing \(revision main\) is not in the Hugging Face "
                                                r"cache .*hub while HF_HUB_OFFLINE is set"):
        cls.from_pretrained("org/missing", cache_dir=tmp_path / "hub", **backbones())
    with pytest.raises(FileNotFoundError, match=r"repo org/name \(revision v9\) is not in the Hugging Face cache"):
        cls.from_pretrained("org/name", revision="v9", cache_dir=tmp_path / "hub", **backbones())


@pytest.mark.parametrize("kind", KINDS)
def test_a_local_folder_comes_before_a_repo_id(kind, tmp_path, offline, monkeypatch):
    model, outputs, backbones = tiny(kind)
    monkeypatch.chdir(tmp_path)
    model.save_pretrained("org/name")  # a relative folder that is also a valid repo id: the folder wins
    with torch.no_grad():
        expected = outputs(model)
    assert same_outputs(CLASSES[kind].from_pretrained("org/name", cache_dir=tmp_path / "empty", **backbones()),
                        outputs, expected)
    assert not (tmp_path / "empty").exists()  # the Hub cache was not even looked at


@pytest.mark.parametrize("name", ["{tmp}/nothing", "runs/a/step-10", "../nothing"])
def test_neither_a_folder_nor_a_repo_id_is_an_error_naming_it(name, tmp_path, offline):
    name = name.format(tmp=tmp_path)
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(name)} is not a saved flame model"):
        CLASSES["flame"].from_pretrained(name)


def test_online_the_hub_is_asked_for_the_two_files_at_the_revision(tmp_path, monkeypatch):
    """Online, the repo is resolved by snapshot_download (here a stand-in returning a saved folder) with the
    revision, cache, token and only the two files; Flamingo's own keyword arguments still reach from_config."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    model, outputs, backbones = tiny("flamingo")
    model.save_pretrained(tmp_path / "snapshot")
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with torch.no_grad():
        expected = outputs(model)
    loaded = Flamingo.from_pretrained("org/name", revision="v2", cache_dir=tmp_path / "hub", token="hf_x",
                                      **backbones())
    assert same_outputs(loaded, outputs, expected)
    assert calls == [("org/name", {"revision": "v2", "cache_dir": tmp_path / "hub", "token": "hf_x",
                                   "local_files_only": False, "allow_patterns": [CONFIG_NAME, WEIGHTS_NAME],
                                   "library_name": "frozenvl"})]

    def not_found(repo_id, **kwargs):
        raise RepositoryNotFoundError("Repository Not Found", response=httpx2.Response(
            404, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(FileNotFoundError, match="org/missing is neither a folder nor a model repo on the Hub"):
        Flamingo.from_pretrained("org/missing", **backbones())

    def unreachable(repo_id, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(FileNotFoundError, match=r"org/name is not a folder, and the Hub repo org/name \(revision "
                                                r"main\) is not in the Hugging Face cache .*could not be reached"):
        Flamingo.from_pretrained("org/name", **backbones())


class StandInHub:
    """The three HfApi methods push_to_hub may call, recording each call and keeping a copy of the uploaded folder
    (push_to_hub removes its temporary folder when it returns)."""

    def __init__(self, tmp_path, monkeypatch):
        self.calls, self.uploaded = [], tmp_path / "uploaded"
        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False):
            hub.calls.append(("create_repo", repo_id, private, exist_ok, api.token))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(api, repo_id, *, branch, exist_ok=False):
            hub.calls.append(("create_branch", repo_id, branch, exist_ok))

        def upload_folder(api, *, repo_id, folder_path, revision=None, commit_message=None):
            hub.calls.append(("upload_folder", repo_id, revision, commit_message))
            shutil.copytree(folder_path, hub.uploaded)
            return "commit-info"

        for method in (create_repo, create_branch, upload_folder):
            monkeypatch.setattr(huggingface_hub.HfApi, method.__name__, method)


@pytest.mark.parametrize("kind", KINDS)
def test_push_to_hub_uploads_the_saved_files_and_a_model_card(kind, tmp_path, offline, monkeypatch):
    hub = StandInHub(tmp_path, monkeypatch)
    model, outputs, backbones = tiny(kind)
    assert model.push_to_hub("org/name", private=True, token="hf_x") == "commit-info"
    assert hub.calls == [("create_repo", "org/name", True, True, "hf_x"),
                         ("upload_folder", "org/name", None, f"Upload {CLASSES[kind].__name__}")]
    assert sorted(p.name for p in hub.uploaded.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, "README.md"])

    card = ModelCard.load(hub.uploaded / "README.md")
    assert card.data.library_name == "frozenvl" and kind in card.data.tags
    about = card.text.split("## Config")[0]
    assert f"`{CLASSES[kind].__name__}` (model type `{kind}`)" in about
    assert f'{CLASSES[kind].__name__}.from_pretrained("org/name")' in about
    assert "training" not in about.lower()  # a model's config says nothing of its training
    if kind == "flamingo":
        assert f"Frozen language model: `{model.config.lm}`" in about
        assert f"Frozen vision encoder: `{model.config.vision}`" in about
    else:
        assert "Frozen" not in about  # trained from scratch: no backbone loaded by source

    with torch.no_grad():
        expected = outputs(model)
    assert same_outputs(CLASSES[kind].from_pretrained(hub.uploaded, **backbones()), outputs, expected)


def test_push_to_hub_commits_to_a_branch_it_creates(tmp_path, offline, monkeypatch):
    hub = StandInHub(tmp_path, monkeypatch)
    model, _, _ = tiny("clip_baseline")
    model.push_to_hub("org/name", revision="v1", commit_message="first run")
    assert hub.calls == [("create_repo", "org/name", None, True, None),
                         ("create_branch", "org/name", "v1", True),
                         ("upload_folder", "org/name", "v1", "first run")]


def test_push_to_hub_shows_the_training_config_it_is_given(tmp_path, offline, monkeypatch):
    """The run config (a config dataclass, as load_config returns) appears in the card as the YAML it reads back."""
    import yaml

    from frozenvl.train.config import RunConfig

    hub = StandInHub(tmp_path, monkeypatch)
    model, _, _ = tiny("flame")
    run = RunConfig.from_dict({"data": {"datasets": [{"name": "pairs", "shards": "pairs-{0..3}.tar"}]},
                               "optim": {"lr": 3e-4}, "train": {"steps": 7}})
    model.push_to_hub("org/name", training_config=run)
    card = ModelCard.load(hub.uploaded / "README.md")
    training = card.text.split("## Training")[1].split("```yaml")[1].split("```")[0]
    assert RunConfig.from_dict(yaml.safe_load(training)) == run
