"""Fuzzing of the pure parsers with hypothesis: mount options (s3fuse.config), passwd file
lines (s3fuse.credentials), POSIX metadata headers (s3fuse.meta.attrs).

Each parser raises only its documented error (ConfigError for options and sources,
ValueError for sizes, times and passwd lines) whatever the input, never anything else
(an OverflowError or RecursionError would reach the user as a traceback or turn a stat
into "failed unexpectedly"); metadata from an object's headers is never fatal at all.
Round trips: what s3fuse writes, it reads back identically.
"""
from __future__ import annotations

import math
import stat
import string

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from s3fuse.fuse.operations import stat_dict
from s3fuse.config import OPTIONS, MountConfig, apply_option, parse_size, parse_source, split_options
from s3fuse.s3.credentials import parse_passwd_line
from s3fuse.errors import ConfigError
from s3fuse.meta.attrs import (FILE_KINDS, NS, Attr, apply_metadata, decode_xattrs, default_attr, Defaults, encode_xattrs,
                               format_time_ns, parse_time_ns, to_metadata)

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
text = st.text(max_size=80)
# text that looks like the real thing more often than random unicode does
numberish = st.from_regex(r"\A\s?-?[0-9١٢.eE+xXob_]{0,30}\s?[kmgtKMGTinfa]{0,3}[bB]?\s?\Z")
anytext = st.one_of(text, numberish, st.sampled_from(["", "nan", "inf", "-inf", "1e400", "9" * 400, "0x10",
                                                      "1_000", "٣", "²", "-0", ".5", "5.", "1.5.2", " 8M ",
                                                      "[" * 3000, "%5B" * 2000, "{}" * 10]))


# ---------------------------------------------------------------------------------------
# s3fuse.config
# ---------------------------------------------------------------------------------------
@FUZZ
@given(anytext)
def test_parse_size_raises_only_value_error(value):
    try:
        n = parse_size(value)
    except ValueError:
        return
    assert isinstance(n, int) and n >= 0


@FUZZ
@given(st.integers(0, 1 << 62), st.sampled_from(["", "k", "K", "KiB", "kb", "M", "MiB", "mB", "G", "GiB", "t", "TiB"]))
def test_parse_size_round_trip(n, unit):
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit[:1].lower()]
    assert parse_size(f"{n}{unit}") == n * mult


@FUZZ
@given(st.integers(0, 1 << 40), st.integers(0, 999), st.sampled_from(["K", "M", "G"]))
def test_parse_size_fractions(whole, frac, unit):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    got = parse_size(f"{whole}.{frac:03d}{unit}")
    assert abs(got - (whole * 1000 + frac) * mult // 1000) <= 1


@FUZZ
@given(text)
def test_split_options_never_raises(value):
    parts = split_options(value)
    assert all(p and p == p.strip() and "," not in p for p in parts)


option_word = st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), min_size=1, max_size=30) \
    .map(str.strip).filter(bool)


@FUZZ
@given(st.lists(option_word, max_size=8))
def test_split_options_round_trip(options):
    assert split_options(",".join(options)) == options
    assert split_options(" , ".join(options) + ",") == options


def _valid_config(cfg: MountConfig):
    """Whatever apply_option accepted is a value the mount can use."""
    for name in ("attr_ttl", "dir_ttl", "negative_ttl"):
        v = getattr(cfg, name)
        assert isinstance(v, float) and math.isfinite(v) and v >= 0, (name, v)
    assert math.isfinite(cfg.request_timeout) and cfg.request_timeout > 0
    for name in ("cache_size", "block_size", "readahead", "part_size", "read_threads", "upload_threads", "retries"):
        v = getattr(cfg, name)
        assert isinstance(v, int) and v > 0, (name, v)
    for name in ("umask", "file_mode", "dir_mode"):
        v = getattr(cfg, name)
        assert v is None or 0 <= v <= 0o7777, (name, v)


@FUZZ
@given(st.sampled_from(sorted(OPTIONS)), anytext)
@example("request_timeout", "nan")
@example("request_timeout", "inf")
@example("attr_ttl", "nan")
@example("part_size", "9" * 400)
@example("cache_size", "1" * 320 + "T")
def test_apply_option_raises_only_config_error(name, value):
    cfg = MountConfig()
    for option in (f"{name}={value}", name, f"{name}="):
        try:
            apply_option(cfg, option)
        except ConfigError as exc:
            assert name in str(exc) and "\n" not in str(exc)
    _valid_config(cfg)


@FUZZ
@given(text)
def test_apply_option_unknown_or_odd_names(option):
    cfg = MountConfig()
    try:
        apply_option(cfg, option)
    except ConfigError:
        pass
    _valid_config(cfg)


@FUZZ
@given(st.floats(0, 1e6, allow_nan=False), st.integers(1, 1 << 20), st.integers(0, 0o7777))
def test_apply_option_round_trip(seconds, count, mode):
    cfg = MountConfig()
    for option in (f"attr_ttl={seconds!r}", f"request_timeout={seconds + 0.5!r}", f"retries={count}",
                   f"upload_threads={count}", f"umask={mode:o}", f"file_mode=0{mode:o}", "allow_other",
                   "ro=no", "noatime", "x-systemd.automount"):
        apply_option(cfg, option)
    assert cfg.attr_ttl == seconds and cfg.request_timeout == seconds + 0.5
    assert cfg.retries == cfg.upload_threads == count
    assert cfg.umask == cfg.file_mode == mode
    assert cfg.allow_other and not cfg.ro
    assert cfg.ignored == ["noatime", "x-systemd.automount"]


@FUZZ
@given(anytext)
@example("s3://")
@example(":/x")
@example("s3:///x")
def test_parse_source_raises_only_config_error(source):
    try:
        bucket, prefix = parse_source(source)
    except ConfigError:
        return
    assert bucket and not prefix.startswith("/") and not prefix.endswith("/")


bucket_name = st.text(string.ascii_lowercase + string.digits + ".-_", min_size=1, max_size=63)
prefix_part = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1,
                      max_size=12)


@FUZZ
@given(bucket_name, st.lists(prefix_part, max_size=4))
def test_parse_source_round_trip(bucket, parts):
    prefix = "/".join(parts)
    assume(prefix == prefix.strip() or not prefix)
    assert parse_source(bucket) == (bucket, "")
    assert parse_source(f"{bucket}:/{prefix}") == (bucket, prefix)
    assert parse_source(f"{bucket}:/{prefix}/") == (bucket, prefix)
    assert parse_source(f"s3://{bucket}/{prefix}") == (bucket, prefix)


# ---------------------------------------------------------------------------------------
# s3fuse.credentials
# ---------------------------------------------------------------------------------------
@FUZZ
@given(text, bucket_name)
@example("a:b:c:d", "x")
@example(":secret", "x")
@example("b::", "b")
def test_parse_passwd_line_raises_only_value_error(line, bucket):
    try:
        got = parse_passwd_line(line, bucket)
    except ValueError as exc:
        # the message must never quote the line: it may hold a secret
        assert line.strip() not in str(exc) or len(line.strip()) < 3
        return
    if got is not None:
        access, secret, specific = got
        assert access and secret and ":" not in access + secret and isinstance(specific, bool)


cred = st.text(st.characters(blacklist_characters=":#", blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")),
               min_size=1, max_size=40)


@FUZZ
@given(cred, cred, bucket_name, bucket_name)
def test_parse_passwd_line_round_trip(access, secret, bucket, other):
    assume(access.strip() == access and secret.strip() == secret)
    assert parse_passwd_line(f"{access}:{secret}", bucket) == (access, secret, False)
    assert parse_passwd_line(f"  {bucket}:{access}:{secret}\n", bucket) == (access, secret, True)
    if other != bucket:
        assert parse_passwd_line(f"{other}:{access}:{secret}", bucket) is None
    assert parse_passwd_line(f"# {access}:{secret}", bucket) is None


# ---------------------------------------------------------------------------------------
# s3fuse.meta.attrs
# ---------------------------------------------------------------------------------------
@FUZZ
@given(anytext)
@example("-0.5")
@example("--5")
@example("1.")
def test_parse_time_ns_raises_only_value_error(value):
    try:
        ns = parse_time_ns(value)
    except ValueError:
        return
    assert isinstance(ns, int)


@FUZZ
@given(st.integers(-(1 << 62), 1 << 62))
@example(-1)
@example(-NS // 2)
@example(-NS)
def test_time_round_trip(ns):
    text = format_time_ns(ns)
    assert parse_time_ns(text) == ns
    assert float(text) == pytest.approx(ns / NS, rel=1e-9, abs=1e-9)   # what s3fs/rclone read


@FUZZ
@given(st.integers(0, 1 << 40), st.integers(0, NS - 1))
def test_fractional_seconds_as_rclone_writes_them(sec, frac):
    assert parse_time_ns(f"{sec}.{frac:09d}") == sec * NS + frac
    assert parse_time_ns(f"{sec}.{frac:09d}123") == sec * NS + frac     # beyond ns: cut


meta_key = st.one_of(st.sampled_from(["mode", "uid", "gid", "mtime", "atime", "ctime", "xattr", "s3fuse-md5"]), text)
meta_value = st.one_of(anytext, st.integers(-(1 << 70), 1 << 70).map(str), st.just(str(stat.S_IFIFO | 0o644)))


@FUZZ
@given(st.dictionaries(meta_key, meta_value, max_size=8), st.booleans())
@example({"mode": str(1 << 70)}, False)
@example({"mode": "-1"}, False)
@example({"xattr": "[" * 3000}, False)
@example({"mode": str(stat.S_IFDIR | 0o755)}, False)
@example({"mode": str(stat.S_IFREG | 0o644)}, True)
def test_apply_metadata_is_never_fatal(meta, is_dir):
    base = default_attr(is_dir, 10, 1.7e9, Defaults(uid=1, gid=2))
    out = apply_metadata(base, meta, is_dir)
    assert out.exact
    kind = stat.S_IFMT(out.mode)
    assert kind == (stat.S_IFDIR if is_dir else kind) and (kind == stat.S_IFDIR) == is_dir
    assert kind in FILE_KINDS + (stat.S_IFDIR,)
    assert 0 <= stat.S_IMODE(out.mode) <= 0o7777
    assert 0 <= out.uid < 1 << 32 and 0 <= out.gid < 1 << 32, "ids the kernel can take"
    assert stat_dict(out)["st_mode"] == out.mode


xattr_name = st.text(min_size=1, max_size=20).map(lambda s: "user." + s)


@FUZZ
@given(st.dictionaries(xattr_name, st.binary(max_size=50), max_size=5))
def test_xattrs_round_trip(xattrs):
    assert decode_xattrs(encode_xattrs(xattrs)) == xattrs


@FUZZ
@given(anytext)
@example("%7B%22a%22%3A1%7D")
@example("%5B%5D")
@example('{"user.a": "!!"}')
def test_decode_xattrs_never_raises(value):
    got = decode_xattrs(value)
    assert isinstance(got, dict) and all(isinstance(v, bytes) for v in got.values())


@FUZZ
@given(st.sampled_from([stat.S_IFREG, stat.S_IFLNK, stat.S_IFDIR]), st.integers(0, 0o7777),
       st.integers(0, (1 << 32) - 2), st.integers(0, (1 << 32) - 2), st.integers(-(1 << 40), 1 << 62),
       st.integers(0, 1 << 62),
       st.integers(0, 1 << 62), st.dictionaries(xattr_name, st.binary(max_size=30), max_size=3))
def test_metadata_round_trip(kind, perm, uid, gid, mtime, atime, ctime, xattrs):
    is_dir = kind == stat.S_IFDIR
    attr = Attr(mode=kind | perm, uid=uid, gid=gid, size=0 if is_dir else 5, mtime_ns=mtime, atime_ns=atime,
                ctime_ns=ctime, xattrs=xattrs or None)
    base = default_attr(is_dir, attr.size, 0.0, Defaults())
    got = apply_metadata(base, to_metadata(attr), is_dir)
    assert (got.mode, got.uid, got.gid, got.mtime_ns, got.atime_ns or got.mtime_ns, got.ctime_ns or got.mtime_ns) == \
        (attr.mode, uid, gid, mtime, atime or mtime, ctime or mtime)
    assert (got.xattrs or {}) == xattrs
