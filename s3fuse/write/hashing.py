"""Whole-file MD5 of a sequential writer, computed beside the FUSE write path.

MD5 is slow enough that inline in each 1 MiB write callback it was a large share of the
write latency of a large copy.  ``SequentialMD5`` hashes the first ``inline_limit``
bytes inline (small files: no thread, no queue), then hands the writes to a thread of
its own, in order, holding at most ``max_queued`` bytes (a writer faster than the
hasher waits: memory stays bounded).  A write's data is a view of libfuse's buffer,
valid only during the callback (fuse.binding.FUSE.write): hashed inline it is not
copied, queued it is copied to bytes (at most ``max_queued`` bytes of them: 4 MiB, off
the memory budget's books, see docs/design/memory.md).

Lock: ``_cond`` is a leaf lock (the caller may hold OpenFile.lock).
"""
from __future__ import annotations

import collections
import hashlib
import threading


class SequentialMD5:
    def __init__(self, inline_limit: int = 8 << 20, max_queued: int = 4 << 20, idle_exit: float = 1.0):
        self._md5 = hashlib.md5()
        self._inline_limit = inline_limit
        self._max_queued = max_queued
        self._idle_exit = idle_exit
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._queued = 0          # bytes waiting in the queue or being hashed
        self._fed = 0             # bytes handed to update()
        self._thread = None
        self._cancelled = False

    def update(self, data: bytes):
        """Append ``data`` (the bytes following everything given before)."""
        self._fed += len(data)
        with self._cond:
            if self._queued == 0 and self._fed <= self._inline_limit:
                self._md5.update(data)
                return
            self._cond.wait_for(lambda: self._queued < self._max_queued or self._cancelled)
            self._queue.append(data if type(data) is bytes else bytes(data))
            self._queued += len(data)
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="md5", daemon=True)
                self._thread.start()

    def hexdigest(self) -> str:
        """The MD5 of everything given so far (waits for the thread to catch up)."""
        with self._cond:
            self._cond.wait_for(lambda: self._queued == 0)
            return self._md5.hexdigest()

    def cancel(self):
        """The digest is no longer wanted: drop the queue, let the thread end."""
        with self._cond:
            self._cancelled = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()

    def _run(self):
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._queue or self._cancelled, timeout=self._idle_exit) \
                        or self._cancelled:
                    self._thread = None
                    return
                data = self._queue.popleft()
            self._md5.update(data)            # releases the GIL for large buffers
            with self._cond:
                if not self._cancelled:
                    self._queued -= len(data)
                self._cond.notify_all()
