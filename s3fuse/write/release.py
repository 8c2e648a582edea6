"""Staging a streamed writer gives back to a full disk (``Release``, owned by an
``openfile.OpenFile``), and the room a staging write makes before it fails.

A file written sequentially from offset 0 streams: each full part is uploaded while the
writer goes on (openfile.py), and its ETag recorded.  When the cache disk is full, parts
already uploaded need not stay in the staging file: their ranges are *released* (holes
punched, FALLOC_FL_PUNCH_HOLE), so a copy larger than the free space succeeds.

- When: after a write, if the disk has less than ``min_free`` free (``DiskSpace.low``);
  and when a staging write finds the disk full (ENOSPC): the block cache is asked for
  room first (``DiskSpace.make_room``), then the writer waits for its parts in flight,
  releases them and writes again (``make_room``).  Released are parts that ended well,
  are recorded in the stream's entry, and were not written again since.
- Only while no handle can read the file (``readers``: every handle is
  write-only, as cp's): a released range is neither in staging nor readable from S3 (an
  upload not completed has no object).  A handle opened later that reads a released
  range gets EIO (``errors.ReleasedRead``), never zeros; once the file is in the bucket
  its new version is the base (``SparseStaging.edited``) and every byte reads from there.
- A change that needs released bytes fails with ENOSPC and poisons the file (it could
  never be uploaded as written): a write into a released range, a truncate above its
  start, anything that aborts the stream.  A rename while open answers EBUSY (the stream
  belongs to the old key) and changes nothing.  A change after close, while the upload
  waits (writeback, or an upload that failed), completes that upload first (``settle``).
- The record: ``Entry.released`` lists the ranges.  Releases happen while the stream's
  record is WRITING (never resumed after a crash: its staging file goes to recovery/,
  with zeros where the ranges were, logged); the CLOSED record saved at close has them.
  Resume keeps a released part only if the server lists it with the recorded ETag;
  otherwise the upload can never complete (``errors.UploadLost``: abandoned, logged).
  Such a staging file is fsynced at close (no whole-file MD5 check after a power loss),
  and without the writer's in-order MD5 the object gets no ``x-amz-meta-s3fuse-md5``.

Runs under the file's ``OpenFile.lock``; part threads only append to ``_ended``.
"""
from __future__ import annotations

import collections
import logging
import os
import threading

from .. import errors
from ..data import diskspace
from .ranges import RangeSet

log = logging.getLogger(__name__)


class Release:
    def __init__(self, file, space=None):
        self.file = file            # the OpenFile whose staging file this releases
        self.space = space          # data.diskspace.DiskSpace of cache_dir, or None
        self.ranges = RangeSet()    # released: the bytes are only in the streamed upload
        self._ended: collections.deque = collections.deque()   # (entry id, part number, future)
        self._punch = None
        self._readers = 0           # handles that may read the file (FileOps counts them)
        self._readers_lock = threading.Lock()      # a leaf: opens need not wait for a commit

    def readers(self, change: int = 0) -> int:
        with self._readers_lock:
            self._readers += change
            return self._readers

    def part_ended(self, entry_id: str, number: int):
        """A done callback for a streamed part's future (runs in the part's thread)."""
        return lambda future: self._ended.append((entry_id, number, future))

    # -- making room ----------------------------------------------------------------------------
    def after_write(self):
        """Below ``min_free`` a writer makes room while there is still some (sqlite needs
        a little to delete a cached block): cached blocks go first; a streamed writer then
        gives back its uploaded parts, then (waiting for them) the parts in flight."""
        f = self.file
        if self.space is None or not self.space.low():
            return
        self.space.make_room(0)
        if f._stream is None or not self.space.low() or not self._allowed():
            return
        self.release()
        if self.space.low() and f._stream_futures:
            f._wait_stream()
            self.release()

    def make_room(self, nbytes: int) -> bool:
        """A staging write of ``nbytes`` found the disk full: True if room was made."""
        freed = self.space.make_room(nbytes) if self.space is not None else 0
        if freed >= nbytes:
            return True
        if self.file._stream is not None and self._allowed():
            freed += self.release()
            if freed < nbytes and self.file._stream_futures:
                self.file._wait_stream()          # parts in flight: once uploaded they can go
                freed += self.release()
        return freed > 0

    def _allowed(self) -> bool:
        if self.readers():
            return False
        if self._punch is None:
            where = os.path.dirname(self.file.staging)
            self._punch = self.space.can_punch(where) if self.space is not None else diskspace.can_punch(where)
        return self._punch

    def release(self) -> int:
        """Release the streamed parts uploaded so far.  Returns the bytes given back."""
        f = self.file
        entry = f._stream
        if entry is None or not self._allowed():
            return 0
        ranges = []
        with f.uploader.lock:
            while self._ended:
                entry_id, n, future = self._ended.popleft()
                if entry_id == entry.id and not future.cancelled() and future.exception() is None \
                        and n not in f._redo_parts and str(n) in entry.parts:
                    ranges.append(f._plan.range_of(n))
            entry.released.extend([start, end] for start, end in ranges)
        for start, end in ranges:
            self.ranges.add(start, end)
            try:
                diskspace.punch_hole(f._fd, start, end - start)
            except OSError as exc:        # the range stays released: its bytes are the server's
                log.warning("%s: could not release [%d, %d) of its staging file: %s", f.path, start, end, exc)
        if not ranges:
            return 0
        freed = sum(end - start for start, end in ranges)
        log.info("%s: the cache disk is full: %d uploaded parts (%.1f MiB) released from its staging file",
                 f.path, len(ranges), freed / (1 << 20))
        try:
            f.uploader.save_record(entry)     # best effort: a WRITING record is never resumed
        except OSError as exc:
            log.warning("%s: could not record the released ranges yet (%s); the next record will", f.path, exc)
        return freed

    # -- what released ranges forbid ------------------------------------------------------------
    def _overlaps(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self.ranges)

    def check_read(self, start: int, end: int):
        if self.ranges and self._overlaps(start, end):
            raise errors.ReleasedRead(f"{self.file.path}: bytes {start}-{end} were uploaded and released from the "
                                      f"full cache disk while the file is being written; readable once it is closed")

    def check_change(self, start: int, end: int, what: str = "a write"):
        """Before a write or truncate reaching [start, end): it must not need released bytes."""
        if self.ranges and self._overlaps(start, end):
            self.lost(f"{what} reaches bytes already uploaded and released from the full cache disk")
            raise self.file.failed

    def check_rename(self):
        if self.ranges:
            raise errors.Busy(f"{self.file.path}: being written, with parts released from the full cache disk "
                              f"into an upload to its current name; rename it once it is closed")

    def settle(self):
        """Before a change of a closed file whose released parts are only in its pending
        upload (writeback, or a close whose upload failed): that upload completes first,
        then its new version is the base and nothing is released any more."""
        f = self.file
        if not self.ranges or f._stream is not None or f._pending is None or f.failed is not None:
            return
        entry = f._pending
        try:
            etag = f.uploader.upload(entry, verify_server_parts=False)
        except errors.NeverCompletes as exc:
            f._abandoned(entry, exc)
            raise
        f._uploaded(entry, etag)

    def lost(self, why: str):
        """The released bytes can no longer reach the bucket: the file is failed."""
        if self.ranges and self.file.failed is None:
            self.file.failed = errors.StagingReleased(f"{self.file.path}: {why}; the file will not be uploaded")
            log.error("%s", self.file.failed)

    def forget(self):
        """Nothing is released any more: the file is in the bucket (reads go there), or a
        truncate cut every released range off."""
        self.ranges = RangeSet()
        self._ended.clear()
