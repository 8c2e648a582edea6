"""The versions of one file, reached through the mount (``s3fuse versions PATH``).

Two reserved extended attribute names carry them (never stored, never listed):

- ``getxattr(PATH, "user.s3fuse.versions")``: the versions and delete markers of the
  file's key, newest first, one line each: ``VERSION_ID<TAB>LAST_MODIFIED<TAB>SIZE<TAB>
  version|delete-marker<TAB>latest|-<TAB>ETAG`` (LAST_MODIFIED in Unix seconds).  At
  most ``VALUE_MAX`` bytes: the newest that fit, then a line ``+<TAB>N more``.
- ``setxattr(PATH, "user.s3fuse.restore", VERSION_ID)``: that version becomes the
  file's content and metadata again, by a server-side copy (CopyObject with the source's
  VersionId: a new version, the old ones stay).  Under the key's lock, refused (EBUSY)
  while the file is open for writing or its upload is pending on this mount; the mount's
  attributes and listing of the path are dropped, so its next lookup sees the copy.

A file that no longer exists (a delete marker is its newest entry) is reached through its
directory: ``user.s3fuse.versions:NAME`` and ``user.s3fuse.restore:NAME`` on the parent.
"""
from __future__ import annotations

from .. import errors
from ..paths import join, split
from ..s3.objects import MAX_PART
from .builder import Parts
from .files import FileOps

VERSIONS = "user.s3fuse.versions"
RESTORE = "user.s3fuse.restore"
VALUE_MAX = 65536 - 64          # the kernel's largest xattr value (XATTR_SIZE_MAX), with room


class VersionOps:
    def __init__(self, parts: Parts, files: FileOps, attrs):
        self.parts = parts
        self.cache = parts.cache
        self.client = parts.client
        self.commits = parts.commits
        self.handles = parts.handles
        self.mapper = parts.mapper
        self.files = files
        self.attrs = attrs          # setattr.AttrOps: every other extended attribute

    # -- the FUSE operations (the facade routes getxattr and setxattr here) ----------------
    def getxattr(self, path: str, name: str) -> bytes:
        target = self._target(path, name, VERSIONS)
        if target is None:
            return self.attrs.getxattr(path, name)
        return self.listing(target)

    def setxattr(self, path: str, name: str, value: bytes, options: int):
        target = self._target(path, name, RESTORE)
        if target is None:
            return self.attrs.setxattr(path, name, value, options)
        self.restore(target, bytes(value).decode("utf-8", "replace").strip())

    def _target(self, path: str, name: str, reserved: str):
        """The file a reserved name is about: ``path``, or ``path``'s entry NAME for
        ``reserved:NAME``; None for any other name."""
        if name == reserved:
            return path
        if not name.startswith(reserved + ":"):
            return None
        child = name[len(reserved) + 1:]
        if not child or "/" in child or child in (".", ".."):
            raise errors.InvalidArgument(f"{name}: not a name in {path}")
        if not self.files.attr(path).is_dir:
            raise errors.NotADirectory(path)
        return join(path, child)

    # -- the versions of a key --------------------------------------------------------------
    def versions(self, path: str) -> list:
        """ObjectVersion entries of ``path``'s key, newest first (ListObjectVersions pages
        until the first other key)."""
        attr = self.files.exists(path)
        if path == "/" or (attr is not None and attr.is_dir):
            raise errors.IsADirectory(f"{path}: versions are of files")
        key = self.mapper.key(path)
        found, key_marker, version_marker = [], None, None
        while True:
            page = self.client.list_versions_page(key, key_marker, version_marker)
            for v in page.versions:
                if v.key != key:
                    return found
                found.append(v)
            if page.next_key is None:
                return found
            key_marker, version_marker = page.next_key, page.next_version

    def listing(self, path: str) -> bytes:
        found = self.versions(path)
        if not found:
            raise errors.NotFound(f"{path}: no versions in the bucket")
        out, size = [], 0
        for n, v in enumerate(found):
            line = (f"{v.version_id}\t{v.mtime:.3f}\t{v.size}\t{'delete-marker' if v.deleted else 'version'}\t"
                    f"{'latest' if v.latest else '-'}\t{v.etag or '-'}\n").encode("utf-8", "replace")
            if size + len(line) > VALUE_MAX - 32:
                out.append(f"+\t{len(found) - n} more\n".encode())
                break
            out.append(line)
            size += len(line)
        return b"".join(out)

    def restore(self, path: str, version_id: str):
        self.files.check_writable(path)
        if not version_id:
            raise errors.InvalidArgument(f"{path}: no version id to restore")
        key = self.mapper.key(path)
        with self.commits.key_lock(key):
            if self.handles.live_file(path) is not None:
                raise errors.Busy(f"{path}: open for writing or its upload is pending: restore once it is closed "
                                  "and uploaded")
            chosen = next((v for v in self.versions(path) if v.version_id == version_id), None)
            if chosen is None:
                raise errors.NotFound(f"{path}: no version {version_id}")
            if chosen.deleted:
                raise errors.InvalidArgument(f"{path}: {version_id} is a delete marker, not a version to restore")
            if chosen.size > MAX_PART:
                raise errors.TooLarge(f"{path}: version {version_id} is over 5 GiB, more than one CopyObject copies")
            self.client.copy_version(key, version_id, key)
            self.files.pending.cancel_uploads(key)
        parent = split(path)[0]
        self.cache.invalidate(path)
        self.cache.invalidate(parent)        # its listing: the entry's size and ETag, or a deleted name
        self.handles.forget_kernel_cache(path)
        self.files.parent_changed(path)
