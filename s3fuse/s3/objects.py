"""S3's vocabulary as plain Python: what it answers (``ObjectInfo``, ``ListPage``,
``Part``), its size limits, Content-MD5, and the ListObjectsV2 XML parser.  No I/O."""
from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import mimetypes
import urllib.parse
from dataclasses import dataclass, field
from typing import Optional
from xml.etree import ElementTree

from .. import errors

# Limits of S3 (and of every S3-compatible server worth mounting).
MIN_PART = 5 << 20            # every part of a multipart upload but the last
MAX_PART = 5 << 30            # one part, one PutObject, one CopyObject
MAX_PARTS = 10_000
KEY_MAX = 1024                # bytes of an object key
USER_METADATA_MAX = 2048      # bytes of user metadata: names (without x-amz-meta-) and values, UTF-8
DELETE_BATCH = 1000           # keys of one DeleteObjects request


# Headers that describe an object's content besides its user metadata: a metadata
# change (chmod...) or an overwrite through the mount keeps every one the object had
# (its server-side encryption too; an SSE-C key is the mount's own, never stored).
CONTENT_HEADERS = ("content-type", "cache-control", "content-disposition", "content-encoding",
                   "content-language", "expires", "x-amz-storage-class", "x-amz-website-redirect-location",
                   "x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id")

# Error codes, as S3 and S3-compatible servers spell them.
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AccountProblem", "AllAccessDisabled"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
_SKEWED = {"RequestTimeTooSkewed", "RequestInTheFuture", "RequestExpired"}
_EXPIRED = {"ExpiredToken", "TokenRefreshRequired"}
_CHANGED = {"PreconditionFailed", "412"}
_NO_UPLOAD = {"NoSuchUpload"}
_TOO_LARGE = {"EntityTooLarge"}
_METADATA_TOO_LARGE = {"MetadataTooLarge"}
# refused for good: the same request is refused again (an upload so refused is abandoned)
_REFUSED = {"InvalidArgument", "KeyTooLongError", "InvalidRequest", "InvalidStorageClass",
            "InvalidEncryptionAlgorithmError", "InvalidTag", "UserKeyMustBeSpecified"}
_NOT_IMPLEMENTED = {"NotImplemented"}      # e.g. RGW 16 copying an encrypted object (501)
_BUSY = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
         "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500"}


def check_header_value(name: str, value) -> None:
    """Refuse a header value that cannot travel as one HTTP header: a line break (CR, LF)
    would end it early (and start another), a NUL is never allowed.  Such a value only
    comes from another tool's metadata or a caller's bug: ``errors.InvalidArgument``."""
    text = str(value)
    if "\r" in text or "\n" in text or "\0" in text:
        raise errors.InvalidArgument(f"header {name}: a value with a line break or NUL cannot be sent ({text[:60]!r})")


def check_headers(metadata: Optional[dict], headers: Optional[dict]) -> None:
    """``check_header_value`` of user ``metadata`` (sent as ``x-amz-meta-*``) and headers."""
    for name, value in (metadata or {}).items():
        check_header_value(f"x-amz-meta-{name}", value)
    for name, value in (headers or {}).items():
        check_header_value(name, value)


def user_metadata_size(metadata: dict) -> int:
    """What S3 counts against USER_METADATA_MAX: the UTF-8 bytes of each name and value."""
    return sum(len(str(k).encode("utf-8", "surrogateescape")) + len(str(v).encode("utf-8", "surrogateescape"))
               for k, v in metadata.items())


def error_kind(code: str, status: int):
    """The ``errors`` kind of an S3 error answer (its ``<Code>`` and HTTP status)."""
    if code in _NO_BUCKET:
        return errors.NoSuchBucket
    if code in _NOT_FOUND or (status == 404 and code not in _NO_UPLOAD):
        return errors.NotFound
    if code in _SKEWED:
        return errors.ClockSkewed
    if code in _EXPIRED:
        return errors.CredentialsExpired
    if code in _BAD_CREDENTIALS:
        return errors.CredentialsRefused
    if code in _DENIED or status == 403:
        return errors.AccessDenied
    if code in _CHANGED or status == 412:
        return errors.ObjectChanged
    if code in _NO_UPLOAD:
        return errors.UploadGone
    if code in _METADATA_TOO_LARGE:
        return errors.MetadataTooLarge
    if code in _TOO_LARGE:
        return errors.TooLarge
    if code in _NOT_IMPLEMENTED:
        return errors.NotSupported
    if code in _REFUSED:
        return errors.Refused
    if code in _BUSY or status >= 500 or status == 429:
        return errors.ServerBusy
    return errors.BackendError


def refusal_time(exc, date: Optional[str], server_time: str = "") -> None:
    """Set ``exc.server_time`` of a refusal (an AccessDenied kind: 403, RequestTimeTooSkewed)
    from its answer: the Date header (whole seconds: +0.5), else the error's <ServerTime>
    (AWS's RequestTimeTooSkewed has both; a 403 to a HEAD has no body)."""
    if isinstance(exc, errors.AccessDenied):
        seen = http_timestamp(date)
        exc.server_time = seen + 0.5 if seen else iso_timestamp(server_time)


def error_code(body: bytes) -> str:
    """The <Code> of an S3 error document ("SlowDown"...), or ""."""
    return _element(body, b"Code")


def answer_error(body: bytes, what: str):
    """Raise the error inside a 200 answer (CompleteMultipartUpload and CopyObject may
    fail that way after their headers went out), if there is one."""
    code = error_code(body) if b"<Error" in body[:400] else ""
    if code:
        raise errors.with_status(error_kind(code, 500 if code == "InternalError" else 400)(f"{what}: 200 {code}"), 200)


def xml_text(body: bytes, name: str) -> str:
    """The text of the first element ``name`` (any namespace) of an XML answer, or ""."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return ""
    for el in root.iter():
        if el.tag == name or el.tag.endswith("}" + name):
            return (el.text or "").strip()
    return ""


def error_server_time(body: bytes) -> str:
    """The <ServerTime> of an error document (AWS's RequestTimeTooSkewed), or ""."""
    return _element(body, b"ServerTime")


def error_region(body: bytes) -> str:
    """The <Region> of an S3 error document (AuthorizationHeaderMalformed...), or ""."""
    return _element(body, b"Region")


def _element(body: bytes, name: bytes) -> str:
    start = body.find(b"<" + name + b">")
    end = body.find(b"</" + name + b">", start)
    return body[start + len(name) + 2:end].decode("ascii", "replace") if 0 <= start < end else ""


@dataclass
class ObjectInfo:
    """What S3 says about one object (``mtime`` is its LastModified).  ``metadata`` (user
    metadata, without ``x-amz-meta-``) and ``headers`` (``CONTENT_HEADERS`` it has) are
    None when it came from a listing, which carries neither."""

    key: str
    size: int
    etag: str
    mtime: float
    metadata: Optional[dict] = None
    headers: Optional[dict] = None

    @property
    def content_type(self) -> Optional[str]:
        return (self.headers or {}).get("content-type")


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


def new_object_headers(name: str) -> dict:
    """Content headers of a new object: its Content-Type from the name's extension, as
    s3fs-fuse and rclone do (Python's table plus /etc/mime.types), else
    application/octet-stream."""
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:          # x.tar.gz is gzip data (no Content-Encoding is set)
        kind = _COMPRESSED.get(encoding)
    return {"content-type": kind or "application/octet-stream"}


_COMPRESSED = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
               "compress": "application/x-compress", "br": "application/x-brotli"}


def content_md5(data) -> str:
    """The Content-MD5 header of a body (base64 of the binary digest)."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def md5_header(digest) -> str:
    """Content-MD5 from a hashlib md5 object already fed with the body."""
    return base64.b64encode(digest.digest()).decode()


def strip_etag(raw: Optional[str]) -> str:
    return (raw or "").strip('"')


def iso_timestamp(text: str) -> float:
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


def http_timestamp(value: Optional[str]) -> float:
    """A Last-Modified header (RFC 7231 date) as seconds."""
    if not value:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def datetime_timestamp(dt) -> float:
    return 0.0 if dt is None else dt.timestamp()


def parse_list_page(body: bytes) -> Optional[ListPage]:
    """A ListObjectsV2 answer (asked with ``encoding-type=url``: XML 1.0 cannot carry every
    byte a key may hold) as a ListPage; None if it cannot be read with confidence."""
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
        if encoded and name in ("Key", "Prefix"):
            return urllib.parse.unquote(value, errors="surrogateescape")
        return value

    page = ListPage()
    for item in root.iterfind(ns + "Contents"):
        page.objects.append(ObjectInfo(key=text(item, "Key"), size=int(text(item, "Size", "0")),
                                       etag=strip_etag(text(item, "ETag")),
                                       mtime=iso_timestamp(text(item, "LastModified"))))
    page.prefixes = [text(p, "Prefix") for p in root.iterfind(ns + "CommonPrefixes")]
    if text(root, "IsTruncated").lower() == "true":
        page.next_token = text(root, "NextContinuationToken") or None
        if page.next_token is None:
            return None          # truncated without a token: let botocore sort it out
    return page
