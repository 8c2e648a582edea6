"""Server-side copies: one object (CopyObject, or UploadPartCopy above 5 GiB) and whole
directory trees (parallel copies, then one batched delete), with a crash record.

A directory rename writes a record to ``cache_dir/journal/rename-<id>.json`` before the
first copy and removes it after the last delete.  A mount that finds such a record rolls
the rename forward: every source key still present is copied (if its target is missing)
and deleted, so keys never stay silently in both places.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..s3.objects import MAX_PART, MAX_PARTS
from .journal import fsync_dir

log = logging.getLogger(__name__)

COPY_PART = 1 << 30       # UploadPartCopy part size for big objects (5 MiB..5 GiB allowed)


def copy_part_plan(size: int, part: int = COPY_PART) -> list:
    """[(number, start, end)] for a multipart copy of ``size`` bytes (<= 10,000 parts)."""
    while (size + part - 1) // part > MAX_PARTS:
        part *= 2
    return [(n + 1, start, min(start + part, size)) for n, start in enumerate(range(0, size, part))]


def copy_object(client, src: str, dst: str, size: int, metadata=None, headers=None, etag=None, pool=None) -> str:
    """Copy ``src`` to ``dst`` on the server.  ``metadata`` None keeps the source's user
    metadata and content headers; else both are replaced (``headers``: every content
    header the copy should have).  ``etag``: only from that version of ``src``."""
    if size <= MAX_PART:
        return client.copy(src, dst, metadata, headers, if_match=etag)
    if metadata is None:
        info = client.head(src)
        metadata, headers = info.metadata or {}, info.headers
    upload_id = client.create_multipart(dst, metadata, headers)
    try:
        plan = copy_part_plan(size)
        run = pool.map if pool is not None else map
        etags = list(run(lambda p: client.upload_part_copy(dst, upload_id, p[0], src, p[1], p[2], etag), plan))
        return client.complete_multipart(dst, upload_id, [(p[0], e) for p, e in zip(plan, etags)])
    except BaseException:
        client.abort_multipart(dst, upload_id)
        raise


class TreeMover:
    def __init__(self, client, journal_dir: str, threads: int = 16):
        self.client = client
        self.dir = journal_dir
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="copy")

    def close(self):
        self.pool.shutdown(wait=True)

    def _record_path(self, rid: str) -> str:
        return os.path.join(self.dir, f"rename-{rid}.json")

    def move_tree(self, src_prefix: str, dst_prefix: str) -> list:
        """Move every key below ``src_prefix`` to ``dst_prefix`` (both end with '/').
        Returns [(src_key, src_etag, src_last_modified, dst_key, dst_etag)] of the keys copied."""
        rid = uuid.uuid4().hex
        path = self._record_path(rid)
        with open(path + ".tmp", "w") as f:
            json.dump({"src": src_prefix, "dst": dst_prefix}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        fsync_dir(self.dir)
        moves = self._roll_forward(src_prefix, dst_prefix)
        os.unlink(path)
        return moves

    def _roll_forward(self, src_prefix: str, dst_prefix: str, only_missing: bool = False):
        objects = []
        for page in self.client.list_all(src_prefix, delimiter=""):
            objects.extend(page.objects)
        existing = set()
        if only_missing:
            for page in self.client.list_all(dst_prefix, delimiter=""):
                existing.update(o.key for o in page.objects)

        def one(obj):
            dst = dst_prefix + obj.key[len(src_prefix):]
            if dst not in existing:
                return obj.key, obj.etag, obj.mtime, dst, copy_object(self.client, obj.key, dst, obj.size)
            return None

        moves = [m for m in self.pool.map(one, objects) if m is not None]
        self.client.delete_many([o.key for o in objects])
        return moves

    def recover(self):
        """Finish directory renames a crash interrupted."""
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("rename-") and name.endswith(".json"):
                path = os.path.join(self.dir, name)
                try:
                    with open(path) as f:
                        rec = json.load(f)
                    n = len(self._roll_forward(rec["src"], rec["dst"], only_missing=True))
                    log.warning("finished interrupted rename %s -> %s (%d keys copied)", rec["src"], rec["dst"], n)
                    os.unlink(path)
                except Exception:
                    log.error("could not finish interrupted rename record %s", name, exc_info=True)
