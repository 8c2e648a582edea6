"""The commit scheduler: when and in what order uploads of a key happen.

- ``commit(f)`` runs an OpenFile's upload under the lock of its key; a commit and a
  resume of one key never overlap, and once a commit succeeds every older pending upload
  of that key is superseded (its staging file to ``recovery/``, never resumed over the
  newer object).
- Uploads that failed stay pending: retried in the background every ``interval`` seconds
  (``retry_interval``), and at the next mount from the journal.  A pending upload of a
  path below the mount is a *file* (``add_pending_file``: an OpenFile that stays in the
  handle table, so lookups, reads and listings show the version its close accepted, and
  every later operation on the path acts on it); a bare record (``add_pending``) is only
  what cannot be a file (a key outside the mount's prefix).
- ``cancel(key)``: the key is deleted or taken by another object; its bare pending
  records never happen (record, multipart upload and staging file go).
- ``wait_idle`` lets unmount and SIGTERM wait for commits in progress.

Locks: a key lock (one per key with a commit or resume running or waiting; the map
entry is dropped when the last user leaves, so the map stays as small as the work in
progress) is taken before ``OpenFile.lock``.  ``_lock`` is a leaf guarding
``_key_locks``, ``_pending`` and ``_files``; ``_busy`` is a leaf counting commits in progress.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable

from .. import errors
from ..write import recovery

log = logging.getLogger(__name__)


class CommitScheduler:
    def __init__(self, client, uploader, journal, recovery_dir: str,
                 on_uploaded: Callable[[object, str], None]):
        self.client = client
        self.uploader = uploader
        self.journal = journal
        self.recovery_dir = recovery_dir
        self._on_uploaded = on_uploaded       # (journal Entry, etag) after a resumed upload
        self._lock = threading.Lock()
        self._key_locks: dict = {}            # key -> [Lock, users]
        self._pending: dict = {}              # journal id -> Entry waiting for a retry
        self._files: dict = {}                # id(OpenFile) -> OpenFile whose upload failed
        self.retry_file: Callable = None      # retry_file(f): FileOps.retry_file (raises if it failed again)
        self.before_put: Callable = None      # before_put(key): DeleteQueue.cancel (a pending delete of it)
        self._busy = threading.Condition()
        self._commits = 0
        self._stop = threading.Event()
        self._interval = 30.0

    # -- key locks ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def key_lock(self, key: str):
        with self._lock:
            slot = self._key_locks.get(key)
            if slot is None:
                slot = self._key_locks[key] = [threading.Lock(), 0]
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._lock:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._key_locks[key]

    def key_locks_held(self) -> int:
        with self._lock:
            return len(self._key_locks)

    # -- commits ---------------------------------------------------------------------------
    def commit(self, f):
        """Upload ``f`` (OpenFile.commit) under its key's lock.  Returns (etag, metadata), or
        None if there was nothing to upload; raises if the upload failed (the journal keeps it)."""
        with self._busy:
            self._commits += 1
        try:
            with self.key_lock(f.key):
                if self.before_put is not None and not f.unlinked and (f.dirty or f.meta_dirty):
                    self.before_put(f.key)       # a delete of the key queued before must not follow
                result = f.commit()
                if result is not None:
                    self._supersede(f.key)
        finally:
            with self._busy:
                self._commits -= 1
                self._busy.notify_all()
        return result

    def _supersede(self, key: str):
        with self._lock:
            stale = [e for e in self._pending.values() if e.key == key]
            for e in stale:
                del self._pending[e.id]
        for e in stale:
            recovery.supersede(self.client, self.journal, e, self.recovery_dir)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no commit is running (unmount, SIGTERM)."""
        with self._busy:
            return self._busy.wait_for(lambda: self._commits == 0, timeout)

    # -- pending uploads ---------------------------------------------------------------------
    def add_pending(self, entry):
        with self._lock:
            self._pending[entry.id] = entry

    def add_pending_file(self, f):
        with self._lock:
            self._files[id(f)] = f

    def drop_file(self, f):
        with self._lock:
            self._files.pop(id(f), None)

    def pending_files(self) -> list:
        with self._lock:
            return list(self._files.values())

    def take_records(self) -> list:
        """The bare pending records, handed over (to become files: ``adopt``)."""
        with self._lock:
            return list(self._pending.values())

    def adopt(self, entry, f):
        """Pending record ``entry`` is file ``f`` from now on."""
        with self._lock:
            self._pending.pop(entry.id, None)
            self._files[id(f)] = f

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._files)

    def cancel(self, key: str):
        """``key`` is deleted or taken by another object (the caller holds its lock): its
        bare pending records must never be resumed over that."""
        with self._lock:
            gone = [e for e in self._pending.values() if e.key == key]
            for e in gone:
                del self._pending[e.id]
        for e in gone:
            recovery.cancel(self.client, self.journal, e)

    def retry_pending(self) -> int:
        """Try every pending upload once; returns how many are still pending."""
        with self._lock:
            entries = list(self._pending.values())
        for entry in entries:
            if self._stop.is_set():
                break
            with self.key_lock(entry.key):
                with self._lock:
                    if entry.id not in self._pending:      # superseded by a later close meanwhile
                        continue
                try:
                    etag = recovery.resume(self.uploader, self.journal, entry)
                except errors.NeverCompletes:        # abandoned (recovery.abandon logged it)
                    with self._lock:
                        self._pending.pop(entry.id, None)
                    continue
                except Exception as exc:
                    log.error("resume of upload %r failed: %s; kept in the journal, next try in %.0f s",
                              entry.key, errors.describe(exc), self._interval)
                    log.debug("resume of %r: traceback", entry.key, exc_info=True)
                    continue
            with self._lock:
                self._pending.pop(entry.id, None)
            self._on_uploaded(entry, etag)
        for f in self.pending_files():
            if self._stop.is_set():
                break
            try:
                self.retry_file(f)
            except Exception as exc:
                log.error("upload of %r failed again: %s; kept in the journal, next try in %.0f s",
                          f.path, errors.describe(exc), self._interval)
                log.debug("upload of %r: traceback", f.path, exc_info=True)
                continue
            self.drop_file(f)
        return self.pending_count()

    def start(self, interval: float, first: Callable[[], None]):
        """Background thread: ``first()`` (crash leftovers), then retry pending uploads
        every ``interval`` seconds until ``stop``."""
        self._interval = interval
        def loop():
            # one failed pass (a bug, a full disk) is logged and the loop goes on: a dead
            # retry thread would leave every pending upload waiting for the next mount
            try:
                first()
            except Exception:
                log.exception("recovery of a crash's leftovers failed unexpectedly; retries go on")
            while not self._stop.is_set():
                try:
                    self.retry_pending()
                except Exception:
                    log.exception("retry of pending uploads failed unexpectedly; next try in %.0f s", interval)
                self._stop.wait(interval)
        threading.Thread(target=loop, name="resume", daemon=True).start()

    def stop(self):
        self._stop.set()
