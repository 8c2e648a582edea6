"""Writeback (``-o writeback``): close() returns once the file is durable on local disk
(staging file and journal record fsynced, ``OpenFile.seal``); the upload runs here, in
the background, many files at once.

Guarantees (docs/SEMANTICS.md, tests/mount/test_writeback.py):
- Nothing is lost: a sealed file is either uploaded or resumed from the journal at the
  next mount or ``s3fuse resume``; an upload that fails is tried again after a growing
  delay (2 s doubling to 5 min), reported in ``s3fuse status`` and the log, never dropped.
- This mount sees pending files at once: each stays in the handle table (attributes,
  reads, listings come from it) until its upload is done; after a crash the next mount
  too (pending.py adopts the journal's records as files and queues them here).
- Order per key: an upload runs under its key's lock (commits.py), holding the file's
  lock, so a later write, rename or unlink of that file waits for it or finds it not
  started; a delete of the key takes the same key lock.  A file changed again after its
  close is re-sealed by its next close and uploaded once with the newest content.
- Bounded: at most ``max_files`` files and ``max_bytes`` bytes wait (staging disk);
  beyond that close() waits (backpressure).  ``wait_for`` (fsync) and ``drain``
  (unmount, SIGTERM, ``fsync`` of a directory) wait for uploads.

Locks: ``_cond`` is a leaf (queue bookkeeping only); uploads run outside it.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

FIRST_RETRY, LAST_RETRY = 2.0, 300.0


class Writeback:
    def __init__(self, upload: Callable, finished: Callable, threads: int = 16,
                 max_files: int = 4096, max_bytes: int = 1 << 30):
        self._upload = upload            # upload(f): raises if it failed (the file stays sealed)
        self._finished = finished        # finished(f): after its last queued upload succeeded
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._due: list = []              # heap of (due time, sequence, file): waiting, not running
        self._queued: dict = {}           # id(file) -> (file, bytes counted): waiting or running
        self._running: set = set()        # id(file)
        self._again: set = set()          # id(file): closed again while its upload ran
        self._bytes = 0
        self._seq = 0
        self._failures: dict = {}         # id(file) -> (attempts, last error, next try, path)
        self._stop = False
        self.uploaded = 0
        self.abandoned: list = []         # paths whose upload failed for good (bytes in recovery/)
        self._busy_since = None           # when the queue last became non-empty (rate, ETA)
        self._done_bytes = 0              # bytes uploaded since then
        self._threads = [threading.Thread(target=self._work, name=f"writeback-{n}", daemon=True)
                         for n in range(threads)]
        for t in self._threads:
            t.start()

    # -- the close path --------------------------------------------------------------------
    def submit(self, f):
        """Queue the upload of sealed file ``f`` (once, however often it is closed).  Waits
        while the queue is full; with nothing else queued a file is always accepted."""
        with self._cond:
            if id(f) in self._queued:
                if id(f) in self._running:
                    self._again.add(id(f))       # that upload may predate this close
                return
            self._cond.wait_for(lambda: self._stop or not self._queued or
                                (len(self._queued) < self.max_files and self._bytes + f.size <= self.max_bytes))
            if not self._queued:
                self._busy_since, self._done_bytes = time.monotonic(), 0
            self._queued[id(f)] = (f, f.size)
            self._bytes += f.size
            self._schedule(f, time.monotonic())

    def _schedule(self, f, due: float):
        self._seq += 1
        heapq.heappush(self._due, (due, self._seq, f))
        self._cond.notify_all()

    def wait_for(self, f, timeout: Optional[float] = None) -> bool:
        """Wait until ``f`` has no upload queued or running (fsync)."""
        with self._cond:
            return self._cond.wait_for(lambda: id(f) not in self._queued, timeout)

    def drain(self, timeout: float, report: Callable[[str], None] = log.warning) -> bool:
        """Wait for every queued upload (unmount), reporting progress every 5 s."""
        deadline = time.monotonic() + timeout
        reported = 0.0
        with self._cond:
            while self._queued:
                now = time.monotonic()
                if now >= deadline:
                    return False
                if now - reported >= 5.0:
                    report(f"writeback: waiting for {len(self._queued)} upload(s), "
                           f"{self._bytes / (1 << 20):.1f} MiB")
                    reported = now
                self._cond.wait(min(5.0, deadline - now))
        return True

    def close(self):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(5)

    # -- workers ---------------------------------------------------------------------------
    def _next(self):
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                if self._due and self._due[0][0] <= now:
                    f = heapq.heappop(self._due)[2]
                    self._running.add(id(f))
                    return f
                wait = self._due[0][0] - now if self._due else None
                self._cond.wait(wait)
            return None

    def _work(self):
        while True:
            f = self._next()
            if f is None:
                return
            abandoned = False
            try:
                self._upload(f)
            except Exception as exc:
                if getattr(f, "failed", None) is None:
                    self._failed(f, exc)
                    continue
                # failed for good (an edit whose old version is gone: the upload was
                # abandoned, its bytes kept in recovery/): nothing left to try
                log.error("writeback: upload of %s abandoned: %s", f.path, exc)
                abandoned = True
            with self._cond:
                self._running.discard(id(f))
                self._failures.pop(id(f), None)
                self.uploaded += not abandoned
                if abandoned:
                    self.abandoned.append(f.path)
                done = id(f) not in self._again
                if done:
                    counted = self._queued.pop(id(f))[1]
                    self._bytes -= counted
                    self._done_bytes += counted
                else:
                    self._again.discard(id(f))
                    self._schedule(f, time.monotonic())
                self._cond.notify_all()
            if done:
                try:
                    self._finished(f)
                except Exception:        # the worker must outlive it: the queue waits on it
                    log.exception("writeback: bookkeeping after the upload of %s failed unexpectedly", f.path)

    def _failed(self, f, exc: BaseException):
        with self._cond:
            attempts = self._failures.get(id(f), (0,))[0] + 1
            delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (attempts - 1))
            self._failures[id(f)] = (attempts, str(exc), time.time() + delay, f.path)
            self._running.discard(id(f))
            self._again.discard(id(f))
            self._schedule(f, time.monotonic() + delay)
        log.error("writeback: upload of %s failed (attempt %d: %s); kept, next try in %.0f s",
                  f.path, attempts, exc, delay)

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._cond:
            failing = [{"path": path, "attempts": n, "error": err, "next_try": nxt}
                       for n, err, nxt, path in self._failures.values()]
            rate = None
            if self._queued and self._busy_since is not None and self._done_bytes:
                rate = self._done_bytes / max(1e-6, time.monotonic() - self._busy_since)
            return {"pending_files": len(self._queued), "pending_bytes": self._bytes,
                    "uploading": len(self._running), "uploaded": self.uploaded, "failing": failing,
                    "rate": rate, "eta": self._bytes / rate if rate else None,
                    "max_files": self.max_files, "max_bytes": self.max_bytes}
