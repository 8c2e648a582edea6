"""ObjectClient: the only module that imports boto3.

One ``endpoint.Endpoint`` (addressing, region) and one ``endpoint.Network`` (CA bundle,
proxies, timeouts) serve two request paths, AWS and custom endpoints alike:

- ``transport.Transport`` (hand-signed, pooled keep-alive connections) carries the data
  path: HEAD, GET, ListObjectsV2, PutObject, UploadPart, DeleteObject.
- botocore carries the control requests with XML bodies (multipart create/complete/
  list, copies, batch delete) and whatever the transport hands back (non-ASCII
  metadata, a server ignoring Range): each such fallback is logged and counted
  (``transport_stats``, shown by ``s3fuse status``).  Its client uses the same endpoint
  URL, addressing style, region, CA bundle and proxies (botocore reads the same
  environment), CRC checksums only when required, botocore's own retries off.

Every botocore exception - session and client creation included - becomes an error kind
of ``s3fuse.errors``: callers never see one.  Every request runs through one
``retry.RetryPolicy``.  The mount's ``sse.ObjectOptions`` (encryption, storage class,
ACL, requester-pays) go with every request that takes them, on both paths.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator, Optional

import boto3
import botocore.exceptions
from botocore.config import Config

from .. import errors
from . import strict_http
from .endpoint import Endpoint, Network, ca_bundle_from
from .objects import (CONTENT_HEADERS, ListPage, ObjectInfo, datetime_timestamp, error_kind, http_timestamp,
                      parse_list_page, strip_etag)
from .retry import RetryPolicy
from .reads import RangeReads
from .stats import ClientStats
from .multipart import MultipartRequests
from .object_options import ObjectOptions
from .transport import Transport

log = logging.getLogger(__name__)
strict_http.install()     # a response cut inside its headers is an error, not an empty answer

# Connection trouble, including a body cut after botocore handed it over.
_UNREACHABLE = tuple(getattr(botocore.exceptions, name) for name in
                     ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                      "ConnectionClosedError", "ResponseStreamingError", "IncompleteReadError",
                      "ProxyConnectionError", "HTTPClientError", "SSLError", "ConnectionError")
                     if hasattr(botocore.exceptions, name))


_TIMEOUTS = tuple(getattr(botocore.exceptions, name) for name in ("ConnectTimeoutError", "ReadTimeoutError")
                  if hasattr(botocore.exceptions, name))


def _status(exc: Exception) -> str:
    """The status of a failed botocore request, as metrics and logs give it: the HTTP
    status, or "timeout"/"unreachable" when no answer came."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                   or exc.response.get("Error", {}).get("Code") or "error")
    if isinstance(exc, _TIMEOUTS):
        return "timeout"
    if isinstance(exc, _UNREACHABLE):
        return "unreachable"
    return "error"


def _translate(exc: Exception, what: str) -> Exception:
    """A botocore exception as one of ours (the only place that knows botocore's), with
    its ``status`` set."""
    out = _kind_of(exc, what)
    if out is not exc:
        out.status = _status(exc)
    return out


def _kind_of(exc: Exception, what: str) -> Exception:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error_kind(code, status)(f"{what}: {code or status} {err.get('Message', '')}".strip())
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return errors.NoCredentials(f"{what}: no AWS credentials found (env, ~/.aws, instance role)")
    if isinstance(exc, _UNREACHABLE):
        return errors.Unreachable(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return errors.BackendError(f"{what}: {exc}")
    return exc


# A content header as botocore's request parameter.
_PARAM = {"content-type": "ContentType", "cache-control": "CacheControl", "content-disposition": "ContentDisposition",
          "content-encoding": "ContentEncoding", "content-language": "ContentLanguage", "expires": "Expires",
          "x-amz-storage-class": "StorageClass", "x-amz-website-redirect-location": "WebsiteRedirectLocation",
          "x-amz-server-side-encryption": "ServerSideEncryption",
          "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId"}


def _header_params(headers: Optional[dict]) -> dict:
    return {_PARAM[name]: value for name, value in (headers or {}).items() if name in _PARAM and value}


def _http_headers(resp: dict) -> dict:
    return resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}


def _content_headers(http_headers: dict) -> dict:
    """The CONTENT_HEADERS of an answer's (lower-case) HTTP headers."""
    return {name: http_headers[name] for name in CONTENT_HEADERS if http_headers.get(name)}


def _session(profile, access_key, secret_key, region):
    try:
        return boto3.session.Session(profile_name=profile or None, aws_access_key_id=access_key or None,
                                     aws_secret_access_key=secret_key or None, region_name=region or None)
    except botocore.exceptions.ProfileNotFound:
        raise errors.ConfigError(f"profile {profile!r} is not in ~/.aws/config or ~/.aws/credentials") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise errors.ConfigError(f"AWS configuration: {exc}") from None


class ObjectClient(ClientStats, RangeReads, MultipartRequests):
    """Everything s3fuse asks of S3, for one bucket."""

    _header_params = staticmethod(_header_params)
    _translate = staticmethod(_translate)

    def __init__(self, bucket: str, *, endpoint: Optional[str] = None, region: Optional[str] = None,
                 profile: Optional[str] = None, access_key: Optional[str] = None,
                 secret_key: Optional[str] = None, path_style: Optional[bool] = None,
                 max_connections: int = 32, max_attempts: int = 5,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 ca_bundle: Optional[str] = None, options: Optional[ObjectOptions] = None):
        self.bucket = bucket
        self.stats_lock = threading.Lock()
        self.request_counts: dict = {}
        self.error_count = 0
        self.fallbacks: dict = {}         # operation -> requests botocore sent for the transport
        self._clock_offset = 0.0          # server time - local time, from answers' Date headers
        self.options = options or ObjectOptions()
        self._params = self.options.params()
        self._op_params: dict = {}
        # Attempts never start later than ``attempts`` request timeouts after the first.
        self.retry = RetryPolicy(attempts=max_attempts, budget=max_attempts * read_timeout)
        self._session = session = _session(profile, access_key, secret_key, region)
        try:
            credentials = session.get_credentials()
            bundle = session._session.get_config_variable("ca_bundle")    # AWS_CA_BUNDLE, profile
        except botocore.exceptions.BotoCoreError as exc:
            raise errors.ConfigError(f"AWS configuration: {exc}") from None
        self.endpoint = Endpoint.resolve(bucket, endpoint, region, path_style, session.region_name)
        self.ca_bundle = ca_bundle_from(ca_bundle, bundle)
        self._timeouts = (connect_timeout, read_timeout)
        self._client_lock = threading.Lock()
        self._make_botocore(max_connections)
        self._probe_retry = RetryPolicy(attempts=2, first_delay=0.5, budget=8.0)
        self._fast = self._probe_fast = None
        if credentials is not None:
            self._fast = Transport(self.endpoint, Network(self.ca_bundle, connect_timeout, read_timeout),
                                   credentials, on_region=self._region_moved, observe=self._record)
            # The mount-time probe fails within seconds even against a server that accepts
            # connections and never answers: 2 attempts of at most 3 s each.
            self._probe_fast = Transport(self.endpoint, Network(self.ca_bundle, min(connect_timeout, 3.0),
                                                                min(read_timeout, 3.0)),
                                         credentials, on_region=self._region_moved, observe=self._record)
            for t in (self._fast, self._probe_fast):
                t.common_headers = self.options.common()
                t.read_headers = self.options.customer_key()

    def _make_botocore(self, max_connections: Optional[int] = None):
        """botocore clients for the endpoint as it is now (again after a region move)."""
        self._max_connections = max_connections or self._max_connections
        connect_timeout, read_timeout = self._timeouts
        ep = self.endpoint
        cfg = dict(max_pool_connections=self._max_connections, retries={"mode": "standard", "total_max_attempts": 1},
                   connect_timeout=connect_timeout, read_timeout=read_timeout,
                   s3={"addressing_style": ep.style}, request_checksum_calculation="when_required",
                   response_checksum_validation="when_required")
        kwargs = dict(endpoint_url=ep.url(), region_name=ep.region, verify=self.ca_bundle or None)
        try:
            client = self._session.client("s3", config=Config(**cfg), **kwargs)
            # The mount-time probe fails within seconds (see above).
            probe = self._session.client("s3", config=Config(**dict(
                cfg, connect_timeout=min(connect_timeout, 3.0), read_timeout=min(read_timeout, 3.0))), **kwargs)
        except botocore.exceptions.BotoCoreError as exc:
            raise errors.ConfigError(f"AWS configuration: {exc}") from None
        with self._client_lock:
            self._client, self._probe_client = client, probe

    def _region_moved(self, region: str):
        log.warning("bucket %r is in region %s: requests go there from now on", self.bucket, region)
        self._make_botocore()

    def _op_extra(self, op: str) -> dict:
        """The mount's options (sse.ObjectOptions) that botocore operation ``op`` takes."""
        extra = self._op_params.get(op)
        if extra is None and op == "create_bucket":
            extra = {}
        if extra is None:
            model = self._client.meta.service_model.operation_model(self._client.meta.method_to_api_mapping[op])
            extra = self._op_params[op] = {k: v for k, v in self._params.items() if k in model.input_shape.members}
        return extra

    def _call(self, op: str, what: str, client=None, **kwargs):
        """One botocore request (no retry: the caller's policy decides)."""
        for name, value in self._op_extra(op).items():
            kwargs.setdefault(name, value)
        body = kwargs.get("Body")
        size = len(body) if isinstance(body, (bytes, bytearray)) else 0
        try:
            resp = getattr(client or self._client, op)(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            translated = _translate(exc, what)
            status = str(getattr(translated, "status", None) or "error")
            self._record(op, status, size if status.isdigit() else 0)
            if translated is exc:
                raise
            raise translated from exc
        self._record(op, resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 200, size)
        return resp

    def _run(self, op: str, what: str, attempt: Callable):
        """``attempt`` (requests of S3 operation ``op``) under the retry policy;
        ``error_count`` counts the operations that failed in the end (a 404 is an
        answer, not a failure)."""
        try:
            return self.retry.run(attempt, what, op)
        except errors.NotFound:
            raise
        except errors.FsError:
            with self.stats_lock:
                self.error_count += 1
            raise

    def _op(self, op: str, what: str, **kwargs):
        """A botocore request under the retry policy."""
        return self._run(op, what, lambda: self._call(op, what, **kwargs))

    # -- mount-time check --------------------------------------------------------------
    def probe(self):
        """Fail fast (seconds) if the bucket cannot be used: no such bucket, bad
        credentials, unreachable endpoint, untrusted certificate.  The first answer also
        tells the bucket's region when it was not given (the transport moves there)."""
        what = f"bucket {self.bucket!r}"

        def once():
            if self._probe_fast is not None:
                status, headers, _ = self._probe_fast._request("GET", None, query={"list-type": "2", "max-keys": "1"})
                return headers.get("date")
            resp = self._call("list_objects_v2", what, client=self._probe_client, MaxKeys=1)
            return _http_headers(resp).get("date")
        try:
            date = self._probe_retry.run(once, what, "list_objects_v2")
        except errors.NotFound as exc:
            raise errors.NoSuchBucket(str(exc)) from exc
        self._saw_date(date)

    def create_bucket(self):
        """CreateBucket (the demo's local server); an existing bucket of ours is fine."""
        try:
            self._op("create_bucket", f"create bucket {self.bucket!r}")
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
        return self._run("list_objects_v2", f"list {prefix!r}", lambda: self._list_once(kwargs))

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
            self._fallback("list_objects_v2", "a listing it could not read")
        resp = self._call("list_objects_v2", f"list {kwargs['Prefix']!r}", **kwargs)
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
                          headers=_content_headers(h))

    def head(self, key: str) -> ObjectInfo:
        return self._run("head_object", f"head {key!r}", lambda: self._head_once(key))

    def _head_once(self, key: str) -> ObjectInfo:
        if self._fast is not None:
            return self._head_info(key, self._fast.head(key))
        resp = self._call("head_object", f"head {key!r}", Key=key)
        return ObjectInfo(key=key, size=int(resp.get("ContentLength", 0)), etag=strip_etag(resp.get("ETag")),
                          mtime=datetime_timestamp(resp.get("LastModified")),
                          metadata={k.lower(): v for k, v in (resp.get("Metadata") or {}).items()},
                          headers=_content_headers(_http_headers(resp)))

    # -- writes --------------------------------------------------------------------------
    def put(self, key: str, body, metadata: Optional[dict] = None, content_md5: Optional[str] = None,
            headers: Optional[dict] = None) -> str:
        """PutObject with user ``metadata`` and content ``headers`` (CONTENT_HEADERS); the
        mount's encryption, storage class and ACL.  Returns the ETag the server answered
        (an MD5 only for unencrypted or SSE-S3 single PUTs)."""
        sent = self.options.write_headers(headers)

        def once():
            if self._fast is not None and content_md5 and isinstance(body, (bytes, bytearray)):
                answer = self._fast.put(key, bytes(body), content_md5, metadata, sent)
                if answer is not None:
                    self._saw_date(answer[1])
                    return answer[0]
                self._fallback("put_object", "non-ASCII metadata")
            kwargs = dict(Key=key, Body=body, Metadata=metadata or {}, **_header_params(sent))
            if content_md5:
                kwargs["ContentMD5"] = content_md5
            resp = self._call("put_object", f"put {key!r}", **kwargs)
            self._saw_date(_http_headers(resp).get("date"))
            return strip_etag(resp.get("ETag"))
        return self._run("put_object", f"put {key!r}", once)

    def copy(self, src: str, dst: str, metadata: Optional[dict] = None, headers: Optional[dict] = None,
             if_match: Optional[str] = None) -> str:
        """Server-side copy.  ``metadata`` None keeps the source's metadata and headers (tags
        too); else they are replaced by ``metadata`` and ``headers`` - pass every header the
        object should keep.  ``if_match``: only if the source still has that ETag (a
        concurrent overwrite raises ObjectChanged instead of copying a half-known version).
        The mount's encryption (and SSE-C key, for the source too), storage class and ACL
        go with every copy: a copy does not keep them by itself."""
        kwargs = dict(Key=dst, CopySource={"Bucket": self.bucket, "Key": src})
        if metadata is not None:
            kwargs.update(Metadata=metadata, MetadataDirective="REPLACE",
                          **_header_params(self.options.write_headers(headers)))
            kwargs.setdefault("ContentType", "binary/octet-stream")
        if if_match:
            kwargs["CopySourceIfMatch"] = f'"{if_match}"'
        resp = self._op("copy_object", f"copy {src!r} -> {dst!r}", **kwargs)
        self._saw_date(_http_headers(resp).get("date"))
        return strip_etag(resp.get("CopyObjectResult", {}).get("ETag")) or self.head(dst).etag

    def delete(self, key: str):
        def once():
            if self._fast is not None:
                self._fast.delete(key)
                return
            self._call("delete_object", f"delete {key!r}", Key=key)
        self._run("delete_object", f"delete {key!r}", once)

    def delete_many(self, keys: list):
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            resp = self._op("delete_objects", f"delete {len(chunk)} keys",
                            Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            failed = resp.get("Errors") or []
            if failed:
                raise errors.BackendError(f"delete {failed[0].get('Key')!r}: {failed[0].get('Code')}")
