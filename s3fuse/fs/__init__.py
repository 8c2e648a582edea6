"""POSIX semantics in plain Python: the filesystem the FUSE adapter exposes.

Testable without a mount.  Raises the error kinds of ``s3fuse.errors`` and returns plain
types (``Attr``, ``StatFs``); never picks an errno or builds a FUSE structure.  This
facade only routes: the work is done by

- ``files.FileOps``    lookups, listings, open/read/write/truncate/flush/release
- ``names.NameOps``    mkdir, rmdir, unlink, symlink, link, rename
- ``setattr.AttrOps``  chmod, chown, utimens, extended attributes
- ``versions.VersionOps``  a file's versions and their restore (reserved xattr names)
- ``handles.HandleTable``       open handles, files, deferred deletes, kernel-cache map
- ``commits.CommitScheduler``   key locks, pending uploads and their retries, wait_idle
- ``builder.build``             builds the subsystems (meta/, data/, write/) for a mount

See docs/design/core.md for the lock order and the errno rule.
"""
from __future__ import annotations

import logging

from .. import metrics
from ..data.memory import process_rss
from ..write import recovery
from .files import FileOps, StatFs
from .names import NameOps
from .builder import Parts, build
from .cachedir import CacheDir, lock_cache_dir
from .setattr import UTIME_NOW, UTIME_OMIT, AttrOps
from .versions import VersionOps
from .writeback import Writeback

__all__ = ["CacheDir", "Filesystem", "StatFs", "build", "lock_cache_dir"]

log = logging.getLogger(__name__)


class Filesystem:
    UTIME_NOW, UTIME_OMIT = UTIME_NOW, UTIME_OMIT

    def __init__(self, parts: Parts):
        self.parts = parts
        self.cfg = parts.cfg
        self.client = parts.client
        self.cache = parts.cache
        self.files = FileOps(parts)
        self.names = NameOps(parts, self.files)
        self.attrs = AttrOps(parts, self.files)
        if self.cfg.writeback:
            parts.writeback = Writeback(self.files.commit, self.files.pending.writeback_done,
                                        threads=self.cfg.writeback_threads, max_files=self.cfg.writeback_files,
                                        max_bytes=self.cfg.writeback_bytes)
        parts.commits.retry_file = self.files.pending.retry_file
        if self.cfg.snapshot is None:
            self.files.pending.adopt_records()   # uploads an earlier mount's closes accepted
        f, n, a = self.files, self.names, self.attrs
        # the operations, as the FUSE adapter calls them
        self.getattr, self.readdir, self.readlink = f.getattr, f.readdir, f.readlink
        self.statfs, self.access = f.statfs, f.access
        self.open, self.create, self.read, self.write = f.open, f.create, f.read, f.write
        self.read_pieces = f.read_pieces
        self.truncate, self.flush, self.fsync, self.release = f.truncate, f.flush, f.fsync, f.release
        self.fsyncdir = f.fsyncdir
        self.mkdir, self.rmdir, self.unlink = n.mkdir, n.rmdir, n.unlink
        self.symlink, self.link, self.rename, self.mknod = n.symlink, n.link, n.rename, n.mknod
        self.chmod, self.chown, self.utimens = a.chmod, a.chown, a.utimens
        self.versions = VersionOps(parts, f, a)
        self.getxattr, self.listxattr = self.versions.getxattr, a.listxattr
        self.setxattr, self.removexattr = self.versions.setxattr, a.removexattr

    @classmethod
    def for_mount(cls, cfg, client) -> "Filesystem":
        return cls(build(cfg, client))

    # -- life cycle --------------------------------------------------------------------------
    def start_background(self, retry_interval: float = 30.0):
        """After mount: finish what a crash left (renames, abandoned writes), then retry
        failed uploads every ``retry_interval`` seconds (a snapshot mount: nothing to do)."""
        p = self.parts
        if self.cfg.snapshot is not None:
            return
        if p.deletes is not None:
            p.deletes.start()         # queued deletes, an earlier mount's first

        def leftovers():
            p.mover.recover()
            for entry in p.writing_leftovers:
                recovery.abort_writing(p.client, p.journal, entry)
            p.writing_leftovers = []
            if p.writeback is not None:
                for f in p.commits.pending_files():     # closed files of an earlier mount
                    p.writeback.submit(f)
        p.commits.start(retry_interval, leftovers)

    def retry_pending(self) -> int:
        return self.parts.commits.retry_pending()

    def wait_idle(self, timeout: float) -> bool:
        return self.parts.commits.wait_idle(timeout)

    def shutdown(self):
        """Unmount: commit what is still open (best effort); pending uploads stay in the journal."""
        self.parts.commits.stop()
        self.files.commit_all()

    def close(self):
        wb = self.parts.writeback
        if wb is not None and not wb.drain(self.DRAIN_SECONDS):
            log.warning("unmount: uploads still queued after %d s; they stay in the journal and the next "
                        "mount (or s3fuse resume) finishes them", self.DRAIN_SECONDS)
        deletes = self.parts.deletes
        if deletes is not None and deletes.pending_below("") and not deletes.flush("", self.DRAIN_SECONDS):
            log.warning("unmount: deletes still queued after %d s; they stay in %s and the next mount (or "
                        "s3fuse resume) sends them", self.DRAIN_SECONDS, deletes.dir)
        if not self.wait_idle(300):
            log.warning("unmount: uploads still running after 300 s; they stay in the journal")
        self.shutdown()
        self.parts.close()

    DRAIN_SECONDS = 600

    def gauges(self) -> dict:
        """The facts of this mount that ``stats`` (``s3fuse status``) and the metrics
        endpoint (``metrics.mount_collector``) both show: one source for both."""
        p = self.parts
        return {"cache_hits": p.blocks.hits, "cache_misses": p.blocks.misses, "cache_bytes": p.blocks.volume(),
                "bytes_fetched": p.fetcher.bytes_fetched, "uploads": p.uploader.live(),
                "uploads_pending": p.commits.pending_count(), "journal_records": p.journal.count(),
                "open_handles": p.handles.count(), "bucket": p.client.bucket, "prefix": p.mapper.prefix}

    def stats(self) -> dict:
        p = self.parts
        g = self.gauges()
        hits, misses = g["cache_hits"], g["cache_misses"]
        return {"bucket": g["bucket"], "prefix": g["prefix"],
                "requests": dict(p.client.request_counts), "errors": p.client.error_count,
                "transport": p.client.transport_stats(),
                "cache": {"hits": hits, "misses": misses, "bytes": g["cache_bytes"], "dropped": p.blocks.dropped,
                          "torn": p.blocks.torn, "orphans_removed": p.blocks.orphans,
                          "not_cached_disk_full": p.blocks.not_cached, "evicted_for_room": p.blocks.evicted,
                          "disk_free": p.space.free() if p.space else None,
                          "min_free": p.space.min_free if p.space else None,
                          "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None},
                "bytes_fetched": g["bytes_fetched"], "open_handles": g["open_handles"],
                "uploads": g["uploads"], "journal_pending": g["journal_records"],
                "uploads_pending": g["uploads_pending"],
                "parts_sent": p.uploader.parts_sent, "parts_reused": p.uploader.parts_reused,
                "parts_copied": p.uploader.parts_copied, "bytes_copied": p.uploader.bytes_copied,
                "bytes_sent": metrics.S3_SENT.total(), "bytes_received": metrics.S3_RECEIVED.total(),
                "writeback": p.writeback.status() if p.writeback is not None else None,
                "deletes": p.deletes.status() if p.deletes is not None else None,
                "memory": dict(p.budget.snapshot(), pool=p.buffers.snapshot(), **process_rss())}
