"""Disk block cache: fixed-size blocks of object data in cache_dir, shared by all handles.

Key = (bucket, key, ETag, block index): a new version of an object has a new ETag, so
stale blocks can never be served; they just age out.  Size-bounded (diskcache culls the
least recently stored blocks), survives remounts.  Blocks over 32 KiB are stored as
plain files by diskcache, so a hit is a sqlite lookup plus a file read from page cache.
"""
from __future__ import annotations

import threading
from typing import Optional

import diskcache


class BlockCache:
    def __init__(self, directory: str, size_limit: int, bucket: str):
        self._bucket = bucket
        self._cache = diskcache.Cache(directory, size_limit=size_limit,
                                      eviction_policy="least-recently-stored",
                                      cull_limit=16)
        self._lock = threading.Lock()  # leaf lock: counters only
        self.hits = 0
        self.misses = 0

    def _k(self, key: str, etag: str, index: int) -> str:
        return f"{self._bucket}\0{key}\0{etag}\0{index}"

    def get(self, key: str, etag: str, index: int) -> Optional[bytes]:
        data = self._cache.get(self._k(key, etag, index))
        with self._lock:
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
        return data

    def contains(self, key: str, etag: str, index: int) -> bool:
        return self._k(key, etag, index) in self._cache

    def put(self, key: str, etag: str, index: int, data: bytes):
        self._cache.set(self._k(key, etag, index), data)

    def volume(self) -> int:
        return self._cache.volume()

    def close(self):
        self._cache.close()
