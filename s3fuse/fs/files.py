"""File operations: lookups as this mount sees them, listings, and the life of a file
handle (open/create, read, write, truncate, flush, release).

A path's attributes come from, in order: its OpenFile while open for writing (size and
times move with each write) or while its upload is pending (writeback, a failed upload
waiting for its retry, a record of an earlier mount: ``adopt_records``), nothing if it
waits for a deferred delete or, in writeback, its queued delete (hidden: deletes.py),
the namespace (caches, then S3).  Writes go to the
OpenFile's staging file and reach S3 at flush/fsync/last close through the commit
scheduler.
"""
from __future__ import annotations

import itertools
import logging
import os
import stat
from dataclasses import dataclass
from typing import Optional

from .. import errors
from ..data.reader import PinnedObject, Reader
from ..data.verify import WholeReadDigest
from ..meta.attrs import MD5_HEADER, Attr, now_ns
from ..meta.known import Known
from ..s3.objects import KEY_MAX
from ..paths import NAME_MAX, is_utf8, split, valid_name
from ..write.openfile import OpenFile
from .handles import Handle
from .verifyread import check_read
from .pending import PendingUploads
from .builder import Parts

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class StatFs:
    """What statvfs reports: object storage has no meaningful limit, tools need room."""
    block_size: int = 1 << 20
    blocks: int = (1 << 50) >> 20          # 1 PiB
    files: int = 1 << 32
    name_max: int = NAME_MAX


class FileOps:
    def __init__(self, parts: Parts):
        self.parts = parts          # .writeback is set once the Filesystem is built
        self.blocks = parts.blocks
        self.cache = parts.cache
        self.client = parts.client
        self.commits = parts.commits
        self.fetcher = parts.fetcher
        self.journal = parts.journal
        self.known = parts.known
        self.mapper = parts.mapper
        self.ns = parts.ns
        self.readahead = parts.readahead
        self.staging_dir = parts.staging_dir
        self.uploader = parts.uploader
        self.cfg = parts.cfg
        self.handles = parts.handles
        self.pending = PendingUploads(parts, self)
        self.deletes = parts.deletes
        if self.deletes is not None:
            self.deletes.on_refused = self._delete_refused

    # -- lookups ---------------------------------------------------------------------------
    def attr(self, path: str) -> Attr:
        """Attributes of ``path`` as this mount sees it; raises NotFound."""
        f = self.handles.live_file(path)
        if f is not None:
            return f.attr
        if self.handles.is_hidden(path):
            raise errors.NotFound(path)
        if self.deletes is not None and self.deletes.hidden(self.mapper.key(path)):
            attr = self.ns.lookup(path)      # the file is going; a directory made since stays
            if not attr.is_dir:
                raise errors.NotFound(path)
            return attr
        return self.ns.lookup(path)

    def exists(self, path: str) -> Optional[Attr]:
        try:
            return self.attr(path)
        except errors.NotFound:
            return None

    def getattr(self, path: Optional[str], fh: Optional[int] = None) -> Attr:
        if path is None and fh is not None:
            handle = self.handles.get(fh)
            if handle.file is not None:
                return handle.file.attr
            return self.ns.lookup(handle.path)
        return self.attr(path)

    def check_writable(self, path: str):
        if self.cfg.ro:
            raise errors.ReadOnly(path)

    def new_name(self, path: str, is_dir: bool = False):
        """Checks for a name about to be created: its length (name, and the object key
        with the '/' a directory marker adds), its form, a directory as parent.
        Returns (parent, name)."""
        parent, name = split(path)
        if not is_utf8(name):
            raise errors.NotUtf8Name(f"{path!r}: the name is not UTF-8 (S3 keys are)")
        key = self.mapper.key(path) + ("/" if is_dir else "")
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX or \
                len(key.encode("utf-8", "surrogateescape")) > KEY_MAX:
            raise errors.NameTooLong(path)
        if not valid_name(name):
            raise errors.InvalidArgument(f"{path}: not a valid name")
        if not self.ns.lookup(parent).is_dir:
            raise errors.NotADirectory(parent)
        return parent, name

    def readdir(self, path: str):
        """(name, Attr) where exact attributes are known (READDIRPLUS may carry them), else
        (name, S_IFDIR or S_IFREG); a listing page at a time (``Namespace.iter_dir``)."""
        chunks = self.ns.iter_dir(path)
        first = next(chunks, [])         # a missing directory fails before any entry
        view = self.handles.dir_view(path)
        yield ".", stat.S_IFDIR
        yield "..", stat.S_IFDIR
        base = path.rstrip("/") + "/"
        # files whose delete is queued (writeback) and no new file took over
        queued = self.deletes.names_below(self.mapper.dir_prefix(path)) - set(view.new) if self.deletes else ()
        listed_new = set()
        for chunk in itertools.chain((first,), chunks):
            if view.new:
                listed_new.update(n for n, _ in chunk if n in view.new)
            entries = [(n, d) for n, d in chunk if n not in view.hidden and (d or n not in queued)]
            attrs = self.cache.get_attrs([base + name for name, _ in entries])
            for (name, is_dir), attr in zip(entries, attrs):
                if attr is not None and attr.exact and name not in view.writing:
                    yield name, attr
                else:
                    yield name, (stat.S_IFDIR if is_dir else stat.S_IFREG)
        for name in view.new:
            if name not in listed_new:
                yield name, stat.S_IFREG

    def readlink(self, path: str) -> str:
        attr = self.attr(path)
        if not attr.is_link:
            raise errors.InvalidArgument(f"{path}: not a symbolic link")
        data = self.client.get_range(self.mapper.key(path), 0, attr.size) if attr.size else b""
        return data.decode("utf-8", "surrogateescape")

    def statfs(self) -> StatFs:
        return StatFs()

    def access(self, path: str, mode: int):
        self.attr(path)

    # -- open / create -----------------------------------------------------------------------
    def _acquire(self, path: str, attr: Attr, truncate: bool = False, new: bool = False,
                 seen_open: bool = False) -> OpenFile:
        """The OpenFile of ``path`` (created if needed), with one more reference.
        ``seen_open``: ``attr`` is that of an OpenFile of ``path`` seen a moment ago; if it
        is gone now (its writeback upload finished meanwhile), ``attr`` may name the version
        before that upload, so the new file looks its attributes up again."""
        key = self.mapper.key(path)

        def make():
            nonlocal attr
            if seen_open and not new:
                try:
                    attr = self.attr(path)
                except errors.NotFound:
                    raise errors.Stale(f"{path}: gone from the server") from None
            base = None if new else PinnedObject(key, attr.etag or "", attr.size)
            origin = None if new else (lambda: self.version_info(key, attr))
            return OpenFile(path, key, attr, self.staging_dir, self.uploader, self.journal,
                            fetcher=self.fetcher, base=base, truncate=truncate, new=new, origin=origin,
                            space=self.parts.space)
        return self.handles.acquire_file(path, make)

    def version_info(self, key: str, attr: Attr) -> Optional[Known]:
        """User metadata and content headers of the object ``attr`` describes: from the
        store of known versions, else a HEAD (None: there is no such object)."""
        known = self.known.get(key, attr.etag or "", attr.modified)
        if known is not None:
            return known
        try:
            info = self.client.head(key)
        except errors.NotFound:
            return None
        self.known.learn(key, info.etag, info.mtime, info.metadata, info.headers)
        return Known(info.metadata or {}, info.headers or {}, info.mtime)

    def parent_changed(self, *paths: str):
        """Entries ``paths`` were added or removed: their directories' mtime and ctime
        become now (on this mount; S3 keeps no directory times)."""
        now = now_ns()
        for path in paths:
            self.cache.touch_dir(split(path)[0], now)

    def wrote(self, key: str, etag: str, metadata: dict, headers: Optional[dict], started: float):
        """The mount wrote version ``etag`` of ``key``: remember it (it needs no HEAD).
        ``started``: the server time (``client.server_now()``) before the request."""
        self.known.wrote(key, etag, metadata, headers, (started, self.client.server_now()))

    def open(self, path: str, flags: int):
        """Returns (fh, keep_kernel_cache)."""
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR)) or bool(flags & os.O_TRUNC)
        if writable:
            self.check_writable(path)
        seen_open = self.handles.live_file(path) is not None
        try:
            attr = self.attr(path)
        except errors.NotFound:
            # The kernel sent OPEN, so it still caches the name, but S3 has no such object
            # (a failed upload, a delete by another client).  ESTALE makes the VFS walk the
            # path again with a fresh LOOKUP: then CREATE for O_CREAT, else ENOENT.
            raise errors.Stale(f"{path}: gone from the server") from None
        if attr.is_dir:
            raise errors.IsADirectory(path)
        if writable or self.handles.live_file(path) is not None:
            f = self._acquire(path, attr, truncate=bool(flags & os.O_TRUNC), seen_open=seen_open)
            if flags & os.O_TRUNC and writable and f.size:
                f.truncate(0)
            return self._file_handle(path, flags, f, writable), False
        obj = PinnedObject(self.mapper.key(path), attr.etag or "", attr.size)
        reader = Reader(self.fetcher, obj, self.cfg.readahead // self.cfg.block_size)
        verify = self._digest(obj, attr) if self.cfg.verify else None
        fh = self.handles.add(Handle(path, flags, reader, verify=verify))
        if self.readahead is not None:
            self.readahead.opened(path)
        return fh, self.handles.keep_kernel_cache(path, obj.etag)

    def _digest(self, obj: PinnedObject, attr: Attr) -> Optional[WholeReadDigest]:
        """-o verify: a digest for a whole read of ``obj`` if it carries its MD5 (known
        metadata, else a HEAD: only with -o verify and meta=list is that a new request)."""
        if not obj.size:
            return None
        known = self.version_info(obj.key, attr)
        md5 = (known.metadata or {}).get(MD5_HEADER) if known is not None else None
        return WholeReadDigest(obj.size, md5) if md5 else None

    def create(self, path: str, mode: int, uid: int, gid: int, flags: int = 0) -> int:
        self.check_writable(path)
        parent, name = self.new_name(path)
        existing = self.exists(path)
        if existing is not None:
            if flags & os.O_EXCL:
                raise errors.Exists(path)
            if existing.is_dir:
                raise errors.IsADirectory(path)
            fh, _ = self.open(path, flags)     # O_CREAT on an existing file: a plain open
            return fh
        now = now_ns()
        attr = Attr(mode=stat.S_IFREG | (mode & 0o7777), uid=uid, gid=gid, size=0, mtime_ns=now, atime_ns=now,
                    ctime_ns=now, exact=True)
        self.handles.claim_name(path, same_key=True)
        f = self._acquire(path, attr, new=True)
        self.cache.add(parent, name, path, f.attr)
        self.handles.forget_kernel_cache(path)
        self.parent_changed(path)
        return self._file_handle(path, flags, f, True)

    def _file_handle(self, path: str, flags: int, f: OpenFile, writable: bool) -> int:
        """A handle of an OpenFile; one that may read is counted (staging of a file with
        readers is never released: write/release.py)."""
        if (flags & os.O_ACCMODE) != os.O_WRONLY:
            f.release.readers(+1)
        return self.handles.add(Handle(path, flags, file=f, writable=writable))

    # -- data ----------------------------------------------------------------------------------
    def read(self, fh: int, size: int, offset: int):
        pieces = self.read_pieces(fh, size, offset)
        if not pieces:
            return b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read_pieces(self, fh: int, size: int, offset: int, regions: bool = False) -> list:
        """``read`` as a list of buffers in order (views of cached blocks, no copies): what
        the FUSE adapter copies into libfuse's buffer piece by piece.  ``regions``: blocks
        cached on disk may come as ``FileRegion``s, read by libfuse (not with -o verify)."""
        handle = self.handles.get(fh)
        if handle.file is not None:
            return [handle.file.read(offset, size)]
        try:
            pieces = handle.reader.read_pieces(offset, size, regions and handle.verify is None)
        except errors.ObjectChanged:
            # The object changed on the server since open: the next open must look again.
            self.cache.invalidate(handle.path)
            raise
        if handle.verify is not None:
            for piece in pieces:
                check_read(self, handle, offset, piece)
                offset += len(piece)
        return pieces

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self.handles.get(fh)
        if not handle.writable:
            raise errors.BadHandle(f"{handle.path}: not open for writing")
        return handle.file.write(offset, data)

    def truncate(self, path: Optional[str], length: int, fh: Optional[int] = None):
        if length < 0:
            raise errors.InvalidArgument(f"{path}: negative length")
        if fh is not None:
            handle = self.handles.get(fh)
            if handle.file is None:
                raise errors.BadHandle(f"{path}: not open for writing")
            handle.file.truncate(length)
            return
        self.check_writable(path)
        attr = self.attr(path)
        if attr.is_dir:
            raise errors.IsADirectory(path)
        f = self._acquire(path, attr)
        try:
            f.truncate(length)
            self.commit(f)
        finally:
            self._release_file(f)

    def commit(self, f: OpenFile):
        """Upload ``f`` now (flush, fsync, last close, before a rename or link); returns
        (etag, entry), or None if there was nothing to upload."""
        result = self.commits.commit(f)
        if result is None:
            return
        etag, entry = result
        self.known.wrote(f.key, etag, entry.metadata, entry.headers, self.uploader.window(entry))
        if not f.unlinked:
            parent, name = split(f.path)
            self.cache.add(parent, name, f.path, f.attr)
        return result

    def flush(self, fh: int):
        """close(): upload now (durable close), or seal and queue (writeback)."""
        handle = self.handles.get(fh)
        if handle.writable:
            if self.parts.writeback is not None:
                self.pending.writeback_close(handle.file)
            else:
                self.commit(handle.file)

    def fsync(self, fh: int):
        """The file's content is in S3 when fsync returns (also in writeback mode)."""
        handle = self.handles.get(fh)
        if handle.writable:
            self.commit(handle.file)

    def fsyncdir(self, path: str):
        """Writeback: wait until every closed file is uploaded and every queued delete
        sent (sync of the mount)."""
        wb = self.parts.writeback
        if wb is not None:
            before = len(wb.abandoned)
            refused_before = len(self.deletes.refused) if self.deletes is not None else 0
            wb.drain(timeout=float("inf"), report=log.info)
            if self.deletes is not None:
                self.deletes.flush()
            lost = wb.abandoned[before:]
            if lost:      # failed for good meanwhile: say so, naming them (s3fuse sync exits 1)
                raise errors.WriteFailed(f"sync: not uploaded, kept in recovery/: {', '.join(lost[:10])}")
            kept = [self._path_of(k) for k in self.deletes.refused[refused_before:]] if self.deletes else []
            if kept:
                raise errors.WriteFailed(f"sync: delete refused by the server, still in the bucket: "
                                         f"{', '.join(kept[:10])}")

    def release(self, fh: int):
        handle, key, ended = self.handles.release(fh)
        try:
            if key is not None:
                self.delete_key(key)
                for p in ended:        # a listing made meanwhile still holds the name
                    self.cache.forget(*split(p), p)
        finally:
            self.handles.end_deferred(ended)
        if handle is not None and handle.file is not None:
            if (handle.flags & os.O_ACCMODE) != os.O_WRONLY:
                handle.file.release.readers(-1)
            self._release_file(handle.file)

    def _release_file(self, f: OpenFile):
        """The last reference of ``f`` is gone.  A file with something to upload stays in
        the handle table until it is in the bucket: queued (writeback), or uploaded now and,
        if that fails, kept as a pending file (seen by lookups, retried) - never a record
        the mount does not show."""
        upload = (f.dirty or f.meta_dirty) and not f.unlinked and f.failed is None
        if not self.handles.drop_file_ref(f, keep=upload):
            return
        if upload and self.parts.writeback is not None:
            try:
                self.pending.writeback_close(f)
                return
            except Exception:
                log.error("%s: could not seal at release; uploading now", f.path, exc_info=True)
        if upload:
            try:
                self.commit(f)
            except Exception as exc:
                log.error("release %r: upload failed: %s; %s", f.path, errors.describe(exc),
                          getattr(exc, "action", None) or "not kept")
                log.debug("release %r: traceback", f.path, exc_info=True)
                if f.failed is None:
                    self.commits.add_pending_file(f)
                    return
        self.pending.finished(f, force=True)
        if not f.unlinked and f.dirty:
            self.cache.invalidate(f.path)

    def delete_key(self, key: str):
        """DeleteObject, after any upload of the key in progress (never a deleted file
        brought back by an upload that was still running)."""
        with self.commits.key_lock(key):
            self.client.delete(key)

    def delete_or_defer(self, path: str, key: str, replaced: Optional[OpenFile] = None, batch: bool = False):
        """Delete the object of ``path`` now, or when the last descriptor reading it closes
        (its name is hidden from then on).  Either way the pending uploads of ``key`` (and
        of ``replaced``, the unlinked file that had it) are cancelled now, under its lock.
        ``batch`` (unlink) with writeback: the delete is queued (deletes.py), not sent."""
        with self.commits.key_lock(key):
            self.pending.cancel_uploads(key, replaced)
            if not self.handles.defer_delete(path, key):
                if batch and self.parts.writeback is not None and self.deletes is not None:
                    self.deletes.add(key)      # durable in deletes/, sent in a batch (deletes.py)
                else:
                    self.client.delete(key)

    def _path_of(self, key: str) -> str:
        return self.mapper.path(key) if key.startswith(self.mapper.prefix) else key

    def _delete_refused(self, keys: list):
        """The server refused to delete ``keys`` for good: their objects stay, their names show again."""
        for key in keys:
            if key.startswith(self.mapper.prefix):
                path = self.mapper.path(key)
                self.cache.invalidate(path)
                self.cache.invalidate(split(path)[0])      # its listing left the name out

    def commit_all(self):
        """Unmount: commit what is still open (best effort); failures stay in the journal."""
        for f in self.handles.open_files():
            try:
                self.commit(f)
            except Exception as exc:
                log.error("unmount %r: upload failed: %s; %s", f.path, errors.describe(exc),
                          getattr(exc, "action", None) or "not kept")
                log.debug("unmount %r: traceback", f.path, exc_info=True)
