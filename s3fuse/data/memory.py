"""The memory budget (``-o max_memory``) and the pool of block buffers drawn from it.

``MemoryBudget`` counts the bytes the daemon holds in data buffers: block buffers (the
pool: read-ahead, the in-memory LRU, blocks queued for the disk writer, the block a
reader keeps) and upload parts being sent.  ``take(n)`` waits until ``n`` bytes fit;
while waiting it asks the *reclaimers* (the block cache drops its oldest in-memory
blocks, readers forget the block they keep) to let go of buffers, and the pool to free
idle ones.  A wait that outlasts ``patience`` seconds is
granted anyway and counted as an *overdraft* (status shows it): a budget too small for
what is in flight must slow the mount down, never deadlock it.

``BufferPool`` hands out ``size``-byte bytearrays and takes them back without anyone
returning them: a buffer is free when nothing but the pool references it
(``sys.getrefcount``).  So a buffer cannot go back into use while the LRU, the disk
writer's queue, a reader's current block, a future's result, a memoryview slice or a
FUSE read still holds it - each of those is a Python reference - and no holder has to
remember to give it back.  Nobody can take a new reference to a free buffer except
through the pool (bytearrays have no weak references), and the pool checks and hands
out under its lock, so a check cannot race with a new holder.  A reused buffer is not
zeroed: every user overwrites all of it (a GET fills the whole block or drops it).

``Share`` gives one kind of user (upload parts) at most part of the budget.

Lock order: ``BufferPool._lock`` -> ``MemoryBudget._lock`` (leaf); ``Share._lock`` is a
leaf too (released before the budget is asked).  Reclaimers are
called with no lock held.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)


UNACCOUNTED = 16 << 20


def accounted_limit(max_memory: int) -> int:
    """The part of ``max_memory`` the budget hands out.  The rest (16 MiB, at most half) is
    for data buffers nobody counts: libfuse's request buffer of each FUSE thread (1 MiB
    each, ~10 threads) and the MD5 queue of a sequential writer (4 MiB, write/hashing.py)."""
    return max(max_memory // 2, max_memory - UNACCOUNTED)


class MemoryBudget:
    def __init__(self, limit: int, patience: float = 2.0, total: int = 0):
        self.limit = max(1, limit)
        self.total = total or self.limit     # max_memory: limit + what is not accounted
        self.patience = patience
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self.used = 0
        self.peak = 0
        self.overdrafts = 0          # grants made over the limit after waiting ``patience``
        self.waits = 0               # takes that had to wait for room
        self._reclaimers: list = []
        self._freers: list = []

    def add_reclaimer(self, reclaim):
        """``reclaim(nbytes)`` lets go of about ``nbytes`` of buffers and says how many
        bytes it let go of; they become idle in the pool, whose ``shrink`` (a *freer*)
        then gives their budget back.  Reclaimers are asked in the order added, each only
        while the earlier ones have not let go of enough."""
        self._reclaimers.append(reclaim)

    def add_freer(self, free):
        """``free(nbytes)`` gives back up to ``nbytes`` of budget (``BufferPool.shrink``)."""
        self._freers.append(free)

    def try_take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self._grant(n)
            return True

    def take(self, n: int) -> None:
        """Wait until ``n`` bytes fit in the budget (reclaiming meanwhile), then hold them."""
        if self.try_take(n):
            return
        deadline = time.monotonic() + self.patience
        with self._lock:
            self.waits += 1
        while True:
            with self._lock:
                short = self.used + n - self.limit
            idle = 0
            for reclaim in self._reclaimers:
                if idle >= short:
                    break
                idle += reclaim(short - idle)
            for free in self._freers:
                if short > 0:
                    short -= free(short)
            with self._lock:
                if self.used + n <= self.limit:
                    self._grant(n)
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self.overdrafts += 1
                    self._grant(n)
                    return
                # buffers freed by dropping references do not notify: poll
                self._freed.wait(min(left, 0.02))

    @contextlib.contextmanager
    def hold(self, n: int):
        """``n`` bytes of the budget for the duration of a ``with`` block."""
        self.take(n)
        try:
            yield
        finally:
            self.give(n)

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n
            self._freed.notify_all()

    def _grant(self, n: int):
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def snapshot(self) -> dict:
        with self._lock:
            return {"max_memory": self.total, "limit": self.limit, "used": self.used, "peak": self.peak,
                    "overdrafts": self.overdrafts, "waits": self.waits}


class Share:
    """At most ``limit`` bytes of ``budget`` for one kind of user (upload parts): the rest
    stays for reads, and for what the budget does not count (libfuse's and mfusepy's
    per-thread write buffers, ~2 MiB per FUSE thread).  A request larger than the share
    alone is let through when nothing else of the share is held."""

    def __init__(self, budget: MemoryBudget, limit: int):
        self.budget = budget
        self.limit = max(1, limit)
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self.used = 0

    @contextlib.contextmanager
    def hold(self, n: int):
        with self._lock:
            self._freed.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
        try:
            with self.budget.hold(n):
                yield
        finally:
            with self._lock:
                self.used -= n
                self._freed.notify_all()


class BufferPool:
    """Reusable ``size``-byte bytearrays, each holding ``size`` bytes of the budget."""

    _FREE = 3    # references of an idle buffer while scanned: the pool's list, the loop, the argument

    def __init__(self, budget: MemoryBudget, size: int):
        self.budget = budget
        self.size = size
        self._lock = threading.Lock()
        self._all: list = []
        self._next = 0
        self.reused = 0
        self.allocated = 0
        budget.add_freer(self.shrink)

    def get(self) -> bytearray:
        """A buffer of ``size`` bytes nobody else references (contents undefined)."""
        buf = self._take_free()
        if buf is not None:
            return buf
        self.budget.take(self.size)      # may reclaim: LRU blocks become free buffers
        buf = self._take_free()
        if buf is not None:
            self.budget.give(self.size)  # a freed buffer came back: no need for a new one
            return buf
        buf = bytearray(self.size)
        with self._lock:
            self._all.append(buf)
            self.allocated += 1
        return buf

    def _take_free(self):
        with self._lock:
            bufs = self._all
            n = len(bufs)
            for step in range(n):
                i = (self._next + step) % n
                if sys.getrefcount(bufs[i]) == self._FREE - 1:   # list + argument (no loop variable)
                    self._next = i + 1
                    self.reused += 1
                    return bufs[i]
        return None

    def shrink(self, nbytes: int) -> int:
        """Let go of idle buffers worth up to ``nbytes`` (rounded up to whole buffers)."""
        freed = 0
        with self._lock:
            keep = []
            for buf in self._all:
                if freed < nbytes and sys.getrefcount(buf) == self._FREE:
                    freed += self.size
                else:
                    keep.append(buf)
            self._all = keep
            self._next = 0
        if freed:
            self.budget.give(freed)
        return freed

    def snapshot(self) -> dict:
        with self._lock:
            total = len(self._all)
            idle = sum(1 for b in self._all if sys.getrefcount(b) == self._FREE)
        return {"buffers": total, "idle": idle, "buffer_size": self.size,
                "reused": self.reused, "allocated": self.allocated}


def process_rss() -> dict:
    """VmRSS and VmHWM (peak) of this process in bytes, from /proc (0 where unknown)."""
    out = {"rss": 0, "rss_peak": 0}
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out["rss" if name == "VmRSS" else "rss_peak"] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def tune_malloc(mmap_threshold: int = 2 << 20, arenas: int = 2) -> bool:
    """glibc: allocations from ``mmap_threshold`` up (upload parts, 8 MiB) are mmap'd and
    unmapped when freed (the default threshold climbs to 32 MiB after the first large
    free, so freed parts then stayed in per-thread heaps); at most ``arenas`` arenas.
    Without this a daemon's RSS keeps the high-water mark of every thread's buffers.
    Not lower than 2 MiB: libfuse mallocs a 1 MiB reply buffer per read, and mmap'd it
    costs 256 page faults and the kernel's zeroing per read (22% of a cold read's CPU)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, mmap_threshold) == 1     # M_MMAP_THRESHOLD
        libc.mallopt(-8, arenas)                       # M_ARENA_MAX
        return ok
    except (OSError, AttributeError):
        return False
