"""Shards that stream from where they live: ``pipe:`` commands and ``http://`` URLs through webdataset's opener
give the same samples as the local files, keep the bad-data policy (skip and count, the opener's error named),
and expand brace ranges without globbing."""

import functools
import http.server
import tarfile
import threading

import pytest
from datafixtures import interrupted_run, write_pairs

from frozenvl.data import LoaderConfig, ShardDataset, SkipCounter, expand_shards, read_shard


def _keys(shards, skips=None):
    return [s["__key__"] for shard in shards for s in read_shard(shard, skips)]


@pytest.fixture
def shards(tmp_path):
    return write_pairs(tmp_path / "local", 10, per_shard=4)  # 3 shards: 4 + 4 + 2 samples


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 over tmp_path (started and stopped by the test; no network)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_pipe_and_http_shards_equal_the_local_ones(shards, server):
    local = _keys(shards)
    assert len(local) == 10
    pipes = expand_shards(f"pipe:cat {shards[0][:-10]}{{000000..000002}}.tar")
    assert pipes == [f"pipe:cat {s}" for s in shards]  # braces expanded, nothing globbed
    urls = expand_shards(f"{server}/local/pairs-{{000000..000002}}.tar")
    for remote in (pipes, urls):
        skips = SkipCounter()
        assert _keys(remote, skips) == local and skips.total == 0
        got = list(ShardDataset(remote, LoaderConfig(shuffle_shards=False)))
        assert [s["key"] for s in got] == local and got[0]["caption"] == "caption number 0"


def test_a_url_that_cannot_be_read_is_counted_with_its_error(shards, server, tmp_path, caplog):
    skips = SkipCounter()
    with caplog.at_level("WARNING", logger="frozenvl.data"):
        keys = _keys([f"{server}/local/nothing.tar", f"pipe:cat {tmp_path}/nothing.tar", shards[0]], skips)
    assert keys == [f"p{i:05d}" for i in range(4)]  # the readable shard is still read whole
    assert skips.counts["unreadable_shard"] == 2
    # the first one is logged with the opener's error: the URL and curl's exit status (22: HTTP 404)
    assert f"{server}/local/nothing.tar" in caplog.text and "exit 22" in caplog.text


def test_a_stream_cut_short_keeps_the_samples_before_the_cut(shards):
    size = len(open(shards[0], "rb").read())
    skips = SkipCounter()
    keys = _keys([f"pipe:head -c {size // 2} {shards[0]}"], skips)
    assert skips.counts["truncated_shard"] == 1
    assert 0 < len(keys) < 4 and keys == [f"p{i:05d}" for i in range(len(keys))]
    # a stream cut right after its last member (tarfile sees a clean end, but the end-of-archive marker is
    # missing): counted as truncated, its last, possibly incomplete, sample dropped
    with tarfile.open(shards[0]) as tar:
        tar.getmembers()
        end = tar.offset  # where the members end and the two zero blocks begin
    cut = SkipCounter()
    assert _keys([f"pipe:head -c {end} {shards[0]}"], cut) == [f"p{i:05d}" for i in range(3)]
    assert cut.counts["truncated_shard"] == 1
    assert _keys([f"pipe:head -c {end + 1024} {shards[0]}"]) == [f"p{i:05d}" for i in range(4)]  # marker kept


def test_resume_over_remote_shards_yields_exactly_the_remaining_samples(tmp_path, server):
    """The loader's exact resume holds for shards read over HTTP (two loader workers, shuffled)."""
    from frozenvl.data import StreamingLoader

    write_pairs(tmp_path / "many", 50, per_shard=10)  # 5 shards
    spec = f"{server}/many/pairs-{{000000..000004}}.tar"
    cfg = LoaderConfig(seed=5, shuffle_buffer=8)

    def keys(loader):
        return [s["key"] for batch in loader for s in batch]

    whole = StreamingLoader(ShardDataset(spec, cfg), 4, num_workers=2)
    full = keys(whole)
    assert whole.skips.total == 0
    assert sorted(full) == [f"p{i:05d}" for i in range(50)]
    head, tail, resumed, _ = interrupted_run(lambda: StreamingLoader(ShardDataset(spec, cfg), 4, num_workers=2), 4)
    assert head + tail == full
    assert resumed.skips.total == 0  # every streamed shard was read whole (its end-of-archive marker found)


def test_a_gzipped_shard_larger_than_the_recorded_tail_is_read_whole(tmp_path):
    """gzip's own checks catch a cut compressed stream: a whole .tar.gz (here 200 KB of incompressible members,
    more than the bytes the reader keeps for the end-marker check) is not taken for truncated, locally or piped."""
    import gzip
    import io
    import os

    path = tmp_path / "big.tar.gz"
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for i in range(4):
            for ext, data in (("bin", os.urandom(50_000)), ("txt", f"sample {i}".encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert path.stat().st_size > 1 << 16
    for spec in (str(path), f"pipe:cat {path}"):
        skips = SkipCounter()
        assert _keys([spec], skips) == [f"s{i}" for i in range(4)] and skips.total == 0, spec
    cut = SkipCounter()
    assert len(_keys([f"pipe:head -c {path.stat().st_size // 2} {path}"], cut)) < 4
    assert cut.counts["truncated_shard"] == 1


def test_a_gzip_stream_cut_at_a_member_boundary_counts_as_truncated(tmp_path):
    """A .tar.gz whose compressed stream stops (no gzip end-of-stream marker) right where a sample ends decompresses
    to whole members: tarfile sees a clean end, so only gzip's own end-of-stream check can tell. The shard is
    counted as truncated and its last sample dropped, locally and piped (before: read as whole, nothing counted)."""
    import io
    import zlib

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(2):
            data = f"sample {i}".encode()
            info = tarfile.TarInfo(f"s{i}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        body = tar.offset  # the members end here; the end-of-archive blocks follow
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(gz.compress(buffer.getvalue()[:body]) + gz.flush(zlib.Z_SYNC_FLUSH))  # no gzip trailer
    for spec in (str(path), f"pipe:cat {path}"):
        skips = SkipCounter()
        assert _keys([spec], skips) == ["s0"] and skips.counts["truncated_shard"] == 1, spec
