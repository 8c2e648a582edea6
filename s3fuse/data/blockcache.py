"""Disk block cache: fixed-size blocks of object data in cache_dir, shared by all handles.

Key = (bucket, key, ETag, block index): a new version of an object has a new ETag, so
stale blocks can never be served; they just age out.  Size-bounded (diskcache culls the
least recently stored blocks), survives remounts.  Blocks over 32 KiB are stored as
plain files by diskcache, so a hit is a sqlite lookup plus a file read from page cache.

Writes are behind: ``put`` keeps the block in a small in-memory FIFO (``memory`` bytes;
first in, first out, because a sequential reader consumes read-ahead blocks in the order
they arrive, and a block it has read is the one to drop; ``reclaim`` drops the oldest
when the memory budget needs room, see data/memory.py) and queues it for a writer thread, so a GET streaming blocks rarely waits for the disk.
When ``max_pending`` blocks wait for the disk, ``put`` waits too (bounded memory; a
block fetched for read-ahead must not be dropped before it is read).  ``_lock`` (with
its condition) is a leaf lock over the LRU, the pending set and the counters.

The writer is the busiest Python thread of a cold sequential read, and every sqlite or
file call it makes hands the GIL over to the fetch and FUSE threads.  So it writes the
blocks waiting at once in one sqlite transaction, files go into 256 fixed directories
(diskcache makes two random levels, i.e. a mkdir per block), and eviction runs once per
``size_limit / 16`` bytes written instead of a volume query per block: the cache may
exceed its limit by that much between two culls.
"""
from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
from typing import Optional

import cachetools
import diskcache

log = logging.getLogger(__name__)


class WholeWriteDisk(diskcache.Disk):
    """Value files for blocks.  diskcache writes a bytes value by iterating an io.BytesIO,
    i.e. line by line (one write() per 256 bytes of random data), and calls makedirs
    before every file; this writes the value at once into one of 256 directories."""

    def filename(self, key=diskcache.core.UNKNOWN, value=diskcache.core.UNKNOWN):
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if type(value) is bytearray and len(value) >= self.min_file_size:
            # a block from a transport GET: a file like bytes (diskcache would pickle it)
            filename, full_path = self.filename(key, value)
            self._write(full_path, [value], "xb")
            return len(value), diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)

    def _write(self, full_path, iterator, mode, encoding=None):
        chunks = [iterator.getvalue()] if isinstance(iterator, io.BytesIO) else iterator
        try:
            f = open(full_path, mode, encoding=encoding)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            f = open(full_path, mode, encoding=encoding)
        size = 0
        with f:
            for chunk in chunks:
                size += len(chunk)
                f.write(chunk)
        return size


class BlockCache:
    def __init__(self, directory: str, size_limit: int, bucket: str, memory: int = 48 << 20,
                 max_pending: int = 16, pool=None):
        self._bucket = bucket
        self._pool = pool      # memory.BufferPool: full blocks read from disk go into its buffers
        # cull_limit=0: no eviction inside set(); the writer culls (see _write_loop).
        self._cache = diskcache.Cache(directory, size_limit=size_limit,
                                      eviction_policy="least-recently-stored",
                                      cull_limit=0, disk=WholeWriteDisk)
        self._cull_every = max(1, size_limit // 16)
        self._written_since_cull = self._cull_every   # cull once soon after start
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._recent = cachetools.FIFOCache(maxsize=max(memory, 1), getsizeof=len)
        self._pending: dict = {}
        self._max_pending = max_pending
        self._queue: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="block-writer", daemon=True)
        self._writer.start()
        self.hits = 0
        self.misses = 0
        self.dropped = 0          # blocks not cached because the disk writer was stuck (status)

    def _k(self, key: str, etag: str, index: int) -> str:
        return f"{self._bucket}\0{key}\0{etag}\0{index}"

    def get(self, key: str, etag: str, index: int) -> Optional[bytes]:
        k = self._k(key, etag, index)
        with self._lock:
            data = self._pending.get(k) or self._recent.get(k)
        if data is None:
            data = self._from_disk(k)
        with self._lock:
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
        return data

    def _from_disk(self, k: str):
        """A block from disk: into a pool buffer when it is a full block (a fresh 1 MiB
        allocation costs 256 page faults and the kernel's zeroing, see data/memory.py)."""
        pool = self._pool
        if pool is None:
            return self._cache.get(k)
        f = self._cache.get(k, read=True)
        if f is None or isinstance(f, (bytes, bytearray)):     # a small value kept in sqlite
            return f
        with f:
            if os.fstat(f.fileno()).st_size == pool.size:
                buf = pool.get()
                if f.readinto(buf) == pool.size:
                    return buf
                f.seek(0)
            return f.read()

    def contains(self, key: str, etag: str, index: int) -> bool:
        k = self._k(key, etag, index)
        with self._lock:
            if k in self._pending or k in self._recent:
                return True
        return k in self._cache

    def reclaim(self, nbytes: int) -> int:
        """Drop the oldest in-memory blocks, about ``nbytes`` of them (a budget reclaimer:
        their buffers become idle in the pool, which gives the budget back)."""
        dropped = 0
        with self._lock:
            while dropped < nbytes and self._recent:
                _, data = self._recent.popitem()
                dropped += len(data)
        return dropped

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
            keys = [self._queue.get()]
            while len(keys) < self._max_pending:
                try:
                    keys.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in keys
            keys = [k for k in keys if k is not None]
            with self._lock:
                batch = [(k, self._pending.get(k)) for k in keys]
            try:
                with self._cache.transact():
                    for k, data in batch:
                        if data is not None:
                            self._cache.set(k, data)
                            self._written_since_cull += len(data)
                if self._written_since_cull >= self._cull_every:
                    self._written_since_cull = 0
                    self._cache.cull()
            except Exception:   # a full or broken cache disk must not fail reads
                log.warning("block cache write failed", exc_info=True)
            finally:
                with self._lock:
                    for k in keys:
                        self._pending.pop(k, None)
                    self._room.notify_all()
            # no reference to a written block may outlive its batch: an idle writer
            # holding one would keep a buffer out of the pool (data/memory.py)
            batch = data = None
            if stop:
                return

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
