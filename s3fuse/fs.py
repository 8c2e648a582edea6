"""POSIX semantics in plain Python: the filesystem the FUSE adapter exposes.

Testable without a mount.  Raises typed errors (``s3fuse.errors``); never touches errno
mapping or FUSE structures.  Subsystems: ``meta`` (attributes, listings), ``data``
(block cache, read-ahead), ``write`` (staging, journal, uploads).
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
from dataclasses import dataclass
from typing import Optional

from . import errors
from .config import MountConfig
from .data.blockcache import BlockCache
from .data.reader import BlockFetcher, PinnedObject, Reader
from .meta.attrs import Defaults
from .meta.cache import KnownMetadata, MetaCache
from .meta.namespace import Namespace
from .meta.attrs import Attr, apply_metadata, now_ns
from .paths import KEY_MAX, KeyMapper, split, valid_name
from .write import recovery
from .write.journal import Journal
from .write.openfile import OpenFile
from .write.uploader import Uploader

log = logging.getLogger(__name__)


@dataclass
class Handle:
    path: str
    flags: int
    reader: Optional[Reader] = None
    file: Optional[OpenFile] = None     # set when the path is open for writing
    writable: bool = False


class Filesystem:
    def __init__(self, cfg: MountConfig, client):
        self.cfg = cfg
        self.client = client
        self.mapper = KeyMapper(cfg.prefix)
        file_mode, dir_mode = cfg.modes
        self.defaults = Defaults(uid=cfg.uid, gid=cfg.gid, file_mode=file_mode, dir_mode=dir_mode)
        os.makedirs(cfg.cache_dir, mode=0o700, exist_ok=True)
        self.cache = MetaCache(cfg.attr_ttl, cfg.dir_ttl, cfg.negative_ttl)
        self.known = KnownMetadata(os.path.join(cfg.cache_dir, "meta"), client.bucket)
        self.ns = Namespace(client, self.mapper, self.cache, self.known, self.defaults,
                            exact=(cfg.meta == "exact"))
        self.blocks = BlockCache(os.path.join(cfg.cache_dir, "blocks"), cfg.cache_size, client.bucket)
        self.fetcher = BlockFetcher(client, self.blocks, cfg.block_size, threads=cfg.read_threads)
        self.staging_dir = os.path.join(cfg.cache_dir, "staging")
        self.recovery_dir = os.path.join(cfg.cache_dir, "recovery")
        os.makedirs(self.staging_dir, mode=0o700, exist_ok=True)
        self.journal = Journal(os.path.join(cfg.cache_dir, "journal"))
        self.uploader = Uploader(client, self.journal, threads=cfg.upload_threads, part_size=cfg.part_size,
                                 threshold=cfg.multipart_threshold)
        self._handles: dict = {}
        self._files: dict = {}                  # path -> OpenFile (open for writing)
        self._fh_counter = itertools.count(1)
        # Lock order: Filesystem._lock -> (nothing).  It guards _handles, _files and
        # _kernel_cached only; OpenFile.lock is taken after releasing it.
        self._lock = threading.Lock()
        self._kernel_cached: dict = {}          # path -> etag the kernel page cache holds
        self._retry: dict = {}                  # journal id -> Entry waiting for a retry
        self._stop = threading.Event()
        closed, writing = recovery.sort_out(self.journal, self.staging_dir, self.recovery_dir)
        self._writing_leftovers = writing
        for entry in closed:
            self._retry[entry.id] = entry

    def start_background(self, retry_interval: float = 30.0):
        """Resume leftover uploads now and retry failed ones periodically (after mount)."""
        threading.Thread(target=self._retry_loop, args=(retry_interval,), name="resume", daemon=True).start()

    def _retry_loop(self, interval: float):
        for entry in self._writing_leftovers:
            recovery.abort_writing(self.client, self.journal, entry)
        self._writing_leftovers = []
        while not self._stop.is_set():
            self.retry_pending()
            self._stop.wait(interval)

    def retry_pending(self) -> int:
        """Try every pending upload once; returns how many are still pending."""
        with self._lock:
            entries = list(self._retry.values())
        for entry in entries:
            if self._stop.is_set():
                break
            try:
                etag = recovery.resume(self.uploader, self.journal, entry)
            except Exception as exc:
                log.error("upload of %r still failing (%s); staging kept, will retry", entry.key, exc)
                continue
            with self._lock:
                self._retry.pop(entry.id, None)
            if entry.key.startswith(self.mapper.prefix):
                path = self.mapper.path(entry.key)
                self.known.put(entry.key, etag, entry.metadata)
                self.cache.invalidate(path)
        with self._lock:
            return len(self._retry)

    def shutdown(self):
        """Unmount: commit what is still open (best effort); pending uploads stay in the journal."""
        self._stop.set()
        with self._lock:
            files = list(self._files.values())
        for f in files:
            try:
                self._commit(f)
            except Exception:
                log.error("%s: upload at unmount failed; kept in the journal", f.path, exc_info=True)

    def close(self):
        self.shutdown()
        self.uploader.close()
        self.fetcher.close()
        self.ns.close()
        self.blocks.close()
        self.known.close()

    # -- attributes and listings ---------------------------------------------------------
    def getattr(self, path: str, fh: Optional[int] = None) -> dict:
        f = self._files.get(path)
        if f is not None and not f.unlinked:
            return f.attr.to_stat()
        if fh is not None and path is None:
            handle = self._handle(fh)
            if handle.file is not None:
                return handle.file.attr.to_stat()
        return self.ns.lookup(path).to_stat()

    def readdir(self, path: str):
        listing = self.ns.list_dir(path)
        yield ".", stat.S_IFDIR
        yield "..", stat.S_IFDIR
        for name, is_dir in list(listing.entries.items()):
            yield name, (stat.S_IFDIR if is_dir else stat.S_IFREG)

    def readlink(self, path: str) -> str:
        attr = self.ns.lookup(path)
        if not attr.is_link:
            raise errors.FsError(path, errno.EINVAL)
        data = self.client.get_range(self.mapper.key(path), 0, attr.size or 4096) if attr.size else b""
        return data.decode("utf-8", "surrogateescape")

    def statfs(self) -> dict:
        block = 1 << 20
        total = 1 << 50   # 1 PiB: object storage has no meaningful limit; tools need room
        return {"f_bsize": block, "f_frsize": block, "f_blocks": total // block, "f_bfree": total // block,
                "f_bavail": total // block, "f_files": 1 << 32, "f_ffree": 1 << 32, "f_favail": 1 << 32,
                "f_namemax": 255}

    def access(self, path: str, mode: int):
        self.ns.lookup(path)

    # -- open / read / write / release --------------------------------------------------------
    def _check_writable(self, path: str):
        if self.cfg.ro:
            raise errors.FsError(path, errno.EROFS)

    def _new_handle(self, handle: Handle) -> int:
        with self._lock:
            fh = next(self._fh_counter)
            self._handles[fh] = handle
        return fh

    def _open_file(self, path: str, attr: Attr, truncate: bool = False, new: bool = False) -> OpenFile:
        """The OpenFile of ``path`` (created if needed), with one more reference."""
        with self._lock:
            f = self._files.get(path)
            if f is not None and not f.unlinked:
                f.refs += 1
                return f
        base = None if new else PinnedObject(self.mapper.key(path), attr.etag or "", attr.size)
        f = OpenFile(path, self.mapper.key(path), attr, self.staging_dir, self.uploader, self.journal,
                     fetcher=self.fetcher, base=base, truncate=truncate, new=new)
        with self._lock:
            other = self._files.get(path)
            if other is not None and not other.unlinked:   # lost a race: use the other one
                other.refs += 1
                f.discard()
                return other
            f.refs = 1
            self._files[path] = f
        return f

    def open(self, path: str, flags: int):
        """Returns (fh, keep_kernel_cache)."""
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR)) or bool(flags & os.O_TRUNC)
        if writable:
            self._check_writable(path)
        attr = self.getattr_attr(path)
        if attr.is_dir:
            raise errors.FsError(path, errno.EISDIR)
        f = self._files.get(path)
        if writable or (f is not None and not f.unlinked):
            f = self._open_file(path, attr, truncate=bool(flags & os.O_TRUNC))
            if flags & os.O_TRUNC and writable and f.size:
                f.truncate(0)
            return self._new_handle(Handle(path, flags, file=f, writable=writable)), False
        obj = PinnedObject(self.mapper.key(path), attr.etag or "", attr.size)
        fh = self._new_handle(Handle(path, flags, Reader(self.fetcher, obj,
                                                         self.cfg.readahead // self.cfg.block_size)))
        with self._lock:
            keep = self._kernel_cached.get(path) == obj.etag
            self._kernel_cached[path] = obj.etag
        return fh, keep

    def getattr_attr(self, path: str) -> Attr:
        f = self._files.get(path)
        if f is not None and not f.unlinked:
            return f.attr
        return self.ns.lookup(path)

    def create(self, path: str, mode: int, uid: int, gid: int, flags: int = 0) -> int:
        self._check_writable(path)
        parent, name = split(path)
        if len(name.encode("utf-8", "surrogateescape")) > 255 or \
                len(self.mapper.key(path).encode("utf-8", "surrogateescape")) > KEY_MAX:
            raise errors.FsError(path, errno.ENAMETOOLONG)
        if not valid_name(name):
            raise errors.FsError(path, errno.EINVAL)
        if not self.ns.lookup(parent).is_dir:
            raise errors.FsError(parent, errno.ENOTDIR)
        existing = None
        try:
            existing = self.getattr_attr(path)
        except errors.NotFound:
            pass
        if existing is not None:
            if flags & os.O_EXCL:
                raise errors.FsError(path, errno.EEXIST)
            if existing.is_dir:
                raise errors.FsError(path, errno.EISDIR)
            fh, _ = self.open(path, flags | os.O_TRUNC | os.O_WRONLY)
            return fh
        now = now_ns()
        attr = Attr(mode=stat.S_IFREG | (mode & 0o7777), uid=uid, gid=gid, size=0, mtime_ns=now, atime_ns=now,
                    ctime_ns=now, exact=True)
        f = self._open_file(path, attr, new=True)
        self.cache.add(parent, name, path, f.attr)
        with self._lock:
            self._kernel_cached.pop(path, None)
        return self._new_handle(Handle(path, flags, file=f, writable=True))

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise errors.FsError(f"bad file handle {fh}", errno.EBADF) from None

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handle(fh)
        if handle.file is not None:
            return handle.file.read(offset, size)
        return handle.reader.read(offset, size)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise errors.FsError(handle.path, errno.EBADF)
        return handle.file.write(offset, data)

    def truncate(self, path: Optional[str], length: int, fh: Optional[int] = None):
        if length < 0:
            raise errors.FsError(str(path), errno.EINVAL)
        if fh is not None:
            handle = self._handle(fh)
            if handle.file is None:
                raise errors.FsError(str(path), errno.EBADF)
            handle.file.truncate(length)
            return
        self._check_writable(path)
        attr = self.getattr_attr(path)
        if attr.is_dir:
            raise errors.FsError(path, errno.EISDIR)
        f = self._open_file(path, attr)
        try:
            f.truncate(length)
            self._commit(f)
        finally:
            self._release_file(f)

    def _commit(self, f: OpenFile):
        result = f.commit()
        if result is None:
            return
        etag, metadata = result
        self.known.put(f.key, etag, metadata)
        if not f.unlinked:
            parent, name = split(f.path)
            self.cache.add(parent, name, f.path, f.attr)

    def flush(self, fh: int):
        handle = self._handle(fh)
        if handle.writable:
            self._commit(handle.file)

    def fsync(self, fh: int):
        self.flush(fh)

    def release(self, fh: int):
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is not None and handle.file is not None:
            self._release_file(handle.file)

    def _release_file(self, f: OpenFile):
        with self._lock:
            f.refs -= 1
            last = f.refs <= 0
            if last and self._files.get(f.path) is f:
                del self._files[f.path]
        if not last:
            return
        if (f.dirty or f.meta_dirty) and not f.unlinked and f.failed is None:
            try:
                self._commit(f)
            except Exception:
                log.error("%s: upload at release failed; kept for retry", f.path, exc_info=True)
        pending = f._pending
        if f.discard() and pending is not None:
            with self._lock:
                self._retry[pending.id] = pending
        if not f.unlinked:
            self.cache.invalidate(f.path) if f.dirty else None

    def stats(self) -> dict:
        hits, misses = self.blocks.hits, self.blocks.misses
        return {"bucket": self.client.bucket, "prefix": self.mapper.prefix,
                "requests": dict(self.client.request_counts), "errors": self.client.error_count,
                "cache": {"hits": hits, "misses": misses, "bytes": self.blocks.volume(),
                          "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None},
                "bytes_fetched": self.fetcher.bytes_fetched, "open_handles": len(self._handles),
                "uploads": self.uploader.live(), "journal_pending": len(self.journal.entries()),
                "parts_sent": self.uploader.parts_sent, "parts_reused": self.uploader.parts_reused}
