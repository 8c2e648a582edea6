"""Uploads of edits in place (``InPlaceEdits``, owned by the ``Uploader``): a multipart upload whose parts are
either copied on the server from the old version (UploadPartCopy, pinned by its ETag
with ``x-amz-copy-source-if-match``) or uploaded from the sparse staging file, as the
record's ``plan`` says (``editplan.py``).

Every finished part is recorded (its ETag: the MD5 of an uploaded part, the copy's
answer for a copied one), so a resume after a crash sends only what the server does not
list with that ETag: finished copies are not copied again.  If the old version is gone
(another client overwrote or deleted the key: 412 or 404 on a copy), the upload can
never complete: it is aborted and ``SourceChanged`` raised; the caller drops the record
(``recovery.abandon``).  The new version carries no whole-object MD5 header (its bytes
were never all here to hash).
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import wait

from .. import errors
from ..meta.attrs import MD5_HEADER
from .journal import Entry, part_etag, part_md5, part_record

log = logging.getLogger(__name__)


class InPlaceEdits:
    """The edit-in-place half of ``uploader.Uploader``: it sends parts through the
    uploader's pool, client, progress and records (under the uploader's ``_lock``)."""

    def __init__(self, uploader):
        self.uploader = uploader

    def edit(self, entry: Entry, verify_server_parts: bool) -> tuple:
        """(ETag, parts in all, parts done before this call, bytes sent by this call)."""
        plan = [tuple(p) for p in entry.plan]
        if entry.upload_id is None:
            entry.metadata = {k: v for k, v in entry.metadata.items() if k != MD5_HEADER}
            self.uploader.begin_multipart(entry)
        elif verify_server_parts:
            self._reconcile_edit(entry, plan)
        done = {int(n) for n in entry.parts}
        with self.uploader._lock:
            self.uploader.progress[entry.id].done = sum(e - s for n, s, e, _ in plan if n in done)
        todo = [p for p in plan if p[0] not in done]
        # copies first: they take the server longest, and hold no memory here
        todo.sort(key=lambda p: not p[3])
        futures = [self.uploader.pool.submit(self.copy_part if copy else self.uploader.send_part, entry, n, s, e)
                   for n, s, e, copy in todo]
        try:
            for f in futures:
                f.result()
        except BaseException as exc:
            for f in futures:
                f.cancel()
            wait(futures)
            if isinstance(exc, (errors.ObjectChanged, errors.NotFound)) and not isinstance(exc, errors.NoSuchBucket):
                self._give_up_edit(entry, exc)
            raise
        parts = [(n, part_etag(entry.parts[str(n)])) for n, _, _, _ in plan]
        etag = self.uploader.client.complete_multipart(entry.key, entry.upload_id, parts)
        return etag, len(plan), len(plan) - len(todo), sum(e - s for _, s, e, copy in todo if not copy)

    def copy_part(self, entry: Entry, number: int, start: int, end: int) -> str:
        """Copy bytes [start, end) of the old version as part ``number``; record it."""
        src = entry.source
        etag = self.uploader.client.upload_part_copy(entry.key, entry.upload_id, number, src["key"], start, end, src["etag"])
        if not etag:
            raise errors.BackendError(f"copy of part {number} of {entry.key!r}: no ETag in the answer")

        def record(e):
            e.parts[str(number)] = part_record("", etag)     # a copy: no local bytes to hash
            self.uploader.parts_copied += 1
            self.uploader.bytes_copied += end - start
            progress = self.uploader.progress.get(e.id)
            if progress:
                progress.done += end - start
        self.uploader.save_record(entry, record)
        return etag

    def _give_up_edit(self, entry: Entry, exc: BaseException):
        try:
            self.uploader.client.abort_multipart(entry.key, entry.upload_id)
        except Exception:
            log.warning("could not abort upload %s of %r", entry.upload_id, entry.key, exc_info=True)
        src = entry.source
        raise errors.SourceChanged(f"{entry.key!r}: the version {src['etag']} of {src['key']!r} that its "
                                   f"unchanged parts come from is gone from the server (changed by another "
                                   f"client): the edit cannot be applied") from exc

    def _reconcile_edit(self, entry: Entry, plan: list):
        """Resume: keep the parts the server lists with the ETag recorded, an upload whose
        ETag is the MD5 of the local bytes, and a copy the record lacks (killed between the
        server's answer and the record) when its size is the planned one: the upload id is
        this record's alone, each part number has one planned range, and every copy is
        pinned to the source's ETag (CopySourceIfMatch), so such a part holds those bytes."""
        try:
            server = {p.number: p for p in self.uploader.client.list_parts(entry.key, entry.upload_id)}
        except errors.UploadGone:
            log.warning("upload of %r is gone from the server; starting it again", entry.key)
            entry.upload_id, entry.parts = None, {}
            self.uploader.begin_multipart(entry)
            return
        kept = {}
        for n, start, end, copy in plan:
            part = server.get(n)
            if part is None or (part.size and part.size != end - start):
                continue
            recorded = entry.parts.get(str(n))
            if recorded is not None and part_etag(recorded) == part.etag:
                kept[str(n)] = part_record(part_md5(recorded), part.etag)
                continue
            if copy:
                if part.size == end - start:
                    kept[str(n)] = part_record("", part.etag)
                continue
            with open(entry.staging, "rb") as f:
                local = hashlib.md5(os.pread(f.fileno(), end - start, start)).hexdigest()
            if local == part.etag:
                kept[str(n)] = part_record(local, part.etag)

        def keep(e):
            self.uploader.parts_reused += len(kept)
            e.parts = kept
        self.uploader.save_record(entry, keep)
        log.warning("resuming edit in place of %r: %d of %d parts already on the server (%d copies)",
                    entry.key, len(kept), len(plan), sum(1 for n, _, _, c in plan if c and str(n) in kept))
