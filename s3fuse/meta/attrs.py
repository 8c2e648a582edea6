"""File attributes and the POSIX metadata headers that carry them.

Header format, interoperable with s3fs-fuse and rclone (all values decimal strings):
``x-amz-meta-mode`` (st_mode including the type bits), ``-uid``, ``-gid``, ``-mtime``,
``-atime``, ``-ctime`` (seconds since the epoch; a fractional part is accepted and written
when the time has sub-second precision).  boto3 hands user metadata without the
``x-amz-meta-`` prefix, so the dict keys here are ``mode``, ``uid``, ...
"""
from __future__ import annotations

import base64
import json
import logging
import stat
import urllib.parse
import time
from dataclasses import dataclass, replace
from typing import Optional

log = logging.getLogger(__name__)

NS = 1_000_000_000
MD5_HEADER = "s3fuse-md5"     # whole-object MD5 (hex) stored with objects s3fuse uploads


@dataclass
class Defaults:
    """What objects without POSIX metadata look like (mount options uid/gid/umask)."""

    uid: int = 0
    gid: int = 0
    file_mode: int = 0o644
    dir_mode: int = 0o755


@dataclass(slots=True)
class Attr:
    """Slotted: the attribute cache holds one per entry (docs/design/memory.md)."""

    mode: int                 # st_mode with type bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int = 0
    ctime_ns: int = 0
    etag: Optional[str] = None
    exact: bool = False       # True once the object's own metadata (HEAD or our upload) is applied
    nlink: int = 1
    xattrs: Optional[dict] = None   # user xattrs {name: bytes}, s3fs-fuse format in 'xattr' header
    modified: Optional[float] = None   # the object's LastModified (server time), when known
    rdev: int = 0                      # device number of a character or block device node

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def copy(self, **changes) -> "Attr":
        return replace(self, **changes)


def parse_time_ns(value: str) -> int:
    """'1700000000', '1700000000.5', '1700000000.123456789' -> nanoseconds.  Raises ValueError."""
    value = value.strip()
    sec, _, frac = value.partition(".")
    if not sec.lstrip("-").isdigit() or (frac and not frac.isdigit()):
        raise ValueError(value)
    return int(sec) * NS + (int(frac[:9].ljust(9, "0")) if frac else 0) * (-1 if sec.startswith("-") else 1)


def format_time_ns(ns: int) -> str:
    """The inverse of parse_time_ns: -1 ns is "-0.000000001" (sign, then the magnitude)."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(int(ns)), NS)
    return f"{sign}{sec}" if frac == 0 else f"{sign}{sec}.{frac:09d}".rstrip("0")


_MODES: dict = {}     # one int object per mode value: the attribute cache holds one per entry


def default_attr(is_dir: bool, size: int, mtime: float, defaults: Defaults, etag: Optional[str] = None) -> Attr:
    mode = (stat.S_IFDIR | defaults.dir_mode) if is_dir else (stat.S_IFREG | defaults.file_mode)
    mode = _MODES.setdefault(mode, mode)
    ns = int(mtime * NS)
    return Attr(mode=mode, uid=defaults.uid, gid=defaults.gid, size=size, mtime_ns=ns, atime_ns=ns,
                ctime_ns=ns, etag=etag, modified=None if is_dir and not etag else mtime)


def apply_metadata(attr: Attr, meta: Optional[dict], is_dir: bool) -> Attr:
    """Return ``attr`` with the POSIX headers of ``meta`` applied (bad values are logged and
    ignored, never fatal).  The result is marked exact: it reflects the object's own headers."""
    out = attr.copy(exact=True)
    if not meta:
        return out
    try:
        if "mode" in meta:
            mode = int(meta["mode"])
            perm = stat.S_IMODE(mode)
            kind = stat.S_IFMT(mode)
            if is_dir:
                kind = stat.S_IFDIR
            elif kind not in FILE_KINDS:
                kind = stat.S_IFREG
            out.mode = kind | perm
        if "rdev" in meta and (stat.S_ISCHR(out.mode) or stat.S_ISBLK(out.mode)):
            out.rdev = _id(meta["rdev"])
        if "uid" in meta:
            out.uid = _id(meta["uid"])
        if "gid" in meta:
            out.gid = _id(meta["gid"])
        for name in ("mtime", "atime", "ctime"):
            if name in meta:
                setattr(out, name + "_ns", parse_time_ns(meta[name]))
        if "xattr" in meta:
            out.xattrs = decode_xattrs(meta["xattr"])
        if "mtime" in meta and "atime" not in meta:
            out.atime_ns = out.mtime_ns
        if "mtime" in meta and "ctime" not in meta:
            out.ctime_ns = out.mtime_ns
    except (ValueError, TypeError, OverflowError):      # OverflowError: a mode beyond mode_t
        log.warning("ignoring malformed POSIX metadata %r", meta)
    return out


def _id(value) -> int:
    """A uid/gid the kernel can take (32 bits; -1 means "no change" there)."""
    number = int(value)
    if not 0 <= number < (1 << 32) - 1:
        raise ValueError(f"uid/gid out of range: {value!r}")
    return number


POSIX_KEYS = ("mode", "uid", "gid", "mtime", "atime", "ctime", "xattr", "rdev")   # what to_metadata owns
# What an object that is not a directory can be.  Like s3fs-fuse, fifos, sockets and device
# nodes are empty objects with the type in x-amz-meta-mode (and x-amz-meta-rdev).
FILE_KINDS = (stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


def object_metadata(attr: Attr, previous: Optional[dict] = None) -> dict:
    """User metadata of a new version: the POSIX fields of ``attr`` over what the version
    it replaces had (another tool's ``x-amz-meta-*`` survive; its POSIX fields and the
    whole-content MD5 do not - they described the old version)."""
    kept = {k: v for k, v in (previous or {}).items() if k not in POSIX_KEYS and k != MD5_HEADER}
    return {**kept, **to_metadata(attr)}


def to_metadata(attr: Attr, extra: Optional[dict] = None) -> dict:
    meta = {
        "mode": str(attr.mode), "uid": str(attr.uid), "gid": str(attr.gid),
        "mtime": format_time_ns(attr.mtime_ns),
        "atime": format_time_ns(attr.atime_ns or attr.mtime_ns),
        "ctime": format_time_ns(attr.ctime_ns or attr.mtime_ns),
    }
    if attr.xattrs:
        meta["xattr"] = encode_xattrs(attr.xattrs)
    if attr.rdev:
        meta["rdev"] = str(attr.rdev)
    if extra:
        meta.update(extra)
    return meta


_NOT_STORED = ("security.", "system.", "trusted.")
_NOT_STORED_BYTES = tuple(p.encode() for p in _NOT_STORED)


def xattr_name_stored(name) -> bool:
    """Extended attributes are stored (s3fs-fuse's ``xattr`` header) except in the kernel's
    own namespaces (``name`` as str or bytes): ``user.*``, and names without a namespace
    (macOS style, s3fs-fuse stores them too).  security.*, system.* and trusted.* answer
    ENOTSUP ("not supported here"), not ENODATA: ``ls -l`` then stops asking for
    security.selinux and the POSIX ACL of every entry (coreutils caches ENOTSUP per
    device), and cp/rsync treat it as "no ACLs, no labels"."""
    if isinstance(name, bytes):
        return not name.startswith(_NOT_STORED_BYTES)
    return not name.startswith(_NOT_STORED)


def encode_xattrs(xattrs: dict) -> str:
    """s3fs-fuse format: URL-encoded JSON object of name -> base64(value)."""
    doc = {name: base64.b64encode(value).decode() for name, value in sorted(xattrs.items())}
    return urllib.parse.quote(json.dumps(doc, separators=(",", ":")), safe="")


def decode_xattrs(text: str) -> dict:
    try:
        doc = json.loads(urllib.parse.unquote(text))
        return {str(k): base64.b64decode(v) for k, v in doc.items()}
    except (ValueError, TypeError, AttributeError, RecursionError):   # RecursionError: "[[[[..."
        log.warning("ignoring malformed xattr header %r", text[:200])
        return {}


def now_ns() -> int:
    return time.time_ns()
