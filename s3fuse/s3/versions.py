"""The requests of a versioned bucket: GetBucketVersioning, ListObjectVersions, HEAD and
ranged GET of one version (VersionId), CopyObject from one version.  They go through
botocore under the bucket's ``requests.Requests`` (one retry policy, the mount's
options - an SSE-C key goes with HEAD, GET and the copy's source - and error kinds).
``client.ObjectClient`` is their public face; ``snapshot.SnapshotClient`` builds a bucket
as it was from them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .. import errors, metrics
from .boto import content_headers, http_headers
from .objects import ObjectInfo, datetime_timestamp, strip_etag


@dataclass
class ObjectVersion:
    """One entry of ListObjectVersions: a version of ``key``, or a delete marker
    (``deleted``: no size, no ETag)."""

    key: str
    version_id: str
    mtime: float                 # its LastModified
    size: int = 0
    etag: str = ""
    latest: bool = False
    deleted: bool = False


@dataclass
class VersionPage:
    """Versions and delete markers in S3's order: keys ascending, each key's entries
    newest first.  ``next_key``/``next_version``: the markers of the next page."""

    versions: list = field(default_factory=list)      # [ObjectVersion]
    next_key: Optional[str] = None
    next_version: Optional[str] = None


def _merged(resp: dict) -> list:
    """botocore answers versions and delete markers in two lists; S3 sent them as one,
    in key order, each key newest first.  Ties of LastModified within a key: the entry S3
    flagged IsLatest first, then versions before delete markers."""
    out = [ObjectVersion(key=v["Key"], version_id=str(v.get("VersionId") or "null"),
                         mtime=datetime_timestamp(v.get("LastModified")), size=int(v.get("Size", 0)),
                         etag=strip_etag(v.get("ETag")), latest=bool(v.get("IsLatest")))
           for v in resp.get("Versions", ())]
    out += [ObjectVersion(key=d["Key"], version_id=str(d.get("VersionId") or "null"),
                          mtime=datetime_timestamp(d.get("LastModified")), latest=bool(d.get("IsLatest")),
                          deleted=True)
            for d in resp.get("DeleteMarkers", ())]
    # sorted() is stable: within a key and a LastModified, the order of ``out`` decides.
    out.sort(key=lambda v: (v.key.encode("utf-8", "surrogateescape"), -v.mtime, not v.latest))
    return out


class VersionRequests:
    def __init__(self, requests):
        self.requests = requests
        self.bucket = requests.bucket

    def versioning(self) -> str:
        """The bucket's versioning status: "Enabled", "Suspended", or "" (never enabled)."""
        resp = self.requests.op("get_bucket_versioning", f"get versioning of bucket {self.bucket!r}")
        return str(resp.get("Status") or "")

    def list_versions_page(self, prefix: str, key_marker: Optional[str] = None,
                           version_marker: Optional[str] = None, max_keys: int = 1000) -> VersionPage:
        kwargs = dict(Prefix=prefix, MaxKeys=max_keys)
        if key_marker:
            kwargs["KeyMarker"] = key_marker
            if version_marker:
                kwargs["VersionIdMarker"] = version_marker
        resp = self.requests.op("list_object_versions", f"list versions {prefix!r}", **kwargs)
        page = VersionPage(versions=_merged(resp))
        if resp.get("IsTruncated"):
            page.next_key = resp.get("NextKeyMarker") or None
            page.next_version = resp.get("NextVersionIdMarker") or None
            if page.next_key is None:
                raise errors.BackendError(f"list versions {prefix!r}: a truncated answer without NextKeyMarker")
        return page

    def head_version(self, key: str, version_id: str) -> ObjectInfo:
        what = f"head {key!r} version {version_id}"
        resp = self.requests.op("head_object", what, Key=key, VersionId=version_id)
        return ObjectInfo(key=key, size=int(resp.get("ContentLength", 0)), etag=strip_etag(resp.get("ETag")),
                          mtime=datetime_timestamp(resp.get("LastModified")),
                          metadata={k.lower(): v for k, v in (resp.get("Metadata") or {}).items()},
                          headers=content_headers(http_headers(resp)))

    def get_version_range(self, key: str, version_id: str, start: int, end: int, chunk_size: int = 1 << 20,
                          sink: Optional[Callable[[int, bytes], None]] = None) -> bytes:
        """GET bytes [start, end) of one version (as ``RangeReads.get_range``: streamed to
        ``sink`` when given; a body cut short is an attempt that failed, the next asks for
        the rest).  A version is immutable: no If-Match is needed."""
        if end <= start:
            return b""
        pieces: list = []
        reached = [start]

        def deliver(offset: int, chunk):
            metrics.S3_RECEIVED.inc(n=len(chunk))
            if sink is None:
                pieces.append(chunk)
            else:
                sink(offset, chunk)
            reached[0] = offset + len(chunk)

        def once():
            at = reached[0]
            what = f"get {key!r} version {version_id} [{at},{end})"
            resp = self.requests.call("get_object", what, Key=key, VersionId=version_id, Range=f"bytes={at}-{end - 1}")
            got = self.requests.boto.read_body(resp, what, chunk_size, deliver, at)
            if got != end:
                raise errors.with_status(errors.Unreachable(f"{what}: short body ({got - at} of {end - at} bytes)"),
                                         "cut")
        self.requests.run("get_object", f"get {key!r} version {version_id} [{start},{end})", once)
        return b"" if sink is not None else b"".join(pieces)

    def copy_version(self, key: str, version_id: str, dst: str) -> str:
        """CopyObject of one version of ``key`` onto ``dst`` (its metadata and content
        headers with it; the mount's encryption, storage class and ACL as every copy).
        Returns the new object's ETag.  A version over 5 GiB cannot be copied in one
        request: TooLarge."""
        what = f"copy {key!r} version {version_id} -> {dst!r}"
        source = dict(Bucket=self.bucket, Key=key, VersionId=version_id)
        resp = self.requests.op("copy_object", what, Key=dst, CopySource=source)
        self.requests.stats.saw_date(http_headers(resp).get("date"))
        return strip_etag(resp.get("CopyObjectResult", {}).get("ETag"))
