"""Offline store of facet embeddings: sharded fp16 arrays, a key index and metadata.

Layout of a store folder::

    meta.json                what produced the embeddings (LLM, layer, prompt-set hash, dims); never changes
    manifest.json            the committed shards, in order: [{"name": "shard-00000", "rows": N}, ...]
    shard-00000.npy          (N, K, D) float16, L2-normalised facet embeddings
    shard-00000.keys.json    the N sample keys of that shard, row order

Writing is resumable: a shard (``commit_every`` captions, 256 by default) is written atomically (keys, then
array), and only then recorded in the manifest (atomically). A run killed at any moment leaves either a
recorded shard or an unrecorded one that the next run overwrites under the same name (and the temporary files of
a write it cut, which the next writer removes); keys already recorded are skipped, so a killed and rerun job gives
the same store as an uninterrupted one, with no duplicates. One writer at a time: a writer holds the store's lock
(``.frozenvl.lock``), and a second one is refused at once. A store refuses to be extended with other metadata:
the LM (its source, dtype and a fingerprint of its weights), the layer, the prompt set, the dimensions.

Reading memory-maps the shards; :meth:`EmbeddingStore.join` attaches embeddings to image samples by key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from frozenvl.files import acquire_folder_lock, atomic_path, read_json, remove_leftovers, write_text_atomic

log = logging.getLogger(__name__)

STORE_FORMAT = "frozenvl.flame.store/1"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
# Fields of the metadata that must match for a store to be extended (everything that changes the numbers).
IDENTITY_FIELDS = ("format", "lm", "lm_dtype", "lm_fingerprint", "layer", "prompt_set_hash", "num_facets", "dim",
                   "dtype", "normalized", "max_length", "official_compat")
LM_IDENTITY_FIELDS = ("lm_dtype", "lm_fingerprint")  # not in stores written before they were recorded
FINGERPRINT_VALUES = 4096  # values of each weight tensor that enter the LM's fingerprint (all of a smaller one)


class StoreMismatchError(ValueError):
    """The store on disk was made with another configuration."""


def _write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=1))


def _read_json(path: Path, kind: type = dict):
    """A store file's JSON, of type ``kind``; a damaged file (not UTF-8 or JSON, nested too deeply, of another
    shape) is one ValueError naming it."""
    data = read_json(path, "embedding store file")
    if not isinstance(data, kind):
        raise ValueError(f"embedding store file {path} is damaged: not a JSON {'object' if kind is dict else 'list'}")
    return data


def _check_shard(path: Path, rows: int) -> None:
    """A committed shard must be an array of ``rows`` rows: a damaged one (overwritten, cut short) is one error
    naming it before anything is added to the store (only its header is read)."""
    try:
        array = np.load(path, mmap_mode="r")
        shape = array.shape
        del array
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"embedding store shard {path} is damaged: {e}") from None
    if not shape or shape[0] != rows:
        raise ValueError(f"embedding store shard {path} is damaged: {shape[:1] or 'no'} rows, the manifest lists "
                         f"{rows}")


def _read_manifest(root: Path) -> list[dict]:
    """The committed shards listed in ``root``'s manifest (none without one); a damaged manifest is one error."""
    manifest = root / MANIFEST_FILE
    if not manifest.exists():
        return []
    shards = _read_json(manifest).get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                               and isinstance(s.get("rows"), int) for s in shards):
        raise ValueError(f"embedding store file {manifest} is damaged: 'shards' is not a list of "
                         '{"name", "rows"} entries')
    return shards


def lm_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's weights: each parameter's name, shape and dtype and an evenly strided sample of at most
    4096 of its values (every value of a smaller tensor). Two LMs loaded from different weights differ; the
    same weights in another dtype differ too (compare the dtype first)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_VALUES)]
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:".encode())
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def lm_identity(encoder) -> dict:
    """What the encoder's LM is beyond its source name: its dtype and :func:`lm_fingerprint`."""
    return {"lm_dtype": str(encoder.dtype).removeprefix("torch."), "lm_fingerprint": lm_fingerprint(encoder.model)}


def store_meta(encoder_description: dict, identity: dict | None = None) -> dict:
    """Store metadata from :meth:`FacetTextEncoder.describe` and :func:`lm_identity` (plus the storage format)."""
    return {"format": STORE_FORMAT, "dtype": "float16", "normalized": True, **encoder_description, **(identity or {})}


def check_text_encoder(recorded: dict, encoder) -> None:
    """Refuse an encoder other than the one a model's embeddings came from (``recorded``: the store metadata a
    FLAME checkpoint keeps in ``config.text``): another layer, or other LM weights. The weights are compared by
    fingerprint when both sides ran the LM in the same dtype, else by the LM's source name; what a record lacks
    (checkpoints of older versions) is not compared."""
    desc, ident = encoder.describe(), lm_identity(encoder)
    problems = []
    if recorded.get("layer") is not None and recorded["layer"] != desc["layer"]:
        problems.append(f"layer {recorded['layer']} then, {desc['layer']} now")
    if recorded.get("lm_fingerprint") and recorded.get("lm_dtype") == ident["lm_dtype"]:
        if recorded["lm_fingerprint"] != ident["lm_fingerprint"]:
            problems.append(f"LM weights {recorded.get('lm')!r} (fingerprint {recorded['lm_fingerprint']}) then, "
                            f"{desc['lm']!r} (fingerprint {ident['lm_fingerprint']}) now")
    elif recorded.get("lm") not in (None, "<instance>") and recorded["lm"] != desc["lm"]:
        problems.append(f"LM {recorded['lm']!r} then, {desc['lm']!r} now")
    if problems:
        raise StoreMismatchError(f"the model was trained on embeddings of another text encoder ({'; '.join(problems)})"
                                 ": pass the --lm and --layer it was trained with")


class EmbeddingStoreWriter:
    """Append-only writer; opening an existing store checks that its metadata matches ``meta``. It holds the
    store's lock until :meth:`close` (or the end of a ``with`` block): a second writer is refused at once
    (:class:`frozenvl.files.FolderLockedError`); it removes what an interrupted write left (``.*.tmp``)."""

    def __init__(self, root: str | os.PathLike, meta: dict):
        self.root = Path(root)
        self._lock = acquire_folder_lock(self.root, "embedding store")
        try:
            self._open(meta)
        except BaseException:
            self.close()
            raise

    def _open(self, meta: dict) -> None:
        leftovers = remove_leftovers(self.root)
        if leftovers:
            log.info("removed %d temporary files of an interrupted write in %s", len(leftovers), self.root)
        meta_path = self.root / META_FILE
        if meta_path.exists():
            existing = _read_json(meta_path)
            unrecorded = [k for k in LM_IDENTITY_FIELDS if k not in existing]
            if unrecorded:  # a store written before these were recorded: they cannot be compared
                log.warning("the embedding store %s does not record %s: extending it without checking them",
                            self.root, " and ".join(unrecorded))
            diff = {k: (existing.get(k), meta.get(k)) for k in IDENTITY_FIELDS
                    if k not in unrecorded and existing.get(k) != meta.get(k)}
            if diff:
                lines = "; ".join(f"{k}: store has {a!r}, this run has {b!r}" for k, (a, b) in diff.items())
                raise StoreMismatchError(f"refusing to extend the embedding store {self.root} made with another "
                                         f"configuration ({lines}); use a new output folder")
            self.meta = existing
        else:
            _write_json_atomic(meta_path, meta)
            self.meta = meta
        self.shards: list[dict] = _read_manifest(self.root)
        self.keys: set[str] = set()
        for shard in self.shards:
            self.keys.update(_read_json(self.root / f"{shard['name']}.keys.json", list))
            _check_shard(self.root / f"{shard['name']}.npy", shard["rows"])

    def write_shard(self, keys: list[str], embeddings: np.ndarray) -> str:
        """Commit one shard (N, K, D) atomically, then record it in the manifest."""
        shape = (len(keys), self.meta["num_facets"], self.meta["dim"])
        if embeddings.shape != shape:
            raise ValueError(f"shard has shape {embeddings.shape}, the store expects {shape}")
        if len(set(keys)) != len(keys) or self.keys.intersection(keys):
            raise ValueError("a shard would duplicate keys already in the store")
        name = f"shard-{len(self.shards):05d}"
        _write_json_atomic(self.root / f"{name}.keys.json", list(keys))
        with atomic_path(self.root / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, embeddings.astype(np.float16))
                f.flush()
                os.fsync(f.fileno())
        self._record(name, len(keys))
        self.keys.update(keys)
        return name

    def _record(self, name: str, rows: int) -> None:
        self.shards.append({"name": name, "rows": rows})
        _write_json_atomic(self.root / MANIFEST_FILE, {"shards": self.shards})

    def close(self) -> None:
        """Release the store's lock (also when the process ends, however it ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> EmbeddingStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class EmbedReport:
    written: int = 0  # captions encoded and committed by this run
    already_stored: int = 0  # keys the store held before this run
    duplicates: int = 0  # keys seen earlier in this run's input
    empty: int = 0
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        return {"written": self.written, "already_stored": self.already_stored, "duplicates": self.duplicates,
                "empty": self.empty, "shards_written": len(self.shards), "seconds": round(self.seconds, 3),
                "captions_per_s": round(rate, 2)}


DEFAULT_COMMIT_EVERY = 256


def embed_to_store(
    records: Iterable[tuple[str, str]],
    encoder,
    root: str | os.PathLike,
    batch_size: int = 32,
    commit_every: int = DEFAULT_COMMIT_EVERY,
    progress: bool = True,
    total: int | None = None,
    shard_size: int | None = None,
) -> EmbedReport:
    """Embed ``(key, caption)`` records into the store at ``root``, skipping keys it already holds.

    Every ``commit_every`` new captions are committed as one shard (the last one fewer), so a run killed at any
    moment loses at most the ``commit_every`` captions it had not committed; rerun, it resumes after the last
    commit. Captions are encoded in batches of ``batch_size`` aligned to the shard start, so a resumed run
    encodes exactly the batches an uninterrupted run would. ``shard_size`` is the older name of
    ``commit_every``. The progress bar counts captions encoded (captions/s); the report counts a key repeated
    within the input as a duplicate and a key the store held before the run as already stored.
    """
    import time

    from tqdm import tqdm

    from frozenvl.flame.prompts import clean_caption

    if shard_size is not None:
        commit_every = shard_size
    if commit_every < 1 or batch_size < 1:
        raise ValueError(f"batch_size and commit_every must be positive; got {batch_size} and {commit_every}")
    writer = EmbeddingStoreWriter(root, store_meta(encoder.describe(), lm_identity(encoder)))
    stored_before = set(writer.keys)
    report = EmbedReport()
    keys: list[str] = []  # this shard's keys, encoded or not
    texts: list[str] = []  # this shard's captions not encoded yet
    chunks: list[np.ndarray] = []  # this shard's encoded rows, (b, K, D) each
    seen: set[str] = set()
    bar = tqdm(total=total, desc="flame embed", unit="captions", disable=not progress)
    start = time.perf_counter()

    def encode_pending() -> None:
        emb = encoder.encode(texts, clean=False)  # (b, K, D)
        chunks.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
        bar.update(len(texts))
        texts.clear()

    def commit() -> None:
        report.shards.append(writer.write_shard(keys, np.concatenate(chunks)))
        report.written += len(keys)
        keys.clear()
        chunks.clear()

    try:
        for key, caption in records:
            key = str(key)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            if key in stored_before:
                report.already_stored += 1
                bar.set_postfix(already_stored=report.already_stored, refresh=False)
                continue
            text = clean_caption(caption or "")
            if not text:
                report.empty += 1
                continue
            keys.append(key)
            texts.append(text)
            if len(texts) == batch_size or len(keys) == commit_every:
                encode_pending()
            if len(keys) == commit_every:
                commit()
        if texts:
            encode_pending()
        if keys:
            commit()
    finally:
        bar.close()
        writer.close()  # the store's lock
        report.seconds = time.perf_counter() - start
    if report.duplicates or report.empty:
        log.warning("skipped %d duplicate keys and %d empty captions", report.duplicates, report.empty)
    return report


MAX_OPEN_SHARDS = 256  # memory maps a reader keeps open at once (each holds a file descriptor)


class EmbeddingStore:
    """Read-only, memory-mapped view of a store: ``store[key] -> (K, D) float16``.

    Shards are memory-mapped when first read and at most ``max_open`` stay open (least recently used closed
    first), so a store of many small shards (one per commit) never runs out of file descriptors."""

    def __init__(self, root: str | os.PathLike, max_open: int = MAX_OPEN_SHARDS):
        self.root = Path(root)
        if not (self.root / META_FILE).exists():
            raise FileNotFoundError(f"{self.root} is not a FLAME embedding store (no {META_FILE})")
        self.meta = _read_json(self.root / META_FILE)
        shards = _read_manifest(self.root)
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._files = [self.root / f"{s['name']}.npy" for s in shards]
        missing = [str(f) for f in self._files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"the embedding store {self.root} lists shards that are missing: {missing[:3]}")
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()  # shard -> memory map, least recent first
        self._index: dict[str, tuple[int, int]] = {}
        self.missing = 0  # samples skipped by the last join()
        for i, s in enumerate(shards):
            for row, key in enumerate(_read_json(self.root / f"{s['name']}.keys.json", list)):
                self._index[key] = (i, row)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def keys(self) -> list[str]:
        return list(self._index)

    def __getitem__(self, key: str) -> np.ndarray:
        shard, row = self._index[key]
        return self._shard(shard)[row]  # (K, D) float16, memory-mapped

    def _shard(self, i: int) -> np.ndarray:
        array = self._open.get(i)
        if array is None:
            array = np.load(self._files[i], mmap_mode="r")  # (N, K, D)
            self._open[i] = array
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)  # rows already returned keep their own reference
        else:
            self._open.move_to_end(i)
        return array

    def get_batch(self, keys: list[str]) -> torch.Tensor:
        """(N, K, D) float32 tensor for the given keys."""
        return torch.from_numpy(np.stack([np.asarray(self[k], dtype=np.float32) for k in keys]))

    def join(self, samples: Iterable[dict], key_field: str = "__key__",
             out_field: str = "text_embeddings") -> Iterator[dict]:
        """Attach each sample's embeddings by key; samples whose key is not stored are skipped and counted."""
        self.missing = 0
        for sample in samples:
            key = sample.get(key_field)
            if key not in self._index:
                self.missing += 1
                continue
            yield {**sample, out_field: np.asarray(self[key], dtype=np.float32)}
