"""A versioned bucket as it stood at one time (``-o snapshot=TIME``), with the read API of
``client.ObjectClient``, so the filesystem above it works unchanged, read-only.

- For each key the version shown is the newest with LastModified <= TIME; a delete
  marker as that newest entry hides the key.  Directories come from the keys that
  survive (a directory all of whose keys were deleted by TIME is gone).
- Listings are ListObjectVersions pages *without* a delimiter: S3 would group the
  prefixes of deleted and later keys too, so a listing of a directory pages through every
  version of every key under it, subdirectories included (the cost of a snapshot:
  docs/SEMANTICS.md).  A complete listing of up to ``CACHED_ENTRIES`` survivors is kept
  for ``ttl`` seconds: lookups and HEADs under it need no other listing.
- An object's ETag, as the layers above see it, is ``ETAG@VERSIONID``: the block cache,
  the kernel-cache check and the known-metadata store key by it, so blocks of one version
  are never served for another (nor for the live object, in a cache_dir shared with a
  live mount).  GET and HEAD carry that VersionId.
- Every request that would change the bucket raises ``errors.ReadOnly`` (EROFS).
"""
from __future__ import annotations

import threading
from typing import Callable, Iterator, Optional

import cachetools

from .. import errors
from .objects import ListPage, ObjectInfo

SEPARATOR = "@"


def versioned_etag(etag: str, version_id: str) -> str:
    return f"{etag}{SEPARATOR}{version_id}"


def version_of(etag: Optional[str]) -> Optional[str]:
    """The VersionId of a ``versioned_etag``, else None."""
    if not etag or SEPARATOR not in etag:
        return None
    return etag.partition(SEPARATOR)[2] or None


def _ancestors(prefix: str) -> Iterator[str]:
    """``prefix`` and the directory prefixes above it, nearest first ("a/b/c" -> "a/b/c",
    "a/b/", "a/", "")."""
    yield prefix
    at = prefix.rstrip("/").rfind("/") if prefix.endswith("/") else prefix.rfind("/")
    while at >= 0:
        yield prefix[:at + 1]
        at = prefix.rfind("/", 0, at)
    if prefix:
        yield ""


class SnapshotClient:
    """``client`` (an ObjectClient) as the bucket was at ``at`` (Unix seconds)."""

    CACHED_ENTRIES = 10_000      # survivors of one listing kept in memory at most
    PAGE = 1000

    def __init__(self, client, at: float, ttl: float = 60.0):
        self.inner = client
        self.at = at
        self.bucket = client.bucket
        self._lock = threading.Lock()      # leaf: guards _listed
        self._listed = cachetools.TTLCache(maxsize=64, ttl=ttl) if ttl > 0 else None

    # -- what status and metrics show ----------------------------------------------------
    @property
    def request_counts(self) -> dict:
        return self.inner.request_counts

    @property
    def error_count(self) -> int:
        return self.inner.error_count

    def transport_stats(self) -> dict:
        return dict(self.inner.transport_stats(), snapshot=self.at)

    def server_now(self) -> float:
        return self.inner.server_now()

    # -- mount-time check --------------------------------------------------------------
    def probe(self):
        """The bucket answers, and it keeps versions (Enabled, or Suspended after it had);
        else ConfigError: a snapshot of a bucket without versions would be its present."""
        self.inner.probe()
        status = self.inner.versioning()
        if status not in ("Enabled", "Suspended"):
            raise errors.ConfigError(
                f"snapshot: bucket {self.bucket!r} is not versioned (GetBucketVersioning: "
                f"{status or 'never enabled'}), so it keeps no earlier versions to show")

    def create_bucket(self):
        raise errors.ReadOnly(f"bucket {self.bucket!r}: a snapshot is read-only")

    # -- the bucket as it was ------------------------------------------------------------
    def _survivors(self, prefix: str, after: Optional[str] = None, only: Optional[str] = None) -> Iterator[ObjectInfo]:
        """The keys under ``prefix`` (after key ``after``; ``only`` that key) as they were
        at ``at``, in key order: one ObjectInfo per key that had a version and no delete
        marker as its newest entry up to ``at``."""
        key_marker, version_marker = after, None
        current, decided = None, False
        while True:
            page = self.inner.list_versions_page(prefix, key_marker, version_marker, self.PAGE)
            for v in page.versions:
                if only is not None and v.key != only:
                    return
                if v.key != current:
                    current, decided = v.key, False
                if decided or v.mtime > self.at:
                    continue
                decided = True          # the newest entry up to ``at``: it decides
                if not v.deleted:
                    yield ObjectInfo(key=v.key, size=v.size, etag=versioned_etag(v.etag, v.version_id),
                                     mtime=v.mtime)
            if page.next_key is None:
                return
            key_marker, version_marker = page.next_key, page.next_version

    def _cached(self, prefix: str) -> Optional[list]:
        """The survivors under ``prefix`` from a complete listing kept of it or of a
        directory above it, else None."""
        if self._listed is None:
            return None
        with self._lock:
            for above in _ancestors(prefix):
                found = self._listed.get(above)
                if found is not None:
                    break
            else:
                return None
        return found if above == prefix else [i for i in found if i.key.startswith(prefix)]

    def _keep(self, prefix: str, infos: list):
        if self._listed is not None and len(infos) <= self.CACHED_ENTRIES:
            with self._lock:
                self._listed[prefix] = infos

    def _version(self, key: str) -> ObjectInfo:
        """The version of ``key`` the snapshot shows (from a kept listing, else from a
        listing of the versions under ``key`` that stops at the first other key)."""
        cached = self._cached(key)
        if cached is not None:
            for info in cached:
                if info.key == key:
                    return info
            raise errors.NotFound(f"{key!r}: not in the bucket at the snapshot's time")
        for info in self._survivors(key, only=key):
            return info
        raise errors.NotFound(f"{key!r}: not in the bucket at the snapshot's time")

    @staticmethod
    def _group(prefix: str, infos, delimiter: str, page: ListPage, seen: set, limit: int = 0) -> Optional[str]:
        """Put ``infos`` into ``page`` as a listing with ``delimiter`` groups them; stop
        after ``limit`` entries (0: none) and return the last key taken then."""
        for info in infos:
            rest = info.key[len(prefix):]
            if delimiter and delimiter in rest:
                common = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                if common in seen:
                    continue
                seen.add(common)
                page.prefixes.append(common)
            else:
                page.objects.append(info)
            if limit and len(page.objects) + len(page.prefixes) >= limit:
                return info.key
        return None

    def list_page(self, prefix: str, token: Optional[str] = None, delimiter: str = "/",
                  max_keys: int = 1000) -> ListPage:
        """One page of the snapshot's listing: at most ``max_keys`` entries; its
        ``next_token`` (the last key taken) continues after them."""
        page = ListPage()
        cached = None if token else self._cached(prefix)
        if cached is not None:
            self._group(prefix, cached, delimiter, page, set())
            return page
        taken: list = []
        survivors = self._survivors(prefix, token)
        last = self._group(prefix, (taken.append(i) or i for i in survivors), delimiter, page, set(), max_keys)
        if last is not None:
            # what remains of a common prefix is skipped, not listed again
            if delimiter and delimiter in last[len(prefix):]:
                rest = last[len(prefix):]
                last = prefix + rest[:rest.index(delimiter) + len(delimiter)] + "\U0010ffff"
            page.next_token = last
        elif token is None:
            self._keep(prefix, taken)
        return page

    def list_all(self, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        """The whole listing, one page per page of versions (each survivor in one page)."""
        cached = self._cached(prefix)
        if cached is not None:
            page = ListPage()
            self._group(prefix, cached, delimiter, page, set())
            yield page
            return
        seen: set = set()
        taken: list = []
        page = ListPage()
        for info in self._survivors(prefix):
            taken.append(info)
            self._group(prefix, (info,), delimiter, page, seen)
            if len(page.objects) + len(page.prefixes) >= self.PAGE:
                yield page
                page = ListPage()
        self._keep(prefix, taken)
        yield page

    def head(self, key: str) -> ObjectInfo:
        """HEAD of the version shown (VersionId): its metadata and content headers."""
        shown = self._version(key)
        info = self.inner.head_version(key, version_of(shown.etag))
        info.etag, info.mtime = shown.etag, shown.mtime
        return info

    def head_many(self, keys: list) -> list:
        out = []
        for key in keys:
            try:
                out.append(self.head(key))
            except errors.FsError as exc:
                out.append(exc)
        return out

    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None,
                  chunk_size: int = 1 << 20, sink: Optional[Callable[[int, bytes], None]] = None,
                  alloc: Optional[Callable[[], bytearray]] = None) -> bytes:
        """GET of the version ``etag`` names (``ETAG@VERSIONID``), else of the version shown."""
        version_id = version_of(etag) or version_of(self._version(key).etag)
        return self.inner.get_version_range(key, version_id, start, end, chunk_size, sink)

    # -- versions: as the bucket has them -------------------------------------------------
    def versioning(self) -> str:
        return self.inner.versioning()

    def list_versions_page(self, prefix: str, key_marker: Optional[str] = None,
                           version_marker: Optional[str] = None, max_keys: int = 1000):
        return self.inner.list_versions_page(prefix, key_marker, version_marker, max_keys)

    def head_version(self, key: str, version_id: str) -> ObjectInfo:
        return self.inner.head_version(key, version_id)

    def get_version_range(self, key: str, version_id: str, start: int, end: int, chunk_size: int = 1 << 20,
                          sink: Optional[Callable[[int, bytes], None]] = None) -> bytes:
        return self.inner.get_version_range(key, version_id, start, end, chunk_size, sink)

    # -- every change is refused ----------------------------------------------------------
    def _refuse(self, what: str):
        raise errors.ReadOnly(f"{what}: a snapshot mount is read-only")

    def put(self, key: str, body, metadata: Optional[dict] = None, content_md5: Optional[str] = None,
            headers: Optional[dict] = None) -> str:
        self._refuse(f"put {key!r}")

    def copy(self, src: str, dst: str, metadata: Optional[dict] = None, headers: Optional[dict] = None,
             if_match: Optional[str] = None) -> str:
        self._refuse(f"copy {src!r} -> {dst!r}")

    def copy_version(self, key: str, version_id: str, dst: str) -> str:
        self._refuse(f"restore {key!r} version {version_id}")

    def delete(self, key: str):
        self._refuse(f"delete {key!r}")

    def delete_many(self, keys: list):
        self._refuse(f"delete {len(keys)} keys")

    def delete_batch(self, keys: list) -> dict:
        self._refuse(f"delete {len(keys)} keys")

    def create_multipart(self, key: str, metadata: Optional[dict] = None, headers: Optional[dict] = None) -> str:
        self._refuse(f"upload {key!r}")

    @property
    def signs_bodies(self) -> bool:
        return self.inner.signs_bodies

    def upload_part(self, key: str, upload_id: str, number: int, body, content_md5: Optional[str]) -> str:
        self._refuse(f"upload {key!r}")

    def upload_part_copy(self, key: str, upload_id: str, number: int, src: str, start: int, end: int,
                         src_etag: Optional[str] = None) -> str:
        self._refuse(f"upload {key!r}")

    def complete_multipart(self, key: str, upload_id: str, parts: list) -> str:
        self._refuse(f"upload {key!r}")

    def abort_multipart(self, key: str, upload_id: str):
        self._refuse(f"abort upload of {key!r}")

    def list_parts(self, key: str, upload_id: str) -> list:
        return self.inner.list_parts(key, upload_id)

    def list_uploads(self, prefix: str = "") -> list:
        return self.inner.list_uploads(prefix)
