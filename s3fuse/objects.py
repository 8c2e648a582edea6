"""S3's vocabulary as plain Python: what it answers (``ObjectInfo``, ``ListPage``,
``Part``), its size limits, Content-MD5, and the ListObjectsV2 XML parser.  No I/O."""
from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import urllib.parse
from dataclasses import dataclass, field
from typing import Optional
from xml.etree import ElementTree

# Limits of S3 (and of every S3-compatible server worth mounting).
MIN_PART = 5 << 20            # every part of a multipart upload but the last
MAX_PART = 5 << 30            # one part, one PutObject, one CopyObject
MAX_PARTS = 10_000
KEY_MAX = 1024                # bytes of an object key


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
