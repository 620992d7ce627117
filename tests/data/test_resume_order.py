"""A resumed StreamingLoader yields the rest of the epoch in exactly the uninterrupted order (workers included)."""

from __future__ import annotations

import pytest
from datafixtures import interrupted_run, write_pairs

from frozenvl.data import LoaderConfig, ShardDataset, StreamingLoader


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("pairs")
    write_pairs(out, 30, per_shard=6)  # 5 shards: with 2 workers one stream reads 3 shards, the other 2
    return str(out)


def keys(loader: StreamingLoader) -> list[str]:
    return [s["key"] for batch in loader for s in batch]


def make(shards: str, workers: int, buffer: int, batch: int):
    cfg = LoaderConfig(seed=5, shuffle_buffer=buffer)
    return lambda: StreamingLoader(ShardDataset(shards, cfg), batch, num_workers=workers)


@pytest.mark.parametrize("batch", [3, 4])
@pytest.mark.parametrize("buffer", [0, 8, 16])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_resume_continues_in_the_uninterrupted_order(shards, workers, buffer, batch):
    make_loader = make(shards, workers, buffer, batch)
    loader, full, states = make_loader(), [], []
    for batch_samples in loader:  # the state after each batch is the one a run stopped there would save
        full += [s["key"] for s in batch_samples]
        states.append(loader.state_dict())
    assert sorted(full) == sorted(f"p{i:05d}" for i in range(30))
    for stop in range(1, 7):
        resumed = make_loader()
        resumed.load_state_dict(states[stop - 1])
        assert full[:stop * batch] + keys(resumed) == full, f"stopped after {stop} batches"


def test_the_reported_case_and_the_next_epoch(shards):
    """2 workers, batch 4, buffer 8, stopped after 3 batches: the resumed loader used to yield the same samples in
    another order (its workers' turn restarted at worker 0). Its next epoch is the uninterrupted next epoch."""
    make_loader = make(shards, 2, 8, 4)
    uninterrupted = make_loader()
    full = keys(uninterrupted)
    head, tail, resumed, _ = interrupted_run(make_loader, 3)
    assert head + tail == full and resumed.epoch == 1
    assert keys(resumed) == keys(uninterrupted)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_resume_twice_and_after_a_worker_finished(shards):
    """Three workers (12, 12 and 6 samples): stops after every batch, also once a stream has run out, and a
    resumed loader interrupted and resumed again."""
    make_loader = make(shards, 3, 8, 4)
    loader, full, states = make_loader(), [], []
    for batch_samples in loader:
        full += [s["key"] for s in batch_samples]
        states.append((len(full), loader.state_dict()))
    assert len(states) == 3 + 3 + 2
    for stop in (2, 6, 7):  # the 6-sample stream runs out with batch 6 (of 2 samples)
        n_read, state = states[stop - 1]
        resumed = make_loader()
        resumed.load_state_dict(state)
        assert full[:n_read] + keys(resumed) == full, f"stopped after {stop} batches"

    first = make_loader()
    first.load_state_dict(states[1][1])
    middle = [s["key"] for _, batch in zip(range(3), first) for s in batch]
    second = make_loader()
    second.load_state_dict(first.state_dict())
    assert full[:8] + middle + keys(second) == full


def test_a_state_without_the_workers_turn_still_loads(shards):
    """States saved before the turn was kept resume the same samples (the turn restarts at worker 0)."""
    make_loader = make(shards, 2, 8, 4)
    full = keys(make_loader())
    loader = make_loader()
    head = [s["key"] for _, batch in zip(range(3), loader) for s in batch]
    state = loader.state_dict()
    state.pop("last_stream", None)
    resumed = make_loader()
    resumed.load_state_dict(state)
    assert sorted(head + keys(resumed)) == sorted(full)
