"""The journal records of one ``openfile.OpenFile`` (``FileRecords``, owned by it): the
CLOSED record of its content at a seal or commit, the record of an earlier one dropped
when a newer replaces it or its key is deleted or taken, and a file made from the record
of an earlier mount (adopted: lookups, reads and listings see that version until its
upload lands).

Runs under the file's ``OpenFile.lock`` (``cancel`` and ``drop_other_key`` take it); the
fields it reads and sets (``_pending``, ``_sealed``, ``_resumes``, the stream's) are the
file's.
"""
from __future__ import annotations

import logging
import time

from ..data.reader import PinnedObject
from ..meta.known import Known
from .journal import CLOSED, Entry
from .ranges import RangeSet
from .streaming import close_stream

log = logging.getLogger(__name__)


class FileRecords:
    def __init__(self, file):
        self.file = file

    def adopt(self, entry: Entry):
        """The file is the version ``entry`` (CLOSED, of an earlier mount) records: its
        staging file holds the bytes written (all of them, or an edit in place's parts to
        upload, the others copied from ``source``); its upload resumes that record."""
        f = self.file
        f.size = entry.size
        if entry.plan:
            f.present = RangeSet((start, end) for _, start, end, copy in entry.plan if not copy)
            f._base_end = max([end for _, _, end, copy in entry.plan if copy] or [0])
            f.base = PinnedObject(entry.source["key"], entry.source["etag"], f._base_end)
        else:
            f.present = RangeSet([(0, entry.size)] if entry.size else [])
            f.base, f._base_end = None, 0
        f.dirty, f._streamable, f._hasher = True, False, None
        f._origin, f._origin_asked = Known(dict(entry.metadata), dict(entry.headers or {})), True
        f._pending = f._resumes = entry
        f._sealed = (f._changes, f.key)
        f.adopted = True

    def closed_entry(self, plan=None) -> Entry:
        """The CLOSED record of the file's content now (``plan``: of an edit in place)."""
        f = self.file
        metadata, headers = f._object_fields()
        md5 = f._hasher.hexdigest() if f._md5_known() else None
        if f._stream is not None:
            return close_stream(f, md5, metadata, headers)
        f.release.check_change(0, f.size, "a new record")     # never: the stream holds them
        source = {"key": f.base.key, "etag": f.base.etag} if plan else None
        return Entry(id=f.journal.new_id(), key=f.key, staging=f.staging, state=CLOSED, size=f.size,
                     md5=md5, verify_md5=md5 is not None, metadata=metadata, headers=headers,
                     part_size=f._plan.base, created=time.time(), source=source,
                     plan=[list(p) for p in plan] if plan else None)

    def record_closed(self, plan, durable: bool) -> Entry:
        """The CLOSED record of the file now, saved (``durable``: fsynced, atomically).  A
        stream whose parts were released cannot be recorded again if this fails: the
        file is then lost to the upload (``release.lost``), never sent with zeros."""
        f = self.file
        stream = f._stream
        try:
            entry = self.closed_entry(plan)
            f.journal.save(entry, durable=durable)
        except BaseException:
            if stream is not None and f.release.ranges:    # no other record can have released parts
                f._stream = stream
                f.release.lost("its record could not be saved at close")
            raise
        return entry

    def drop_pending(self):
        """The record of an earlier seal or failed commit goes (its multipart upload aborted)."""
        f = self.file
        old, f._pending = f._pending, None
        if old is None:
            return
        if old.upload_id:
            try:
                f.uploader.client.abort_multipart(old.key, old.upload_id)
            except Exception:
                log.warning("%s: could not abort upload %s", f.path, old.upload_id)
        f.journal.remove(old.id)

    def cancel(self):
        """The key of this (unlinked or replaced) file was deleted or taken by another file:
        its record goes now, its multipart upload aborted - a crash must not resume it over
        what took the key.  Under the key's lock (the caller's)."""
        f = self.file
        with f._changing():
            self.drop_pending()
            f._sealed = None

    def drop_other_key(self):
        """A rename moved the file (open, still written) to a new key: a record of a failed
        commit to the old key must not be resumed there."""
        f = self.file
        with f._changing():
            if f._pending is not None and f._pending.key != f.key:
                self.drop_pending()
                f._sealed = None
