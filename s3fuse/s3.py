"""ObjectClient: the only module that imports boto3.

It builds one botocore client (path-style for custom endpoints, CRC checksums only when
required so S3-compatible servers work, a connection pool sized to the threads that use
it, standard retries for throttling and 5xx) and turns S3 errors into the typed errors
of ``s3fuse.errors``.  Callers never see botocore exceptions.
"""
from __future__ import annotations

import base64
import calendar
import datetime
import hashlib
import logging
import threading
import urllib.parse
from xml.etree import ElementTree
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Optional

import boto3
import botocore.exceptions
from botocore.config import Config

from . import errors, strict_http

log = logging.getLogger(__name__)
strict_http.install()     # a response cut inside its headers is an error, not an empty answer

# Error codes, as S3 and S3-compatible servers spell them.
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "InvalidToken", "ExpiredToken", "AccountProblem", "AllAccessDisabled"}
_CHANGED = {"PreconditionFailed", "412"}
_NO_UPLOAD = {"NoSuchUpload"}
_TOO_LARGE = {"EntityTooLarge"}
# A connection lost while reading a body that botocore already handed over.
_BODY_ERRORS = tuple(getattr(botocore.exceptions, name) for name in
                     ("ResponseStreamingError", "IncompleteReadError", "ReadTimeoutError", "ConnectionClosedError")
                     if hasattr(botocore.exceptions, name))


@dataclass
class ObjectInfo:
    """What S3 says about one object.  ``metadata`` is None when it came from a listing
    (ListObjectsV2 carries no user metadata)."""

    key: str
    size: int
    etag: str
    mtime: float
    metadata: Optional[dict] = None
    content_type: Optional[str] = None


@dataclass
class ListPage:
    objects: list = field(default_factory=list)      # [ObjectInfo]
    prefixes: list = field(default_factory=list)     # ["a/b/", ...] (full keys)
    next_token: Optional[str] = None


@dataclass
class Part:
    number: int
    etag: str
    size: int


def md5_b64(data) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _etag(raw: Optional[str]) -> str:
    return (raw or "").strip('"')


def _translate(exc: Exception, what: str) -> Exception:
    """Map a botocore exception to one of ours (the only place that knows botocore's)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = f"{what}: {code or status} {err.get('Message', '')}".strip()
        if code in _NO_BUCKET:
            return errors.NoSuchBucket(msg)
        if code in _NOT_FOUND or (status == 404 and code not in _NO_UPLOAD):
            return errors.NotFound(msg)
        if code in _DENIED or status == 403:
            return errors.AccessDenied(msg)
        if code in _CHANGED or status == 412:
            return errors.ObjectChanged(msg)
        if code in _NO_UPLOAD:
            return errors.UploadGone(msg)
        if code in _TOO_LARGE:
            import errno as _errno
            return errors.BackendError(msg, _errno.EFBIG)
        return errors.BackendError(msg)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return errors.NoCredentials(f"{what}: no AWS credentials found (env, ~/.aws, instance role)")
    if isinstance(exc, (botocore.exceptions.EndpointConnectionError,
                        botocore.exceptions.ConnectTimeoutError,
                        botocore.exceptions.ReadTimeoutError,
                        botocore.exceptions.ConnectionClosedError)):
        return errors.Unreachable(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return errors.BackendError(f"{what}: {exc}")
    return exc


class ObjectClient:
    """Everything s3fuse asks of S3, for one bucket."""

    def __init__(self, bucket: str, *, endpoint: Optional[str] = None, region: Optional[str] = None,
                 profile: Optional[str] = None, access_key: Optional[str] = None,
                 secret_key: Optional[str] = None, path_style: Optional[bool] = None,
                 max_connections: int = 32, max_attempts: int = 5,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0):
        self.bucket = bucket
        self.endpoint = endpoint
        self.max_attempts = max(1, max_attempts)
        self.stats_lock = threading.Lock()
        self.request_counts: dict = {}
        self.error_count = 0
        session = boto3.session.Session(profile_name=profile or None,
                                        aws_access_key_id=access_key or None,
                                        aws_secret_access_key=secret_key or None,
                                        region_name=region or None)
        if path_style is None:
            path_style = bool(endpoint)
        cfg = dict(
            max_pool_connections=max_connections,
            # total_max_attempts counts the first try; botocore's "max_attempts" key would
            # count retries only (one attempt more than asked for).
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path" if path_style else "auto"},
        )
        if endpoint:
            cfg.update(request_checksum_calculation="when_required",
                       response_checksum_validation="when_required")
        self._session = session
        self._client_kwargs = dict(endpoint_url=endpoint or None,
                                   region_name=region or session.region_name or "us-east-1")
        self._client = session.client("s3", config=Config(**cfg), **self._client_kwargs)
        self._fast = None
        credentials = session.get_credentials()
        if endpoint and path_style and credentials is not None:
            from .lean import LeanS3
            self._fast = LeanS3(endpoint, bucket, self._client_kwargs["region_name"], credentials,
                                timeout=read_timeout)
        # The mount-time probe must fail within seconds even against a server that accepts
        # connections and never answers: 2 attempts of at most 3 s each, plus backoff.
        self._probe_config = Config(**dict(cfg, retries={"mode": "standard", "total_max_attempts": 2},
                                           connect_timeout=min(connect_timeout, 3.0),
                                           read_timeout=min(read_timeout, 3.0)))

    # -- bookkeeping -------------------------------------------------------------------
    def lean_connections_opened(self) -> int:
        """TCP connections the lean client has opened so far (0 without it)."""
        return 0 if self._fast is None else self._fast.connections_opened

    def _count(self, op: str):
        with self.stats_lock:
            self.request_counts[op] = self.request_counts.get(op, 0) + 1

    def _call(self, op: str, what: str, **kwargs):
        self._count(op)
        try:
            return getattr(self._client, op)(Bucket=self.bucket, **kwargs)
        except Exception as exc:  # translated here, the one place that knows botocore
            translated = _translate(exc, what)
            if not isinstance(translated, errors.NotFound):   # a 404 is an answer, not a failure
                with self.stats_lock:
                    self.error_count += 1
            if translated is exc:
                raise
            raise translated from exc

    # -- mount-time check --------------------------------------------------------------
    def probe(self):
        """Fail fast (seconds) if the bucket cannot be used: no such bucket, bad
        credentials, unreachable endpoint.  Raises typed errors with readable messages."""
        client = self._session.client("s3", config=self._probe_config, **self._client_kwargs)
        try:
            client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except Exception as exc:
            translated = _translate(exc, f"bucket {self.bucket!r}")
            if isinstance(translated, errors.NotFound):
                translated = errors.NoSuchBucket(str(translated))
            raise translated from exc

    # -- reads ---------------------------------------------------------------------------
    def list_page(self, prefix: str, token: Optional[str] = None, delimiter: str = "/",
                  max_keys: int = 1000) -> ListPage:
        kwargs = dict(Prefix=prefix, MaxKeys=max_keys)
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        if self._fast is not None:
            page = self._lean_list_page(kwargs)
            if page is not None:
                return page
        resp = self._call("list_objects_v2", f"list {prefix!r}", **kwargs)
        page = ListPage()
        for item in resp.get("Contents", ()):
            page.objects.append(ObjectInfo(key=item["Key"], size=int(item.get("Size", 0)),
                                           etag=_etag(item.get("ETag")),
                                           mtime=_timestamp(item.get("LastModified"))))
        page.prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", ())]
        if resp.get("IsTruncated"):
            page.next_token = resp.get("NextContinuationToken")
        return page

    def _lean_list_page(self, kwargs: dict) -> Optional[ListPage]:
        """ListObjectsV2 through lean.py, parsed with ElementTree: botocore spends ~60 ms
        of CPU per 1,000-key page (a dateutil parse per timestamp), and pages come one
        after the other.  Keys are asked URL-encoded (as botocore does): XML 1.0 cannot
        carry every byte a key may hold."""
        names = {"Prefix": "prefix", "Delimiter": "delimiter", "MaxKeys": "max-keys",
                 "ContinuationToken": "continuation-token"}
        query = {names[k]: str(v) for k, v in kwargs.items()}
        query["encoding-type"] = "url"
        body = self._fast.list_objects(query)
        if body is None:
            return None
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            return None
        ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"

        def text(el, name, default=""):
            value = el.findtext(ns + name)
            if value is None:
                return default
            return urllib.parse.unquote(value, errors="surrogateescape") if encoded and name in ("Key", "Prefix") \
                else value
        self._count("list_objects_v2")
        page = ListPage()
        for item in root.iterfind(ns + "Contents"):
            page.objects.append(ObjectInfo(key=text(item, "Key"), size=int(text(item, "Size", "0")),
                                           etag=_etag(text(item, "ETag")),
                                           mtime=_iso_timestamp(text(item, "LastModified"))))
        page.prefixes = [text(p, "Prefix") for p in root.iterfind(ns + "CommonPrefixes")]
        if text(root, "IsTruncated").lower() == "true":
            page.next_token = text(root, "NextContinuationToken") or None
            if page.next_token is None:
                return None          # truncated without a token: let botocore sort it out
        return page

    def list_all(self, prefix: str, delimiter: str = "/") -> Iterator[ListPage]:
        token = None
        while True:
            page = self.list_page(prefix, token, delimiter)
            yield page
            token = page.next_token
            if not token:
                return

    def head_many(self, keys: list) -> list:
        """HEAD each key; one ObjectInfo or exception (NotFound...) per key, in order.
        Path-style endpoints get one pipelined batch; keys it did not answer, and other
        endpoints, get one HEAD each."""
        answers = self._fast.head_many(keys) if self._fast is not None else [None] * len(keys)
        out = []
        for key, answer in zip(keys, answers):
            try:
                if answer is not None and answer[0] in (200, 404):
                    out.append(self._lean_head_info(key, answer))
                else:
                    out.append(self.head(key))
            except errors.FsError as exc:
                out.append(exc)
        return out

    def _lean_head_info(self, key: str, answer: tuple) -> ObjectInfo:
        self._count("head_object")
        status, h = answer
        if status == 404:
            raise errors.NotFound(f"head {key!r}: 404")
        from .lean import parse_http_date
        return ObjectInfo(key=key, size=int(h.get("content-length", 0)), etag=_etag(h.get("etag")),
                          mtime=parse_http_date(h.get("last-modified")),
                          metadata={k[11:]: v for k, v in h.items() if k.startswith("x-amz-meta-")},
                          content_type=h.get("content-type"))

    def head(self, key: str) -> ObjectInfo:
        if self._fast is not None:
            answer = self._fast.head(key)
            if answer is not None and answer[0] in (200, 404):
                return self._lean_head_info(key, answer)
        # other answers (403, 5xx, redirects, connection trouble): botocore decides and retries
        resp = self._call("head_object", f"head {key!r}", Key=key)
        return ObjectInfo(key=key, size=int(resp.get("ContentLength", 0)), etag=_etag(resp.get("ETag")),
                          mtime=_timestamp(resp.get("LastModified")),
                          metadata={k.lower(): v for k, v in (resp.get("Metadata") or {}).items()},
                          content_type=resp.get("ContentType"))

    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None,
                  chunk_size: int = 1 << 20, sink: Optional[Callable[[int, bytes], None]] = None) -> bytes:
        """GET bytes [start, end) of ``key``.  With ``etag`` the server must still have that
        version (If-Match; a changed object raises ObjectChanged).  With ``sink`` the body is
        streamed to ``sink(offset, chunk)`` in ``chunk_size`` pieces and b"" is returned."""
        if end <= start:
            return b""
        pieces: list = []
        delivered = start       # bytes before this went to ``sink`` (or ``pieces``)
        if self._fast is not None:
            delivered = self._lean_get(key, start, end, etag, chunk_size, sink, pieces)
            if delivered == end:
                return b"" if sink is not None else b"".join(pieces)
        for attempt in range(1, self.max_attempts + 1):
            kwargs = dict(Key=key, Range=f"bytes={delivered}-{end - 1}")
            if etag:
                kwargs["IfMatch"] = f'"{etag}"'
            resp = self._call("get_object", f"get {key!r} [{delivered},{end})", **kwargs)
            body = resp["Body"]
            begin = delivered
            try:
                pending = b""
                while True:
                    chunk = body.read(chunk_size - len(pending))
                    if not chunk:
                        break
                    pending += chunk
                    if len(pending) >= chunk_size:
                        delivered = self._deliver(sink, pieces, delivered, pending)
                        pending = b""
                if pending:
                    delivered = self._deliver(sink, pieces, delivered, pending)
            except _BODY_ERRORS as exc:
                # The connection broke inside the body (botocore retries only up to the
                # headers): ask again for the part not delivered yet.
                if attempt == self.max_attempts:
                    raise _translate(exc, f"get {key!r}") from exc
                log.warning("get %r: body cut after %d bytes (%s); fetching the rest again",
                            key, delivered - begin, exc)
                continue
            except botocore.exceptions.BotoCoreError as exc:
                raise _translate(exc, f"get {key!r}") from exc
            finally:
                body.close()
            if delivered != end and delivered - begin != int(resp.get("ContentLength", delivered - begin)):
                raise errors.BackendError(f"get {key!r}: short body ({delivered - start} of {end - start} bytes)")
            return b"" if sink is not None else b"".join(pieces)
        raise errors.BackendError(f"get {key!r}: no attempt left")   # not reached

    def _lean_get(self, key, start, end, etag, chunk_size, sink, pieces) -> int:
        """Ranged GET through lean.py; returns the offset delivered up to.  404 and 412
        are answers (typed errors); a cut body or anything else leaves the rest to
        botocore, which owns retries."""
        delivered = start
        for _ in range(self.max_attempts):
            answer = self._fast.get(key, delivered, end, etag, chunk_size,
                                    lambda off, chunk: self._deliver(sink, pieces, off, chunk))
            if answer is None:
                return delivered
            self._count("get_object")
            status, reached = answer
            if status == 404:
                raise errors.NotFound(f"get {key!r}: 404")
            if status == 412:
                raise errors.ObjectChanged(f"get {key!r}: changed on the server (412)")
            if status not in (200, 206) or reached == delivered:
                return delivered
            delivered = reached
            if delivered == end:
                break
            log.warning("get %r: body cut at %d of [%d,%d); fetching the rest again", key, delivered, start, end)
        return delivered

    @staticmethod
    def _deliver(sink, pieces: list, offset: int, data: bytes) -> int:
        if sink is None:
            pieces.append(data)
        else:
            sink(offset, data)
        return offset + len(data)

    # -- writes --------------------------------------------------------------------------
    def put(self, key: str, body, metadata: Optional[dict] = None, content_md5: Optional[str] = None,
            content_type: Optional[str] = None) -> str:
        if self._fast is not None and content_md5 and isinstance(body, (bytes, bytearray)):
            etag = self._fast.put(key, bytes(body), content_md5, metadata, content_type)
            if etag is not None:
                self._count("put_object")
                return etag
        kwargs = dict(Key=key, Body=body, Metadata=metadata or {})
        if content_md5:
            kwargs["ContentMD5"] = content_md5
        if content_type:
            kwargs["ContentType"] = content_type
        return _etag(self._call("put_object", f"put {key!r}", **kwargs).get("ETag"))

    def copy(self, src: str, dst: str, metadata: Optional[dict] = None,
             content_type: Optional[str] = None) -> str:
        """Server-side copy; with ``metadata`` the target's metadata is replaced."""
        kwargs = dict(Key=dst, CopySource={"Bucket": self.bucket, "Key": src})
        if metadata is not None:
            kwargs.update(Metadata=metadata, MetadataDirective="REPLACE",
                          ContentType=content_type or "application/octet-stream")
        resp = self._call("copy_object", f"copy {src!r} -> {dst!r}", **kwargs)
        return _etag(resp.get("CopyObjectResult", {}).get("ETag")) or self.head(dst).etag

    def delete(self, key: str):
        if self._fast is not None and self._fast.delete(key):
            self._count("delete_object")
            return
        self._call("delete_object", f"delete {key!r}", Key=key)

    def delete_many(self, keys: list):
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            resp = self._call("delete_objects", f"delete {len(chunk)} keys",
                              Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            failed = resp.get("Errors") or []
            if failed:
                raise errors.BackendError(f"delete {failed[0].get('Key')!r}: {failed[0].get('Code')}")

    # -- multipart -------------------------------------------------------------------------
    def create_multipart(self, key: str, metadata: Optional[dict] = None,
                         content_type: Optional[str] = None) -> str:
        kwargs = dict(Key=key, Metadata=metadata or {})
        if content_type:
            kwargs["ContentType"] = content_type
        return self._call("create_multipart_upload", f"create upload {key!r}", **kwargs)["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, body, content_md5: str) -> str:
        if self._fast is not None and isinstance(body, (bytes, bytearray)):
            etag = self._fast.put(key, bytes(body), content_md5,
                                  query={"partNumber": str(number), "uploadId": upload_id})
            if etag is not None:
                self._count("upload_part")
                return etag
        resp = self._call("upload_part", f"upload part {number} of {key!r}", Key=key, UploadId=upload_id,
                          PartNumber=number, Body=body, ContentMD5=content_md5)
        return _etag(resp.get("ETag"))

    def upload_part_copy(self, key: str, upload_id: str, number: int, src: str, start: int, end: int,
                         src_etag: Optional[str] = None) -> str:
        kwargs = dict(Key=key, UploadId=upload_id, PartNumber=number,
                      CopySource={"Bucket": self.bucket, "Key": src},
                      CopySourceRange=f"bytes={start}-{end - 1}")
        if src_etag:
            kwargs["CopySourceIfMatch"] = f'"{src_etag}"'
        resp = self._call("upload_part_copy", f"copy part {number} of {src!r} -> {key!r}", **kwargs)
        return _etag(resp.get("CopyPartResult", {}).get("ETag"))

    def complete_multipart(self, key: str, upload_id: str, parts: list) -> str:
        resp = self._call("complete_multipart_upload", f"complete upload {key!r}", Key=key, UploadId=upload_id,
                          MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in parts]})
        # Ceph RGW (Pacific) answers an empty ETag here; the ETag keys caches: ask for it.
        return _etag(resp.get("ETag")) or self.head(key).etag

    def abort_multipart(self, key: str, upload_id: str):
        try:
            self._call("abort_multipart_upload", f"abort upload {key!r}", Key=key, UploadId=upload_id)
        except errors.UploadGone:
            pass

    def list_parts(self, key: str, upload_id: str) -> list:
        parts, marker = [], None
        while True:
            kwargs = dict(Key=key, UploadId=upload_id)
            if marker:
                kwargs["PartNumberMarker"] = marker
            try:
                resp = self._call("list_parts", f"list parts {key!r}", **kwargs)
            except errors.NotFound as exc:
                # Ceph RGW answers NoSuchKey (404), not NoSuchUpload, for an upload id it
                # does not know (completed or aborted): for ListParts that means the same.
                raise errors.UploadGone(str(exc)) from exc
            for p in resp.get("Parts", ()):
                parts.append(Part(int(p["PartNumber"]), _etag(p.get("ETag")), int(p.get("Size", 0))))
            if not resp.get("IsTruncated"):
                return parts
            marker = resp.get("NextPartNumberMarker")

    def list_uploads(self, prefix: str = "") -> list:
        """[(key, upload_id, initiated_timestamp)] of multipart uploads in progress."""
        out, key_marker, id_marker = [], None, None
        while True:
            kwargs = dict(Prefix=prefix)
            if key_marker:
                kwargs.update(KeyMarker=key_marker, UploadIdMarker=id_marker or "")
            resp = self._call("list_multipart_uploads", f"list uploads {prefix!r}", **kwargs)
            for u in resp.get("Uploads", ()):
                out.append((u["Key"], u["UploadId"], _timestamp(u.get("Initiated"))))
            if not resp.get("IsTruncated"):
                return out
            key_marker, id_marker = resp.get("NextKeyMarker"), resp.get("NextUploadIdMarker")


def _timestamp(dt) -> float:
    if dt is None:
        return 0.0
    return calendar.timegm(dt.utctimetuple()) + dt.microsecond / 1e6


def _iso_timestamp(text: str) -> float:
    """ListObjects' LastModified (e.g. 2026-11-21T22:31:00.123Z) as seconds."""
    if not text:
        return 0.0
    try:
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()
