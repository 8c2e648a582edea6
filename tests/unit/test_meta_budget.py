"""Issue 24 item 3: the metadata caches stay inside ``meta_entries`` (docs/design/memory.md).

The attribute and negative caches are a bounded ``TimedLRU``; a listing of more entries
than the budget is streamed page by page and not cached; and what was evicted is asked
of S3 again, so a lookup after an eviction still answers right."""
from __future__ import annotations

import gc
import stat
import time
import tracemalloc

from s3fuse.meta.cache import MetaCache, TimedLRU

from ..support.fakes import FakeS3


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_timed_lru_evicts_the_oldest_stored_and_expires():
    clock = Clock()
    c = TimedLRU(3, ttl=10.0, clock=clock)
    for k in "abc":
        c[k] = k.upper()
    c["a"] = "A2"                     # stored again: now the newest
    c["d"] = "D"                      # full: "b" (least recently stored) goes
    assert "b" not in c and c.get("b") is None
    assert [c.get(k) for k in "acd"] == ["A2", "C", "D"] and len(c) == 3
    clock.now += 10.0
    assert c.get("a") is None and "c" not in c          # expired
    c["e"] = "E"                      # expired entries at the front are dropped as new ones come
    assert len(c) == 1 and c.pop("e") == "E" and c.pop("e", "gone") == "gone"


def test_meta_cache_holds_at_most_its_budget():
    cache = MetaCache(60, 60, 5, maxsize=100)
    from s3fuse.meta.attrs import Attr
    for i in range(1000):
        cache.put_attr(f"/d/f{i}", Attr(stat.S_IFREG | 0o644, 0, 0, i, 0))
        cache.put_missing(f"/d/m{i}")
    assert len(cache.attrs) == 100 and len(cache.missing) == 100
    assert cache.get_attr("/d/f999").size == 999 and cache.get_attr("/d/f0") is None


def _seed(fake: FakeS3, n: int, prefix="big/"):
    for i in range(n):
        fake.objects[f"{prefix}f{i:06d}"] = (b"x" * (i % 7), {}, f"{i:032x}")
        fake.mtimes[f"{prefix}f{i:06d}"] = 1_700_000_000.0


def test_a_listing_over_the_budget_is_streamed_complete_and_not_cached(make_fs):
    fake = FakeS3(page_size=100)
    _seed(fake, 1000)
    fs = make_fs(fake, meta="list", meta_entries=300)
    names = [n for n, _ in fs.readdir("/big")]
    assert names[:2] == [".", ".."] and sorted(names[2:]) == [f"f{i:06d}" for i in range(1000)]
    assert fs.cache.get_dir("/big") is None                    # too big to keep
    assert len(fs.cache.attrs) <= 300
    lists = fake.count("list_page")
    assert len([n for n, _ in fs.readdir("/big")]) == 1002     # listed again, from S3
    assert fake.count("list_page") == 2 * lists
    # Entries evicted from the attribute cache still answer right (asked of S3 again).
    for i in (0, 1, 500, 998):
        assert fs.getattr(f"/big/f{i:06d}").size == i % 7


def test_a_listing_within_the_budget_is_cached(make_fs):
    fake = FakeS3(page_size=100)
    _seed(fake, 250)
    fs = make_fs(fake, meta="list", meta_entries=300)
    assert len(list(fs.readdir("/big"))) == 252
    lists = fake.count("list_page")
    assert len(list(fs.readdir("/big"))) == 252 and fake.count("list_page") == lists


def test_streamed_pages_keep_directory_wins_across_page_boundaries(make_fs):
    """A key ``x`` and keys below ``x/`` on different pages: the directory wins, and no
    name comes twice (a ``y_$folder$`` marker and a ``y/`` prefix are one directory)."""
    fake = FakeS3(page_size=2)
    for key in ("d/a", "d/x", "d/x-1", "d/x.txt", "d/x/in", "d/y/in", "d/y_$folder$", "d/z"):
        fake.seed(key, b"1")
    for budget in (2, 1000):             # streamed, and cached
        fs = make_fs(fake, meta="list", meta_entries=budget)
        entries = [(n, e if isinstance(e, int) else e.mode) for n, e in fs.readdir("/d")][2:]
        names = [n for n, _ in entries]
        assert sorted(names) == ["a", "x", "x-1", "x.txt", "y", "z"], names
        kinds = {n: stat.S_ISDIR(m) for n, m in entries}
        assert kinds == {"a": False, "x": True, "x-1": False, "x.txt": False, "y": True, "z": False}


def test_memory_per_listed_entry_is_bounded(make_fs):
    """tracemalloc of a listing of N entries (meta=list): what stays per entry with the
    listing cached, and in total when the budget is smaller than the directory."""
    n = 10_000
    fake = FakeS3()
    _seed(fake, n)
    fake.calls = _NoLog()
    fs = make_fs(fake, meta="list")
    gc.collect()
    tracemalloc.start()
    try:
        assert sum(1 for _ in fs.readdir("/big")) == n + 2
        gc.collect()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n{n} entries: kept {kept / n:.0f} B/entry, peak {peak / n:.0f} B/entry")
    assert kept <= n * 640 and peak <= n * 1024       # before #24: 585 and 1,260 B/entry

    small = FakeS3()
    _seed(small, n)
    small.calls = _NoLog()
    fs = make_fs(small, meta="list", meta_entries=1000)
    gc.collect()
    tracemalloc.start()
    try:
        assert sum(1 for _ in fs.readdir("/big")) == n + 2
        time.sleep(0)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept <= 1000 * 640 + 64 * 1024, kept      # the budget's entries, not the directory's


class _NoLog(list):
    """FakeS3's call log, kept empty (it would count as the code's memory)."""

    def append(self, item):
        pass
