"""One path open for writing: its staging file, its attributes and its upload.

Invariants
- The staging file (cache_dir/staging, 0600) holds the file's bytes wherever ``present``
  says so (what was written); the other bytes are the original object's, read through
  the block cache and staged only for an upload that sends them (``sparse.py``: an
  edit in place copies untouched parts on the server).  ``size`` is the logical size.
- ``commit()`` (flush/fsync) makes the bucket hold exactly the staged content, or raises
  and leaves a CLOSED journal record so the upload is finished later: nothing accepted
  is dropped.  A failed write (ENOSPC...) poisons the file: it is never uploaded
  truncated; commit raises instead.
- A file made from a CLOSED journal record of an earlier mount (``record``: its upload
  still pending) is that version: staging file, size, metadata, and (an edit in place)
  the old version it copies from; its upload resumes that record.
- A file written sequentially from offset 0 streams: each full part is uploaded as soon
  as it is written (journal state WRITING), so close() waits for little more than the
  last part.  A later write into a streamed part marks it for re-upload; a truncate
  aborts the stream.

Lock order: OpenFile.lock -> Uploader._lock.  OpenFile.lock is held across a commit
(network); getattr reads ``attr`` without it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import Optional

from .. import errors, metrics
from ..data.diskspace import pwrite_all
from ..meta.attrs import Attr, object_metadata
from ..s3.objects import new_object_headers
from .hashing import SequentialMD5
from . import recovery
from .journal import WRITING, Entry, Journal
from .parts import PartPlan
from .ranges import RangeSet
from .records import FileRecords
from .release import Release
from .sparse import SparseStaging
from .uploader import abort_unrecorded

log = logging.getLogger(__name__)
KEPT = "upload kept in the journal for resume (retried every 30 s, and by the next mount)"


class OpenFile:
    def __init__(self, path: str, key: str, attr: Attr, staging_dir: str, uploader, journal: Journal,
                 fetcher=None, base=None, truncate: bool = False, new: bool = False, origin=None, space=None,
                 record: Optional[Entry] = None):
        self.path = path
        self.key = key
        self.attr = attr
        self.uploader = uploader
        self.journal = journal
        self.fetcher = fetcher
        self.base = None if (truncate or new) else base      # PinnedObject of the original version
        self._base_end = 0 if self.base is None else self.base.size   # original bytes still wanted
        self._reader = None                  # data.reader.Reader of the base (reads of unstaged bytes)
        self.sparse = SparseStaging(self)    # reads and fills of the staging file (sparse.py)
        self.release = Release(self, space)  # staging given back to a full disk (release.py)
        self.records = FileRecords(self)     # its journal records (records.py)
        self.lock = threading.RLock()
        self.refs = 0
        if record is None:
            self.staging = os.path.join(staging_dir, journal.new_id())
            self._fd = os.open(self.staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            self.staging = record.staging
            self._fd = os.open(self.staging, os.O_RDWR)
        self._discarded = False
        self.present = RangeSet()
        self.size = 0 if (truncate or new) else attr.size
        if truncate or new:
            now = time.time_ns()          # O_TRUNC changes the file: its mtime and ctime
            self.attr = attr.copy(size=0, mtime_ns=now, ctime_ns=now) if truncate else attr.copy(size=0)
        self.dirty = truncate or new
        self.meta_dirty = False
        self.failed: Optional[BaseException] = None
        self.unlinked = False
        # incremental whole-file MD5 while writes are sequential appends
        self._hasher = SequentialMD5() if (truncate or new) else None
        self._hashed = 0
        # streaming multipart upload of a sequential writer
        self._plan = PartPlan.for_base(uploader.part_size)
        self._streamable = truncate or new
        self._stream: Optional[Entry] = None
        self._stream_begin: Optional[Future] = None
        self._stream_next = 1
        self._stream_futures: dict = {}
        self._redo_parts: set = set()
        self._pending: Optional[Entry] = None   # CLOSED record whose upload failed
        self._stream_progress = None
        # origin(): what the object this file replaces had (meta.known.Known: its user
        # metadata and content headers) or None; asked once, when the upload needs it.
        self._origin = origin
        self._origin_asked = False
        # writeback: changes made so far, and (changes, key) when the record in _pending
        # was sealed - while both still hold, the upload sends that record
        self._changes = 0
        self._sealed: Optional[tuple] = None
        self._uploading = False                  # a sealed record's upload runs (without the lock)
        self._idle = threading.Condition(self.lock)
        # made from a record of an earlier mount: its upload is a resume (parts the server
        # may have, an upload created but never recorded); the key may hold an older version
        self.adopted = False
        self._resumes: Optional[Entry] = None
        if record is not None:
            self.records.adopt(record)

    def read(self, offset: int, size: int):
        return self.sparse.read(offset, size)

    def _object_fields(self):
        """(user metadata, content headers) of the version to upload: the POSIX fields of
        ``attr`` over the replaced object's other metadata; its content headers
        (Content-Type, Cache-Control...), or a Content-Type from the name for a new file."""
        if not self._origin_asked:
            self._origin = self._origin() if self._origin is not None else None
            self._origin_asked = True
        known = self._origin
        headers = dict(known.headers) if known is not None and known.headers else new_object_headers(self.path)
        return object_metadata(self.attr, known.metadata if known is not None else None), headers

    def detach_from_base(self, stop_stream: bool = False):
        """Stage every byte still only in the original object and stop reading it: the
        file no longer depends on the object at its key (unlink, rename while dirty).
        ``stop_stream``: the key changes, so a streamed upload to the old key is aborted."""
        with self._changing():
            if stop_stream:
                self.release.check_rename()
            self.sparse.fill(0, self.size)
            if stop_stream:
                self._stop_stream()
            self.base = None

    def rebase(self, key: str, etag: str):
        """The original object was copied to ``key`` as ``etag`` (a rename): bytes not
        staged yet come from there, and ``attr`` carries the new ETag."""
        with self._changing():
            if self.base is not None:
                self.base = dataclasses.replace(self.base, key=key, etag=etag)
            self.attr = self.attr.copy(etag=etag)

    # -- writing -----------------------------------------------------------------------------
    def write(self, offset: int, data: bytes) -> int:
        with self._changing():
            if self.failed is not None:
                raise errors.WriteFailed(f"{self.path}: earlier write failed")
            self.release.settle()
            end = offset + len(data)
            self.release.check_change(offset, end)
            try:
                written = pwrite_all(self._fd, data, offset, self.release.make_room)
            except (OSError, errors.FsError) as exc:
                self.failed = exc
                log.error("%s: staging write failed (%s); the file will not be uploaded", self.path, exc)
                raise
            self.present.add(offset, end)
            if offset > self.size:
                self.present.add(self.size, offset)    # the hole reads as zeros
            self.size = max(self.size, end)
            self.dirty = True
            self._changes += 1
            now = time.time_ns()
            self.attr = self.attr.copy(size=self.size, mtime_ns=now, ctime_ns=now)
            if self._hasher is not None:
                if offset == self._hashed:
                    self._hasher.update(data)
                    self._hashed = end
                else:
                    self._drop_hasher()
            self._after_write(offset, end)
            if self._stream is not None and self._stream_progress is not None:
                self._stream_progress.total = self.size
            self.release.after_write()
            return written

    def truncate(self, length: int):
        with self._changing():
            self.release.settle()
            self.release.check_change(0, length, "a truncate")
            self.release.forget()           # released ranges above length: cut off
            if length < self.size:
                self.present.clip(length)
                self._base_end = min(self._base_end, length)
            else:
                self.present.add(self.size, length)    # the new tail reads as zeros
            os.ftruncate(self._fd, length)
            self.size = length
            self.dirty = True
            self._changes += 1
            now = time.time_ns()
            self.attr = self.attr.copy(size=length, mtime_ns=now, ctime_ns=now)
            if self._hasher is not None and length != self._hashed:
                self._drop_hasher()
            self._stop_stream()
            self._streamable = False

    def _drop_hasher(self):
        self._hasher.cancel()
        self._hasher = None

    def set_attr(self, attr: Attr):
        """chmod/chown/utimens while open: the new values go with the upload."""
        with self._changing():
            self.release.settle()
            self.attr = attr.copy(size=self.size)
            self.meta_dirty = True
            self._changes += 1

    # -- streaming while writing ----------------------------------------------------------
    def _after_write(self, start: int, end: int):
        if self._stream is not None:
            for n in range(self._plan.number_at(start), min(self._stream_next, self._plan.number_at(end - 1) + 1)):
                self._redo_parts.add(n)
        if not self._streamable:
            return
        contiguous = self.present.contiguous_from_zero()
        if contiguous != self.size:
            return
        while True:
            p_start, p_end = self._plan.range_of(self._stream_next)
            if contiguous < p_end or contiguous < self.uploader.threshold:
                return      # part not complete yet, or the file may still end below the threshold
            if self._stream is None:
                metadata, headers = self._object_fields()
                self._stream = Entry(id=self.journal.new_id(), key=self.key, staging=self.staging, state=WRITING,
                                     metadata=metadata, headers=headers, part_size=self._plan.base,
                                     created=time.time())
                self._stream_begin = self.uploader.pool.submit(self.uploader.begin_multipart, self._stream)
                self._stream_progress = self.uploader.track(self._stream.id, self.key, self.size)
            n = self._stream_next
            self._stream_futures[n] = self.uploader.pool.submit(self._stream_part, self._stream, self._stream_begin,
                                                                n, p_start, p_end)
            self._stream_futures[n].add_done_callback(self.release.part_ended(self._stream.id, n))
            self._stream_next += 1

    def _stream_part(self, entry: Entry, begin: Future, number: int, start: int, end: int):
        begin.result()
        return self.uploader.send_part(entry, number, start, end)

    def _wait_stream(self, only=None):
        """Wait for the streamed parts (those numbered in ``only``, if given)."""
        for n, f in list(self._stream_futures.items()):
            if only is not None and n not in only:
                continue
            try:
                f.result()
            except Exception as exc:
                log.warning("%s: streamed part %d failed: %s; it will be sent again at close", self.path, n,
                            errors.describe(exc))
                self._redo_parts.add(n)
            del self._stream_futures[n]

    def _stop_stream(self):
        if self._stream is None:
            return
        self.release.lost("its streamed upload was aborted")
        self._wait_stream()
        entry, self._stream = self._stream, None
        self.uploader.untrack(entry.id)
        try:
            if self._stream_begin is not None and self._stream_begin.exception() is None:
                self.uploader.client.abort_multipart(entry.key, entry.upload_id)
        except Exception:
            log.warning("%s: could not abort streamed upload", self.path, exc_info=True)
        self.journal.remove(entry.id)
        self._stream_begin = None
        self._stream_next = 1
        self._redo_parts.clear()

    # -- commit --------------------------------------------------------------------------------
    def seal(self) -> bool:
        """Writeback close: make the staged content durable (fsync) and record it in the
        journal as CLOSED, without uploading it; the upload (``commit``) comes later, and
        a crash before it resumes it from the record.  False: nothing to upload."""
        if self.sealed and self.failed is None:
            return True          # closed again without a change (flush, then release)
        with self._changing():
            self._check_not_failed()
            if self.unlinked or not (self.dirty or self.meta_dirty):
                return False
            if self.sealed:
                return True
            plan = self.sparse.stage_for_upload()
            os.fsync(self._fd)
            entry = self.records.record_closed(plan, durable=True)
            self.records.drop_pending()        # a record of the same file sealed before (other key or content)
            self._pending = entry
            self._sealed = (self._changes, self.key)
            return True

    @property
    def sealed(self) -> bool:
        """A sealed record holds the current content, metadata and key."""
        return self._sealed == (self._changes, self.key) and self._pending is not None

    def settled(self):
        """The lock, once no sealed upload of this file is running (writeback): a rename
        then sees the file either before that upload or after it, never in between."""
        return self._changing()

    @contextlib.contextmanager
    def _changing(self):
        """The lock, for a change of the staged file or its record: after a sealed record's
        upload in progress (which runs without the lock) has ended."""
        with self.lock:
            self._idle.wait_for(lambda: not self._uploading)
            yield

    def _check_not_failed(self):
        if self.failed is not None:
            raise errors.WriteFailed(f"{self.path}: not uploaded after a failed write",
                                     getattr(self.failed, "errno", None) or 0)

    def commit(self):
        """Make the bucket hold this file.  Returns (etag, the journal Entry uploaded: its
        metadata, headers, creation time), or None if nothing changed."""
        with self._changing():
            self._check_not_failed()
            if self.unlinked or not (self.dirty or self.meta_dirty):
                return None
            if not self.sealed:
                return self._commit_now()
            # sealed at close (writeback): upload that record without holding the lock, so
            # reads go on; changes wait (``_changing``) until the upload AND its bookkeeping
            # are done - one locked step, or a change slipping in between would be marked
            # clean with the record it never was in (and never uploaded)
            entry, self._uploading = self._pending, True
        try:
            resumed = entry is self._resumes
            if resumed and abort_unrecorded(self.uploader.client, entry):
                self.journal.save(entry)        # ``creating`` cleared: a new upload is begun
            etag = self.uploader.upload(entry, verify_server_parts=resumed)
            if resumed:
                metrics.UPLOADS_RESUMED.inc()
                log.warning("resumed upload of %r completed (%d bytes): it is in the bucket", entry.key, entry.size)
        except BaseException as exc:
            with self.lock:
                self._upload_ended()
                if isinstance(exc, errors.NeverCompletes):
                    self._abandoned(entry, exc)
                elif isinstance(exc, Exception):
                    errors.set_action(exc, KEPT)
            raise
        with self.lock:
            try:
                return self._uploaded(entry, etag, current=self.sealed)
            finally:
                self._upload_ended()

    def _upload_ended(self):
        self._uploading = False
        self._idle.notify_all()

    def _commit_now(self):
        """Durable close: stage, record and upload under the lock (held by the caller)."""
        plan = self.sparse.stage_for_upload()
        # Power loss: a multipart upload must resume from intact staging data.  When the
        # whole-file MD5 is known the record carries it and recovery checks the staging
        # file against it (``verify_md5``) instead of an fsync here (256 MiB written to
        # disk on the close path); otherwise the staging file is fsynced.  A daemon
        # crash loses nothing in the page cache either way.
        durable = self.size >= self.uploader.threshold or self._stream is not None
        if durable and (not self._md5_known() or self.release.ranges):
            os.fsync(self._fd)
        entry = self.records.record_closed(plan, durable)
        self.records.drop_pending()        # the new record replaces the one of a failed commit
        self._pending = entry
        try:
            etag = self.uploader.upload(entry, verify_server_parts=False)
        except errors.NeverCompletes as exc:
            self._abandoned(entry, exc)
            raise
        except Exception as exc:
            errors.set_action(exc, KEPT)
            raise
        return self._uploaded(entry, etag)

    def _abandoned(self, entry: Entry, exc: BaseException):
        """The old version an edit in place copies from is gone: the edit can never be
        applied.  Its record goes, the bytes written to ``recovery/``; the file is failed."""
        recovery.abandon(self.journal, entry, str(exc))
        self._pending = self._sealed = None
        self.failed = exc

    def _uploaded(self, entry: Entry, etag: str, current: bool = True):
        """``entry`` is in the bucket as ``etag`` (under the lock).  ``current``: the record
        still holds the file's content, metadata and key; only then is the file clean.  A
        sealed record may not (its key moved by a directory rename, which does not wait for
        the file's upload): the file stays dirty for its next commit."""
        self.journal.remove(entry.id, durable=False)
        if self._pending is entry:
            self._pending = self._sealed = None
        if current:
            self.dirty = self.meta_dirty = False
        self._streamable = False
        self.attr = self.attr.copy(etag=etag, size=self.size, exact=True)
        if (entry.plan or entry.released) and current:
            self.sparse.edited(etag)
            self.release.forget()
        return etag, entry

    def _md5_known(self) -> bool:
        return self._hasher is not None and self._hashed == self.size

    # -- end of life ---------------------------------------------------------------------------
    def discard(self):
        """Close the staging file and delete it, unless a failed upload still needs it:
        then the journal keeps both and that upload's record is returned (the caller
        retries it later); else None."""
        with self._changing():
            if self._discarded:        # twice (a writeback upload ending as the file is released)
                return None
            self._discarded = True
            self._stop_stream()        # a stream never handed to close(): abort it
            if self._hasher is not None:
                self._drop_hasher()
            try:
                os.close(self._fd)
            except OSError:
                pass
            pending = self._pending
            if pending is not None and not self.unlinked and self.failed is None:
                return pending
            if pending is not None:
                if pending.upload_id:
                    try:
                        self.uploader.client.abort_multipart(pending.key, pending.upload_id)
                    except Exception:
                        log.warning("%s: could not abort upload", self.path, exc_info=True)
                self.journal.remove(pending.id)
            try:
                os.unlink(self.staging)
            except FileNotFoundError:
                pass
            return None
