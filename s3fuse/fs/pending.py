"""Uploads still to come of closed files: the writeback queue's ends, files whose upload
failed (kept in the handle table, retried by the commit scheduler), the records of an
earlier mount (adopted as files at mount), and their cancellation when their key is
deleted or taken by another object.

Every pending upload of a path below the mount is an ``OpenFile`` in the handle table:
lookups, reads and listings show the version its close accepted, and unlink, rename,
chmod act on it (docs/SEMANTICS.md "Writes").  Lock order as everywhere (core.md): a key
lock, then the file's lock; ``cancel_uploads`` runs under the key's lock.
"""
from __future__ import annotations

import logging
from typing import Optional

from .. import metrics
from ..meta.attrs import apply_metadata, default_attr
from ..write.openfile import OpenFile
from .builder import Parts

log = logging.getLogger(__name__)


class PendingUploads:
    def __init__(self, parts: Parts, files):
        self.parts = parts          # .writeback is set once the Filesystem is built
        self.files = files          # FileOps: commit
        self.commits = parts.commits
        self.handles = parts.handles
        self.mapper = parts.mapper
        self.ns = parts.ns
        self.journal = parts.journal
        self.uploader = parts.uploader
        self.fetcher = parts.fetcher
        self.staging_dir = parts.staging_dir

    def writeback_close(self, f: OpenFile):
        """Writeback: ``f`` is durable on local disk (sealed) and its upload queued."""
        if f.seal():
            self.parts.writeback.submit(f)

    def reseal(self, f: OpenFile) -> bool:
        """A closed file whose upload is pending changed (chmod, rename): record it again
        (durable on local disk).  True if the caller must queue it (``submit``, writeback),
        outside the locks it holds."""
        return f.seal() and self.parts.writeback is not None

    def submit(self, f: OpenFile):
        self.parts.writeback.submit(f)

    def writeback_done(self, f: OpenFile):
        """Writeback: the last queued upload of ``f`` is done (or it was unlinked)."""
        if self.finished(f):
            return
        if f.refs <= 0 and f.dirty and not f.unlinked and f.failed is None:
            # changed after its record was sealed without a new seal (its key moved by a
            # directory rename during the upload): record and queue it again
            try:
                self.writeback_close(f)
            except Exception:
                log.error("%s: could not seal again; it is uploaded at unmount", f.path, exc_info=True)

    def finished(self, f: OpenFile, force: bool = False) -> bool:
        """``f``'s upload is done (or it was unlinked, or failed for good): it leaves the
        handle table and the pending files unless opened again (or, unless ``force``,
        written) meanwhile.  True if it left."""
        if not self.handles.forget_file(f, force=force):
            return False
        self.commits.drop_file(f)
        pending = f.discard()
        if pending is not None:          # cannot happen after a successful upload
            self.commits.add_pending(pending)
        return True

    def retry_file(self, f: OpenFile):
        """The commit scheduler's retry of a file whose upload failed (raises if it fails again)."""
        try:
            if not f.unlinked and f.failed is None:
                # an adopted record's upload logs its own line (openfile.commit)
                adopted = f._pending is not None and f._pending is f._resumes
                if self.files.commit(f) is not None and not adopted:
                    metrics.UPLOADS_RESUMED.inc()
                    log.warning("resumed upload of %r completed (%d bytes): it is in the bucket", f.key, f.size)
        except Exception:
            if f.failed is None:
                raise
            log.error("%s: upload abandoned: %s", f.path, f.failed)     # its bytes are in recovery/
        self.finished(f, force=f.failed is not None)

    def adopt_records(self):
        """At mount: each CLOSED record of an earlier mount (an upload its close accepted,
        not in the bucket yet) becomes the file of its path, as if just closed: lookups,
        reads and listings show that version, and unlink, rename, chmod act on it, until
        its upload lands (retried by the commit scheduler; queued with writeback)."""
        for entry in self.commits.take_records():
            path = self.mapper.path(entry.key) if entry.key.startswith(self.mapper.prefix) else None
            if path is None or self.mapper.key(path) != entry.key or path == "/" or self.handles.live_file(path):
                continue
            attr = apply_metadata(default_attr(False, entry.size, entry.created, self.ns.defaults),
                                  entry.metadata, is_dir=False)
            try:
                f = OpenFile(path, entry.key, attr.copy(size=entry.size, etag=None), self.staging_dir,
                             self.uploader, self.journal, fetcher=self.fetcher, record=entry)
            except OSError:
                log.error("%r: cannot open the staging file of its pending upload", entry.key, exc_info=True)
                continue
            if self.handles.adopt_file(path, f):
                self.commits.adopt(entry, f)
            else:
                f.discard()

    def cancel_uploads(self, key: str, replaced: Optional[OpenFile] = None):
        """Under ``key``'s lock: the object of ``key`` is deleted or replaced; no pending
        upload of it may happen afterwards (the retry would bring a deleted file back, or
        put an old version over the new one): bare records of the key, and the record of
        ``replaced`` (the unlinked or replaced file that had the key), are cancelled; so is
        a queued delete of it (writeback: the new object must survive it, deletes.py)."""
        self.commits.cancel(key)
        if self.parts.deletes is not None:
            self.parts.deletes.cancel(key)       # a queued delete of the old object goes first or never
        if replaced is not None:
            replaced.records.cancel()
            if replaced.refs <= 0:
                self.finished(replaced, force=True)
