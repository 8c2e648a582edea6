"""Deletes in writeback (``-o writeback``): unlink returns once the delete is durable on
local disk; the objects go in the background, up to 1,000 keys per DeleteObjects request.

Guarantees (docs/SEMANTICS.md "Writes", tests/mount/test_batched_deletes.py):
- Durable: ``add(key)`` writes one record per key in ``cache_dir/deletes`` (tmp file,
  fsync, rename, fsync of the directory) before unlink returns.  A record goes only once
  the server deleted the key (or refused it for good), so after a crash or a kill the next
  mount (or ``s3fuse resume``) loads them and deletes those keys.
- Seen at once: a key queued or in a request is ``hidden`` - lookups answer ENOENT and
  listings leave its name out, on this mount and on the next before its request ran.
- Ordered with new objects: whatever puts an object at a key (an upload, a copy, a
  symlink) first calls ``cancel(key)`` under the key's lock: a queued delete of it is
  dropped (record first), one in a request is waited for - a delete never lands after
  the new object.  (``cancel`` waits without any key lock of the queue's: the worker takes
  none, so it cannot deadlock.)
- Batched: queued keys go once no new one came for ``QUIET`` seconds, or the oldest
  waited ``MAX_WAIT``, or 1,000 are waiting, or a ``flush`` (sync, rmdir) asks.
- Errors: a request that fails as a whole, and keys the answer says failed transiently
  (InternalError, SlowDown...), are tried again after a growing delay (2 s doubling to
  5 min), logged, shown by ``s3fuse status``; a key refused for good (AccessDenied...) is
  logged, its record dropped, its name shows again (``on_refused``) and the next
  ``s3fuse sync`` / fsync of a directory fails naming it (``refused``).

Locks: ``_cond`` is a leaf guarding the maps; requests and record I/O run outside it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from typing import Callable, Optional

from .. import errors
from ..data.diskspace import write_file
from ..s3.objects import DELETE_BATCH
from ..write.journal import fsync_dir
from .writeback import FIRST_RETRY, LAST_RETRY

log = logging.getLogger(__name__)

QUIET = 0.2         # a request goes once no unlink came for this long (the end of an rm -rf) ...
MAX_WAIT = 2.0      # ... or once its oldest key waited this long (a long rm -rf: a request per 2 s)


class DeleteQueue:
    def __init__(self, client, directory: str, on_refused: Optional[Callable[[list], None]] = None):
        self.client = client
        self.dir = directory
        self.on_refused = on_refused      # on_refused(keys): their deletes were refused for good
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._cond = threading.Condition()
        self._queued: dict = {}           # key -> monotonic time it may be sent from
        self._sending: set = set()        # keys in the request on its way
        self._failures: dict = {}         # key -> (attempts, last error, next try wall time)
        self._rush = 0                    # flushes waiting: send what is ready at once
        self._last_add = 0.0              # monotonic time of the last ``add``
        self._stop = False
        self._thread = None
        self.deleted = 0
        self.requests = 0
        self.refused: list = []           # keys whose delete was refused for good
        for key in self._load():
            self._queued[key] = 0.0

    # -- records -----------------------------------------------------------------------------
    def _record(self, key: str) -> str:
        name = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self.dir, name + ".json")

    def _load(self) -> list:
        keys = []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):          # its unlink never returned
                os.unlink(path)
                continue
            try:
                with open(path) as f:
                    keys.append(json.load(f)["key"])
            except (OSError, ValueError, KeyError, TypeError):
                log.error("deletes: unreadable record %s dropped", path)
                os.unlink(path)
        if keys:
            log.warning("deletes: %d delete(s) of an earlier mount still to send", len(keys))
        return keys

    def _remove(self, keys):
        for key in keys:
            try:
                os.unlink(self._record(key))
            except FileNotFoundError:
                pass
        if keys:
            fsync_dir(self.dir)

    # -- the unlink path --------------------------------------------------------------------
    def add(self, key: str):
        """Queue the delete of ``key`` (the caller holds its key lock); durable on return."""
        with self._cond:
            self._cond.wait_for(lambda: key not in self._sending)
        path = self._record(key)
        write_file(path + ".tmp", json.dumps({"key": key, "time": time.time()}).encode(), fsync=True)
        os.replace(path + ".tmp", path)
        fsync_dir(self.dir)
        with self._cond:
            self._last_add = time.monotonic()
            self._queued.setdefault(key, self._last_add)
            if len(self._queued) == 1 or len(self._queued) >= DELETE_BATCH:
                self._cond.notify_all()

    def cancel(self, key: str) -> bool:
        """An object is about to be put at ``key`` (the caller holds its key lock): its
        delete must not happen after that.  True if a queued delete was dropped."""
        with self._cond:
            self._cond.wait_for(lambda: key not in self._sending)
            if key not in self._queued:
                return False
            del self._queued[key]
            self._failures.pop(key, None)
            self._cond.notify_all()
        self._remove([key])
        return True

    def hidden(self, key: str) -> bool:
        with self._cond:
            return key in self._queued or key in self._sending

    def names_below(self, prefix: str) -> set:
        """Names directly below ``prefix`` (a directory's key prefix) whose delete is pending."""
        n = len(prefix)
        with self._cond:
            return {k[n:] for k in (*self._queued, *self._sending) if k.startswith(prefix) and "/" not in k[n:]}

    def pending_below(self, prefix: str) -> bool:
        with self._cond:
            return any(k.startswith(prefix) for k in (*self._queued, *self._sending))

    def flush(self, prefix: str = "", timeout: Optional[float] = None) -> bool:
        """Send the deletes of keys below ``prefix`` now (retries of failed ones too) and
        wait until none is left (sent, or refused for good).  False on timeout (or
        after ``close``)."""
        self.start()
        with self._cond:
            now = time.monotonic()
            for k in self._queued:
                if k.startswith(prefix):
                    self._queued[k] = min(self._queued[k], now)
            self._rush += 1
            self._cond.notify_all()
            try:
                def left():
                    return any(k.startswith(prefix) for k in (*self._queued, *self._sending))
                self._cond.wait_for(lambda: self._stop or not left(), timeout)
                return not left()
            finally:
                self._rush -= 1

    # -- the worker --------------------------------------------------------------------------
    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="deletes", daemon=True)
            self._thread.start()

    def close(self):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def _take(self) -> Optional[list]:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                ready = [(t, k) for k, t in self._queued.items() if t <= now]
                wait = None
                if ready:
                    due = min(min(ready)[0] + MAX_WAIT, self._last_add + QUIET)
                    if len(ready) >= DELETE_BATCH or self._rush or now >= due:
                        batch = [k for _, k in sorted(ready)[:DELETE_BATCH]]
                        for k in batch:
                            del self._queued[k]
                            self._sending.add(k)
                        return batch
                    wait = due - now
                elif self._queued:
                    wait = min(self._queued.values()) - now
                self._cond.wait(wait)
            return None

    def _work(self):
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._send(batch)
            except Exception:          # the worker must outlive it: flushes wait on it
                log.exception("deletes: bookkeeping of a DeleteObjects request failed unexpectedly")
                with self._cond:
                    for k in batch:
                        if k in self._sending:
                            self._sending.discard(k)
                            self._queued[k] = time.monotonic() + LAST_RETRY
                    self._cond.notify_all()

    def _send(self, batch: list):
        try:
            failed = self.client.delete_batch(batch)
            whole = None
        except Exception as exc:
            failed, whole = {k: exc for k in batch}, exc
        retry = {k: e for k, e in failed.items() if whole is not None or isinstance(e, errors.Transient)}
        refused = {k: e for k, e in failed.items() if k not in retry}
        done = [k for k in batch if k not in failed]
        # records go before the keys leave ``_sending``: until then no object can be put
        # at them (``cancel`` waits), so a record left by a crash never deletes a new object
        self._remove(done + list(refused))
        delays = {}
        with self._cond:
            self.requests += 1
            self.deleted += len(done)
            for k in done:
                self._failures.pop(k, None)
            for k, e in retry.items():
                attempts = self._failures.get(k, (0,))[0] + 1
                delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (attempts - 1))
                self._failures[k] = (attempts, errors.describe(e), time.time() + delay)
                self._queued[k] = time.monotonic() + delay
                delays[k] = (attempts, delay)
            for k in refused:
                self._failures.pop(k, None)
                self.refused.append(k)
            self._sending.difference_update(batch)
            self._cond.notify_all()
        if whole is not None:
            attempts, delay = delays[batch[0]]
            log.error("deletes: DeleteObjects of %d key(s) failed (attempt %d: %s); kept, next try in %.0f s",
                      len(batch), attempts, errors.describe(whole), delay)
        else:
            for k, e in list(retry.items())[:10]:
                log.error("deletes: delete of %r failed (attempt %d: %s); kept, next try in %.0f s",
                          k, *delays[k][:1], errors.describe(e), delays[k][1])
            if len(retry) > 10:
                log.error("deletes: %d more key(s) of that request failed the same way; kept", len(retry) - 10)
        for k, e in refused.items():
            log.error("deletes: delete of %r refused for good: %s; the object stays in the bucket", k,
                      errors.describe(e))
        if refused and self.on_refused is not None:
            self.on_refused(list(refused))

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._cond:
            failing = [{"key": k, "attempts": n, "error": err, "next_try": nxt}
                       for k, (n, err, nxt) in list(self._failures.items())[:20]]
            return {"pending": len(self._queued) + len(self._sending), "sending": len(self._sending),
                    "deleted": self.deleted, "requests": self.requests, "failing": failing,
                    "failing_count": len(self._failures), "refused": self.refused[-20:]}
