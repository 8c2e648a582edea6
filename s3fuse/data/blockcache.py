"""Disk block cache: fixed-size blocks of object data in cache_dir, shared by all handles.

Key = (bucket, key, ETag, block index): a new version of an object has a new ETag, so
stale blocks can never be served; they just age out.  Size-bounded (diskcache culls the
least recently stored blocks), survives remounts.  Blocks over 32 KiB are stored as
plain files by diskcache, so a hit is a sqlite lookup plus a file read from page cache.

Writes are behind: ``put`` keeps the block in a small in-memory LRU (``memory`` bytes)
and queues it for a writer thread, so a GET streaming blocks rarely waits for the disk.
When ``max_pending`` blocks wait for the disk, ``put`` waits too (bounded memory; a
block fetched for read-ahead must not be dropped before it is read).  ``_lock`` (with
its condition) is a leaf lock over the LRU, the pending set and the counters.
"""
from __future__ import annotations

import io
import logging
import queue
import threading
import time
from typing import Optional

import cachetools
import diskcache

log = logging.getLogger(__name__)


class WholeWriteDisk(diskcache.Disk):
    """diskcache writes a bytes value by iterating an io.BytesIO, i.e. line by line: one
    write() per 256 bytes of random data (4 ms per 1 MiB block).  Write it at once."""

    def _write(self, full_path, iterator, mode, encoding=None):
        if isinstance(iterator, io.BytesIO):
            iterator = [iterator.getvalue()]
        return super()._write(full_path, iterator, mode, encoding)


class BlockCache:
    def __init__(self, directory: str, size_limit: int, bucket: str, memory: int = 48 << 20,
                 max_pending: int = 16):
        self._bucket = bucket
        self._cache = diskcache.Cache(directory, size_limit=size_limit,
                                      eviction_policy="least-recently-stored",
                                      cull_limit=16, disk=WholeWriteDisk)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._recent = cachetools.LRUCache(maxsize=max(memory, 1), getsizeof=len)
        self._pending: dict = {}
        self._max_pending = max_pending
        self._queue: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="block-writer", daemon=True)
        self._writer.start()
        self.hits = 0
        self.misses = 0
        self.dropped = 0

    def _k(self, key: str, etag: str, index: int) -> str:
        return f"{self._bucket}\0{key}\0{etag}\0{index}"

    def get(self, key: str, etag: str, index: int) -> Optional[bytes]:
        k = self._k(key, etag, index)
        with self._lock:
            data = self._pending.get(k) or self._recent.get(k)
        if data is None:
            data = self._cache.get(k)
        with self._lock:
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
        return data

    def contains(self, key: str, etag: str, index: int) -> bool:
        k = self._k(key, etag, index)
        with self._lock:
            if k in self._pending or k in self._recent:
                return True
        return k in self._cache

    def put(self, key: str, etag: str, index: int, data: bytes):
        k = self._k(key, etag, index)
        with self._lock:
            if len(data) <= self._recent.maxsize:
                self._recent[k] = data
            if not self._room.wait_for(lambda: len(self._pending) < self._max_pending, timeout=30):
                self.dropped += 1      # the disk is stuck: skip caching rather than hang reads
                return
            self._pending[k] = data
        self._queue.put(k)

    def _write_loop(self):
        while True:
            k = self._queue.get()
            if k is None:
                return
            with self._lock:
                data = self._pending.get(k)
            try:
                if data is not None:
                    self._cache.set(k, data)
            except Exception:   # a full or broken cache disk must not fail reads
                log.warning("block cache write failed", exc_info=True)
            finally:
                with self._lock:
                    self._pending.pop(k, None)
                    self._room.notify_all()

    def flush(self, timeout: float = 30.0):
        """Wait until queued blocks are on disk (tests, unmount)."""
        done = threading.Event()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    done.set()
                    break
            time.sleep(0.01)
        return done.is_set()

    def clear(self):
        self.flush()
        with self._lock:
            self._recent.clear()
        self._cache.clear()

    def volume(self) -> int:
        return self._cache.volume()

    def close(self):
        self.flush()
        self._queue.put(None)
        self._writer.join(5)
        self._cache.close()
