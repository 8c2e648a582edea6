"""Mount options: one table, parsed and validated into a MountConfig.

Every option can be given as ``-o name=value`` (or ``-o flag``); the table below is the
single source for parsing, validation and ``--help``.  A value that cannot work raises
ConfigError with a one-line message naming the option.
"""
from __future__ import annotations

import datetime
import hashlib
import math
import time
import os
import re
from fractions import Fraction
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlparse

from .errors import ConfigError

# the canned ACLs S3 knows (-o acl=)
CANNED_ACLS = ("private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
               "bucket-owner-read", "bucket-owner-full-control")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512K, 8M, 10G)")
    # exact arithmetic: "1.5G" is exact, and an absurdly long number is no float overflow
    return int(Fraction(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_octal(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise ValueError(f"not a mode: {text!r}")
    return value


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on", ""):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_url(text: str) -> str:
    u = urlparse(text)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"not an http(s) URL: {text!r}")
    try:
        u.port
    except ValueError as exc:
        raise ValueError(f"bad port in URL {text!r}") from exc
    return text.rstrip("/")


def parse_listen(text: str) -> tuple:
    """'[ADDR:]PORT' -> (host, port); a port alone (or ':PORT') listens on loopback only.
    IPv6 addresses in brackets: '[::1]:9101'.  Port 0 picks a free port."""
    host, _, port = text.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not [ADDR:]PORT: {text!r} (e.g. 9101 or 0.0.0.0:9101)")
    if host and not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise ValueError(f"bad address in {text!r}")
    return host or "127.0.0.1", int(port)


def _choice(*choices):
    def parse(text):
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return parse


def _finite_float(text) -> float:
    value = float(text)
    if not math.isfinite(value):          # nan/inf: no timeout or TTL can be that
        raise ValueError(f"not a number of seconds: {text!r}")
    return value


def _positive(conv):
    def parse(text):
        value = conv(text)
        if value <= 0:
            raise ValueError(f"must be positive: {text!r}")
        return value
    return parse


def _storage_class(text: str) -> str:
    if not re.fullmatch(r"[A-Z][A-Z0-9_]{1,63}", text):
        raise ValueError(f"not a storage class: {text!r} (e.g. STANDARD_IA)")
    return text


def _nonneg_float(text):
    value = _finite_float(text)
    if value < 0:
        raise ValueError(f"must not be negative: {text!r}")
    return value


def parse_min_free(text: str):
    """'5%' -> Fraction(5, 100) (of the filesystem's size); '256M' -> bytes."""
    if text.strip().endswith("%"):
        value = Fraction(text.strip()[:-1].strip())
        if not 0 <= value < 100:
            raise ValueError(f"a percentage of the disk is 0%..99%, not {text!r}")
        return value / 100
    return parse_size(text)


def parse_time(text: str) -> float:
    """A moment as Unix seconds: ISO 8601 (2026-12-01T10:00:00Z, an offset, fractions;
    without a zone it is UTC) or Unix seconds (1764583200, 1764583200.5).  Not in the future."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"not a time: {text!r} (ISO 8601 like 2026-12-01T10:00:00Z, or Unix seconds)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        value = moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a time: {text!r}")
    if value > time.time():
        raise ValueError(f"{text!r} is in the future (a snapshot shows the bucket as it was)")
    return value


def _part_size(text) -> int:
    value = parse_size(text)
    if not 5 << 20 <= value <= 5 << 30:
        raise ValueError(f"a part is 5M..5G, not {text!r}")
    return value


# name: (field, parser or None for a flag, help)
OPTIONS = {
    "endpoint": ("endpoint", parse_url, "S3 endpoint URL (default: AWS, virtual-hosted). Implies path-style "
                                        "addressing unless virtual_host is given."),
    "url": ("endpoint", parse_url, "alias of endpoint (s3fs-fuse spelling)"),
    "region": ("region", str, "AWS region (default: the bucket's, as the server names it; else profile/env, "
                              "us-east-1)"),
    "ca_bundle": ("ca_bundle", str, "CA certificates (PEM) to trust for HTTPS (default: AWS_CA_BUNDLE, the "
                                    "profile's ca_bundle, else the system's)"),
    "connect_timeout": ("connect_timeout", _positive(_finite_float), "seconds to establish a connection "
                                                                     "(default 5)"),
    "profile": ("profile", str, "profile in ~/.aws/credentials and ~/.aws/config"),
    "passwd_file": ("passwd_file", str, "file with ACCESS:SECRET or BUCKET:ACCESS:SECRET lines (mode 0600)"),
    "path_style": ("path_style", None, "path-style requests (bucket in the path)"),
    "use_path_request_style": ("path_style", None, "alias of path_style (s3fs-fuse spelling)"),
    "virtual_host": ("virtual_host", None, "virtual-host-style requests (bucket in the host name)"),
    "sse": ("sse", _choice("AES256", "aws:kms"), "server-side encryption of the objects written: AES256 "
                                                  "(SSE-S3) or aws:kms (SSE-KMS)"),
    "sse_kms_key_id": ("sse_kms_key_id", str, "KMS key for sse=aws:kms (default: the account's S3 key)"),
    "sse_c_key": ("sse_c_key", str, "file with a 256-bit SSE-C key (32 bytes, base64 or hex; mode 0600): "
                                    "objects are encrypted with it and read with it"),
    "storage_class": ("storage_class", _storage_class, "storage class of the objects written (STANDARD, "
                                                       "STANDARD_IA, INTELLIGENT_TIERING, ...)"),
    "acl": ("acl", _choice(*CANNED_ACLS), "canned ACL of the objects written (private, public-read, "
                                         "bucket-owner-full-control, ...)"),
    "requester_pays": ("requester_pays", None, "send x-amz-request-payer: requester (requester-pays buckets)"),
    "uid": ("uid", int, "owner of objects without POSIX metadata (default: mounting user)"),
    "gid": ("gid", int, "group of objects without POSIX metadata (default: mounting group)"),
    "umask": ("umask", parse_octal, "umask applied to default modes (default 022)"),
    "file_mode": ("file_mode", parse_octal, "mode of files without POSIX metadata (default 0666 & ~umask)"),
    "dir_mode": ("dir_mode", parse_octal, "mode of directories without POSIX metadata (default 0777 & ~umask)"),
    "allow_other": ("allow_other", None, "let other users use the mount (implies default_permissions)"),
    "default_permissions": ("default_permissions", None, "kernel checks permissions against mode/uid/gid"),
    "ro": ("ro", None, "read-only mount"),
    "snapshot": ("snapshot", parse_time,
                 "mount a versioned bucket read-only as it was at TIME (ISO 8601 like 2026-12-01T10:00:00Z, or "
                 "Unix seconds): for each key its newest version up to TIME, none after a delete marker; "
                 "listings page through every version under the directory (ListObjectVersions); a bucket "
                 "without versioning fails the mount"),
    "cache_dir": ("cache_dir", str, "directory for block cache, metadata store, staging and journal "
                                    "(default: one per endpoint, bucket and prefix under /var/cache/s3fuse, "
                                    "or ~/.cache/s3fuse for other users)"),
    "cache_size": ("cache_size", _positive(parse_size), "block cache size limit (default 10G)"),
    "cache_min_free": ("cache_min_free", parse_min_free,
                       "free space the block cache leaves on cache_dir's disk for files being written: a size "
                       "or a percentage of the disk (default 5%); below it the cache evicts its oldest blocks, "
                       "and caches no more while it cannot (reads then come from S3)"),
    "block_size": ("block_size", _positive(parse_size), "cache block and random-read size (default 1M)"),
    "readahead": ("readahead", _positive(parse_size), "largest sequential read-ahead window (default 64M)"),
    "random_fill": ("random_fill", parse_size,
                    "an object read at random (a descriptor's 8th random read) of at most this size is "
                    "fetched whole into the block cache in the background (default 256M, at most an "
                    "eighth of cache_size; 0 = never: only the blocks read are fetched)"),
    "read_threads": ("read_threads", _positive(int), "parallel ranged GETs (default 8)"),
    "max_memory": ("max_memory", _positive(parse_size),
                   "memory for data buffers: read-ahead, cached and queued blocks, upload parts (default 48M; "
                   "read-ahead and upload parallelism shrink to fit)"),
    "small_file_readahead": ("small_file_readahead", parse_bool,
                             "prefetch the next small files of a directory read in listing order (default on)"),
    "verify": ("verify", None, "check a whole sequential read of an object written by s3fuse against the MD5 it "
                               "carries (x-amz-meta-s3fuse-md5): EIO on a mismatch (default off: costs CPU)"),
    "attr_ttl": ("attr_ttl", _nonneg_float, "seconds attributes are trusted (default 60; 0 = ask every open)"),
    "dir_ttl": ("dir_ttl", _nonneg_float, "seconds a directory listing is trusted (default 60)"),
    "negative_ttl": ("negative_ttl", _nonneg_float, "seconds a missing name is remembered (default 5)"),
    "meta_entries": ("meta_entries", _positive(int),
                     "attributes kept in memory, and entries of all cached listings together (default 200000, "
                     "about 0.5 KiB each); a directory of more entries is listed page by page from S3 and not "
                     "cached"),
    "meta": ("meta", _choice("exact", "list"),
             "exact: POSIX metadata from object headers (HEAD where not known); list: listing only"),
    "part_size": ("part_size", _positive(parse_size), "multipart part size (default 8M; grows for huge files)"),
    "upload_threads": ("upload_threads", _positive(int), "parallel part uploads (default 8)"),
    "multipart_threshold": ("multipart_threshold", _positive(parse_size),
                            "files from this size upload in parts (default = part_size)"),
    "copy_part_size": ("copy_part_size", _part_size,
                       "largest part an edit of a large file copies on the server from its old version "
                       "(default 64M: parts copied in parallel; 5M..5G)"),
    "request_timeout": ("request_timeout", _positive(_finite_float),
                        "seconds before a stalled request is retried (default 30)"),
    "retries": ("retries", _positive(int), "attempts per request for transient errors (default 5)"),
    "hardlinks": ("hardlinks", _choice("copy", "off"), "copy: link() makes a server-side copy; off: EPERM"),
    "writeback": ("writeback", None, "close() returns once the file is durable on local disk; uploads run in "
                                     "the background (default off: close() returns once the object is in S3); "
                                     "unlink returns once its delete is recorded, deletes go in DeleteObjects "
                                     "of up to 1,000 keys"),
    "writeback_files": ("writeback_files", _positive(int), "files waiting for upload before close() waits (4096)"),
    "writeback_bytes": ("writeback_bytes", _positive(parse_size),
                        "bytes waiting for upload (staging disk) before close() waits (1G)"),
    "writeback_threads": ("writeback_threads", _positive(int), "uploads of closed files at once (16)"),
    "retry_interval": ("retry_interval", _positive(_finite_float),
                       "seconds between tries of an upload that failed and waits in the journal (default 30)"),
    "heal": ("heal", None, "a daemonized mount whose serving process dies (SIGKILL, OOM kill, a crash) is "
                           "mounted again at once by a supervisor process, with the same options and cache_dir "
                           "(default on; heal=0 turns it off; not with -f)"),
    "heal_limit": ("heal_limit", _positive(int), "deaths within 60 s after which a healing mount stays down "
                                                 "(default 5; restarts wait 0, 1, 2, 4... s)"),
    "log_file": ("log_file", str, "log to this file (default: syslog, or stderr with -f)"),
    "log_level": ("log_level", _choice("debug", "info", "warning", "error"),
                  "default warning; info adds one line per finished upload (size, parts, seconds, MiB/s)"),
    "metrics": ("metrics", parse_listen, "serve Prometheus metrics at http://[ADDR:]PORT/metrics (ADDR default "
                "127.0.0.1; PORT 0 picks a free port, shown by s3fuse status)"),
}

# Options meant for mount(8), systemd or the kernel that s3fuse accepts and ignores.
IGNORED = {"_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "defaults", "rw", "dev", "nodev",
           "suid", "nosuid", "exec", "noexec", "async", "atime", "noatime", "relatime", "nodiratime", "owner",
           "group", "noexec", "sync", "comment", "bg", "fg"}
IGNORED_PREFIXES = ("x-systemd.", "x-", "comment=")


def default_cache_root() -> str:
    if os.geteuid() == 0:
        return "/var/cache/s3fuse"
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "s3fuse")


@dataclass
class MountConfig:
    bucket: str = ""
    prefix: str = ""
    mountpoint: str = ""
    foreground: bool = False
    debug: bool = False
    endpoint: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None
    passwd_file: Optional[str] = None
    path_style: bool = False
    virtual_host: bool = False
    ca_bundle: Optional[str] = None
    connect_timeout: float = 5.0
    sse: Optional[str] = None
    sse_kms_key_id: Optional[str] = None
    sse_c_key: Optional[str] = None
    storage_class: Optional[str] = None
    acl: Optional[str] = None
    requester_pays: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    file_mode: Optional[int] = None
    dir_mode: Optional[int] = None
    allow_other: bool = False
    default_permissions: bool = False
    ro: bool = False
    snapshot: Optional[float] = None    # -o snapshot=TIME: the bucket as it was then (read-only)
    cache_dir: str = ""                 # "" until resolve_cache_dir(): one per mount under the root
    cache_root: Optional[str] = None    # set when cache_dir is the default
    cache_size: int = 10 << 30
    random_fill: int = 256 << 20
    cache_min_free: object = Fraction(5, 100)     # bytes, or a Fraction of the cache disk
    block_size: int = 1 << 20
    readahead: int = 64 << 20
    read_threads: int = 8
    max_memory: int = 48 << 20
    small_file_readahead: bool = True
    verify: bool = False
    attr_ttl: float = 60.0
    dir_ttl: float = 60.0
    negative_ttl: float = 5.0
    meta: str = "exact"
    meta_entries: int = 200_000
    part_size: int = 8 << 20
    upload_threads: int = 8
    multipart_threshold: Optional[int] = None
    copy_part_size: int = 64 << 20
    request_timeout: float = 30.0
    retries: int = 5
    hardlinks: str = "copy"
    writeback: bool = False
    writeback_files: int = 4096
    writeback_bytes: int = 1 << 30
    writeback_threads: int = 16
    retry_interval: float = 30.0
    heal: bool = True
    heal_limit: int = 5
    log_file: Optional[str] = None
    log_level: str = "warning"
    metrics: Optional[tuple] = None       # (host, port) of the Prometheus endpoint
    ignored: list = field(default_factory=list)

    @property
    def modes(self):
        file_mode = self.file_mode if self.file_mode is not None else 0o666 & ~self.umask
        dir_mode = self.dir_mode if self.dir_mode is not None else 0o777 & ~self.umask
        return file_mode, dir_mode

    @property
    def addressing_path_style(self) -> Optional[bool]:
        if self.virtual_host:
            return False
        if self.path_style:
            return True
        return None   # default: path-style for custom endpoints, virtual-hosted for AWS


def resolve_cache_dir(cfg: MountConfig):
    """Without ``cache_dir=``, each (endpoint, bucket, prefix) gets its own directory under
    the cache root, so two mounts with default options never share a journal."""
    if cfg.cache_dir:
        return
    cfg.cache_root = default_cache_root()
    ident = "\n".join((cfg.endpoint or "aws", cfg.bucket, cfg.prefix)).encode()
    if cfg.snapshot is not None:          # its own, beside the live mount's (which it never locks)
        ident += f"\nsnapshot={cfg.snapshot!r}".encode()
    cfg.cache_dir = os.path.join(cfg.cache_root, f"{cfg.bucket}-{hashlib.sha1(ident).hexdigest()[:10]}")


def split_options(text: str) -> list:
    return [o.strip() for o in text.split(",") if o.strip()]


def apply_option(cfg: MountConfig, option: str):
    name, eq, value = option.partition("=")
    name = name.strip()
    if name in IGNORED or option.startswith(IGNORED_PREFIXES) or name.startswith(IGNORED_PREFIXES):
        cfg.ignored.append(option)
        return
    spec = OPTIONS.get(name)
    if spec is None:
        raise ConfigError(f"unknown option {name!r} (see s3fuse --help)")
    attr, parser, _ = spec
    if parser is None:
        try:
            setattr(cfg, attr, parse_bool(value) if eq else True)
        except ValueError as exc:
            raise ConfigError(f"option {name}: {exc}") from None
        return
    if not eq or value == "":
        raise ConfigError(f"option {name} needs a value ({name}=...)")
    try:
        setattr(cfg, attr, parser(value))
    except ValueError as exc:
        raise ConfigError(f"option {name}: {exc}") from None


def parse_source(source: str):
    """'bucket', 'bucket:/prefix', 's3://bucket/prefix' -> (bucket, prefix)."""
    if source.startswith("s3://"):
        bucket, _, prefix = source[5:].partition("/")
    else:
        bucket, _, prefix = source.partition(":")
    bucket = bucket.strip()
    if not bucket:
        raise ConfigError(f"no bucket name in {source!r} (expected BUCKET[:/PREFIX])")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,255}", bucket):
        raise ConfigError(f"bad bucket name {bucket!r}")
    return bucket, prefix.strip("/")


def options_help() -> str:
    width = max(len(n) for n in OPTIONS) + 8
    lines = []
    for name, (_, parser, text) in OPTIONS.items():
        lhs = name if parser is None else f"{name}=..."
        lines.append(f"  -o {lhs:<{width}} {text}")
    lines.append("  Ignored (for mount(8)/systemd): " + ", ".join(sorted(IGNORED)) + ", x-systemd.*, comment=")
    return "\n".join(lines)
