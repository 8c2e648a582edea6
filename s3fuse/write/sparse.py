"""Sparse staging of an existing object open for writing (``SparseStaging``, owned by an
``openfile.OpenFile``).

The staging file holds what was written (``present``); every other byte below
``_base_end`` is the old version's (``base``, pinned by its ETag).  So:

- reads assemble staged bytes and the old version's (through the block cache, with
  read-ahead), and never copy the old version into staging: staging disk use is what
  was written;
- an upload stages only what it sends: a file below the multipart threshold, or one
  whose edits leave nothing worth copying, is staged whole (today's single PUT or
  multipart); otherwise ``editplan.edit_plan`` says which parts are copied on the
  server and only the parts to upload are completed from the old version;
- after an edit in place the new version is the base: the staging file is emptied
  (``present`` too), and the next commit again sends only what changes after it.

Runs under the file's ``OpenFile.lock``; the fields it reads and sets (``base``,
``_base_end``, ``present``, ``_reader``, ``_fd``, ``size``) are the file's.
"""
from __future__ import annotations

import os

from .. import errors
from . import recovery
from ..data.diskspace import pwrite_all
from ..data.reader import PinnedObject, Reader
from .editplan import edit_plan
from .ranges import RangeSet

FILL_WINDOW = 32          # blocks fetched ahead while staging the old version's bytes


class SparseStaging:
    def __init__(self, file):
        self.file = file          # the OpenFile whose staging file this reads and fills

    def read(self, offset: int, size: int):
        with self.file.lock:
            try:
                return self._read(offset, size)
            except errors.ObjectChanged:
                # a sealed record's upload (writeback, without the lock) may have replaced
                # the old version just now: then the new one is the base
                base = self.file.base
                self.file._idle.wait_for(lambda: not self.file._uploading)
                if self.file.base == base:
                    raise
                return self._read(offset, size)

    def _read(self, offset: int, size: int):
        end = min(self.file.size, offset + size)
        if end <= offset:
            return b""
        pieces, pos = [], offset
        if self.file.base is not None:
            for lo, hi in self.file.present.missing(offset, min(end, self.file._base_end)):
                if lo > pos:
                    pieces.append(self._staged(pos, lo))
                pieces.append(self._base_reader().read(lo, hi - lo))
                pos = hi
        if pos < end:
            pieces.append(self._staged(pos, end))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _staged(self, start: int, end: int) -> bytes:
        self.file.release.check_read(start, end)     # uploaded and released: never zeros
        data = os.pread(self.file._fd, end - start, start)
        return data if len(data) == end - start else data + bytes(end - start - len(data))

    def _base_reader(self) -> Reader:
        if self.file._reader is None or self.file._reader.obj != self.file.base:
            self.file._reader = Reader(self.file.fetcher, self.file.base)
        return self.file._reader

    def fill(self, start: int, end: int):
        """Stage the old version's bytes in [start, end) that are not staged yet."""
        if self.file.base is None:
            return
        bs = self.file.fetcher.block_size
        for lo, hi in self.file.present.missing(start, min(end, self.file._base_end)):
            first, last = lo // bs, (hi - 1) // bs
            for index in range(first, last + 1):
                if (index - first) % FILL_WINDOW == 0:
                    self.file.fetcher.prefetch(self.file.base, index, min(last, index + FILL_WINDOW - 1))
                block = self.file.fetcher.block(self.file.base, index)
                b_lo, b_hi = max(lo, index * bs), min(hi, index * bs + len(block))
                pwrite_all(self.file._fd, memoryview(block)[b_lo - index * bs:b_hi - index * bs], b_lo,
                           self.file.release.make_room)
            self.file.present.add(lo, hi)

    def stage_for_upload(self):
        """Stage what the upload sends.  Returns the edit plan of an edit in place, or None
        (the whole file is staged)."""
        plan = None
        if self.file.base is not None and self.file._base_end > 0 and self.file._stream is None \
                and self.file.size >= self.file.uploader.threshold:
            plan = edit_plan(self.file.size, self.file._base_end, self.file.present, upload_part=self.file._plan.base,
                             copy_part=self.file.uploader.copy_part_size)
        try:
            if plan is None:
                self.fill(0, self.file.size)
                return None
            for _, start, end, copy in plan:
                if not copy:
                    self.fill(start, end)
        except errors.ObjectChanged as exc:
            self._base_gone(exc)
        return plan

    def _base_gone(self, exc: errors.ObjectChanged):
        """The old version whose bytes complete the upload changed on the server (another
        client overwrote or deleted the key): this file can never be uploaded as it was
        edited.  The bytes written are kept in ``recovery/``; the file is failed."""
        why = f"the version {self.file.base.etag} it edits is gone from the server (changed by another client)"
        target = recovery.keep_written(self.file.journal, self.file.staging, self.file.key, why)
        self.file.failed = errors.SourceChanged(f"{self.file.key!r}: {why}")
        errors.set_action(self.file.failed, f"bytes written kept in {target}")
        raise self.file.failed from exc

    def edited(self, etag: str):
        """An edit in place is in the bucket as ``etag``: it is the base from now on."""
        self.file.base = PinnedObject(self.file.key, etag, self.file.size)
        self.file._base_end = self.file.size
        self.file.present = RangeSet()
        self.file._reader = None
        os.ftruncate(self.file._fd, 0)          # the staged bytes are in the bucket: free the disk
        os.ftruncate(self.file._fd, self.file.size)
