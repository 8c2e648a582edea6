"""Small-file read-ahead: ``cp -r``, ``tar c``, ``rsync`` and ``grep -r`` open the files of
a directory one after another in listing order, and each open of a small file costs one
GET round trip.  When two opens in a row follow the listing, the next small files of
that listing are fetched in parallel into the block cache (keyed by ETag, as every
block: nothing stale can be served), at most ``budget`` bytes ahead of the reader; a
jump elsewhere stops it (what is in flight finishes, nothing more is started).

Lock: ``_lock`` is a leaf over the per-directory state; fetches are started outside it.
"""
from __future__ import annotations

import threading

import cachetools

from ..data.reader import PinnedObject
from ..paths import join, split


class _DirOrder:
    __slots__ = ("fetched", "names", "index", "last", "run", "ahead")

    def __init__(self, fetched: float, names: list):
        self.fetched = fetched
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        self.last = -2          # index of the last file opened
        self.run = 0            # opens in a row that followed the listing
        self.ahead = -1         # highest index handed to the fetcher


class ListingReadAhead:
    SMALL = 4 << 20           # files up to this size are prefetched whole

    def __init__(self, cache, fetcher, mapper, budget: int = 32 << 20, files: int = 64):
        self.cache = cache
        self.fetcher = fetcher
        self.mapper = mapper
        self.budget = budget
        self.files = files
        self._lock = threading.Lock()
        self._dirs = cachetools.LRUCache(256)    # parent path -> _DirOrder
        self.started = 0                          # files prefetched (status, tests)

    def opened(self, path: str):
        """``path`` was opened for reading."""
        parent, name = split(path)
        order = self._order(parent)
        if order is None:
            return
        with self._lock:
            i = order.index.get(name)
            if i is None:
                return
            order.run = order.run + 1 if i == order.last + 1 else 0
            order.last = i
            if order.run < 1:
                order.ahead = i          # the pattern broke (or begins): nothing ahead
                return
            first = max(order.ahead, i) + 1
            candidates = order.names[first:first + self.files]
        wanted, total = [], 0
        ahead_of_reader = self._bytes_between(parent, order, i + 1, first)
        for offset, child in enumerate(candidates):
            attr = self.cache.get_attr(join(parent, child))
            if attr is None or attr.is_dir or not attr.etag:
                continue                 # not known yet, or not a plain object: skip it
            if attr.size > self.SMALL:
                break                    # a big file: its own read-ahead takes over there
            if ahead_of_reader + total + attr.size > self.budget:
                break
            wanted.append((first + offset, join(parent, child), attr))
            total += attr.size
        if not wanted:
            return
        with self._lock:
            order.ahead = max(order.ahead, wanted[-1][0])
        for _, child_path, attr in wanted:
            if attr.size:
                obj = PinnedObject(self.mapper.key(child_path), attr.etag, attr.size)
                self.fetcher.prefetch(obj, 0, self.fetcher.last_index(obj))
                self.started += 1

    def _bytes_between(self, parent: str, order: _DirOrder, lo: int, hi: int) -> int:
        """Bytes already prefetched ahead of the reader (files lo..hi-1)."""
        names = order.names[lo:hi]
        attrs = self.cache.get_attrs([join(parent, n) for n in names])
        return sum(a.size for a in attrs if a is not None and not a.is_dir)

    def _order(self, parent: str):
        fetched = self.cache.dir_fetched(parent)
        if fetched is None:
            return None
        with self._lock:
            order = self._dirs.get(parent)
        if order is not None and order.fetched == fetched:
            return order
        listing = self.cache.get_dir(parent)          # a copy: once per listing
        if listing is None:
            return None
        order = _DirOrder(listing.fetched, sorted(n for n, is_dir in listing.entries.items() if not is_dir))
        with self._lock:
            self._dirs[parent] = order
        return order
