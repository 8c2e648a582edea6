"""``-o verify``: the MD5 of a whole-file read through one handle, checked at its end.

An object s3fuse uploaded carries its whole-object MD5 (``x-amz-meta-s3fuse-md5``; a
multipart ETag is not one).  A handle that reads such an object from offset 0 to EOF in
order hashes the bytes it returns as they go; the read that completes the file compares
the digest with the header (the caller, ``fs.files``, fails that read with EIO on a
mismatch).  Anything else (a seek back, a hole, a re-read) stops the check for that
handle: only whole sequential reads are verified.

The kernel sends a sequential reader's requests several at a time (read-ahead, async
reads), so they reach the daemon slightly out of order: a piece beyond the next offset is
kept (a copy) until the bytes before it arrive, if it lies within ``MAX_AHEAD`` bytes of
the next offset and those kept stay under ``MAX_AHEAD`` (the memory a handle may hold);
anything else is not a sequential read.

``_lock`` is a leaf lock, held while hashing (CPU only, no I/O).
"""
from __future__ import annotations

import hashlib
import threading
from typing import Optional


class WholeReadDigest:
    MAX_AHEAD = 8 << 20

    def __init__(self, size: int, expected: str):
        self.size = size
        self.expected = expected.strip().lower()
        self._md5 = hashlib.md5()
        self._next = 0            # bytes hashed so far
        self._ahead: dict = {}    # offset -> bytes that arrived before the bytes preceding them
        self._ahead_bytes = 0
        self._lock = threading.Lock()
        self.active = size > 0
        self.checked = False      # the whole file was hashed (and compared by the caller)
        self.failed: Optional[str] = None   # the digest, once the caller found it wrong

    def feed(self, offset: int, data) -> Optional[str]:
        """The bytes one read returned at ``offset``.  Returns the hex digest of the whole
        file when this read completed it (once), else None."""
        with self._lock:
            if not self.active or not len(data):
                return None
            if offset != self._next:
                if offset < self._next or offset + len(data) - self._next > self.MAX_AHEAD \
                        or self._ahead_bytes + len(data) > self.MAX_AHEAD or offset in self._ahead:
                    self._stop()      # not one sequential pass: no check
                else:
                    self._ahead[offset] = bytes(data)
                    self._ahead_bytes += len(data)
                return None
            self._hash(data)
            while self._next in self._ahead:
                piece = self._ahead.pop(self._next)
                self._ahead_bytes -= len(piece)
                self._hash(piece)
            if self._next < self.size:
                return None
            self._stop()
            self.checked = True
            return self._md5.hexdigest()

    def _hash(self, data):
        self._md5.update(data)
        self._next += len(data)

    def _stop(self):
        self.active = False
        self._ahead.clear()
        self._ahead_bytes = 0
