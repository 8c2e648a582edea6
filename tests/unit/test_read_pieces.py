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
