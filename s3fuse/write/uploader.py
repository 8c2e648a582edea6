"""Uploads of staging files: one PutObject for small files, parallel multipart for large
ones, and resume of interrupted multipart uploads from the journal.

Every body is checked by the server: by its Content-MD5, or over plain http, where its
SHA-256 is signed, by that alone (``signs_bodies``: parts skip an MD5 pass).  ETags are never
taken for MD5s (with SSE-KMS or SSE-C on AWS no ETag is one): each part's ETag is
recorded as the server answered it and CompleteMultipartUpload sends those; resume keeps
a part the server lists with the recorded ETag.  The whole-object MD5 goes in the
metadata (``x-amz-meta-s3fuse-md5``).  Transient failures
are retried by the client's retry layer (``retries`` attempts, growing delays, bounded
by ``retries x request_timeout``); the uploader does not retry requests itself.  On
final failure the journal record stays, so nothing accepted by close() is lost: the
mount retries it later, and the next mount or ``s3fuse resume`` finishes it.

Locks: ``_lock`` is a leaf guarding bookkeeping only (entry.parts, progress, counters).
``_save_lock`` serialises the journal writes (fsyncs) of multipart records outside it,
in the order of the changes they record (``save_record``).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Optional

import cachetools

from .. import errors, metrics
from ..data.memory import MemoryBudget
from ..meta.attrs import MD5_HEADER
from ..s3.objects import MAX_PART, md5_header
from .inplace import InPlaceEdits
from .journal import CLOSED, Entry, Journal, part_etag, part_md5, part_record
from .parts import PartPlan

log = logging.getLogger(__name__)


MiB = 1 << 20
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
                 threshold: Optional[int] = None, copy_part_size: int = 64 << 20, budget=None):
        self.client = client
        # a part (or a single PUT's body) is in memory while sent: it holds budget meanwhile
        self.budget = budget if budget is not None else MemoryBudget(1 << 62)
        self.journal = journal
        self.part_size = part_size
        self.copy_part_size = copy_part_size     # largest part an edit in place copies on the server
        self.threshold = threshold or part_size
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload")
        self._lock = threading.Lock()
        self.lock = self._lock          # for OpenFile: entry.parts changes under it
        self.progress: dict = {}        # entry id -> Progress
        self.parts_sent = 0
        self.parts_reused = 0
        self.parts_copied = 0
        self.bytes_copied = 0
        self.edits = InPlaceEdits(self)     # uploads of edits in place (inplace.py)
        self._save_lock = threading.Lock()
        self._changes = itertools.count(1)
        self._saved = cachetools.LRUCache(4096)     # entry id -> number of the change on disk

    def save_record(self, entry: Entry, change: Optional[Callable[[Entry], None]] = None,
                    progress_only: bool = False):
        """Apply ``change(entry)`` (under the bookkeeping lock) and write the record,
        durably.  Part threads and close() save one entry concurrently: each record on
        disk holds a later change than the one before, never an older snapshot.
        ``progress_only``: the change only records progress (a finished part), which the
        next record carries too: a full disk does not fail it (logged)."""
        with self._lock:
            if change is not None:
                change(entry)
            number, data = next(self._changes), self.journal.encode(entry)
        with self._save_lock:
            if number > self._saved.get(entry.id, 0):
                try:
                    self.journal.write(entry.id, data)
                except OSError as exc:
                    if not (progress_only and errors.is_no_space(exc)):
                        raise
                    # the record on disk lacks this part: a resume asks the server (ListParts)
                    log.warning("%r: the cache disk is full; a finished part is recorded with the next "
                                "record (%s)", entry.key, exc)
                    return
                self._saved[entry.id] = number

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
        with self.budget.hold(end - start):
            return self._send_part(entry, number, start, end)

    def _send_part(self, entry: Entry, number: int, start: int, end: int) -> str:
        data = read_range(entry.staging, start, end)
        if len(data) != end - start:
            raise errors.WriteFailed(f"staging file {entry.staging} is short")
        # Content-MD5 makes the server refuse damaged bytes, unless the signature already
        # covers them (plain http: their SHA-256 is signed and checked); the ETag it
        # answers may be anything (SSE-KMS, SSE-C): it is what CompleteMultipartUpload
        # must name.
        digest = None if self.client.signs_bodies else hashlib.md5(data)
        etag = self.client.upload_part(entry.key, entry.upload_id, number, data,
                                       md5_header(digest) if digest else None)
        if not etag:
            raise errors.BackendError(f"part {number} of {entry.key!r}: the server answered no ETag")

        def record(e):
            e.parts[str(number)] = part_record(digest.hexdigest() if digest else "", etag)
            self.parts_sent += 1
            progress = self.progress.get(e.id)
            if progress:
                progress.done += end - start
        self.save_record(entry, record, progress_only=True)
        return etag

    def begin_multipart(self, entry: Entry):
        # The record says an upload is being created before the request goes out: a crash
        # (or a lost answer) between the server creating it and the id reaching the record
        # would otherwise leave an upload no record knows, costing money until aborted by
        # hand.  Recovery looks such uploads up by key and time (abort_unrecorded); the
        # client itself aborts those its own failed attempts left (create_multipart).
        self.save_record(entry, lambda e: setattr(e, "creating", time.time()))
        upload_id = self.client.create_multipart(entry.key, entry.metadata, entry.headers)

        def created(e):
            e.upload_id = upload_id
            e.part_size = e.part_size or self.part_size
            e.uploaded_metadata = dict(e.metadata)
            e.creating = 0.0
        self.save_record(entry, created)

    def window(self, entry: Entry) -> tuple:
        """The span of server time an upload of ``entry`` took, up to now: from its record's
        creation (a multipart upload's LastModified may be its start) to now."""
        now = self.client.server_now()
        return now - max(0.0, time.time() - entry.created), now

    # -- a whole file -----------------------------------------------------------------------
    def upload(self, entry: Entry, verify_server_parts: bool = False) -> str:
        """Upload (or finish) a CLOSED entry.  Returns the new ETag.  The journal record is
        removed only after success; on failure it stays for a later resume."""
        assert entry.state == CLOSED
        started = time.monotonic()
        with self._lock:
            self.progress[entry.id] = Progress(entry.key, entry.size)
        try:
            if entry.plan:
                etag, parts, earlier, sent = self.edits.edit(entry, verify_server_parts)
            elif entry.upload_id is None and entry.size < self.threshold:
                etag = self._put_single(entry)
                parts, earlier, sent = 1, 0, entry.size
            else:
                etag, parts, earlier, sent = self._multipart(entry, verify_server_parts)
        except BaseException:
            metrics.UPLOADS.inc("failed")
            raise
        finally:
            with self._lock:
                self.progress.pop(entry.id, None)
        metrics.UPLOADS.inc("ok")
        metrics.UPLOADED_BYTES.inc(n=entry.size)
        seconds = time.monotonic() - started
        copied = sum(e - s for _, s, e, copy in entry.plan or () if copy)
        log.info("upload of %r done: %d bytes (%.1f MiB) in %d part%s, %.2f s, %.1f MiB/s%s%s", entry.key, entry.size,
                 entry.size / MiB, parts, "" if parts == 1 else "s", seconds, sent / MiB / max(seconds, 1e-6),
                 f" ({earlier} part{'' if earlier == 1 else 's'} sent before: streamed while written, or "
                 f"kept from an earlier attempt)" if earlier else "",
                 f"; edit in place: {sent / MiB:.1f} MiB sent, {copied / MiB:.1f} MiB copied on the server"
                 if entry.plan else "")
        return etag

    def _put_single(self, entry: Entry) -> str:
        with self.budget.hold(entry.size):
            return self._put_single_held(entry)

    def _put_single_held(self, entry: Entry) -> str:
        data = read_range(entry.staging, 0, entry.size)
        if len(data) != entry.size:
            raise errors.WriteFailed(f"staging file {entry.staging} is short")
        digest = hashlib.md5(data)
        metadata = dict(entry.metadata, **{MD5_HEADER: digest.hexdigest()})
        etag = self.client.put(entry.key, data, metadata, md5_header(digest), entry.headers)
        entry.metadata = metadata
        with self._lock:
            self.progress[entry.id].done = entry.size
        return etag

    def _multipart(self, entry: Entry, verify_server_parts: bool) -> tuple:
        """(ETag, parts in all, parts sent before this call, bytes sent by this call)."""
        plan = PartPlan.for_base(entry.part_size or self.part_size)
        entry.part_size = plan.base
        try:
            wanted = plan.parts(entry.size)
        except ValueError as exc:
            raise errors.TooLarge(str(exc)) from None
        if entry.upload_id is None:
            if entry.released:
                raise errors.UploadLost(f"{entry.key!r}: its released parts are in no upload")
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
        todo = [(n, start, end) for n, start, end in wanted if n not in done]
        futures = [self.pool.submit(self.send_part, entry, n, start, end) for n, start, end in todo]
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
        parts = [(n, part_etag(entry.parts[str(n)])) for n, _, _ in wanted]
        etag = self.client.complete_multipart(entry.key, entry.upload_id, parts)
        if not entry.md5 and not entry.released:     # released bytes are not here to hash
            entry.md5 = file_md5(entry.staging, entry.size)
        final = dict(entry.metadata, **({MD5_HEADER: entry.md5} if entry.md5 else {}))
        if entry.uploaded_metadata is not None and final != entry.uploaded_metadata:
            # Metadata changed after the upload began (streamed file, chmod while open):
            # one metadata-only copy sets the final headers.
            if entry.size <= MAX_PART:
                try:
                    etag = self.client.copy(entry.key, entry.key, final, entry.headers)
                except errors.NotSupported:
                    # RGW 16 cannot copy an encrypted object (NotImplemented): the data is
                    # complete with the metadata given at its start.
                    log.warning("%r: the server cannot copy it; metadata set at upload start kept", entry.key)
                    final = entry.uploaded_metadata
            else:
                log.warning("%r: over 5 GiB, metadata set at upload start kept (no MD5 header)", entry.key)
                final = entry.uploaded_metadata
        entry.metadata = final
        return etag, len(wanted), len(wanted) - len(todo), sum(end - start for _, start, end in todo)

    def _reconcile_with_server(self, entry: Entry, wanted: list):
        """Resume: keep the parts the server lists with the ETag recorded when they were
        sent.  A part sent but not recorded (crash in between) is kept only if its ETag
        is the MD5 of the local bytes - where ETags are MD5s; elsewhere it is sent again."""
        try:
            server = {p.number: p.etag for p in self.client.list_parts(entry.key, entry.upload_id)}
        except errors.UploadGone:
            if entry.released:
                raise errors.UploadLost(f"{entry.key!r}: upload {entry.upload_id} is gone from the server with "
                                        f"the parts released from the staging file") from None
            log.warning("upload of %r is gone from the server; starting it again", entry.key)
            entry.upload_id, entry.parts = None, {}
            entry.metadata = dict(entry.metadata, **{MD5_HEADER: entry.md5 or file_md5(entry.staging, entry.size)})
            self.begin_multipart(entry)
            return
        kept = {}
        for n, start, end in wanted:
            etag = server.get(n)
            recorded = entry.parts.get(str(n))
            if any(lo < end and start < hi for lo, hi in entry.released) and \
                    (etag is None or recorded is None or part_etag(recorded) != etag):
                self.client.abort_multipart(entry.key, entry.upload_id)
                raise errors.UploadLost(f"{entry.key!r}: the server no longer has part {n} of upload "
                                        f"{entry.upload_id}, released from the staging file")
            if etag is None:
                continue
            if recorded is not None and part_etag(recorded) == etag:
                kept[str(n)] = part_record(part_md5(recorded), etag)
                continue
            local = hashlib.md5(read_range(entry.staging, start, end)).hexdigest()
            if local == etag:
                kept[str(n)] = part_record(local, etag)
        def keep(e):
            self.parts_reused += len(kept)
            e.parts = kept
        self.save_record(entry, keep)
        log.warning("resuming upload of %r: %d of %d parts already on the server",
                    entry.key, len(kept), len(wanted))
