"""Reads that span blocks are answered as pieces (views of the cached blocks, never a
join), and the FUSE adapter copies the pieces into libfuse's buffer in order."""
from __future__ import annotations

import ctypes
import random

import pytest

from s3fuse import errors
from s3fuse.data.blockcache import BlockCache
from s3fuse.data.reader import BlockFetcher, PinnedObject, Reader
from s3fuse.fuse.binding import FUSE

from ..support.fakes import FakeS3

BS = 64 << 10


@pytest.fixture
def reader(tmp_path):
    data = random.Random(3).randbytes(5 * BS + 777)
    client = FakeS3()
    etag = client.seed("obj", data)
    cache = BlockCache(str(tmp_path / "blocks"), 1 << 30, "b")
    fetcher = BlockFetcher(client, cache, BS, threads=2)
    yield Reader(fetcher, PinnedObject("obj", etag, len(data))), data
    fetcher.close()
    cache.close()


def test_a_read_across_blocks_is_pieces_not_a_copy(reader):
    r, data = reader
    off = BS // 2
    pieces = r.read_pieces(off, 2 * BS)
    assert [len(p) for p in pieces] == [BS // 2, BS, BS // 2], "one piece per block touched"
    assert b"".join(pieces) == data[off:off + 2 * BS]
    assert all(isinstance(p, (bytes, bytearray, memoryview)) for p in pieces)
    assert r.read(off, 2 * BS) == data[off:off + 2 * BS], "read() still answers the bytes"
    tail = r.read_pieces(len(data) - 100, 4096)
    assert b"".join(tail) == data[-100:]
    assert r.read_pieces(len(data), 10) == [] and r.read(len(data), 10) == b""


class _Ops:
    def __init__(self, answer):
        self.answer = answer

    def read(self, path, size, offset, fh):
        return self.answer


class _FileInfo(ctypes.Structure):
    _fields_ = [("fh", ctypes.c_uint64)]


def _fuse_read(answer, size):
    fuse = FUSE.__new__(FUSE)             # the callback only: no mount
    fuse.operations, fuse.raw_fi, fuse.encoding, fuse.errors = _Ops(answer), False, "utf-8", "strict"
    buf = ctypes.create_string_buffer(size)
    n = fuse.read(b"/f", buf, size, 0, ctypes.pointer(_FileInfo(7)))
    return n, buf.raw[:max(n, 0)]


def test_the_fuse_read_copies_pieces_in_order():
    block = bytearray(random.Random(5).randbytes(300))
    answer = [memoryview(block)[100:], b"middle", memoryview(bytes(block))[:50], bytearray(b"end")]
    n, got = _fuse_read(answer, 1000)
    assert n == 200 + 6 + 50 + 3
    assert got == bytes(block[100:]) + b"middle" + bytes(block[:50]) + b"end"
    assert _fuse_read([], 10) == (0, b"") and _fuse_read(b"abc", 10) == (3, b"abc")


def test_pieces_longer_than_the_request_fail(caplog):
    n, _ = _fuse_read([b"x" * 8, b"y" * 8], 10)
    assert n == -errors.errno_of(errors.FsError("x")), "an over-long answer is an error, not a buffer overrun"


def _random_reader(tmp_path, fill_limit, blocks=24):
    data = random.Random(9).randbytes(blocks * BS)
    client = FakeS3()
    etag = client.seed("obj", data)
    cache = BlockCache(str(tmp_path / f"fill{fill_limit}"), 1 << 30, "b")
    fetcher = BlockFetcher(client, cache, BS, threads=4, fill_limit=fill_limit)
    return client, cache, fetcher, Reader(fetcher, PinnedObject("obj", etag, len(data))), data


@pytest.mark.parametrize("fill", [True, False])
def test_random_reads_fill_a_small_object_in_the_background(tmp_path, fill):
    """The RANDOM_FILL-th random read of a handle fetches an object up to fill_limit whole
    (each block once, in spans); a bigger object goes on fetching only the blocks read."""
    client, cache, fetcher, reader, data = _random_reader(tmp_path, (24 * BS) if fill else (24 * BS - 1))
    offsets = [(i * 5 % 23 + 1) * BS + 1000 for i in range(Reader.RANDOM_FILL + 6)]   # no two adjacent
    for off in offsets:
        assert reader.read(off, BS // 2) == data[off:off + BS // 2]
    fetcher._pool.shutdown(wait=True)
    got = []
    for _, start, end, _ in client.details("get_range"):
        got.extend(range(start // BS, -(-end // BS)))
    if fill:
        assert sorted(got) == list(range(24)), "every block fetched, exactly once"
        assert max(end - start for _, start, end, _ in client.details("get_range")) > BS, "in spans"
    else:
        assert sorted(got) == sorted({off // BS for off in offsets}), "only the blocks read"
    cache.close()


def test_a_random_read_from_the_cache_reads_only_its_part(tmp_path):
    client, cache, fetcher, reader, data = _random_reader(tmp_path, 0)
    assert reader.read(3 * BS, BS) == data[3 * BS:4 * BS]       # block 3 fetched and cached
    cache.flush()
    cache._recent.clear()                                       # on disk only
    reader.forget_current()
    reader.read(15 * BS, 10)                                    # elsewhere: random from now on
    n = len(client.details("get_range"))
    part = reader.read_pieces(3 * BS + 100, 1000)
    assert b"".join(part) == data[3 * BS + 100:3 * BS + 1100] and len(part[0]) == 1000
    assert len(client.details("get_range")) == n, "served from the cache file"
    fetcher.close()
    cache.close()
