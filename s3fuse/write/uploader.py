"""Uploads of staging files: one PutObject for small files, parallel multipart for large
ones, and resume of interrupted multipart uploads from the journal.

Every request carries Content-MD5.  The whole-object MD5 goes in the metadata
(``x-amz-meta-s3fuse-md5``) because a multipart ETag is not an MD5.  Transient failures
(connection errors, timeouts, 5xx, SlowDown) are retried by botocore (``retries``
attempts, ``request_timeout`` each) and then once more per part by ``retry`` after a
pause, so a dead server turns into EIO at close within ~2 x retries x request_timeout.  On final failure the journal record stays,
so nothing accepted by close() is lost: the next mount or ``s3fuse resume`` finishes it.

Lock order: Uploader._lock is a leaf (journal/progress bookkeeping only).
"""
from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Optional

from .. import errors
from ..meta.attrs import MD5_HEADER
from .journal import CLOSED, Entry, Journal
from .parts import PartPlan

log = logging.getLogger(__name__)

MAX_COPY = 5 << 30
TRANSIENT = (errors.Unreachable, errors.BackendError)
PERMANENT = (errors.AccessDenied, errors.NotFound, errors.UploadGone, errors.NoSuchBucket)


def retry(fn, what: str, delays=(2.0,)):
    """Call ``fn``; on a transient error wait and try again, at most len(delays) times."""
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except PERMANENT:
            raise
        except TRANSIENT as exc:
            if attempt == len(delays):
                raise
            log.warning("%s failed (%s); retrying in %.0fs", what, exc, delays[attempt])
            time.sleep(delays[attempt])


CLOCK_SLACK = 300.0     # seconds of clock difference allowed between us and the server


def abort_unrecorded(client, entry, keep: Optional[str] = None) -> int:
    """``entry`` crashed while its CreateMultipartUpload was out (``creating`` set, no
    upload id recorded), or an attempt failed before the one that gave ``keep``: abort
    the uploads of its key the server started around then, except ``keep``.  Returns
    how many were aborted.  Raises if the server cannot be asked (the record then stays
    for the next attempt)."""
    if (entry.upload_id and keep is None) or not entry.creating:
        return 0
    aborted = 0
    for key, upload_id, initiated in client.list_uploads(entry.key):
        if key == entry.key and upload_id != keep and abs(initiated - entry.creating) <= CLOCK_SLACK:
            client.abort_multipart(key, upload_id)
            log.warning("aborted upload %s of %r: created just before a crash, never recorded", upload_id, key)
            aborted += 1
    entry.creating = 0.0
    return aborted


def read_range(path: str, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), end - start, start)


def file_md5(path: str, size: int) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        remaining = size
        while remaining > 0:
            chunk = f.read(min(remaining, 4 << 20))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


class Progress:
    __slots__ = ("key", "total", "done", "started")

    def __init__(self, key: str, total: int):
        self.key, self.total, self.done, self.started = key, total, 0, time.monotonic()

    def as_dict(self) -> dict:
        elapsed = max(1e-6, time.monotonic() - self.started)
        return {"key": self.key, "bytes_total": self.total, "bytes_done": self.done,
                "rate": self.done / elapsed, "elapsed": elapsed}


class Uploader:
    def __init__(self, client, journal: Journal, threads: int = 8, part_size: int = 8 << 20,
                 threshold: Optional[int] = None, retry_delays=(2.0,)):
        self.client = client
        self.journal = journal
        self.part_size = part_size
        self.threshold = threshold or part_size
        self.retry_delays = retry_delays
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload")
        self._lock = threading.Lock()
        self.lock = self._lock          # for OpenFile: entry.parts changes under it
        self.progress: dict = {}        # entry id -> Progress
        self.parts_sent = 0
        self.parts_reused = 0

    def close(self):
        self.pool.shutdown(wait=True)

    def track(self, entry_id: str, key: str, total: int) -> "Progress":
        """Progress of an upload that is still being written (streamed parts)."""
        with self._lock:
            progress = self.progress[entry_id] = Progress(key, total)
            return progress

    def untrack(self, entry_id: str):
        with self._lock:
            self.progress.pop(entry_id, None)

    def live(self) -> list:
        with self._lock:
            return [p.as_dict() for p in self.progress.values()]

    # -- one part -------------------------------------------------------------------------
    def send_part(self, entry: Entry, number: int, start: int, end: int) -> str:
        """Upload part ``number`` = bytes [start, end) of the staging file; record it."""
        data = read_range(entry.staging, start, end)
        if len(data) != end - start:
            raise errors.FsError(f"staging file {entry.staging} is short", errno.EIO)
        digest = hashlib.md5(data)
        md5_b64 = base64.b64encode(digest.digest()).decode()
        etag = retry(lambda: self.client.upload_part(entry.key, entry.upload_id, number, data, md5_b64),
                     f"part {number} of {entry.key!r}", self.retry_delays)
        if etag and etag != digest.hexdigest():
            raise errors.BackendError(f"part {number} of {entry.key!r}: server ETag {etag} != MD5")
        with self._lock:
            entry.parts[str(number)] = digest.hexdigest()
            self.parts_sent += 1
            progress = self.progress.get(entry.id)
            if progress:
                progress.done += end - start
            self.journal.save(entry)
        return etag

    def begin_multipart(self, entry: Entry):
        # The record says an upload is being created before the request goes out: a crash
        # (or a lost answer) between the server creating it and the id reaching the record
        # would otherwise leave an upload no record knows, costing money until aborted by
        # hand.  Recovery looks such uploads up by key and time (abort_unrecorded).
        entry.creating = time.time()
        self.journal.save(entry)
        attempts = []

        def create():
            attempts.append(1)
            return self.client.create_multipart(entry.key, entry.metadata, entry.content_type)
        entry.upload_id = retry(create, f"create upload of {entry.key!r}", self.retry_delays)
        entry.part_size = entry.part_size or self.part_size
        entry.uploaded_metadata = dict(entry.metadata)
        if len(attempts) > 1:       # a failed attempt may have created an upload after all
            self.journal.save(entry)
            try:
                abort_unrecorded(self.client, entry, keep=entry.upload_id)
            except Exception:
                log.warning("could not look for uploads of %r left by a failed attempt", entry.key, exc_info=True)
        entry.creating = 0.0
        self.journal.save(entry)

    # -- a whole file -----------------------------------------------------------------------
    def upload(self, entry: Entry, verify_server_parts: bool = False) -> str:
        """Upload (or finish) a CLOSED entry.  Returns the new ETag.  The journal record is
        removed only after success; on failure it stays for a later resume."""
        assert entry.state == CLOSED
        with self._lock:
            self.progress[entry.id] = Progress(entry.key, entry.size)
        try:
            if entry.upload_id is None and entry.size < self.threshold:
                etag = self._put_single(entry)
            else:
                etag = self._multipart(entry, verify_server_parts)
        finally:
            with self._lock:
                self.progress.pop(entry.id, None)
        return etag

    def _put_single(self, entry: Entry) -> str:
        data = read_range(entry.staging, 0, entry.size)
        if len(data) != entry.size:
            raise errors.FsError(f"staging file {entry.staging} is short", errno.EIO)
        digest = hashlib.md5(data)
        metadata = dict(entry.metadata, **{MD5_HEADER: digest.hexdigest()})
        md5_b64 = base64.b64encode(digest.digest()).decode()
        etag = retry(lambda: self.client.put(entry.key, data, metadata, md5_b64, entry.content_type),
                     f"put {entry.key!r}", self.retry_delays)
        entry.metadata = metadata
        with self._lock:
            self.progress[entry.id].done = entry.size
        return etag

    def _multipart(self, entry: Entry, verify_server_parts: bool) -> str:
        plan = PartPlan.for_base(entry.part_size or self.part_size)
        entry.part_size = plan.base
        try:
            wanted = plan.parts(entry.size)
        except ValueError as exc:
            raise errors.FsError(str(exc), errno.EFBIG) from None
        if entry.upload_id is None:
            if not entry.md5:
                entry.md5 = file_md5(entry.staging, entry.size)
            entry.metadata = dict(entry.metadata, **{MD5_HEADER: entry.md5})
            self.begin_multipart(entry)
        elif verify_server_parts:
            self._reconcile_with_server(entry, wanted)
        done = {int(n) for n in entry.parts}
        with self._lock:
            progress = self.progress[entry.id]
            progress.done = sum(end - start for n, start, end in wanted if n in done)
        futures = [self.pool.submit(self.send_part, entry, n, start, end)
                   for n, start, end in wanted if n not in done]
        try:
            for f in futures:
                f.result()
        except BaseException:
            # One part failed for good: cancel the parts not started (they would only retry
            # against a failing server and hold up other uploads in the shared pool) and let
            # the running ones end before the record is handed back to the caller.
            for f in futures:
                f.cancel()
            wait(futures)
            raise
        parts = [(n, entry.parts[str(n)]) for n, _, _ in wanted]
        etag = retry(lambda: self.client.complete_multipart(entry.key, entry.upload_id, parts),
                     f"complete {entry.key!r}", self.retry_delays)
        if not entry.md5:
            entry.md5 = file_md5(entry.staging, entry.size)
        final = dict(entry.metadata, **{MD5_HEADER: entry.md5})
        if entry.uploaded_metadata is not None and final != entry.uploaded_metadata:
            # Metadata changed after the upload began (streamed file, chmod while open):
            # one metadata-only copy sets the final headers.
            if entry.size <= MAX_COPY:
                etag = retry(lambda: self.client.copy(entry.key, entry.key, final, entry.content_type),
                             f"set metadata of {entry.key!r}", self.retry_delays)
            else:
                log.warning("%r: over 5 GiB, metadata set at upload start kept (no MD5 header)", entry.key)
                final = entry.uploaded_metadata
        entry.metadata = final
        return etag

    def _reconcile_with_server(self, entry: Entry, wanted: list):
        """Resume: keep only parts the server holds with an ETag equal to the local MD5."""
        try:
            server = {p.number: p.etag for p in self.client.list_parts(entry.key, entry.upload_id)}
        except errors.UploadGone:
            log.warning("upload of %r is gone from the server; starting it again", entry.key)
            entry.upload_id, entry.parts = None, {}
            entry.metadata = dict(entry.metadata, **{MD5_HEADER: entry.md5 or file_md5(entry.staging, entry.size)})
            self.begin_multipart(entry)
            return
        kept = {}
        for n, start, end in wanted:
            etag = server.get(n)
            if etag is None:
                continue
            local = entry.parts.get(str(n))
            if local is None or local != etag:
                local = hashlib.md5(read_range(entry.staging, start, end)).hexdigest()
            if local == etag:
                kept[str(n)] = local
        with self._lock:
            self.parts_reused += len(kept)
            entry.parts = kept
            self.journal.save(entry)
        log.warning("resuming upload of %r: %d of %d parts already on the server",
                    entry.key, len(kept), len(wanted))
