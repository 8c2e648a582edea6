"""Reads that span blocks are answered as pieces (views of the cached blocks, never a
join), and the FUSE adapter copies the pieces into libfuse's buffer in order."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import random

import pytest

from s3fuse import errors
from s3fuse.data.blockcache import BlockCache
from s3fuse.data.reader import BlockFetcher, PinnedObject, Reader
from s3fuse.data.valuefiles import CacheFile, FileRegion
from s3fuse.fuse import bufvec as bufvec_module
from s3fuse.fuse.binding import FUSE, LIBFUSE_MAJOR, LIBFUSE_MINOR

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


# ---------------------------------------------------------------------------------------
# read_buf: blocks cached on disk go to libfuse as fd buffers of their cache files
# ---------------------------------------------------------------------------------------
def test_with_regions_a_block_on_disk_is_a_region_of_its_file_not_read(tmp_path):
    client, cache, fetcher, reader, data = _random_reader(tmp_path, 0)
    assert reader.read(0, 4 * BS) == data[:4 * BS]               # blocks 0-3 cached
    cache.flush()
    cache._recent.clear()                                       # on disk only
    reader.forget_current()
    pieces = reader.read_pieces(BS // 2, 2 * BS, regions=True)
    assert [type(p) for p in pieces] == [FileRegion] * 3, "one region per block, none read"
    assert [(p.pos, p.size) for p in pieces] == [(BS // 2, BS // 2), (0, BS), (0, BS // 2)]
    assert b"".join(p.tobytes() for p in pieces) == data[BS // 2:BS // 2 + 2 * BS]
    again = reader.read_pieces(2 * BS + BS // 2, 100, regions=True)
    assert again[0].file is pieces[2].file, "the file of the last block is kept for the next read"
    n = len(client.details("get_range"))
    uncached = reader.read_pieces(10 * BS, 100, regions=True)   # not cached: fetched, memory
    assert b"".join(bytes(p) for p in uncached) == data[10 * BS:10 * BS + 100]
    assert len(client.details("get_range")) > n
    fetcher.close()
    cache.close()


def test_a_long_read_of_the_block_in_memory_comes_from_its_file_once_it_is_on_disk(tmp_path):
    """The block a reader holds (its last one read) is copied three times as a memory piece
    (into a malloc'ed buffer, into libfuse's pipe, to the kernel) and once as a region: a
    read of 64 KiB or more of it comes from its file when the file is there, a short one
    from memory (no fd buffer for a few bytes)."""
    client, cache, fetcher, reader, data = _random_reader(tmp_path, 0)
    assert reader.read(0, 2 * BS) == data[:2 * BS]
    cache.flush()
    held, _ = reader._current
    long_read = reader.read_pieces(held * BS, BS, regions=True)
    assert [type(p) for p in long_read] == [FileRegion]
    assert long_read[0].tobytes() == data[held * BS:(held + 1) * BS]
    short = reader.read_pieces(held * BS + 10, 100, regions=True)
    assert [type(p) for p in short] != [FileRegion] and bytes(short[0]) == data[held * BS + 10:held * BS + 110]
    fetcher.close()
    cache.close()


def test_reads_are_sized_so_that_their_replies_fit_libfuses_pipe(tmp_path):
    """libfuse splices a reply only if ``pagesize * (1 + pieces + 1) + 16 + size`` fits its
    pipe (fuse_send_data_iov); else it copies the fd buffers through its own memory."""
    def limit(text):
        path = tmp_path / "pipe-max-size"
        path.write_text(text)
        return bufvec_module.splice_max_read(str(path))

    for pipe in (1 << 20, 4 << 20):
        size = limit(f"{pipe}\n")
        assert size % 4096 == 0 and size > 900 << 10
        for pieces in range(1, 6):            # 1 MiB blocks: at most 2
            assert 4096 * (1 + pieces + 1) + 16 + size <= min(pipe, 1 << 20)
    assert limit("1048576") == (1 << 20) - (32 << 10)
    assert limit("262144") == (256 - 32) << 10, "a smaller pipe: smaller reads"
    assert limit("4096") == 128 << 10, "never below 128 KiB (libfuse 2's size)"
    assert bufvec_module.splice_max_read(str(tmp_path / "absent")) == (1 << 20) - (32 << 10)


def test_a_region_keeps_its_file_open_after_an_eviction_removed_it(tmp_path):
    """A value file is never rewritten: a region still reads its bytes after the block was
    evicted, and the descriptor is closed when the last reference goes."""
    client, cache, fetcher, reader, data = _random_reader(tmp_path, 0)
    reader.read(0, BS)
    cache.flush()
    cache._recent.clear()
    reader.forget_current()
    region = reader.read_pieces(0, BS, regions=True)[0]
    fd = region.fd
    reader.forget_current()
    cache.clear()                                               # the file is gone from the disk
    assert region.tobytes() == data[:BS]
    del region
    with pytest.raises(OSError):
        os.fstat(fd)
    fetcher.close()
    cache.close()


_libfuse3 = ctypes.util.find_library("fuse3")


@pytest.mark.skipif(not (_libfuse3 and bufvec_module.layout_known(LIBFUSE_MAJOR, LIBFUSE_MINOR)),
                    reason="needs libfuse 3.0-3.16")
def test_the_bufvec_is_read_by_libfuse_itself_in_order(tmp_path):
    """The vector is copied by libfuse 3's own fuse_buf_copy (what its reply does without
    splice): the struct layout, fd buffers with their positions, and memory buffers."""
    lib = ctypes.CDLL(_libfuse3)
    lib.fuse_buf_size.restype = ctypes.c_size_t
    lib.fuse_buf_size.argtypes = [ctypes.c_void_p]
    lib.fuse_buf_copy.restype = ctypes.c_ssize_t
    lib.fuse_buf_copy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    content = random.Random(11).randbytes(3 * BS)
    path = tmp_path / "value"
    path.write_bytes(content)
    file = CacheFile(os.open(path, os.O_RDONLY), len(content))
    block = bytearray(random.Random(12).randbytes(1000))
    pieces = [b"head", file.region(BS, 2 * BS + 10), memoryview(block)[10:500],
              memoryview(bytes(block))[:7], file.region(5, 9)]
    want = b"head" + content[BS:2 * BS + 10] + bytes(block[10:500]) + bytes(block[:7]) + content[5:9]
    bufpp = ctypes.c_void_p()
    assert bufvec_module.answer(ctypes.byref(bufpp), pieces, len(want)) == 0
    assert lib.fuse_buf_size(bufpp) == len(want)
    out = ctypes.create_string_buffer(len(want))
    dst = bufvec_module._vector_type(1)(count=1)
    dst.buf[0].size, dst.buf[0].mem = len(want), ctypes.addressof(out)
    assert lib.fuse_buf_copy(ctypes.byref(dst), bufpp, 0) == len(want)
    assert out.raw == want
    vector = bufvec_module._vector_type(4).from_address(bufpp.value)   # head, region, 3 memory, region
    assert vector.count == 4, "a run of memory pieces is one buffer"
    for i in range(vector.count):                              # what libfuse frees after its reply
        if not vector.buf[i].flags & bufvec_module.FUSE_BUF_IS_FD:
            bufvec_module._libc.free(vector.buf[i].mem)
    bufvec_module._libc.free(bufpp.value)
    fd = file.fd
    del file, pieces
    os.fstat(fd)                                                # held until the next answer
    empty = ctypes.c_void_p()
    bufvec_module.answer(ctypes.byref(empty), [], 10)
    with pytest.raises(OSError):
        os.fstat(fd)
    assert lib.fuse_buf_size(empty) == 0
    bufvec_module._libc.free(empty.value)


def test_an_answer_longer_than_the_request_fails_and_sets_nothing():
    bufpp = ctypes.c_void_p()
    with pytest.raises(errors.FsError):
        bufvec_module.answer(ctypes.byref(bufpp), [b"x" * 8, b"y" * 8], 10)
    assert bufpp.value is None


def test_the_plain_fuse_read_preads_a_region_into_libfuses_buffer(tmp_path):
    content = random.Random(13).randbytes(BS)
    path = tmp_path / "value"
    path.write_bytes(content)
    file = CacheFile(os.open(path, os.O_RDONLY), len(content))
    n, got = _fuse_read([b"ab", file.region(100, 5000), b"cd"], 6000)
    assert (n, got) == (4904, b"ab" + content[100:5000] + b"cd")


def test_an_opened_value_file_serves_the_next_reads_of_its_block_without_sqlite(tmp_path):
    client, cache, fetcher, reader, data = _random_reader(tmp_path, 0)
    reader.read(0, 2 * BS)
    cache.flush()
    cache._recent.clear()
    queries = []
    real_get = cache._cache.get
    cache._cache.get = lambda *a, **k: queries.append(a[0]) or real_get(*a, **k)
    first = cache.open_block("obj", reader.obj.etag, 1)
    again = cache.open_block("obj", reader.obj.etag, 1)
    assert isinstance(first, CacheFile) and again is first and len(queries) == 1
    cache.drop("obj", reader.obj.etag, 2)                       # -o verify found the version wrong
    assert cache.open_block("obj", reader.obj.etag, 1) is None, "a dropped block is not served"
    fetcher.close()
    cache.close()
