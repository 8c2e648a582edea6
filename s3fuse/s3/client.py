"""ObjectClient: everything s3fuse asks of S3, for one bucket.

One ``endpoint.Endpoint`` (addressing, region) and one ``endpoint.Network`` (CA bundle,
proxies, timeouts) serve two request paths, AWS and custom endpoints alike
(``requests.Requests`` holds both):

- ``transport.Transport`` (hand-signed, pooled keep-alive connections) carries the data
  path: HEAD, GET, ListObjectsV2, PutObject, UploadPart, DeleteObject.
- ``boto.Botocore`` carries the control requests with XML bodies (multipart create/
  complete/list, copies, batch delete) and whatever the transport hands back (non-ASCII
  metadata, a server ignoring Range): each such fallback is logged and counted
  (``transport_stats``, shown by ``s3fuse status``).

Every request runs through one ``retry.RetryPolicy`` and raises only error kinds of
``s3fuse.errors``.  The mount's ``object_options.ObjectOptions`` (encryption, storage
class, ACL, requester-pays) go with every request that takes them, on both paths.
Ranged GETs live in ``reads.RangeReads``, multipart requests in
``multipart.MultipartRequests``, the requests of versions in ``versions.VersionRequests``;
this class is their one public face.
"""
from __future__ import annotations

import base64
import hashlib
from typing import Callable, Iterator, Optional

from .. import errors
from .boto import content_headers, header_params, http_headers
from .multipart import MultipartRequests
from .endpoint import quote
from .objects import (DELETE_BATCH, ListPage, ObjectInfo, answer_error, check_headers, datetime_timestamp,
                      error_kind, http_timestamp, parse_list_page, strip_etag, xml_text)
from .reads import RangeReads
from .requests import Requests
from .transport import ascii_headers
from .versions import VersionPage, VersionRequests


class ObjectClient:
    """Everything s3fuse asks of S3, for one bucket."""

    def __init__(self, bucket: str, **connection):
        """``connection``: how to reach the bucket (endpoint, region, credentials,
        timeouts, retries, ObjectOptions): the keywords of ``requests.Requests``."""
        self.bucket = bucket
        self.requests = r = Requests(bucket, **connection)
        self.options = r.options
        self.endpoint = r.endpoint
        self._fast = r.fast
        self._reads = RangeReads(r)
        self._multipart = MultipartRequests(r, self.head)
        self._versions = VersionRequests(r)

    # -- what status and metrics show ----------------------------------------------------
    @property
    def request_counts(self) -> dict:
        return self.requests.stats.request_counts

    @property
    def error_count(self) -> int:
        return self.requests.stats.error_count

    def transport_stats(self) -> dict:
        return self.requests.describe()

    def server_now(self) -> float:
        return self.requests.stats.server_now()

    @property
    def signs_bodies(self) -> bool:
        """Whether every request body is signed by its SHA-256, which the server checks
        (plain http, on both request paths: sigv4.py, botocore).  Then a Content-MD5
        beside it guards against nothing more, and a part is sent without one: an MD5
        pass over every byte less.  Over https bodies go UNSIGNED-PAYLOAD and
        Content-MD5 is their check."""
        return not self.endpoint.https

    # -- mount-time check --------------------------------------------------------------
    def probe(self):
        """Fail fast (seconds) if the bucket cannot be used: no such bucket, bad
        credentials, unreachable endpoint, untrusted certificate.  The first answer also
        tells the bucket's region when it was not given (the transport moves there), and
        its Date the server's clock (a local clock minutes off is corrected, with a
        warning, whether the server refused the request for it or not)."""
        what = f"bucket {self.bucket!r}"

        def once():
            if self.requests.probe_fast is not None:
                status, headers, _ = self.requests.probe_fast._request("GET", None, query={"list-type": "2", "max-keys": "1"})
                return headers.get("date")
            resp = self.requests.call("list_objects_v2", what, probe=True, MaxKeys=1)
            return http_headers(resp).get("date")
        try:
            date = self.requests.probe_retry.run(lambda: self.requests.in_server_time(once), what, "list_objects_v2")
        except errors.NotFound as exc:
            raise errors.NoSuchBucket(str(exc)) from exc
        self.requests.stats.saw_date(date)

    def create_bucket(self):
        """CreateBucket (the demo's local server); an existing bucket of ours is fine."""
        try:
            self.requests.op("create_bucket", f"create bucket {self.bucket!r}")
        except errors.BackendError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise

    # -- reads ---------------------------------------------------------------------------
    def list_page(self, prefix: str, token: Optional[str] = None, delimiter: str = "/",
                  max_keys: int = 1000) -> ListPage:
        kwargs = dict(Prefix=prefix, MaxKeys=max_keys)
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        return self.requests.run("list_objects_v2", f"list {prefix!r}", lambda: self._list_once(kwargs))

    def _list_once(self, kwargs: dict) -> ListPage:
        if self._fast is not None:
            # ListObjectsV2 parsed with ElementTree: botocore parses each page's timestamps
            # with dateutil, most of its CPU per page (docs/design/metadata.md).
            names = {"Prefix": "prefix", "Delimiter": "delimiter", "MaxKeys": "max-keys",
                     "ContinuationToken": "continuation-token"}
            query = {names[k]: str(v) for k, v in kwargs.items()}
            query["encoding-type"] = "url"
            page = parse_list_page(self._fast.list_objects(query))
            if page is not None:
                return page
            self.requests.stats.fallback("list_objects_v2", "a listing it could not read")
        resp = self.requests.call("list_objects_v2", f"list {kwargs['Prefix']!r}", **kwargs)
        page = ListPage()
        for item in resp.get("Contents", ()):
            page.objects.append(ObjectInfo(key=item["Key"], size=int(item.get("Size", 0)),
                                           etag=strip_etag(item.get("ETag")),
                                           mtime=datetime_timestamp(item.get("LastModified"))))
        page.prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", ())]
        if resp.get("IsTruncated"):
            page.next_token = resp.get("NextContinuationToken")
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
        """HEAD each key; one ObjectInfo or exception (NotFound...) per key, in order: one
        pipelined batch, then one HEAD each for the keys it did not answer."""
        answers = self._fast.head_many(keys) if self._fast is not None else [None] * len(keys)
        out = []
        for key, answer in zip(keys, answers):
            try:
                out.append(self._head_info(key, answer) if answer is not None else self.head(key))
            except errors.FsError as exc:
                out.append(exc)
        return out

    def _head_info(self, key: str, answer: tuple) -> ObjectInfo:
        status, h = answer
        if status == 404:
            raise errors.NotFound(f"head {key!r}: 404")
        return ObjectInfo(key=key, size=int(h.get("content-length", 0)), etag=strip_etag(h.get("etag")),
                          mtime=http_timestamp(h.get("last-modified")),
                          metadata={k[11:]: v for k, v in h.items() if k.startswith("x-amz-meta-")},
                          headers=content_headers(h))

    def head(self, key: str) -> ObjectInfo:
        return self.requests.run("head_object", f"head {key!r}", lambda: self._head_once(key))

    def _head_once(self, key: str) -> ObjectInfo:
        if self._fast is not None:
            return self._head_info(key, self._fast.head(key))
        resp = self.requests.call("head_object", f"head {key!r}", Key=key)
        return ObjectInfo(key=key, size=int(resp.get("ContentLength", 0)), etag=strip_etag(resp.get("ETag")),
                          mtime=datetime_timestamp(resp.get("LastModified")),
                          metadata={k.lower(): v for k, v in (resp.get("Metadata") or {}).items()},
                          headers=content_headers(http_headers(resp)))

    # -- writes --------------------------------------------------------------------------
    def put(self, key: str, body, metadata: Optional[dict] = None, content_md5: Optional[str] = None,
            headers: Optional[dict] = None) -> str:
        """PutObject with user ``metadata`` and content ``headers`` (CONTENT_HEADERS); the
        mount's encryption, storage class and ACL.  Returns the ETag the server answered
        (an MD5 only for unencrypted or SSE-S3 single PUTs).  A value with a line break
        raises InvalidArgument before any request."""
        check_headers(metadata, headers)
        sent = self.options.write_headers(headers)
        if content_md5 is None and isinstance(body, (bytes, bytearray)) and len(body) <= 1 << 20:
            # the transport sends only bodies with a Content-MD5 (a directory marker, a symlink)
            content_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()

        def once():
            if self._fast is not None and content_md5 and isinstance(body, (bytes, bytearray)):
                answer = self._fast.put(key, bytes(body), content_md5, metadata, sent)
                if answer is not None:
                    self.requests.stats.saw_date(answer[1])
                    return answer[0]
                self.requests.stats.fallback("put_object", "non-ASCII metadata")
            kwargs = dict(Key=key, Body=body, Metadata=metadata or {}, **header_params(sent))
            if content_md5:
                kwargs["ContentMD5"] = content_md5
            resp = self.requests.call("put_object", f"put {key!r}", **kwargs)
            self.requests.stats.saw_date(http_headers(resp).get("date"))
            return strip_etag(resp.get("ETag"))
        return self.requests.run("put_object", f"put {key!r}", once)

    def copy(self, src: str, dst: str, metadata: Optional[dict] = None, headers: Optional[dict] = None,
             if_match: Optional[str] = None) -> str:
        """Server-side copy.  ``metadata`` None keeps the source's metadata and headers (tags
        too); else they are replaced by ``metadata`` and ``headers`` - pass every header the
        object should keep.  ``if_match``: only if the source still has that ETag (a
        concurrent overwrite raises ObjectChanged instead of copying a half-known version).
        The mount's encryption (and SSE-C key, for the source too), storage class and ACL
        go with every copy: a copy does not keep them by itself."""
        if self._fast is not None:
            etag = self._copy_fast(src, dst, metadata, headers, if_match)
            if etag is not None:
                return etag or self.head(dst).etag
        kwargs = dict(Key=dst, CopySource={"Bucket": self.bucket, "Key": src})
        if metadata is not None:
            check_headers(metadata, headers)
            kwargs.update(Metadata=metadata, MetadataDirective="REPLACE",
                          **header_params(self.options.write_headers(headers)))
            kwargs.setdefault("ContentType", "binary/octet-stream")
        if if_match:
            kwargs["CopySourceIfMatch"] = f'"{if_match}"'
        resp = self.requests.op("copy_object", f"copy {src!r} -> {dst!r}", **kwargs)
        self.requests.stats.saw_date(http_headers(resp).get("date"))
        return strip_etag(resp.get("CopyObjectResult", {}).get("ETag")) or self.head(dst).etag

    def _copy_fast(self, src: str, dst: str, metadata, headers, if_match) -> Optional[str]:
        """CopyObject through the transport (the ETag answered, "" if none), or None for
        what botocore must send (non-ASCII metadata)."""
        if metadata is not None:
            check_headers(metadata, headers)
            sent = self.options.write_headers(headers)
            sent.setdefault("content-type", "binary/octet-stream")
            sent = ascii_headers(metadata, sent)
            if sent is None:
                return None
            sent["x-amz-metadata-directive"] = "REPLACE"
        else:
            sent = self.options.write_headers(None)
        sent["x-amz-copy-source"] = "/" + quote(f"{self.bucket}/{src}", safe="/-_.~")
        sent.update(self.options.customer_key("x-amz-copy-source-server-side-encryption-customer-"))
        if if_match:
            sent["x-amz-copy-source-if-match"] = f'"{if_match}"'
        what = f"copy {src!r} -> {dst!r}"

        def once():
            _, answer, data = self._fast._request("PUT", dst, headers=sent, ok=(200,))
            answer_error(data, what)
            self.requests.stats.saw_date(answer.get("date"))
            return strip_etag(xml_text(data, "ETag"))
        return self.requests.run("copy_object", what, once)

    def delete(self, key: str):
        def once():
            if self._fast is not None:
                self._fast.delete(key)
                return
            self.requests.call("delete_object", f"delete {key!r}", Key=key)
        self.requests.run("delete_object", f"delete {key!r}", once)

    def delete_many(self, keys: list):
        for i in range(0, len(keys), DELETE_BATCH):
            failed = self.delete_batch(keys[i:i + DELETE_BATCH])
            if failed:
                key, exc = next(iter(failed.items()))
                raise errors.BackendError(f"delete {key!r}: {exc.code}")

    def delete_batch(self, keys: list) -> dict:
        """One DeleteObjects request (Quiet) of at most 1,000 keys.  Returns the keys the
        server did not delete, each with the error of its kind (``error_kind`` of the
        <Code> the answer gave it, as ``.code``); a key that did not exist is deleted.  A
        failure of the whole request raises, as any request does."""
        if len(keys) > DELETE_BATCH:
            raise ValueError(f"DeleteObjects takes at most {DELETE_BATCH} keys, not {len(keys)}")
        resp = self.requests.op("delete_objects", f"delete {len(keys)} keys",
                                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        failed = {}
        for e in resp.get("Errors") or []:
            code = e.get("Code") or ""
            kind = error_kind(code, 0)
            if kind is errors.NotFound:
                continue
            exc = kind(f"delete {e.get('Key')!r}: {code} {e.get('Message') or ''}".rstrip())
            exc.code = code
            failed[e.get("Key")] = exc
        return failed

    # -- ranged reads and multipart uploads (reads.py, multipart.py) ---------------------
    def get_range(self, key: str, start: int, end: int, etag: Optional[str] = None,
                  chunk_size: int = 1 << 20, sink: Optional[Callable[[int, bytes], None]] = None,
                  alloc: Optional[Callable[[], bytearray]] = None) -> bytes:
        return self._reads.get_range(key, start, end, etag, chunk_size, sink, alloc)

    def create_multipart(self, key: str, metadata: Optional[dict] = None,
                         headers: Optional[dict] = None) -> str:
        return self._multipart.create_multipart(key, metadata, headers)

    def upload_part(self, key: str, upload_id: str, number: int, body, content_md5: Optional[str]) -> str:
        return self._multipart.upload_part(key, upload_id, number, body, content_md5)

    def upload_part_copy(self, key: str, upload_id: str, number: int, src: str, start: int, end: int,
                         src_etag: Optional[str] = None) -> str:
        return self._multipart.upload_part_copy(key, upload_id, number, src, start, end, src_etag)

    def complete_multipart(self, key: str, upload_id: str, parts: list) -> str:
        return self._multipart.complete_multipart(key, upload_id, parts)

    def abort_multipart(self, key: str, upload_id: str):
        return self._multipart.abort_multipart(key, upload_id)

    def list_parts(self, key: str, upload_id: str) -> list:
        return self._multipart.list_parts(key, upload_id)

    def list_uploads(self, prefix: str = "") -> list:
        return self._multipart.list_uploads(prefix)

    # -- versions (versions.py; a bucket as it was: snapshot.py) -------------------------
    def versioning(self) -> str:
        return self._versions.versioning()

    def list_versions_page(self, prefix: str, key_marker: Optional[str] = None,
                           version_marker: Optional[str] = None, max_keys: int = 1000) -> VersionPage:
        return self._versions.list_versions_page(prefix, key_marker, version_marker, max_keys)

    def head_version(self, key: str, version_id: str) -> ObjectInfo:
        return self._versions.head_version(key, version_id)

    def get_version_range(self, key: str, version_id: str, start: int, end: int, chunk_size: int = 1 << 20,
                          sink: Optional[Callable[[int, bytes], None]] = None) -> bytes:
        return self._versions.get_version_range(key, version_id, start, end, chunk_size, sink)

    def copy_version(self, key: str, version_id: str, dst: str) -> str:
        return self._versions.copy_version(key, version_id, dst)
