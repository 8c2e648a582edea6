"""The memory budget and the block buffer pool (s3fuse/data/memory.py, docs/design/memory.md)."""
from __future__ import annotations

import threading
import time

from s3fuse.data.blockcache import BlockCache
from s3fuse.data.memory import BufferPool, MemoryBudget, Share, accounted_limit
from s3fuse.data.reader import BlockFetcher, PinnedObject, Reader

from ..support.fakes import FakeS3

KIB = 1 << 10


def test_a_buffer_is_reused_only_when_nobody_references_it():
    pool = BufferPool(MemoryBudget(4 * KIB), KIB)
    a = pool.get()
    b = pool.get()
    assert a is not b
    view = memoryview(a)[10:20]        # a slice handed to FUSE keeps its buffer
    del a
    c = pool.get()
    assert c is not b and view.obj is not c
    kept = {"lru": b}                  # a cache entry keeps its buffer
    del b
    d = pool.get()
    assert d is not kept["lru"] and d is not view.obj and d is not c
    assert pool.snapshot()["buffers"] == 4
    del view
    e = pool.get()                     # the slice's buffer is free again
    assert pool.snapshot() == {"buffers": 4, "idle": 0, "buffer_size": KIB, "reused": 1, "allocated": 4}
    assert e is not c and e is not d


def test_shrink_frees_idle_buffers_and_gives_the_budget_back():
    budget = MemoryBudget(4 * KIB)
    pool = BufferPool(budget, KIB)
    held = [pool.get() for _ in range(4)]
    assert budget.used == 4 * KIB
    assert pool.shrink(4 * KIB) == 0   # all in use
    held.pop()
    held.pop()
    assert pool.shrink(KIB) == KIB     # whole buffers, at most what was asked (rounded up)
    assert budget.used == 3 * KIB
    assert pool.shrink(10 * KIB) == KIB
    assert budget.used == 2 * KIB and budget.peak == 4 * KIB


def test_a_full_budget_reclaims_then_waits_then_overdraws():
    budget = MemoryBudget(2 * KIB, patience=0.3)
    pool = BufferPool(budget, KIB)
    held = [pool.get(), pool.get()]
    t0 = time.monotonic()
    extra = pool.get()                 # nothing reclaimable: granted after patience, counted
    assert time.monotonic() - t0 >= 0.25
    assert budget.snapshot()["overdrafts"] == 1 and budget.used == 3 * KIB
    del extra
    # a holder that lets go while a take waits: the waiter gets the freed buffer
    release = threading.Timer(0.1, held.pop)
    release.start()
    t0 = time.monotonic()
    got = pool.get()
    assert time.monotonic() - t0 < 0.25 and budget.snapshot()["overdrafts"] == 1
    assert len(got) == KIB


def test_the_block_cache_gives_memory_blocks_back_under_pressure(tmp_path):
    budget = MemoryBudget(4 * KIB, patience=5)
    pool = BufferPool(budget, KIB)
    cache = BlockCache(str(tmp_path / "c"), 1 << 20, "b", memory=4 * KIB, max_pending=8)
    budget.add_reclaimer(cache.reclaim)
    try:
        for i in range(4):
            buf = pool.get()
            buf[:] = bytes([i]) * KIB
            cache.put("k", "e", i, buf)
        del buf
        assert cache.flush()
        t0 = time.monotonic()
        fresh = pool.get()             # the oldest in-memory block is dropped, its buffer reused
        assert time.monotonic() - t0 < 1 and budget.snapshot()["overdrafts"] == 0
        fresh[:] = b"x" * KIB
        assert bytes(cache.get("k", "e", 0)) == b"\0" * KIB     # from disk, intact
        assert bytes(cache.get("k", "e", 3)) == b"\3" * KIB
    finally:
        cache.close()


def test_a_share_bounds_one_user_but_lets_a_large_request_through_alone():
    budget = MemoryBudget(100)
    share = Share(budget, 10)
    order = []

    def use(n, name, hold=0.1):
        with share.hold(n):
            order.append(("in", name, share.used))
            time.sleep(hold)
        order.append(("out", name))

    threads = [threading.Thread(target=use, args=(6, f"p{i}")) for i in range(2)]
    threads.append(threading.Thread(target=use, args=(30, "big")))
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert max(used for kind, *rest in order if kind == "in" for used in rest[1:]) <= 30
    assert all(rest[1] <= 10 or rest[1] == 30 for kind, *rest in order if kind == "in")
    assert budget.used == 0 and share.used == 0


def test_accounted_limit_leaves_room_for_what_is_not_counted():
    assert accounted_limit(64 << 20) == 48 << 20
    assert accounted_limit(16 << 20) == 8 << 20


def test_reads_through_pool_buffers_are_correct_and_bounded(tmp_path):
    """A sequential read of many blocks through a small pool: every byte right, the pool
    never grows past the budget, and buffers are reused (no fresh allocation per block)."""
    client = FakeS3()
    data = bytes(range(256)) * (64 * 4 * KIB // 256)     # 64 blocks of 4 KiB
    client.objects["k"] = (data, {}, "e1")
    budget = MemoryBudget(16 * 4 * KIB, patience=5)
    pool = BufferPool(budget, 4 * KIB)
    cache = BlockCache(str(tmp_path / "c"), 1 << 30, "b", memory=4 * 4 * KIB, max_pending=4)
    budget.add_reclaimer(cache.reclaim)
    fetcher = BlockFetcher(client, cache, 4 * KIB, threads=4, span_blocks=4, pool=pool, window_cap=4)
    try:
        reader = Reader(fetcher, PinnedObject("k", "e1", len(data)), max_readahead_blocks=64)
        out = bytearray()
        for off in range(0, len(data), 3000):
            out += reader.read(off, 3000)
        assert bytes(out) == data
        snap = pool.snapshot()
        assert snap["buffers"] <= 16 and snap["reused"] > 0
        assert budget.peak <= 16 * 4 * KIB and budget.snapshot()["overdrafts"] == 0
    finally:
        fetcher.close()
        cache.close()


def test_blocks_read_back_from_disk_fill_pool_buffers(tmp_path):
    pool = BufferPool(MemoryBudget(64 * KIB), 32 * KIB)
    cache = BlockCache(str(tmp_path / "c"), 1 << 30, "b", memory=1, max_pending=4, pool=pool)
    try:
        full, short, tiny = bytes(range(256)) * 128, b"s" * (20 * KIB), b"t" * 100
        for i, data in enumerate((full, short, tiny)):
            cache.put("k", "e", i, bytearray(data))
        assert cache.flush()
        got = cache.get("k", "e", 0)
        assert got == full and type(got) is bytearray and pool.snapshot()["allocated"] == 1
        assert cache.get("k", "e", 1) == short and cache.get("k", "e", 2) == tiny
        assert cache.get("k", "e", 3) is None
    finally:
        cache.close()


def test_idle_readers_do_not_pin_buffers_past_the_budget(tmp_path):
    """Open handles each keep their last block; when the budget is short they let go of
    it (no overdraft), and each still reads correctly afterwards."""
    client = FakeS3()
    bs = 4 * KIB
    objs = []
    for n in range(6):
        data = bytes([n]) * (2 * bs)
        client.objects[f"k{n}"] = (data, {}, f"e{n}")
        objs.append(PinnedObject(f"k{n}", f"e{n}", len(data)))
    budget = MemoryBudget(4 * bs, patience=5)
    pool = BufferPool(budget, bs)
    cache = BlockCache(str(tmp_path / "c"), 1 << 30, "b", memory=bs, max_pending=2)
    fetcher = BlockFetcher(client, cache, bs, threads=2, span_blocks=1, pool=pool, window_cap=1)
    budget.add_reclaimer(cache.reclaim)
    budget.add_reclaimer(fetcher.reclaim_current)
    try:
        readers = [Reader(fetcher, obj, max_readahead_blocks=1) for obj in objs]
        t0 = time.monotonic()
        for n, r in enumerate(readers):
            assert r.read(10, 100) == bytes([n]) * 100
        assert time.monotonic() - t0 < 3 and budget.snapshot()["overdrafts"] == 0
        for n, r in enumerate(readers):
            assert r.read(bs + 5, 100) == bytes([n]) * 100
        assert budget.snapshot()["overdrafts"] == 0 and budget.peak <= 4 * bs
    finally:
        fetcher.close()
        cache.close()
