"""In-memory TTL caches of attributes, missing names and directory listings, plus the
persistent store of object metadata keyed by (key, ETag).

Invariants
- ``attrs[path]`` is what ``stat`` shows until its TTL runs out; ``missing`` holds paths
  known absent (negative cache); ``dirs[path]`` is a complete listing {name: is_dir}.
- Every namespace change made through the mount updates all three (see ``forget``/``add``);
  a cached listing changes in place under the lock, so readers get copies (``get_dir``).
- The persistent ``known`` store maps (bucket, key, etag) to the object's user metadata;
  an ETag changes with every write, so an entry can never describe a newer object.

Locking: one ``threading.Lock`` guards the three cachetools caches (which are not
thread-safe).  It is a leaf lock: never call out (S3, disk) while holding it.
"""
from __future__ import annotations

import threading
from typing import Optional

import cachetools
import diskcache

from .attrs import Attr


class DirListing:
    __slots__ = ("entries", "marker")

    def __init__(self, entries=None, marker=False):
        self.entries: dict = dict(entries or {})    # name -> is_dir
        self.marker = marker                         # a "dir/" marker object exists

    def copy(self) -> "DirListing":
        return DirListing(self.entries, self.marker)


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
        self._lock = threading.Lock()
        # cachetools rejects ttl=0; a tiny TTL makes "0" mean "ask S3 every time".
        self.attrs = cachetools.TTLCache(maxsize, max(attr_ttl, 1e-9))
        self.missing = cachetools.TTLCache(maxsize, max(negative_ttl, 1e-9))
        self.dirs = cachetools.TTLCache(max(1000, maxsize // 100), max(dir_ttl, 1e-9))
        self._changes = _ChangeClock(max(1000, maxsize // 10))

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

    def put_attr(self, path: str, attr: Attr):
        with self._lock:
            self.attrs[path] = attr
            self.missing.pop(path, None)

    def settle(self, items: list):
        """For each (path, expected, new): store ``new`` if ``path`` still holds ``expected``
        (a listing's provisional attributes not replaced meanwhile).  One lock acquisition."""
        with self._lock:
            for path, expected, new in items:
                if self.attrs.get(path) is expected:
                    self.attrs[path] = new
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
            self.dirs[path] = listing
            return True

    def listed_absent(self, parent: str, name: str) -> bool:
        """True if a fresh complete listing of ``parent`` does not hold ``name``."""
        with self._lock:
            listing = self.dirs.get(parent)
            return listing is not None and name not in listing.entries

    # -- namespace changes made through the mount -------------------------------------
    def add(self, parent: str, name: str, path: str, attr: Attr):
        with self._lock:
            self._changes.touch(parent)
            self.attrs[path] = attr
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


class KnownMetadata:
    """Persistent (bucket, key, etag) -> user metadata dict, in cache_dir.  Lets a later
    mount show exact POSIX attributes from a listing without one HEAD per entry.

    Writes are buffered in memory and flushed in one sqlite transaction per batch (a
    transaction per entry would cost more than the HEAD it saves); ``get`` sees the
    buffer first.  ``_lock`` is a leaf lock guarding the buffer only."""

    FLUSH_EVERY = 1.0

    def __init__(self, directory: str, bucket: str, size_limit: int = 256 << 20):
        self._bucket = bucket
        # cull_limit=0: no size check inside each set(); flush() culls once per batch.
        self._store = diskcache.Cache(directory, size_limit=size_limit,
                                      eviction_policy="least-recently-stored", cull_limit=0)
        self._lock = threading.Lock()
        self._buffer: dict = {}
        self._wake = threading.Event()
        self._closed = False
        self._flusher = threading.Thread(target=self._run, name="meta-flush", daemon=True)
        self._flusher.start()

    def _k(self, key: str, etag: str) -> str:
        return f"{self._bucket}\0{key}\0{etag}"

    def get(self, key: str, etag: str) -> Optional[dict]:
        if not etag:
            return None
        k = self._k(key, etag)
        with self._lock:
            if k in self._buffer:
                return self._buffer[k]
        return self._store.get(k)

    def put(self, key: str, etag: str, metadata: dict):
        if etag:
            with self._lock:
                self._buffer[self._k(key, etag)] = dict(metadata or {})
                big = len(self._buffer) >= 1000
            if big:
                self._wake.set()

    def flush(self):
        with self._lock:
            batch, self._buffer = self._buffer, {}
        if batch:
            with self._store.transact():
                for k, v in batch.items():
                    self._store.set(k, v)
            self._store.cull()

    def _run(self):
        while not self._closed:
            self._wake.wait(self.FLUSH_EVERY)
            self._wake.clear()
            try:
                self.flush()
            except Exception:   # the store is an optimisation: never fatal
                import logging
                logging.getLogger(__name__).warning("metadata store flush failed", exc_info=True)

    def close(self):
        self._closed = True
        self._wake.set()
        self._flusher.join(5)
        self.flush()
        self._store.close()
