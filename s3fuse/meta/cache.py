"""In-memory TTL caches of attributes, missing names and directory listings (the
persistent store of object metadata is meta/known.py).

Invariants
- ``attrs[path]`` is what ``stat`` shows until its TTL runs out; ``missing`` holds paths
  known absent (negative cache); ``dirs[path]`` is a complete listing {name: is_dir}.
- Every namespace change made through the mount updates all three (see ``forget``/``add``);
  a cached listing changes in place under the lock, so readers get copies (``get_dir``).

Locking: one ``threading.Lock`` guards the three caches (which are not thread-safe).  It is a leaf lock: never call out (S3, disk) while holding it.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Optional

import cachetools

from .attrs import Attr


class DirListing:
    __slots__ = ("entries", "marker", "fetched")

    def __init__(self, entries=None, marker=False, fetched=None):
        self.entries: dict = dict(entries or {})    # name -> is_dir
        self.marker = marker                         # a "dir/" marker object exists
        self.fetched = time.monotonic() if fetched is None else fetched

    def copy(self) -> "DirListing":
        return DirListing(self.entries, self.marker, self.fetched)


class TimedLRU:
    """A bounded map whose entries expire ``ttl`` seconds after they were stored: one
    OrderedDict of key -> (expiry, value) - about half of cachetools.TTLCache's ~250
    bytes per entry (three dicts and a link object each).  Storing moves a key to the
    end, so the order is both least-recently-stored and expiry order: the oldest go
    first when full, and expired ones are dropped from the front as new ones come.
    Not thread-safe (``MetaCache._lock``).  A lookup after an eviction misses, so the
    caller asks S3 again: eviction never answers wrong."""

    __slots__ = ("maxsize", "ttl", "_data", "_clock")

    def __init__(self, maxsize: int, ttl: float, clock=time.monotonic):
        self.maxsize, self.ttl, self._clock = maxsize, ttl, clock
        self._data: collections.OrderedDict = collections.OrderedDict()

    def get(self, key, default=None):
        item = self._data.get(key)
        if item is None:
            return default
        if item[0] <= self._clock():
            del self._data[key]
            return default
        return item[1]

    def __contains__(self, key) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def __setitem__(self, key, value):
        data = self._data
        now = self._clock()
        data[key] = (now + self.ttl, value)
        data.move_to_end(key)
        while len(data) > self.maxsize:
            data.popitem(last=False)
        while data:      # expired entries at the front: a few per store, never a scan
            first = next(iter(data.values()))
            if first[0] > now:
                break
            data.popitem(last=False)

    def pop(self, key, default=None):
        item = self._data.pop(key, None)
        return default if item is None else item[1]

    def keys(self):
        return self._data.keys()

    def __len__(self) -> int:
        return len(self._data)


_ABSENT = object()


def _listing_size(listing: DirListing) -> int:
    return len(listing.entries) + 1


class _ChangeClock(cachetools.LRUCache):
    """When each directory last changed through the mount (a counter, not a time).  A
    listing fetched from S3 while a change to its directory was made through the mount
    may predate that change: it must not be cached over it.  Bounded: a directory pushed
    out counts as changed at the newest tick it could have had (``floor``)."""

    def __init__(self, maxsize: int):
        super().__init__(maxsize)
        self.tick = 0
        self.floor = 0

    def touch(self, path: str):
        self.tick += 1
        self[path] = self.tick

    def changed_since(self, path: str, tick: int) -> bool:
        return self.get(path, self.floor) > tick

    def popitem(self):
        key, value = super().popitem()
        self.floor = max(self.floor, value)
        return key, value


class MetaCache:
    def __init__(self, attr_ttl: float, dir_ttl: float, negative_ttl: float, maxsize: int = 200_000):
        """``maxsize`` (``-o meta_entries``): attributes kept, and entries of all cached
        listings together; a listing of more is not cached (docs/design/memory.md)."""
        self._lock = threading.Lock()
        self.max_entries = maxsize
        # cachetools rejects ttl=0; a tiny TTL makes "0" mean "ask S3 every time".
        self.attrs = TimedLRU(maxsize, max(attr_ttl, 1e-9))
        self.missing = TimedLRU(maxsize, max(negative_ttl, 1e-9))
        self.dirs = cachetools.TTLCache(maxsize + 1, max(dir_ttl, 1e-9), getsizeof=_listing_size)
        self._negative_ttl = negative_ttl
        self._changes = _ChangeClock(max(1000, maxsize // 10))
        # directory -> time (ns) an entry was last added or removed through the mount: its
        # mtime/ctime on this mount (S3 has no directory times to update; not persisted)
        self._dir_times = cachetools.LRUCache(max(1000, maxsize // 10))

    # -- attributes ---------------------------------------------------------------------
    def get_attr(self, path: str) -> Optional[Attr]:
        with self._lock:
            return self.attrs.get(path)

    def get_attrs(self, paths: list) -> list:
        """``get_attr`` of many paths under one lock acquisition (a directory listing):
        taking the lock per entry convoys with the HEAD threads settling entries."""
        with self._lock:
            get = self.attrs.get
            return [get(p) for p in paths]

    def _stored(self, path: str, attr: Attr) -> Attr:
        """``attr`` as stored: a directory shows the last entry change made through the mount."""
        if self._dir_times and attr.is_dir:
            changed = self._dir_times.get(path)
            if changed is not None and changed > attr.mtime_ns:
                return attr.copy(mtime_ns=changed, ctime_ns=max(changed, attr.ctime_ns))
        return attr

    def put_attr(self, path: str, attr: Attr):
        with self._lock:
            self.attrs[path] = self._stored(path, attr)
            self.missing.pop(path, None)

    def settle(self, items: list):
        """For each (path, expected, new): store ``new`` if ``path`` still holds ``expected``
        (a listing's provisional attributes not replaced meanwhile).  One lock acquisition."""
        with self._lock:
            for path, expected, new in items:
                if self.attrs.get(path) is expected:
                    self.attrs[path] = self._stored(path, new)
                    self.missing.pop(path, None)

    def is_missing(self, path: str) -> bool:
        with self._lock:
            return path in self.missing

    def put_missing(self, path: str):
        with self._lock:
            self.missing[path] = True
            self.attrs.pop(path, None)

    # -- listings -------------------------------------------------------------------------
    def get_dir(self, path: str) -> Optional[DirListing]:
        """A snapshot of the cached listing (``add``/``forget`` change the cached one in
        place, under the lock; a reader iterates its own copy)."""
        with self._lock:
            listing = self.dirs.get(path)
            return None if listing is None else listing.copy()

    def absent_from_stale_listing(self, parent: str, name: str) -> bool:
        """A cached listing of ``parent`` lacks ``name`` but is older than ``negative_ttl``."""
        with self._lock:
            listing = self.dirs.get(parent)
            return listing is not None and name not in listing.entries and \
                time.monotonic() - listing.fetched > self._negative_ttl

    def revalidate(self, parent: str, entries: dict, started: float):
        """A fresh listing of ``parent`` (fetched from ``started``, monotonic) confirms the
        cached one's absences: names it has that the cached one lacks are added (unless
        this mount removed them meanwhile: they are in the negative cache), and the cached
        listing counts as fetched at ``started``."""
        base = parent.rstrip("/") + "/"
        with self._lock:
            listing = self.dirs.get(parent)
            if listing is None:
                return
            for name, is_dir in entries.items():
                if name not in listing.entries and (base + name) not in self.missing:
                    listing.entries[name] = is_dir
            listing.fetched = max(listing.fetched, started)

    def dir_fetched(self, path: str) -> Optional[float]:
        """When the cached listing of ``path`` was fetched (no copy), or None."""
        with self._lock:
            listing = self.dirs.get(path)
            return None if listing is None else listing.fetched

    def listing_started(self) -> int:
        """Call before fetching a listing; pass the answer to ``put_dir``."""
        with self._lock:
            return self._changes.tick

    def put_dir(self, path: str, listing: DirListing, started: Optional[int] = None):
        """Cache ``listing`` unless ``path`` changed through the mount since ``started``
        (the listing may miss that change).  Returns whether it was cached."""
        with self._lock:
            if started is not None and self._changes.changed_since(path, started):
                return False
            if _listing_size(listing) > self.dirs.maxsize:
                self.dirs.pop(path, None)
                return False
            self.dirs[path] = listing
            return True

    def listed_absent(self, parent: str, name: str) -> bool:
        """True if a complete listing of ``parent`` at most ``negative_ttl`` old does not
        hold ``name``.  An older one is still shown by readdir (``dir_ttl``), but a name it
        lacks may be new from another client: the lookup asks S3."""
        with self._lock:
            listing = self.dirs.get(parent)
            return listing is not None and name not in listing.entries and \
                time.monotonic() - listing.fetched <= self._negative_ttl

    # -- namespace changes made through the mount -------------------------------------
    def times_set(self, path: str):
        """Directory ``path`` got explicit times (utimens: tar, rsync): they stand until its
        next entry change."""
        with self._lock:
            self._dir_times.pop(path, None)

    def touch_dir(self, path: str, ns: int):
        """An entry of directory ``path`` was added or removed through the mount at ``ns``."""
        with self._lock:
            self._dir_times[path] = ns
            attr = self.attrs.get(path)
            if attr is not None:
                self.attrs[path] = self._stored(path, attr)

    def add(self, parent: str, name: str, path: str, attr: Attr):
        with self._lock:
            self._changes.touch(parent)
            self.attrs[path] = self._stored(path, attr)
            self.missing.pop(path, None)
            listing = self.dirs.get(parent)
            if listing is not None:
                listing.entries[name] = attr.is_dir

    def forget(self, parent: str, name: str, path: str, negative: bool = True):
        with self._lock:
            self._changes.touch(parent)
            self.attrs.pop(path, None)
            self.dirs.pop(path, None)
            if negative:
                self.missing[path] = True
            listing = self.dirs.get(parent)
            if listing is not None:
                listing.entries.pop(name, None)

    def invalidate(self, path: str):
        with self._lock:
            self._changes.touch(path)
            self.attrs.pop(path, None)
            self.missing.pop(path, None)
            self.dirs.pop(path, None)

    def invalidate_tree(self, path: str):
        """Drop everything at or below ``path`` (after a directory rename or delete)."""
        below = path.rstrip("/") + "/"
        with self._lock:
            self._changes.touch(path)
            for cache in (self.attrs, self.missing, self.dirs):
                for p in [p for p in list(cache.keys()) if p == path or p.startswith(below)]:
                    cache.pop(p, None)
