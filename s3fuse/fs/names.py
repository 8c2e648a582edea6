"""Namespace operations: mkdir, rmdir, unlink, symlink, link, rename.

S3 has no rename and no directories: a directory is a ``dir/`` marker or a prefix other
keys imply; a rename is a server-side copy then a delete (a directory rename copies every
key below it, with a crash record, see write/copy.py); a hard link is a copy.  Names of
objects still read by open descriptors are hidden and deleted at their last close
(``FileOps.delete_or_defer``).  Every operation that deletes a key or puts another object
at it cancels the key's pending uploads under its lock (``PendingUploads.cancel_uploads``):
a failed upload kept for its retry never brings a deleted file back or overwrites what
replaced it.
"""
from __future__ import annotations

import stat

from .. import errors
from ..meta.attrs import FILE_KINDS, MD5_HEADER, Attr, now_ns, object_metadata, to_metadata
from ..meta.cache import DirListing
from ..paths import split
from ..write.copy import copy_object
from .files import FileOps
from .builder import Parts

RENAME_NOREPLACE = 1
DELETE_WAIT = 120.0      # seconds rmdir / a directory rename waits for queued deletes below it


class NameOps:
    def __init__(self, parts: Parts, files: FileOps):
        self.parts = parts          # .writeback is set once the Filesystem is built
        self.cache = parts.cache
        self.cfg = parts.cfg
        self.client = parts.client
        self.known = parts.known
        self.mapper = parts.mapper
        self.mover = parts.mover
        self.ns = parts.ns
        self.files = files
        self.handles = parts.handles

    def mkdir(self, path: str, mode: int, uid: int, gid: int):
        self.files.check_writable(path)
        parent, name = self.files.new_name(path, is_dir=True)
        if self.files.exists(path) is not None:
            raise errors.Exists(path)
        now = now_ns()
        attr = Attr(mode=stat.S_IFDIR | (mode & 0o7777), uid=uid, gid=gid, size=0, mtime_ns=now, atime_ns=now,
                    ctime_ns=now, exact=True)
        marker = self.mapper.dir_prefix(path)
        started = self.client.server_now()
        etag = self.client.put(marker, b"", to_metadata(attr))
        self.handles.claim_name(path, same_key=False)
        self.files.wrote(marker, etag, to_metadata(attr), None, started)
        self.cache.add(parent, name, path, attr.copy(etag=etag))
        self.cache.put_dir(path, DirListing(marker=True))
        self.files.parent_changed(path)

    def rmdir(self, path: str):
        self.files.check_writable(path)
        if path == "/":
            raise errors.Busy("the mount root")
        if not self.files.attr(path).is_dir:
            raise errors.NotADirectory(path)
        prefix = self.mapper.dir_prefix(path)
        self._send_deletes_below(prefix)
        page = self.client.list_page(prefix, None, delimiter="", max_keys=2)
        if any(o.key != prefix for o in page.objects) or self.handles.files_below(path):
            raise errors.NotEmpty(path)
        self.client.delete(prefix)
        self._drop_folder_marker(path)
        self.cache.forget(*split(path), path)
        self.files.parent_changed(path)

    def _send_deletes_below(self, prefix: str):
        """Writeback: the queued deletes of keys below ``prefix`` are sent now (rmdir and
        directory renames list the keys on the server)."""
        deletes = self.parts.deletes
        if deletes is not None and deletes.pending_below(prefix) and not deletes.flush(prefix, DELETE_WAIT):
            raise errors.Busy(f"{prefix!r}: deletes of entries still pending after {DELETE_WAIT} s")

    def _drop_folder_marker(self, path: str) -> bool:
        """Delete the ``dir_$folder$`` object another tool made for directory ``path``."""
        marker = self.ns.folder_marker(path)
        if marker is not None:
            self.client.delete(marker)
            self.ns.forget_folder_marker(path)
        return marker is not None

    def unlink(self, path: str):
        self.files.check_writable(path)
        if self.files.attr(path).is_dir:
            raise errors.IsADirectory(path)
        key = self.mapper.key(path)
        f = self.handles.unlink_file(path)
        if f is not None and f.refs > 0:
            # Its descriptors keep working on the old content, like an unlinked inode: take
            # what is still only on the server now, before a new file can take the key.
            f.detach_from_base()
        self.files.delete_or_defer(path, key, replaced=f, batch=True)
        self.cache.forget(*split(path), path)
        self.handles.forget_kernel_cache(path)
        self.files.parent_changed(path)

    def mknod(self, path: str, mode: int, rdev: int, uid: int, gid: int):
        """mknod, mkfifo, bind(AF_UNIX): an empty object with the type in its mode (and the
        device number of a device node), as s3fs-fuse stores them."""
        self.files.check_writable(path)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in FILE_KINDS or kind == stat.S_IFLNK:
            raise errors.InvalidArgument(f"{path}: mknod of type {kind:#o}")
        parent, name = self.files.new_name(path)
        if self.files.exists(path) is not None:
            raise errors.Exists(path)
        now = now_ns()
        attr = Attr(mode=kind | (mode & 0o7777), uid=uid, gid=gid, size=0, mtime_ns=now, atime_ns=now,
                    ctime_ns=now, exact=True, rdev=rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0)
        self._put_empty(path, parent, name, attr, b"")

    def _put_empty(self, path: str, parent: str, name: str, attr: Attr, body: bytes):
        """A new object of ``attr`` with ``body`` (symlink target, or nothing) at ``path``."""
        key = self.mapper.key(path)
        self.handles.claim_name(path, same_key=True)
        started = self.client.server_now()
        with self.parts.commits.key_lock(key):
            self.files.pending.cancel_uploads(key)
            etag = self.client.put(key, body, to_metadata(attr))
        self.files.wrote(key, etag, to_metadata(attr), None, started)
        self.cache.add(parent, name, path, attr.copy(etag=etag))
        self.files.parent_changed(path)

    def symlink(self, path: str, target: str, uid: int, gid: int):
        self.files.check_writable(path)
        parent, name = self.files.new_name(path)
        if self.files.exists(path) is not None:
            raise errors.Exists(path)
        body = target.encode("utf-8", "surrogateescape")
        now = now_ns()
        attr = Attr(mode=stat.S_IFLNK | 0o777, uid=uid, gid=gid, size=len(body), mtime_ns=now, atime_ns=now,
                    ctime_ns=now, exact=True)
        self._put_empty(path, parent, name, attr, body)

    def link(self, path: str, existing: str):
        """Hard link emulated as a server-side copy (hardlinks=copy) - they do not share
        later writes.  hardlinks=off -> EPERM."""
        self.files.check_writable(path)
        if self.cfg.hardlinks == "off":
            raise errors.NotPermitted(f"{path}: hard links are off (hardlinks=off)")
        src = self.files.attr(existing)
        if src.is_dir:
            raise errors.NotPermitted(f"{existing}: hard link of a directory")
        parent, name = self.files.new_name(path)
        if self.files.exists(path) is not None:
            raise errors.Exists(path)
        f = self.handles.live_file(existing)
        if f is not None:
            self.files.commit(f)
            src = f.attr
        src_key, dst_key = self.mapper.key(existing), self.mapper.key(path)
        known = self.known.get(src_key, src.etag or "", src.modified)
        self.handles.claim_name(path, same_key=True)
        started = self.client.server_now()
        # a copy of that version with everything it has (metadata, headers, tags)
        with self.parts.commits.key_lock(dst_key):
            self.files.pending.cancel_uploads(dst_key)
            etag = copy_object(self.client, src_key, dst_key, src.size, etag=src.etag, pool=self.mover.pool)
        if known is not None:
            self.files.wrote(dst_key, etag, known.metadata, known.headers, started)
        self.cache.add(parent, name, path, src.copy(etag=etag, modified=None))
        self.files.parent_changed(path)

    # -- rename ----------------------------------------------------------------------------
    def rename(self, old: str, new: str, flags: int = 0):
        self.files.check_writable(old)
        if flags & ~RENAME_NOREPLACE:
            raise errors.InvalidArgument(f"rename flags {flags:#x} not supported on S3")
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/"):
            raise errors.InvalidArgument(f"{new}: inside {old}")
        src = self.files.attr(old)
        self.files.new_name(new, is_dir=src.is_dir)
        dst = self.files.exists(new)
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise errors.Exists(new)
            if dst.is_dir and not src.is_dir:
                raise errors.IsADirectory(new)
            if src.is_dir and not dst.is_dir:
                raise errors.NotADirectory(new)
            if dst.is_dir:
                self.rmdir(new)          # raises ENOTEMPTY if it is not empty
        self.handles.claim_name(new, same_key=not src.is_dir)
        if src.is_dir:
            self._rename_dir(old, new, src)
        else:
            self._rename_file(old, new, src)
        self.cache.forget(*split(old), old)
        self.cache.invalidate_tree(old)
        self.handles.forget_kernel_cache(old, new)
        self.files.parent_changed(old, new)

    def _rename_file(self, old: str, new: str, src: Attr):
        """Under the lock of the new key (an upload to it in progress ends first): the file
        that had the new name is replaced - its pending uploads cancelled once the move is
        done - then the old key is deleted (under its own lock, never both at once)."""
        old_key, new_key = self.mapper.key(old), self.mapper.key(new)
        with self.parts.commits.key_lock(new_key):
            replaced = self.handles.live_file(new)
            # a queued delete of the new key is sent before (or dropped): never after the move
            requeue = self.parts.deletes is not None and self.parts.deletes.cancel(new_key)
            try:
                dirty, queue = self._move_file(old, new, old_key, new_key, src)
            except BaseException:
                if requeue:
                    self.parts.deletes.add(new_key)
                raise
            self.files.pending.cancel_uploads(new_key, replaced)
        if dirty is None or src.etag or dirty.adopted:     # else: the old key has no object
            self.files.delete_or_defer(old, old_key)
        if queue is not None:
            self.files.pending.submit(queue)

    def _move_file(self, old: str, new: str, old_key: str, new_key: str, src: Attr):
        """Returns (the file moved while dirty, or None: copied on the server; the file to
        queue for its upload, or None)."""
        f = self.handles.live_file(old)
        if f is not None:
            # a writeback upload of it in progress (to the old key) ends first: then the file
            # is clean (copied below) or still dirty
            with f.settled():
                f.release.settle()       # parts released to a full disk wait in an upload: it ends first
                if f.dirty:
                    # Open for writing with unsent data: the upload lands under the new name.
                    f.detach_from_base(stop_stream=True)
                    self.handles.retarget_file(old, new, new_key)
                    queue = None
                    if f.refs <= 0:      # closed, upload pending: recorded under the new key
                        queue = f if self.files.pending.reseal(f) else None
                    else:
                        f.records.drop_other_key()
                    self.cache.add(*split(new), new, f.attr)
                    return f, queue
            src = self.files.attr(old)         # after that upload: its new version is copied
        f = self.handles.retarget_file(old, new, new_key)
        known = self.known.get(old_key, src.etag or "", src.modified)
        started = self.client.server_now()
        if known is not None:
            # the moved file's ctime changes; every other header and metadata stays
            src = src.copy(ctime_ns=now_ns())
            metadata = object_metadata(src, known.metadata)
            if MD5_HEADER in known.metadata:
                metadata[MD5_HEADER] = known.metadata[MD5_HEADER]
            etag = copy_object(self.client, old_key, new_key, src.size, metadata, known.headers,
                               etag=src.etag, pool=self.mover.pool)
            self.files.wrote(new_key, etag, metadata, known.headers, started)
        else:
            # nothing known of it (meta=list): a copy of everything it has, ctime unchanged
            etag = copy_object(self.client, old_key, new_key, src.size, etag=src.etag, pool=self.mover.pool)
        if f is not None:
            f.rebase(new_key, etag)
        self.cache.add(*split(new), new, src.copy(etag=etag, modified=None))
        return None, None

    def _rename_dir(self, old: str, new: str, src: Attr):
        if old == "/":
            raise errors.Busy("the mount root")
        for f in self.handles.files_below(old):
            self.files.commit(f)
        self._send_deletes_below(self.mapper.dir_prefix(old))     # deleted keys are not moved
        self._send_deletes_below(self.mapper.dir_prefix(new))     # nor deleted after the move
        started = self.client.server_now()
        moves = self.mover.move_tree(self.mapper.dir_prefix(old), self.mapper.dir_prefix(new))
        for src_key, src_etag, src_modified, dst_key, dst_etag in moves:
            # a copy keeps metadata and headers: what is known of the source holds for the target
            known = self.known.get(src_key, src_etag, src_modified)
            if known is not None:
                self.files.wrote(dst_key, dst_etag, known.metadata, known.headers, started)
        if self._drop_folder_marker(old):
            # the directory may have had nothing but that marker: ours keeps it in existence
            self.client.put(self.mapper.dir_prefix(new), b"", to_metadata(src))
        self.handles.retarget_tree(old, new, self.mapper.key)
        self.cache.invalidate_tree(new)
        self.cache.add(*split(new), new, src)
