"""Attribute changes: chmod, chown, utimens and user extended attributes.

POSIX attributes live in the object's ``x-amz-meta-*`` headers (meta/attrs.py).  A file
open for writing with unsent data takes the change with its upload; otherwise the object
gets it by a metadata-only copy onto itself (a directory: on its ``dir/`` marker, created
if the directory was only implied; the mount root, which has no object, keeps it in
memory).  Only ``user.*`` extended attributes are stored (s3fs-fuse's ``xattr`` header).
"""
from __future__ import annotations

import stat

from .. import errors
from ..meta.attrs import MD5_HEADER, Attr, now_ns, object_metadata, to_metadata, xattr_name_stored
from ..paths import split
from ..s3.objects import USER_METADATA_MAX, user_metadata_size
from ..write.copy import copy_object
from .files import FileOps
from .builder import Parts

UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
XATTR_CREATE, XATTR_REPLACE = 1, 2


class AttrOps:
    def __init__(self, parts: Parts, files: FileOps):
        self.parts = parts          # .writeback is set once the Filesystem is built
        self.cache = parts.cache
        self.client = parts.client
        self.handles = parts.handles
        self.mapper = parts.mapper
        self.mover = parts.mover
        self.ns = parts.ns
        self.files = files

    def chmod(self, path: str, mode: int):
        self._setattr(path, lambda a: a.copy(mode=stat.S_IFMT(a.mode) | (mode & 0o7777), ctime_ns=now_ns()))

    def chown(self, path: str, uid: int, gid: int):
        self._setattr(path, lambda a: a.copy(uid=a.uid if uid in (-1, None) else uid,
                                             gid=a.gid if gid in (-1, None) else gid, ctime_ns=now_ns()))

    def utimens(self, path: str, times):
        now = now_ns()

        def resolve(value, current):
            if value is None or value == UTIME_NOW:
                return now
            if value == UTIME_OMIT:
                return current
            return int(value)

        if times is None:
            self._setattr(path, lambda a: a.copy(atime_ns=now, mtime_ns=now, ctime_ns=now))
        else:
            atime, mtime = times
            self._setattr(path, lambda a: a.copy(atime_ns=resolve(atime, a.atime_ns),
                                                 mtime_ns=resolve(mtime, a.mtime_ns), ctime_ns=now))

    def _setattr(self, path: str, change):
        self.files.check_writable(path)
        if path == "/" or self.files.attr(path).is_dir:
            self._set_object_attr(path, change, None)
            return
        # A file: under its key's lock, so that no upload, rename over it or delete of it by
        # this mount comes between the attributes read here and the copy that changes them
        # (the copy, pinned to the version read, failed with ESTALE when another process of
        # this mount replaced the file meanwhile).
        with self.parts.commits.key_lock(self.mapper.key(path)):
            queue = self._set_file_attr(path, change)
        if queue is not None:
            self.files.pending.submit(queue)

    def _set_file_attr(self, path: str, change):
        """Under the key's lock.  Returns a file to queue for its upload (writeback), or None."""
        f = self.handles.live_file(path)
        if f is not None:
            # a writeback upload of it in progress ends first (after it the file is clean,
            # or discarded: its staging file closed), so the change is never lost between
            with f.settled():
                f.release.settle()       # parts released to a full disk wait in an upload: it ends first
                if f.dirty:
                    f.set_attr(change(f.attr))
                    # closed, upload pending: recorded again with the change
                    return f if f.refs <= 0 and self.files.pending.reseal(f) else None
        self._set_object_attr(path, change, f)
        return None

    def _set_object_attr(self, path: str, change, f):
        """The change as a metadata-only copy of the object onto itself (a directory: its marker).
        The copy is pinned to the version the attributes were read from; if the cached
        attributes were stale (a rename away or a replace whose cache update had not landed
        yet, another client), the current version is looked up and changed instead, and a
        name that is gone answers ENOENT - never ESTALE for a chmod of an existing path."""
        try:
            self._copy_with_attr(path, change, f)
        except (errors.ObjectChanged, errors.NotFound):
            if path == "/" or f is not None:
                raise
            self.cache.invalidate(path)
            self._copy_with_attr(path, change, f)

    def _copy_with_attr(self, path: str, change, f):
        attr = self.files.attr(path)
        if attr.is_dir and not attr.exact:
            attr = self.ns.lookup(path)
        new = change(attr)
        if new.is_dir:
            self.cache.times_set(path)
        if path == "/":
            self.cache.put_attr("/", new)    # the bucket root has no object to carry it
            return
        # Only what the operation changes changes: other tools' metadata and the content
        # headers (Content-Type, Cache-Control...) of the object stay as they were.
        key = self.mapper.dir_prefix(path) if new.is_dir else self.mapper.key(path)
        # (a directory's attributes carry no ETag: its "dir/" marker, if any, is asked for)
        known = self.files.version_info(key, attr) if attr.etag or new.is_dir else None
        metadata = object_metadata(new, known.metadata if known is not None else None)
        headers = known.headers if known is not None else None
        started = self.client.server_now()
        if new.is_dir:
            etag = self.client.put(key, b"", metadata, headers=headers)
        else:
            if known is not None and MD5_HEADER in known.metadata:
                metadata[MD5_HEADER] = known.metadata[MD5_HEADER]     # same content
            etag = copy_object(self.client, key, key, attr.size, metadata, headers, etag=attr.etag,
                               pool=self.mover.pool)
        self.files.wrote(key, etag, metadata, headers, started)
        new = new.copy(etag=etag, modified=None)
        if f is not None and not new.is_dir:
            f.attr = new
        parent, name = split(path)
        self.cache.add(parent, name, path, new.copy(exact=True))

    # -- extended attributes -------------------------------------------------------------------
    @staticmethod
    def _check_namespace(name: str):
        if not xattr_name_stored(name):
            raise errors.NotSupported(f"xattr {name}: namespace not stored")

    def getxattr(self, path: str, name: str) -> bytes:
        self._check_namespace(name)
        value = (self._with_xattrs(path).xattrs or {}).get(name)
        if value is None:
            raise errors.NoSuchAttribute(name)
        return value

    def listxattr(self, path: str) -> list:
        return sorted((self._with_xattrs(path).xattrs or {}).keys())

    def setxattr(self, path: str, name: str, value: bytes, options: int):
        self._check_namespace(name)
        current = dict(self._with_xattrs(path).xattrs or {})
        if options & XATTR_CREATE and name in current:
            raise errors.Exists(name)
        if options & XATTR_REPLACE and name not in current:
            raise errors.NoSuchAttribute(name)
        current[name] = bytes(value)
        self._check_metadata_size(path, current)
        self._setattr(path, lambda a: a.copy(xattrs=current))

    # room kept for the whole-content MD5 header a close adds (name + 32 hex digits)
    _MD5_ROOM = len(MD5_HEADER) + 32

    def _check_metadata_size(self, path: str, xattrs: dict):
        """Refuse (E2BIG) extended attributes that would push the object's metadata over
        S3's 2 KiB: the upload or copy carrying them would fail 400 MetadataTooLarge -
        for good, after close() had already returned."""
        attr = self._with_xattrs(path).copy(xattrs=xattrs)
        size = user_metadata_size(to_metadata(attr)) + self._MD5_ROOM
        if size > USER_METADATA_MAX:
            raise errors.MetadataTooLarge(
                f"{path}: the extended attributes would make {size} bytes of S3 metadata "
                f"(the limit is {USER_METADATA_MAX}; base64 makes each value 4/3 its size)")

    def removexattr(self, path: str, name: str):
        self._check_namespace(name)
        current = dict(self._with_xattrs(path).xattrs or {})
        if name not in current:
            raise errors.NoSuchAttribute(name)
        del current[name]
        self._setattr(path, lambda a: a.copy(xattrs=current))

    def _with_xattrs(self, path: str) -> Attr:
        attr = self.files.attr(path)
        if attr.exact or path == "/":
            return attr
        self.cache.invalidate(path)
        return self.ns.lookup(path)
