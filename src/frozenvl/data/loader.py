"""Streaming loader over webdataset shards: split across ranks and workers, shuffled, filtered, resumable.

`ShardDataset` is an IterableDataset of decoded samples (dicts, see `formats.decode_sample`). Each (rank, worker)
pair reads its own *stream*: the shards (or, with fewer shards than streams, every n-th sample) assigned to it in
an order fixed by (seed, epoch). A stream is deterministic, so a position is just "how many raw samples of each
stream were consumed": `StreamingLoader.state_dict()` stores that, and a resumed loader skips exactly those
without decoding them and yields exactly the remaining samples of the epoch.

With workers, the torch DataLoader hands out whole batches of one worker at a time, taking the workers in turn
(0, 1, ..., 0, 1, ...; a finished one drops out). A fresh DataLoader always starts that turn at worker 0, so the
state also keeps the stream of the last batch handed out, and a resumed loader lets DataLoader worker w read
stream (last + 1 + w) mod workers: the turn continues where it stopped and the order is the uninterrupted one.

`StreamingLoader` wraps a torch DataLoader: it batches with your collate function, tracks the position from the
batches it hands out, and gathers the skip counters of the workers (`loader.skips`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from frozenvl.config import Config, ConfigError, check_choice, check_positive
from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.data.formats import decode_sample, finalize_interleaved
from frozenvl.data.shards import MAX_MEMBER_BYTES, MAX_TEXT_MEMBER_BYTES, expand_shards, read_shard
from frozenvl.data.skips import BadSample, SkipCounter

Sample = dict[str, Any]


def approx_token_count(text: str) -> int:
    """Cheap token estimate: words plus one per media marker. Pass a tokenizer-based counter for exact limits."""
    n_markers = text.count(IMAGE_TOKEN) + text.count(END_OF_CHUNK)
    words = text.replace(IMAGE_TOKEN, " ").replace(END_OF_CHUNK, " ").split()
    return n_markers + len(words)


@dataclass
class LoaderConfig(Config):
    """What the loader reads and how. All sampling is a function of `seed` and the epoch."""

    seed: int = 0
    shuffle_shards: bool = True
    shuffle_buffer: int = 0  # 0: no sample shuffling; else the size of the shuffle buffer (per stream)
    split_by: str = "auto"  # "shard", "sample", or "auto" (by shard when there are at least as many as streams)
    kinds: tuple[str, ...] | None = None  # keep only these kinds; others are skipped as 'unknown_kind'
    max_images: int = 5  # per sequence (interleaved pages); pairs and videos have one
    max_tokens: int = 256  # per sequence, as counted by the loader's token_counter
    truncate: bool = True  # over-long pages: keep the leading part that fits instead of skipping the page
    single_image_drop_prob: float = 0.0  # drop interleaved pages with exactly one image with this probability
    min_similarity: float | None = None  # pairs below are skipped; images of pages below are removed
    max_pixels: int = 64_000_000  # larger images are skipped ('image_too_large'), a guard against bombs
    # Caps on one tar member's declared size, checked before it is read ('member_too_large' skips its sample):
    # images and other binary members, and text members (txt, json: captions, pages).
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_text_bytes: int = MAX_TEXT_MEMBER_BYTES

    def __post_init__(self) -> None:
        if self.kinds is not None:
            self.kinds = tuple(self.kinds)
        super().__post_init__()

    def validate(self, where: str) -> None:
        check_choice(f"{where}.split_by", self.split_by, ("auto", "shard", "sample"))
        if not 0.0 <= self.single_image_drop_prob <= 1.0:
            raise ConfigError(f"{where}.single_image_drop_prob must be in [0, 1]; got {self.single_image_drop_prob}")
        for name in ("max_images", "max_tokens", "max_pixels", "max_member_bytes", "max_text_bytes"):
            check_positive(f"{where}.{name}", getattr(self, name))
        check_positive(f"{where}.shuffle_buffer", self.shuffle_buffer, allow_zero=True)


@dataclass
class _Position:
    epoch: int = 0
    consumed: dict[int, int] = field(default_factory=dict)  # stream -> raw samples consumed this epoch
    last_stream: int | None = None  # stream of the last DataLoader batch received (the workers' turn)


class ShardDataset(IterableDataset):
    """Decoded, filtered samples from webdataset shards, for one rank of `world_size`.

    shards: a directory, a glob, a brace range or a list of paths (see `shards.expand_shards`).
    token_counter: str -> number of tokens (default `approx_token_count`); must be picklable for workers.
    transform: optional sample -> sample function run in the workers (e.g. image resizing); a BadSample it
        raises skips the sample.
    """

    def __init__(self, shards: str | Path | Sequence[str | Path], config: LoaderConfig | None = None, *,
                 rank: int = 0, world_size: int = 1, token_counter: Callable[[str], int] | None = None,
                 transform: Callable[[Sample], Sample] | None = None):
        super().__init__()
        self.shards = expand_shards(shards)
        if not self.shards:
            raise ValueError(f"no shards found for {shards!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.config = config or LoaderConfig()
        self.rank, self.world_size = rank, world_size
        self.token_counter = token_counter or approx_token_count
        self.transform = transform
        self.epoch = 0
        self.resume: dict[int, int] = {}  # stream -> raw samples to skip (set by StreamingLoader on resume)
        self.track_position = False  # StreamingLoader: samples carry their stream position, streams end markers
        self.worker_offset = 0  # DataLoader worker w reads stream (w + worker_offset) % workers (set on resume)
        self.skips = SkipCounter()  # of the last iteration in this process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # ---------------------------------------------------------------- which raw samples a stream reads
    def epoch_shards(self) -> list[str]:
        if not self.config.shuffle_shards:
            return list(self.shards)
        order = np.random.default_rng([self.config.seed, self.epoch]).permutation(len(self.shards))
        return [self.shards[i] for i in order]

    def _raw_stream(self, stream: int, n_streams: int, skips: SkipCounter) -> Iterator[dict[str, Any]]:
        shards = self.epoch_shards()
        caps = {"max_member_bytes": self.config.max_member_bytes, "max_text_bytes": self.config.max_text_bytes}
        by_shard = self.config.split_by == "shard" or (
            self.config.split_by == "auto" and len(shards) >= n_streams)
        if by_shard:
            for path in shards[stream::n_streams]:
                yield from read_shard(path, skips, **caps)
            return
        # Every stream reads every shard and keeps every n-th sample; shard-level problems are counted once.
        shard_skips = skips if stream == 0 else SkipCounter()
        i = 0
        for path in shards:
            for raw in read_shard(path, shard_skips, **caps):
                if i % n_streams == stream:
                    yield raw
                i += 1

    def _shuffled(self, it: Iterator[dict[str, Any]], stream: int) -> Iterator[dict[str, Any]]:
        size = self.config.shuffle_buffer
        if size <= 1:
            yield from it
            return
        rng = np.random.default_rng([self.config.seed, self.epoch, stream, 1])
        buf: list[dict[str, Any]] = []
        for x in it:
            if len(buf) < size:
                buf.append(x)
                continue
            j = int(rng.integers(size))
            yield buf[j]
            buf[j] = x
        for j in rng.permutation(len(buf)):
            yield buf[j]

    # ---------------------------------------------------------------- decoding and policies
    def process(self, raw: dict[str, Any]) -> Sample:
        """Decode one raw sample and apply the filters; raise BadSample to skip it."""
        cfg = self.config
        s = decode_sample(raw, cfg.max_pixels)
        if cfg.kinds is not None and s["kind"] not in cfg.kinds:
            raise BadSample("unknown_kind", f"{s['key']}: kind {s['kind']!r} not in {cfg.kinds}")
        if s["kind"] == "interleaved":
            s = self._process_page(s)
        elif s["kind"] in ("pair", "video"):
            if cfg.min_similarity is not None and s.get("similarity", np.inf) < cfg.min_similarity:
                raise BadSample("low_similarity", f"{s['key']}: {s['similarity']}")
            if self.token_counter(s["text"]) > cfg.max_tokens:
                raise BadSample("text_too_long", f"{s['key']}: over {cfg.max_tokens} tokens")
        if self.transform is not None:
            try:
                s = self.transform(s)
            except BadSample:
                raise
            except Exception as e:  # a transform tripping on one odd sample must not stop the run
                raise BadSample("transform_failed", f"{s['key']}: {type(e).__name__}: {e}") from None
        return s

    def _process_page(self, s: Sample) -> Sample:
        cfg = self.config
        elements, sims = list(s["elements"]), list(s["similarities"])
        if cfg.min_similarity is not None:
            kept, image_i = [], 0
            for e in elements:
                if not isinstance(e, str):
                    sim = sims[image_i]
                    image_i += 1
                    if sim is not None and sim < cfg.min_similarity:
                        continue
                kept.append(e)
            elements = kept
        n_images = sum(not isinstance(e, str) for e in elements)
        if n_images == 0:
            raise BadSample("no_images", f"{s['key']}: no image left after the similarity filter")
        if n_images == 1 and cfg.single_image_drop_prob > 0:
            rng = np.random.default_rng([cfg.seed, self.epoch, zlib.crc32(s["key"].encode()), 2])
            if rng.random() < cfg.single_image_drop_prob:
                raise BadSample("dropped_single_image", s["key"])
        if n_images > cfg.max_images:
            if not cfg.truncate:
                raise BadSample("too_many_images", f"{s['key']}: {n_images} > {cfg.max_images}")
            cut = [i for i, e in enumerate(elements) if not isinstance(e, str)][cfg.max_images]
            elements = _strip_trailing_images(elements[:cut])
        s["elements"] = elements
        s = finalize_interleaved(s)
        while self.token_counter(s["text"]) > cfg.max_tokens:
            if not cfg.truncate:
                raise BadSample("text_too_long", f"{s['key']}: over {cfg.max_tokens} tokens")
            s["elements"] = _strip_trailing_images(s["elements"][:-1])
            try:
                s = finalize_interleaved(s)
            except BadSample:
                raise BadSample("text_too_long", f"{s['key']}: no prefix fits in {cfg.max_tokens} tokens") \
                    from None
        s.pop("similarities", None)
        return s

    # ---------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.worker_offset) % n_workers
        stream, n_streams = self.rank * n_workers + worker, self.world_size * n_workers
        skips = SkipCounter()
        start = self.resume.get(stream, 0)
        index = -1
        for index, raw in enumerate(self._shuffled(self._raw_stream(stream, n_streams, skips), stream)):
            if index < start:
                continue  # consumed before the resume: not decoded, not counted again
            try:
                sample = self.process(raw)
            except BadSample as e:
                skips.add(e.reason, f"{raw.get('__shard__', '?')}: {e.detail}")  # the log names the shard
                continue
            if self.track_position:
                sample["__stream__"], sample["__index__"] = stream, index
                sample["__skips__"] = skips.as_dict()
            yield sample
        self.skips = skips  # iterated in this process (no workers): the counts are readable here
        if self.track_position:
            # End marker: carries the final position and counts of this stream to the main process.
            yield {"__end__": True, "__stream__": stream, "__index__": max(index, start - 1),
                   "__skips__": skips.as_dict()}


def _strip_trailing_images(elements: list[Any]) -> list[Any]:
    """An image at the very end has no text to condition: drop it."""
    while elements and not isinstance(elements[-1], str):
        elements = elements[:-1]
    return elements


class _CollateWithPosition:
    """Runs the user's collate on the real samples; keeps positions and skip counts beside the batch."""

    def __init__(self, collate_fn: Callable[[list[Sample]], Any], batch_size: int, drop_last: bool):
        self.collate_fn, self.batch_size, self.drop_last = collate_fn, batch_size, drop_last

    def __call__(self, items: list[Sample]) -> dict[str, Any]:
        positions: dict[int, int] = {}
        skips: dict[int, dict[str, int]] = {}
        real = []
        for it in items:
            stream = it["__stream__"]
            if it["__index__"] + 1 >= positions.get(stream, 0):
                positions[stream] = it["__index__"] + 1
                skips[stream] = it["__skips__"]
            if not it.get("__end__"):
                real.append({k: v for k, v in it.items() if k not in ("__stream__", "__index__", "__skips__")})
        keep = bool(real) and not (self.drop_last and len(real) < self.batch_size)
        # A DataLoader batch holds the items of one worker, hence of one stream.
        return {"batch": self.collate_fn(real) if keep else None, "positions": positions, "skips": skips,
                "stream": items[-1]["__stream__"]}


class StreamingLoader:
    """Batches from a ShardDataset with a resumable position and the workers' skip counts.

    loader = StreamingLoader(dataset, batch_size=8, collate_fn=FlamingoCollator(processor), num_workers=2)
    for batch in loader: ...          # one epoch; the next `for` runs the next epoch
    state = loader.state_dict()       # save with the checkpoint; later: loader.load_state_dict(state)
    loader.skips.report()             # skipped samples by reason, for the log
    """

    def __init__(self, dataset: ShardDataset, batch_size: int, collate_fn: Callable[[list[Sample]], Any] = list,
                 num_workers: int = 0, drop_last: bool = False, prefetch_factor: int | None = 2,
                 timeout: float = 300.0, pin_memory: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size, self.num_workers = batch_size, num_workers
        self.collate = _CollateWithPosition(collate_fn, batch_size, drop_last)
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        # A worker stuck for `timeout` seconds raises instead of hanging the run silently.
        self.timeout = timeout if num_workers > 0 else 0
        self.pin_memory = pin_memory
        self._pos = _Position()
        self._skips_base = SkipCounter()  # counts restored from a state_dict and from finished epochs
        self._skips_live: dict[int, dict[str, int]] = {}  # stream -> cumulative counts this epoch

    @property
    def epoch(self) -> int:
        return self._pos.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning at the next iteration."""
        self._pos = _Position(epoch=epoch)

    @property
    def skips(self) -> SkipCounter:
        """All skips so far (every epoch, every worker, restored counts included)."""
        return SkipCounter.merged([self._skips_base, *self._skips_live.values()])

    def __iter__(self) -> Iterator[Any]:
        self.dataset.set_epoch(self._pos.epoch)
        self.dataset.resume = dict(self._pos.consumed)
        self.dataset.track_position = True
        n_workers = max(1, self.num_workers)
        last = self._pos.last_stream  # continue the workers' turn after the stream of the last batch
        self.dataset.worker_offset = 0 if last is None else (last - self.dataset.rank * n_workers + 1) % n_workers
        loader = DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=self.collate,
                            num_workers=self.num_workers, prefetch_factor=self.prefetch_factor,
                            timeout=self.timeout, pin_memory=self.pin_memory, drop_last=False)
        for item in loader:
            for stream, pos in item["positions"].items():
                self._pos.consumed[stream] = max(self._pos.consumed.get(stream, 0), pos)
            self._skips_live.update(item["skips"])
            self._pos.last_stream = item["stream"]
            if item["batch"] is not None:
                yield item["batch"]
        # The epoch is complete: the next iteration starts the next one.
        self._skips_base = self.skips
        self._skips_live = {}
        self._pos = _Position(epoch=self._pos.epoch + 1)
        self.dataset.resume = {}
        self.dataset.worker_offset = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._pos.epoch, "consumed": {str(k): v for k, v in self._pos.consumed.items()},
                "last_stream": self._pos.last_stream,
                "n_streams": self.dataset.world_size * max(1, self.num_workers),
                "seed": self.dataset.config.seed, "shards": len(self.dataset.shards),
                "skips": self.skips.as_dict(), "config": asdict(self.dataset.config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n_streams = self.dataset.world_size * max(1, self.num_workers)
        for name, mine in (("n_streams", n_streams), ("seed", self.dataset.config.seed),
                           ("shards", len(self.dataset.shards))):
            if state[name] != mine:
                raise ValueError(f"cannot resume the data position: saved {name}={state[name]}, now {mine} "
                                 "(world_size x num_workers, seed and shard list must match the saved run)")
        last = state.get("last_stream")  # absent in states saved before it was kept: the turn restarts at 0
        self._pos = _Position(epoch=int(state["epoch"]), consumed={int(k): int(v)
                                                                     for k, v in state["consumed"].items()},
                              last_stream=None if last is None else int(last))
        self._skips_base = SkipCounter(state.get("skips", {}))
        self._skips_live = {}
