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
from .errors import ConfigError
from .data.blockcache import BlockCache
from .data.reader import BlockFetcher, PinnedObject, Reader
from .meta.attrs import Defaults
from .meta.cache import KnownMetadata, MetaCache
from .meta.namespace import Namespace
from .meta.attrs import NS, Attr, default_attr, now_ns, to_metadata
from .meta.cache import DirListing
from .paths import KEY_MAX, KeyMapper, split, valid_name
from .write import recovery
from .write.copy import TreeMover, copy_object
from .write.journal import Journal
from .write.openfile import OpenFile
from .write.uploader import Uploader

log = logging.getLogger(__name__)


def lock_cache_dir(cache_dir: str):
    """One process per cache_dir (its journal and staging files are not shared)."""
    import fcntl
    f = open(os.path.join(cache_dir, "lock"), "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ConfigError(f"cache_dir {cache_dir} is in use by another s3fuse process") from None
    return f


@dataclass
class DeferredDelete:
    """An object unlinked (or renamed away) while open for reading: its name is hidden at
    once, the key is deleted when the last of ``fhs`` closes - unless a new object took
    over the key meanwhile (``cancelled``)."""
    key: str
    fhs: set
    cancelled: bool = False


@dataclass
class Handle:
    path: str
    flags: int
    reader: Optional[Reader] = None
    file: Optional[OpenFile] = None     # set when the path is open for writing
    writable: bool = False
    deferred: Optional[DeferredDelete] = None


class Filesystem:
    def __init__(self, cfg: MountConfig, client):
        self.cfg = cfg
        self.client = client
        self.mapper = KeyMapper(cfg.prefix)
        file_mode, dir_mode = cfg.modes
        self.defaults = Defaults(uid=cfg.uid, gid=cfg.gid, file_mode=file_mode, dir_mode=dir_mode)
        os.makedirs(cfg.cache_dir, mode=0o700, exist_ok=True)
        self._lockfile = lock_cache_dir(cfg.cache_dir)
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
        self._key_locks: dict = {}              # key -> Lock: a commit and a resume of one key never overlap
        self._stop = threading.Event()
        self._busy = threading.Condition()     # counts commits in progress (leaf)
        self._commits = 0
        self._deferred_deletes: dict = {}      # path -> DeferredDelete: hidden, deleted at last close
        self.mover = TreeMover(client, self.journal.dir)
        closed, writing = recovery.sort_out(self.journal, self.staging_dir, self.recovery_dir)
        self._writing_leftovers = writing
        for entry in closed:
            self._retry[entry.id] = entry

    def start_background(self, retry_interval: float = 30.0):
        """Resume leftover uploads now and retry failed ones periodically (after mount)."""
        threading.Thread(target=self._retry_loop, args=(retry_interval,), name="resume", daemon=True).start()

    def _retry_loop(self, interval: float):
        self.mover.recover()
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
            with self._key_lock(entry.key):
                with self._lock:
                    if entry.id not in self._retry:      # superseded by a later close meanwhile
                        continue
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

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no upload started by close/fsync is running (unmount, SIGTERM)."""
        with self._busy:
            return self._busy.wait_for(lambda: self._commits == 0, timeout)

    def close(self):
        if not self.wait_idle(300):
            log.warning("unmount: uploads still running after 300 s; they stay in the journal")
        self.shutdown()
        self.uploader.close()
        self.mover.close()
        self.fetcher.close()
        self.ns.close()
        self.blocks.close()
        self.known.close()

    # -- attributes and listings ---------------------------------------------------------
    def getattr(self, path: str, fh: Optional[int] = None) -> dict:
        if path is None and fh is not None:
            handle = self._handle(fh)
            if handle.file is not None:
                return handle.file.attr.to_stat()
            return self.ns.lookup(handle.path).to_stat()
        return self.getattr_attr(path).to_stat()

    def readdir(self, path: str):
        listing = self.ns.list_dir(path)
        yield ".", stat.S_IFDIR
        yield "..", stat.S_IFDIR
        hidden = {p for p in self._deferred_deletes}
        base = path.rstrip("/") + "/"
        entries = list(listing.entries.items())
        attrs = self.cache.get_attrs([base + name for name, _ in entries])
        for (name, is_dir), attr in zip(entries, attrs):
            if hidden and (base + name) in hidden:
                continue
            if attr is not None and attr.exact and (base + name) not in self._files:
                yield name, attr       # exact attributes known: READDIRPLUS can carry them
            else:
                yield name, (stat.S_IFDIR if is_dir else stat.S_IFREG)
        prefix = path.rstrip("/") + "/"
        with self._lock:
            fresh = [p[len(prefix):] for p, f in self._files.items()
                     if p.startswith(prefix) and "/" not in p[len(prefix):] and not f.unlinked]
        for name in fresh:
            if name not in listing.entries:
                yield name, stat.S_IFREG

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
        try:
            attr = self.getattr_attr(path)
        except errors.NotFound:
            # The kernel sent OPEN, so it still caches the name, but S3 has no such object
            # (a failed upload, a delete by another client).  ESTALE makes the VFS walk the
            # path again with a fresh LOOKUP: then CREATE for O_CREAT, else ENOENT.
            raise errors.FsError(path, errno.ESTALE) from None
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
        if path in self._deferred_deletes:
            raise errors.NotFound(path)
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
            fh, _ = self.open(path, flags)     # O_CREAT on an existing file: a plain open
            return fh
        now = now_ns()
        attr = Attr(mode=stat.S_IFREG | (mode & 0o7777), uid=uid, gid=gid, size=0, mtime_ns=now, atime_ns=now,
                    ctime_ns=now, exact=True)
        self._claim_name(path, same_key=True)
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
        try:
            return handle.reader.read(offset, size)
        except errors.ObjectChanged:
            # The object changed on the server since open: the next open must look again.
            self.cache.invalidate(handle.path)
            raise

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

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _commit(self, f: OpenFile):
        with self._busy:
            self._commits += 1
        try:
            with self._key_lock(f.key):
                result = f.commit()
                if result is not None:
                    # older failed uploads of this key must never be resumed over it
                    with self._lock:
                        stale = [e for e in self._retry.values() if e.key == f.key]
                        for e in stale:
                            del self._retry[e.id]
                    for e in stale:
                        recovery.supersede(self.client, self.journal, e, self.recovery_dir)
        finally:
            with self._busy:
                self._commits -= 1
                self._busy.notify_all()
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
            key, hidden = None, []
            d = handle.deferred if handle is not None else None
            if d is not None:
                d.fhs.discard(fh)
                if not d.fhs:
                    hidden = [p for p, v in self._deferred_deletes.items() if v is d]
                    for p in hidden:
                        del self._deferred_deletes[p]
                    if not d.cancelled:
                        key = d.key
        if key is not None:
            self.client.delete(key)
            for p in hidden:        # a listing made meanwhile still holds the name
                self.cache.forget(*split(p), p)
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

    # -- namespace ------------------------------------------------------------------------------
    def _check_new_name(self, path: str):
        parent, name = split(path)
        if len(name.encode("utf-8", "surrogateescape")) > 255 or \
                len(self.mapper.key(path).encode("utf-8", "surrogateescape")) + 1 > KEY_MAX:
            raise errors.FsError(path, errno.ENAMETOOLONG)
        if not valid_name(name):
            raise errors.FsError(path, errno.EINVAL)
        if not self.ns.lookup(parent).is_dir:
            raise errors.FsError(parent, errno.ENOTDIR)
        return parent, name

    def _exists(self, path: str) -> Optional[Attr]:
        try:
            return self.getattr_attr(path)
        except errors.NotFound:
            return None

    def mkdir(self, path: str, mode: int, uid: int, gid: int):
        self._check_writable(path)
        parent, name = self._check_new_name(path)
        if self._exists(path) is not None:
            raise errors.FsError(path, errno.EEXIST)
        now = now_ns()
        attr = Attr(mode=stat.S_IFDIR | (mode & 0o7777), uid=uid, gid=gid, size=0, mtime_ns=now, atime_ns=now,
                    ctime_ns=now, exact=True)
        marker = self.mapper.dir_prefix(path)
        etag = self.client.put(marker, b"", to_metadata(attr))
        self._claim_name(path, same_key=False)
        self.known.put(marker, etag, to_metadata(attr))
        self.cache.add(parent, name, path, attr.copy(etag=etag))
        empty = DirListing()
        empty.marker = True
        self.cache.put_dir(path, empty)

    def rmdir(self, path: str):
        self._check_writable(path)
        if path == "/":
            raise errors.FsError(path, errno.EBUSY)
        attr = self.getattr_attr(path)
        if not attr.is_dir:
            raise errors.FsError(path, errno.ENOTDIR)
        prefix = self.mapper.dir_prefix(path)
        page = self.client.list_page(prefix, None, delimiter="", max_keys=2)
        if any(o.key != prefix for o in page.objects) or self._open_below(path):
            raise errors.FsError(path, errno.ENOTEMPTY)
        self.client.delete(prefix)
        parent, name = split(path)
        self.cache.forget(parent, name, path)

    def _delete_or_defer(self, path: str, key: str):
        """Delete the object of ``path`` now, or when the last descriptor reading it closes
        (its name is hidden from then on).  Descriptors open for writing count too while
        their file still fetches unstaged bytes from this object (lazy base)."""
        with self._lock:
            fhs = {fh for fh, h in self._handles.items() if h.path == path and
                   (h.file is None or (h.file.base is not None and h.file.base.key == key))}
            if fhs:
                d = DeferredDelete(key, fhs)
                for fh in fhs:
                    self._handles[fh].deferred = d
                self._deferred_deletes[path] = d
        if not fhs:
            self.client.delete(key)

    def _claim_name(self, path: str, same_key: bool):
        """A new object takes ``path``: it is no longer hidden, and if the new object has the
        key of one still waiting for its deferred delete, that delete must not happen."""
        with self._lock:
            d = self._deferred_deletes.pop(path, None)
            if d is not None and same_key:
                d.cancelled = True

    def _open_below(self, path: str) -> list:
        below = path.rstrip("/") + "/"
        with self._lock:
            return [f for p, f in self._files.items() if p.startswith(below) and not f.unlinked]

    def unlink(self, path: str):
        self._check_writable(path)
        attr = self.getattr_attr(path)
        if attr.is_dir:
            raise errors.FsError(path, errno.EISDIR)
        key = self.mapper.key(path)
        with self._lock:
            f = self._files.pop(path, None)
            if f is not None:
                f.unlinked = True
        if f is not None:
            # Its descriptors keep working on the old content, like an unlinked inode: take
            # what is still only on the server now, before a new file can take the key.
            with f.lock:
                f._fill(0, f.size)
                f.base = None
        self._delete_or_defer(path, key)
        parent, name = split(path)
        self.cache.forget(parent, name, path)
        with self._lock:
            self._kernel_cached.pop(path, None)

    def symlink(self, path: str, target: str, uid: int, gid: int):
        self._check_writable(path)
        parent, name = self._check_new_name(path)
        if self._exists(path) is not None:
            raise errors.FsError(path, errno.EEXIST)
        body = target.encode("utf-8", "surrogateescape")
        now = now_ns()
        attr = Attr(mode=stat.S_IFLNK | 0o777, uid=uid, gid=gid, size=len(body), mtime_ns=now, atime_ns=now,
                    ctime_ns=now, exact=True)
        key = self.mapper.key(path)
        self._claim_name(path, same_key=True)
        etag = self.client.put(key, body, to_metadata(attr))
        self.known.put(key, etag, to_metadata(attr))
        self.cache.add(parent, name, path, attr.copy(etag=etag))

    def link(self, path: str, existing: str):
        """Hard link emulated as a server-side copy (hardlinks=copy) - they do not share
        later writes.  hardlinks=off -> EPERM."""
        self._check_writable(path)
        if self.cfg.hardlinks == "off":
            raise errors.FsError(path, errno.EPERM)
        src = self.getattr_attr(existing)
        if src.is_dir:
            raise errors.FsError(existing, errno.EPERM)
        parent, name = self._check_new_name(path)
        if self._exists(path) is not None:
            raise errors.FsError(path, errno.EEXIST)
        f = self._files.get(existing)
        if f is not None:
            self._commit(f)
            src = f.attr
        dst_key = self.mapper.key(path)
        metadata = to_metadata(src)
        self._claim_name(path, same_key=True)
        etag = copy_object(self.client, self.mapper.key(existing), dst_key, src.size, metadata,
                           pool=self.mover.pool)
        self.known.put(dst_key, etag, metadata)
        self.cache.add(parent, name, path, src.copy(etag=etag))

    def rename(self, old: str, new: str, flags: int = 0):
        self._check_writable(old)
        RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
        if flags & ~RENAME_NOREPLACE:
            raise errors.FsError(f"rename flags {flags:#x} not supported on S3", errno.EINVAL)
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/"):
            raise errors.FsError(new, errno.EINVAL)
        src = self.getattr_attr(old)
        new_parent, new_name = self._check_new_name(new)
        dst = self._exists(new)
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise errors.FsError(new, errno.EEXIST)
            if dst.is_dir and not src.is_dir:
                raise errors.FsError(new, errno.EISDIR)
            if src.is_dir and not dst.is_dir:
                raise errors.FsError(new, errno.ENOTDIR)
            if dst.is_dir:
                self.rmdir(new)          # raises ENOTEMPTY if it is not empty
        self._claim_name(new, same_key=not src.is_dir)
        if src.is_dir:
            self._rename_dir(old, new, src)
        else:
            self._rename_file(old, new, src)
        old_parent, old_name = split(old)
        self.cache.forget(old_parent, old_name, old)
        self.cache.invalidate_tree(old)
        with self._lock:
            self._kernel_cached.pop(old, None)
            self._kernel_cached.pop(new, None)

    def _rename_file(self, old: str, new: str, src: Attr):
        new_parent, new_name = split(new)
        old_key, new_key = self.mapper.key(old), self.mapper.key(new)
        with self._lock:
            f = self._files.get(old)
        if f is not None and not f.unlinked and f.dirty:
            # Open for writing with unsent data: the upload lands under the new name.
            with f.lock:
                f._fill(0, f.size)
                f._stop_stream()
                f.base = None
                with self._lock:
                    self._files.pop(old, None)
                    replaced = self._files.pop(new, None)
                    if replaced is not None:
                        replaced.unlinked = True
                    f.path, f.key = new, new_key
                    self._files[new] = f
                    for h in self._handles.values():
                        if h.file is f:
                            h.path = new
            if src.etag:
                self._delete_or_defer(old, old_key)
            self.cache.add(new_parent, new_name, new, f.attr)
            return
        with self._lock:
            replaced = self._files.pop(new, None)
            if replaced is not None and replaced is not f:
                replaced.unlinked = True      # its writer now writes to an unlinked file
            if f is not None and not f.unlinked:
                self._files.pop(old, None)
                f.path, f.key = new, new_key
                self._files[new] = f
                for h in self._handles.values():
                    if h.file is f:
                        h.path = new
        metadata = to_metadata(src)
        known = self.known.get(old_key, src.etag or "")
        etag = copy_object(self.client, old_key, new_key, src.size, None if known is not None else metadata,
                           etag=src.etag, pool=self.mover.pool)
        self.known.put(new_key, etag, known if known is not None else metadata)
        if f is not None and not f.unlinked:
            with f.lock:
                if f.base is not None:        # bytes not fetched yet now come from the new key
                    f.base = PinnedObject(new_key, etag, f.base.size)
                f.attr = f.attr.copy(etag=etag)
        self._delete_or_defer(old, old_key)
        self.cache.add(new_parent, new_name, new, src.copy(etag=etag))

    def _rename_dir(self, old: str, new: str, src: Attr):
        if self._open_below(old):
            for f in self._open_below(old):
                self._commit(f)
        old_prefix, new_prefix = self.mapper.dir_prefix(old), self.mapper.dir_prefix(new)
        if old == "/":
            raise errors.FsError(old, errno.EBUSY)
        moves = self.mover.move_tree(old_prefix, new_prefix)
        for src_key, src_etag, dst_key, dst_etag in moves:
            # a copy keeps the metadata: what is known of the source holds for the target
            meta = self.known.get(src_key, src_etag)
            if meta is not None:
                self.known.put(dst_key, dst_etag, meta)
        with self._lock:
            for p, f in list(self._files.items()):
                if p.startswith(old.rstrip("/") + "/"):
                    del self._files[p]
                    f.path = new + p[len(old):]
                    f.key = self.mapper.key(f.path)
                    self._files[f.path] = f
            for h in self._handles.values():
                if h.path.startswith(old.rstrip("/") + "/"):
                    h.path = new + h.path[len(old):]
            for p, d in list(self._deferred_deletes.items()):
                if p.startswith(old.rstrip("/") + "/"):     # its key was moved too
                    del self._deferred_deletes[p]
                    d.key = self.mapper.key(new + p[len(old):])
                    self._deferred_deletes[new + p[len(old):]] = d
        new_parent, new_name = split(new)
        self.cache.invalidate_tree(new)
        self.cache.add(new_parent, new_name, new, src)

    # -- attributes ------------------------------------------------------------------------------
    UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2

    def chmod(self, path: str, mode: int):
        self._setattr(path, lambda a: a.copy(mode=stat.S_IFMT(a.mode) | (mode & 0o7777)))

    def chown(self, path: str, uid: int, gid: int):
        self._setattr(path, lambda a: a.copy(uid=a.uid if uid in (-1, None) else uid,
                                             gid=a.gid if gid in (-1, None) else gid))

    def utimens(self, path: str, times):
        now = now_ns()

        def resolve(value, current):
            if value is None or value == self.UTIME_NOW:
                return now
            if value == self.UTIME_OMIT:
                return current
            return int(value)

        if times is None:
            self._setattr(path, lambda a: a.copy(atime_ns=now, mtime_ns=now, ctime_ns=now))
        else:
            atime, mtime = times
            self._setattr(path, lambda a: a.copy(atime_ns=resolve(atime, a.atime_ns),
                                                 mtime_ns=resolve(mtime, a.mtime_ns), ctime_ns=now))

    def _setattr(self, path: str, change):
        """Apply ``change`` to the attributes: with a file's pending upload if it has one,
        else by a metadata-only copy (directories: on the marker, created if implied)."""
        self._check_writable(path)
        f = self._files.get(path)
        if f is not None and not f.unlinked and f.dirty:
            f.set_attr(change(f.attr))
            return
        attr = self.getattr_attr(path)
        if attr.is_dir and not attr.exact:
            attr = self.ns.lookup(path)
        new = change(attr)
        if path == "/":
            self.cache.put_attr("/", new)    # the bucket root has no object to carry it
            return
        metadata = to_metadata(new)
        if new.is_dir:
            marker = self.mapper.dir_prefix(path)
            etag = self.client.put(marker, b"", metadata)
            self.known.put(marker, etag, metadata)
        else:
            key = self.mapper.key(path)
            extra = self.known.get(key, attr.etag or "") or {}
            if "s3fuse-md5" in extra:
                metadata["s3fuse-md5"] = extra["s3fuse-md5"]
            etag = copy_object(self.client, key, key, attr.size, metadata, etag=attr.etag, pool=self.mover.pool)
            self.known.put(key, etag, metadata)
            new = new.copy(etag=etag)
            if f is not None and not f.unlinked:
                f.attr = new
        parent, name = split(path)
        self.cache.add(parent, name, path, new.copy(exact=True))

    # -- extended attributes -------------------------------------------------------------------
    def _xattr_namespace_ok(self, name: str) -> bool:
        """Only ``user.*`` is stored.  Other namespaces answer ENOTSUP ("not supported
        here"), not ENODATA: ``ls -l`` then stops asking for security.selinux and the
        POSIX ACL of every entry on this filesystem (coreutils caches ENOTSUP per
        device), and cp/rsync treat it as "no ACLs, no labels"."""
        return name.startswith("user.")

    def getxattr(self, path: str, name: str) -> bytes:
        if not self._xattr_namespace_ok(name):
            raise errors.FsError(name, errno.ENOTSUP)
        attr = self._attr_with_xattrs(path)
        value = (attr.xattrs or {}).get(name)
        if value is None:
            raise errors.FsError(name, errno.ENODATA)
        return value

    def listxattr(self, path: str) -> list:
        return sorted((self._attr_with_xattrs(path).xattrs or {}).keys())

    def setxattr(self, path: str, name: str, value: bytes, options: int):
        if not self._xattr_namespace_ok(name):
            raise errors.FsError(name, errno.ENOTSUP)
        attr = self._attr_with_xattrs(path)
        current = dict(attr.xattrs or {})
        XATTR_CREATE, XATTR_REPLACE = 1, 2
        if options & XATTR_CREATE and name in current:
            raise errors.FsError(name, errno.EEXIST)
        if options & XATTR_REPLACE and name not in current:
            raise errors.FsError(name, errno.ENODATA)
        current[name] = bytes(value)
        self._setattr(path, lambda a: a.copy(xattrs=current))

    def removexattr(self, path: str, name: str):
        if not self._xattr_namespace_ok(name):
            raise errors.FsError(name, errno.ENOTSUP)
        current = dict(self._attr_with_xattrs(path).xattrs or {})
        if name not in current:
            raise errors.FsError(name, errno.ENODATA)
        del current[name]
        self._setattr(path, lambda a: a.copy(xattrs=current))

    def _attr_with_xattrs(self, path: str) -> Attr:
        attr = self.getattr_attr(path)
        if attr.exact or path == "/":
            return attr
        self.cache.invalidate(path)
        return self.ns.lookup(path)

    def stats(self) -> dict:
        hits, misses = self.blocks.hits, self.blocks.misses
        return {"bucket": self.client.bucket, "prefix": self.mapper.prefix,
                "requests": dict(self.client.request_counts), "errors": self.client.error_count,
                "lean_connections_opened": self.client.lean_connections_opened(),
                "cache": {"hits": hits, "misses": misses, "bytes": self.blocks.volume(),
                          "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None},
                "bytes_fetched": self.fetcher.bytes_fetched, "open_handles": len(self._handles),
                "uploads": self.uploader.live(), "journal_pending": len(self.journal.entries()),
                "parts_sent": self.uploader.parts_sent, "parts_reused": self.uploader.parts_reused}
