"""Files that survive a kill: atomic writes of files and folders, and frozenvl's folder in the user cache."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """frozenvl's folder in the user cache (``$FROZENVL_CACHE``, else ``$XDG_CACHE_HOME/frozenvl``)."""
    root = os.environ.get("FROZENVL_CACHE")
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "frozenvl")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is renamed onto ``final`` in one step.

    Works for files and folders. On an exception the temporary path is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            # os.replace cannot replace a non-empty folder: move the old one aside first.
            old = tmp / (final.name + ".old")
            os.replace(final, old)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file (UTF-8) atomically and durably: flushed to disk before it replaces the old one."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------- writers' locks

LOCK_NAME = ".frozenvl.lock"  # the lock file a writer holds in the folder it writes (a run folder, a store)


class FolderLockedError(OSError):
    """Another process holds the folder's lock: it is writing there now."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "folder") -> Iterator[Path]:
    """Hold ``folder``'s writer lock (``folder/.frozenvl.lock``, an OS file lock released when the process ends,
    even on a kill) for the duration of the block; another holder makes it raise :class:`FolderLockedError` at
    once, naming the folder. ``what`` names the folder in that message (``"run folder"``)."""
    lock = acquire_folder_lock(folder, what)
    try:
        yield Path(folder)
    finally:
        lock.release()


def acquire_folder_lock(folder: str | os.PathLike, what: str = "folder"):
    """The acquired :class:`filelock.FileLock` of ``folder`` (see :func:`folder_lock`); call ``release()``."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderLockedError(f"the {what} {folder} is in use: another process is writing to it (it holds "
                                f"{folder / LOCK_NAME}); wait until it ends or use another folder") from None
    return lock


# ----------------------------------------------------------------------------------------- outputs


class UnwritableOutputError(ValueError):
    """An output path that cannot be written (a user mistake, found before any work)."""


def check_writable(path: str | os.PathLike, folder: bool = False, what: str = "output") -> Path:
    """Check, before any work, that ``path`` can be written: a file (its folder is created if needed) or, with
    ``folder=True``, a folder to write files into. Raises :class:`UnwritableOutputError` with one message naming
    ``what``, the path and why; nothing is left behind but the folders that the write would create anyway."""
    path = Path(path)
    target = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise UnwritableOutputError(f"{what} {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise UnwritableOutputError(f"{what} {path} is a folder: give a file name")
    for parent in (target, *target.parents):  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise UnwritableOutputError(f"{what} {path} cannot be written: {parent} is a file, not a folder")
            break
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".frozenvl-write-check.", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UnwritableOutputError(f"{what} {path} cannot be written: {e.strerror or e}") from None
    return path


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The JSON in ``path``; a path that is no regular file (a folder, a FIFO whose open() would block) or a file
    that is not UTF-8, not JSON or nested too deeply to parse is one ValueError naming ``what`` and the path."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to read") from None


def remove_leftovers(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Remove the temporary paths that :func:`atomic_path` left in ``folder`` for files named ``name`` (a glob)
    when a process was killed mid-write; returns them. Call it only while holding the folder's lock."""
    folder = Path(folder)
    removed = sorted(folder.glob(f".{name}.*.tmp")) if folder.is_dir() else []
    for leftover in removed:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return removed
