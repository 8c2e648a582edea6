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

Room on the disk (``space``, a ``diskspace.DiskSpace``): the cache leaves ``min_free``
bytes free on cache_dir's filesystem (``-o cache_min_free``) for staging and the journal:
before a batch is written the oldest blocks are evicted until it fits, and what still
does not fit is not cached (``not_cached``; reads fetch it again).  Writers that find the
disk low or full ask for room too (``evict``): the cache is expendable, written files are
not.  ``_evict_lock`` serialises evictions (disk I/O; only ``_lock`` is taken under it).

Crash safety (a SIGKILL at any moment, docs/design/reads.md): diskcache writes a value
file completely before the sqlite row naming it commits, so a kill leaves at worst value
files without a row (swept at start, ``sweep_orphans``) and never a committed row whose
file is partial.  What a kill cannot do, a power loss or a hand can (files are not
fsynced: the cache is expendable): a value file's name carries its length, a file found
short or missing is a miss and its row is deleted (``torn``), so a torn block is never
served.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Optional

import cachetools
import diskcache

from .. import errors
from .valuefiles import CacheFile, WholeWriteDisk, sweep_orphans

log = logging.getLogger(__name__)


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC from a value file, or sqlite's own word for it."""
    return errors.is_no_space(exc) or "disk is full" in str(exc)


class BlockCache:
    def __init__(self, directory: str, size_limit: int, bucket: str, memory: int = 48 << 20,
                 max_pending: int = 16, pool=None, space=None):
        self._bucket = bucket
        self._pool = pool      # memory.BufferPool: full blocks read from disk go into its buffers
        self._space = space    # diskspace.DiskSpace of cache_dir: its min_free is left free
        self._evict_lock = threading.Lock()     # one eviction at a time (disk I/O: not a leaf)
        # cull_limit=0: no eviction inside set(); the writer culls (see _write_loop).
        self._cache = diskcache.Cache(directory, size_limit=size_limit,
                                      eviction_policy="least-recently-stored",
                                      cull_limit=0, disk=WholeWriteDisk)
        self._cull_every = max(1, size_limit // 16)
        self._written_since_cull = self._cull_every   # cull once soon after start
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._recent = cachetools.FIFOCache(maxsize=max(memory, 1), getsizeof=len)
        # value files opened for reads, by block: a hit on one is no sqlite query and no
        # open().  Safe after an eviction (a value file is never rewritten: the descriptor
        # reads the block's bytes); ``drop`` and ``clear`` forget them (-o verify).
        self._open_files = cachetools.LRUCache(maxsize=self.OPEN_FILES)
        self._pending: dict = {}
        self._max_pending = max_pending
        self._queue: queue.Queue = queue.Queue()
        self.hits = 0
        self.misses = 0
        self.dropped = 0          # blocks not cached because the disk writer was stuck (status)
        self.torn = 0             # rows found with a short or missing value file (deleted)
        self.orphans = 0          # value files without a row removed at start (a crash mid-write)
        self.not_cached = 0       # blocks not stored: the disk had no room above min_free
        self.evicted = 0          # blocks evicted to keep min_free free (or for a staging write)
        self._warned_full = False
        # rows whose value file an eviction removed when sqlite could not commit the delete: misses
        self._gone: dict = {}
        # the writer starts last: its first pass sets ``orphans`` (it was reset after it ran)
        self._writer = threading.Thread(target=self._write_loop, name="block-writer", daemon=True)
        self._writer.start()

    OPEN_FILES = 64

    def _k(self, key: str, etag: str, index: int) -> str:
        return f"{self._bucket}\0{key}\0{etag}\0{index}"

    def get(self, key: str, etag: str, index: int, part: Optional[tuple] = None) -> Optional[bytes]:
        """Block ``index``, or bytes [lo, hi) of it (``part``: a random read copies only those)."""
        k = self._k(key, etag, index)
        with self._lock:
            data = self._pending.get(k) or self._recent.get(k)
            gone = k in self._gone
        if data is not None and part is not None:
            data = memoryview(data)[part[0]:part[1]]
        elif data is None and not gone:
            data = self._from_disk(k, part)
            if data is None and self._cache.disk.take_bad() is not None:
                self._forget_torn(k)
        with self._lock:
            self.hits += data is not None
            self.misses += data is None and part is None    # a part's miss: the block's get counts it
        return data

    def _forget_torn(self, k: str):
        """A row whose value file is short or missing (a power loss, a hand in cache_dir):
        delete it, so the block is fetched again and stored whole."""
        try:
            self._cache.delete(k)
        except Exception:
            log.warning("block cache: could not delete a torn block's row", exc_info=True)
        with self._lock:
            self.torn += 1
            first = self.torn == 1
        if first:
            log.warning("block cache %s: a cached block's file was short or missing; not served, its row "
                        "deleted and the block fetched again (a crash of the machine, or files removed by "
                        "hand?)", self._cache.directory)

    def drop(self, key: str, etag: str, blocks: int) -> int:
        """Forget blocks 0..blocks-1 of one version (e.g. after -o verify found it wrong).
        Returns how many were cached on disk.  Blocks still waiting for the writer are
        written first (waits up to 5 s), so that none lands after the drop."""
        self.flush(5.0)
        dropped = 0
        for index in range(blocks):
            k = self._k(key, etag, index)
            with self._lock:
                self._recent.pop(k, None)
                self._open_files.pop(k, None)
            try:
                dropped += bool(self._cache.delete(k))
            except Exception:
                log.warning("block cache: could not drop %r block %d", key, index, exc_info=True)
        return dropped

    def _from_disk(self, k: str, part: Optional[tuple] = None):
        """A block from disk, a full one into a pool buffer (a fresh 1 MiB costs 256 page faults)."""
        pool = self._pool
        if pool is None and part is None:
            return self._cache.get(k)
        f = self._cache.get(k, read=True)
        if not isinstance(f, CacheFile):     # None, or a small value kept in sqlite
            return f if f is None or part is None else memoryview(f)[part[0]:part[1]]
        if part is not None:
            return f.pread(part[1] - part[0], part[0])
        if f.size == pool.size:
            buf = pool.get()
            if f.readinto(buf) == pool.size:
                return buf
        return f.pread(f.size, 0)

    def open_block(self, key: str, etag: str, index: int):
        """Block ``index`` unread: its value file opened (``CacheFile``: libfuse reads the
        bytes itself, no copy in the interpreter) if it is on disk, else its buffer if it
        is in memory, else None.  A block in memory that is on disk too comes as its file:
        its page cache is warm, and a region costs the read callback less than a copy."""
        k = self._k(key, etag, index)
        with self._lock:
            data = self._pending.get(k) or self._open_files.get(k)
            gone = k in self._gone
        if data is None and not gone:
            data = self._cache.get(k, read=True)
            if isinstance(data, CacheFile):
                with self._lock:
                    self._open_files[k] = data
            elif data is None and self._cache.disk.take_bad() is not None:
                self._forget_torn(k)
        if data is None:
            with self._lock:
                data = self._recent.get(k)    # not stored: the disk had no room
        if data is not None:
            with self._lock:
                self.hits += 1          # a miss is counted by the ``get`` that follows it
        return data

    def contains(self, key: str, etag: str, index: int) -> bool:
        k = self._k(key, etag, index)
        with self._lock:
            if k in self._pending or k in self._recent or k in self._open_files:
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
        try:
            self.orphans = sweep_orphans(self._cache)
        except Exception:
            log.warning("block cache: sweeping value files left by a crash failed", exc_info=True)
        if self.orphans:
            log.info("block cache %s: removed %d value files a crash left without a row",
                     self._cache.directory, self.orphans)
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
                self._delete_gone()
                batch = self._fit(batch)
                with self._cache.transact():
                    for k, data in batch:
                        if data is not None:
                            self._cache.set(k, data)
                            self._gone.pop(k, None)
                            self._written_since_cull += len(data)
                if self._written_since_cull >= self._cull_every:
                    self._written_since_cull = 0
                    self._cache.cull()
            except Exception as exc:   # a full or broken cache disk must not fail reads
                if _disk_full(exc):
                    self._full(len(batch), exc)
                else:
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

    # -- room on the disk --------------------------------------------------------------------
    def _fit(self, batch: list) -> list:
        """The blocks of ``batch`` that can be stored leaving ``min_free`` free on the disk,
        after evicting the oldest blocks for them; the others are not cached (their reads
        fetch them again)."""
        if self._space is None:
            return batch
        need = sum(len(d) for _, d in batch if d is not None)
        short = self._space.short_by(need)
        for _ in range(4):          # the sqlite files grow too: evict again while it helps
            if not short or not self.evict(short):
                break
            short = self._space.short_by(need)
        if not short:
            self._warned_full = False       # room again: the next full disk is worth a line
            return batch
        room = max(0, self._space.free() - self._space.min_free)
        kept = []
        for k, data in batch:
            if data is not None and len(data) <= room:
                kept.append((k, data))
                room -= len(data)
        self._full(len(batch) - len(kept))
        return kept

    def _full(self, blocks: int, exc: Optional[BaseException] = None):
        with self._lock:
            self.not_cached += blocks
            first, self._warned_full = not self._warned_full, True
        if first and blocks:
            log.warning("block cache %s: the disk is full (min free %d bytes%s): blocks are not cached while "
                        "there is no room (reads fetch them from S3); files being written have the space",
                        self._cache.directory, self._space.min_free if self._space else 0,
                        f"; {exc}" if exc else "")

    def evict(self, nbytes: int) -> int:
        """Delete the least recently stored blocks on disk, about ``nbytes`` of them (room
        for staging, or for ``min_free``).  Returns the bytes of the values deleted."""
        freed = 0
        with self._evict_lock:
            while freed < nbytes:
                # diskcache's schema (5.x): the rows in the order its eviction policy culls
                rows = self._cache._sql("SELECT key, size, filename FROM Cache ORDER BY store_time LIMIT 32 "
                                        "OFFSET ?", (len(self._gone),)).fetchall()
                deleted = 0
                for key, size, filename in rows:
                    if freed >= nbytes:
                        break
                    if self._delete_row(key, filename):
                        freed += size or 0
                        deleted += 1
                        with self._lock:     # its open descriptor would keep the space taken
                            self._open_files.pop(key, None)
                with self._lock:
                    self.evicted += deleted
                if not deleted:
                    break
        return freed

    def _delete_row(self, key: str, filename: Optional[str]) -> bool:
        try:
            return bool(self._cache.delete(key))
        except Exception as exc:
            if not _disk_full(exc) or not filename:
                raise
        # sqlite needs room to commit a delete: free the value file itself (the row, now
        # naming no file, is a miss until _delete_gone removes it)
        with self._lock:
            self._gone[key] = None
        try:
            os.remove(os.path.join(self._cache.directory, filename))
        except FileNotFoundError:
            pass
        return True

    def _delete_gone(self):
        with self._lock:
            gone = list(self._gone)
        for k in gone:
            if self._space is not None and self._space.low():
                return
            self._cache.delete(k)
            with self._lock:
                self._gone.pop(k, None)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until queued blocks are on disk (tests, unmount)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.01)
        return False

    def clear(self):
        self.flush()
        with self._lock:
            self._recent.clear()
            self._open_files.clear()
        self._cache.clear()

    def volume(self) -> int:
        return self._cache.volume()

    def close(self):
        self.flush()
        self._queue.put(None)
        self._writer.join(5)
        self._cache.close()
