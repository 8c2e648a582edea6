"""The upload journal: one crash-safe JSON record per upload in ``cache_dir/journal``.

A record is written (tmp file, fsync, rename, fsync of the directory) when an upload
starts and after every finished part, so after a crash the next mount (or
``s3fuse resume``) knows: the key, the staging file, the object size and MD5, the
metadata, the multipart upload id, the part size, and the MD5 of every finished part with
the ETag the server answered for it (not an MD5 with SSE-KMS or SSE-C on AWS).

States
- ``writing``: a multipart upload was started while the file was still being written
  (sequential writer); close() has NOT been reached.  After a crash such a record is
  never completed: its upload is aborted and its staging file moved to ``recovery/``.
- ``closed``: close()/fsync() handed the file over; the data is final and must reach
  the bucket.  Resumed after a crash: ListParts, keep parts whose ETag equals the one
  recorded (or, for a part sent but not recorded, the local MD5 where ETags are MD5s),
  upload the rest, complete.

A record with a ``plan`` is an edit in place: its staging file holds only the parts to
upload (sparse); the other parts are copied on the server from ``source`` (that key at
that ETag, ``x-amz-copy-source-if-match``).  A copied part is kept on resume when the
server lists it with the ETag its copy answered.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Optional

from .. import metrics
from ..data.diskspace import write_file

WRITING = "writing"
CLOSED = "closed"


@dataclass
class Entry:
    id: str
    key: str
    staging: str
    state: str = WRITING
    size: int = 0
    md5: Optional[str] = None
    metadata: dict = field(default_factory=dict)
    content_type: Optional[str] = None             # records of s3fuse before headers: read, never written
    headers: dict = field(default_factory=dict)     # content headers (objects.CONTENT_HEADERS)
    upload_id: Optional[str] = None
    part_size: int = 0
    # str(part number) -> [md5 hex, server ETag] (part_md5/part_etag); the MD5 is "" where
    # none was computed (a copied part; a part whose body the signature covered)
    parts: dict = field(default_factory=dict)
    uploaded_metadata: Optional[dict] = None        # what CreateMultipartUpload was given
    created: float = 0.0
    verify_md5: bool = False       # staging not fsynced: check it against ``md5`` after a restart
    creating: float = 0.0          # time a CreateMultipartUpload was sent whose id is not recorded yet
    # an edit in place (editplan.py): the old version parts are copied from, and the part
    # plan [[number, start, end, copy], ...]; ``parts`` then holds copied parts' ETags too
    source: Optional[dict] = None  # {"key": ..., "etag": ...}
    plan: Optional[list] = None
    # [[start, end], ...]: staging ranges of uploaded (recorded) parts given back to a full
    # disk (release.py): the server has them, the staging file does not (zeros)
    released: list = field(default_factory=list)


def part_record(md5: str, etag: str) -> list:
    return [md5, etag]


def part_md5(record) -> str:
    """The MD5 of a recorded part (records of s3fuse before issue 14 hold only the MD5,
    which was then also its ETag)."""
    return record[0] if isinstance(record, list) else record


def part_etag(record) -> str:
    """The ETag the server answered for a recorded part."""
    return record[1] if isinstance(record, list) else record


def fsync_dir(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, directory: str, space=None):
        self.dir = directory
        # a full disk: records come before cached blocks (data.diskspace.DiskSpace)
        self._room = space.room_maker() if space is not None else None
        os.makedirs(directory, mode=0o700, exist_ok=True)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def _path(self, entry_id: str) -> str:
        return os.path.join(self.dir, entry_id + ".json")

    def save(self, entry: Entry, durable: bool = True):
        """Write the record.  ``durable``: atomically (tmp + rename) and fsynced with its
        directory (power loss).  Otherwise one write() straight to the record (a small
        file's one-PutObject record, never updated in place): a crash of the daemon cannot
        split a write() of a few hundred bytes, and a record cut by a power loss fails to
        load and is skipped (its staging file then goes to recovery/, see recovery.py).
        A write that fails (a full disk) leaves no cut record: the one before stays
        (durable), or there is none (in place: the file is removed)."""
        data = self.encode(entry)
        if durable:
            self.write(entry.id, data)
        else:
            write_file(self._path(entry.id), data, fsync=False, make_room=self._room)
            metrics.JOURNAL_WRITES.inc()

    @staticmethod
    def encode(entry: Entry) -> bytes:
        return json.dumps(vars(entry)).encode()

    def write(self, entry_id: str, data: bytes):
        """Durably replace record ``entry_id`` by ``data`` (from ``encode``): the tmp file
        written whole and fsynced, then renamed over the record; if that write fails the
        record on disk is the one before."""
        path = self._path(entry_id)
        write_file(path + ".tmp", data, fsync=True, make_room=self._room)
        os.replace(path + ".tmp", path)
        fsync_dir(self.dir)
        metrics.JOURNAL_WRITES.inc()

    def remove(self, entry_id: str, durable: bool = True):
        try:
            os.unlink(self._path(entry_id))
            if durable:
                fsync_dir(self.dir)
        except FileNotFoundError:
            pass

    def load(self, entry_id: str) -> Optional[Entry]:
        try:
            with open(self._path(entry_id)) as f:
                entry = Entry(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None
        if entry.content_type and not entry.headers:
            entry.headers, entry.content_type = {"content-type": entry.content_type}, None
        return entry

    def count(self) -> int:
        """Records in the journal now (uploads not yet in the bucket), without reading them."""
        try:
            return sum(1 for n in os.listdir(self.dir) if n.endswith(".json") and not n.startswith("rename-"))
        except OSError:
            return 0

    def entries(self) -> list:
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".json") and not name.startswith("rename-"):
                entry = self.load(name[:-5])
                if entry is not None:
                    out.append(entry)
        return out
