"""Unit tests of the namespace operations below the FUSE adapter: the multipart copy plan
and ``copy_object``, the s3fs-fuse xattr header format, and ``Filesystem``'s
utimens/chmod/chown/rename/rmdir/xattr rules against an in-memory fake S3 client that
records every request."""
from __future__ import annotations

import errno
import hashlib
import logging
import stat
import threading
import time
import urllib.parse

import pytest

from s3fuse import errors
from s3fuse.fuse.operations import stat_dict
from s3fuse.meta.attrs import NS, decode_xattrs, encode_xattrs
from s3fuse.s3.objects import ObjectInfo
from s3fuse.s3.objects import MAX_PART as MAX_SINGLE_COPY
from s3fuse.write.copy import COPY_PART, copy_object, copy_part_plan

from ..support.fakes import FakeS3

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
MIN_PART, MAX_PART, MAX_PARTS = 5 * MiB, 5 * GiB, 10_000


# ---------------------------------------------------------------------------------------
# copy_part_plan / copy_object
# ---------------------------------------------------------------------------------------
def check_plan(plan, size):
    assert 1 <= len(plan) <= MAX_PARTS
    assert [n for n, _, _ in plan] == list(range(1, len(plan) + 1))
    assert plan[0][1] == 0 and plan[-1][2] == size
    for (_, _, end), (_, start, _) in zip(plan, plan[1:]):
        assert end == start, "parts must be contiguous"
    for i, (_, start, end) in enumerate(plan):
        length = end - start
        assert 0 < length <= MAX_PART
        if i < len(plan) - 1:
            assert length >= MIN_PART, f"part {i + 1} of {length} bytes is below 5 MiB"


def test_copy_plan_6_gib():
    size = 6 * GiB
    plan = copy_part_plan(size)
    check_plan(plan, size)
    assert sum(e - s for _, s, e in plan) == size
    assert len(plan) == 6 and all(e - s == COPY_PART for _, s, e in plan)


@pytest.mark.parametrize("size", [MAX_SINGLE_COPY + 1, 6 * GiB + 12345, 100 * GiB - 1, 5 * TiB])
def test_copy_plan_sizes(size):
    check_plan(copy_part_plan(size), size)


@pytest.mark.parametrize("size", [10_000 * MIN_PART + 1, 200 * GiB, 5 * TiB])
def test_copy_plan_grows_part_to_stay_within_10000(size):
    plan = copy_part_plan(size, part=MIN_PART)
    check_plan(plan, size)


class CopyRecorder:
    """Records copy calls; holds no data (sizes may be terabytes)."""

    bucket = "fake"

    def __init__(self, fail_part=None):
        self.calls = []
        self.fail_part = fail_part
        self._lock = threading.Lock()

    def _rec(self, *call):
        with self._lock:
            self.calls.append(call)

    def copy(self, src, dst, metadata=None, headers=None, if_match=None):
        self._rec("copy", src, dst, metadata)
        return "etag-copy"

    def head(self, key):
        self._rec("head", key)
        return ObjectInfo(key=key, size=0, etag="src", mtime=0.0, metadata={"mode": "33188", "uid": "7"},
                          headers={"content-type": "text/html", "cache-control": "max-age=60"})

    def create_multipart(self, key, metadata=None, headers=None):
        self._rec("create_multipart", key, metadata, headers)
        return "up1"

    def upload_part_copy(self, key, upload_id, number, src, start, end, src_etag=None):
        if number == self.fail_part:
            raise errors.BackendError("injected")
        self._rec("upload_part_copy", number, start, end, src_etag)
        return f"p{number}"

    def complete_multipart(self, key, upload_id, parts):
        self._rec("complete_multipart", key, list(parts))
        return "etag-mp"

    def abort_multipart(self, key, upload_id):
        self._rec("abort_multipart", key, upload_id)


def test_copy_object_small_is_one_copy():
    c = CopyRecorder()
    assert copy_object(c, "a", "b", MAX_SINGLE_COPY, {"mode": "1"}) == "etag-copy"
    assert c.calls == [("copy", "a", "b", {"mode": "1"})]


def test_copy_object_big_is_upload_part_copy_covering_every_byte():
    c = CopyRecorder()
    size = 6 * GiB + 7
    assert copy_object(c, "a", "b", size, None, etag="E") == "etag-mp"
    # metadata None keeps the source's: read by HEAD, given to the new upload
    assert c.calls[0] == ("head", "a")
    assert c.calls[1] == ("create_multipart", "b", {"mode": "33188", "uid": "7"},
                          {"content-type": "text/html", "cache-control": "max-age=60"}), "headers kept too"
    parts = sorted(call[1:] for call in c.calls if call[0] == "upload_part_copy")
    check_plan([(n, s, e) for n, s, e, _ in parts], size)
    assert all(tag == "E" for *_, tag in parts), "every part copy is conditional on the source ETag"
    complete = [call for call in c.calls if call[0] == "complete_multipart"]
    assert complete == [("complete_multipart", "b", [(n, f"p{n}") for n, *_ in parts])]


def test_copy_object_big_failure_aborts():
    c = CopyRecorder(fail_part=3)
    with pytest.raises(errors.BackendError):
        copy_object(c, "a", "b", 6 * GiB, {"mode": "1"})
    assert ("abort_multipart", "b", "up1") in c.calls
    assert not any(call[0] == "complete_multipart" for call in c.calls)


# ---------------------------------------------------------------------------------------
# xattr header (s3fs-fuse format: URL-encoded JSON of base64 values)
# ---------------------------------------------------------------------------------------
def test_xattr_header_format_and_round_trip():
    assert encode_xattrs({"user.foo": b"bar"}) == urllib.parse.quote('{"user.foo":"YmFy"}', safe="")
    values = {"user.bin": bytes(range(256)), "user.ünï cødé": "wert ✓".encode(), "user.empty": b"",
              "user.x,y:z": b'{"json": "inside"}'}
    text = encode_xattrs(values)
    assert text.isascii() and "," not in text and " " not in text   # safe as an HTTP header value
    assert decode_xattrs(text) == values


def test_xattr_header_malformed_is_not_fatal(caplog):
    with caplog.at_level(logging.WARNING):
        assert decode_xattrs("%7Bnot json") == {}
        assert decode_xattrs(urllib.parse.quote('["list"]')) == {}
    assert "malformed xattr" in caplog.text


# ---------------------------------------------------------------------------------------
# Filesystem against a fake bucket
# ---------------------------------------------------------------------------------------
def stat_of(fs, path):
    return stat_dict(fs.getattr(path))


@pytest.fixture
def fake():
    return FakeS3()


T0 = 1_600_000_000 * NS + 123_456_789
T1 = 1_500_000_000 * NS + 987_654_321
FILE_META = {"mode": str(stat.S_IFREG | 0o640), "uid": "1001", "gid": "1002",
             "mtime": "1600000000.123456789", "atime": "1500000000.987654321", "ctime": "1600000000.123456789",
             "s3fuse-md5": hashlib.md5(b"payload").hexdigest()}


def test_utimens_omit_now_and_explicit(fake, make_fs):
    fake.seed("f", b"payload", FILE_META)
    fs = make_fs(fake)
    st = stat_of(fs, "/f")
    assert (st["st_mtime"], st["st_atime"]) == (T0, T1)

    # tar's pattern: atime omitted, mtime explicit (nanoseconds)
    new_m = 1_400_000_000 * NS + 1
    fs.utimens("/f", (fs.UTIME_OMIT, new_m))
    meta = fake.objects["f"][1]
    assert meta["mtime"] == "1400000000.000000001" and meta["atime"] == "1500000000.987654321"
    assert fake.objects["f"][0] == b"payload", "a metadata change never touches the data"
    assert meta["s3fuse-md5"] == FILE_META["s3fuse-md5"], "the stored MD5 survives a metadata copy"
    assert meta["mode"] == FILE_META["mode"] and meta["uid"] == "1001"
    assert stat_of(fs, "/f")["st_mtime"] == new_m

    # atime now, mtime omitted
    before = time.time_ns()
    fs.utimens("/f", (fs.UTIME_NOW, fs.UTIME_OMIT))
    after = time.time_ns()
    st = stat_of(fs, "/f")
    assert st["st_mtime"] == new_m and before <= st["st_atime"] <= after
    assert fake.objects["f"][1]["mtime"] == "1400000000.000000001"

    # both omitted: nothing but ctime changes; times=None: both now
    fs.utimens("/f", (fs.UTIME_OMIT, fs.UTIME_OMIT))
    assert stat_of(fs, "/f")["st_mtime"] == new_m
    fs.utimens("/f", None)
    st = stat_of(fs, "/f")
    assert st["st_mtime"] >= after and st["st_atime"] >= after
    # every change was a metadata-only server-side copy of the object onto itself
    assert fake.count("put") == 0 and fake.count("copy") == 4
    assert all(args == ("f", "f") for op, args in fake.calls if op == "copy")


def test_chmod_chown_keep_type_and_unchanged_ids(fake, make_fs):
    fake.seed("f", b"payload", FILE_META)
    fake.seed("d/", b"", {"mode": str(stat.S_IFDIR | 0o755), "uid": "5", "gid": "6"})
    fs = make_fs(fake)
    fs.chmod("/f", stat.S_IFREG | 0o4711)
    assert fake.objects["f"][1]["mode"] == str(stat.S_IFREG | 0o4711)
    fs.chown("/f", -1, 77)
    assert (fake.objects["f"][1]["uid"], fake.objects["f"][1]["gid"]) == ("1001", "77")
    fs.chown("/f", 88, -1)
    assert (fake.objects["f"][1]["uid"], fake.objects["f"][1]["gid"]) == ("88", "77")
    assert fake.objects["f"][0] == b"payload"
    fs.chmod("/d", 0o700)
    assert fake.objects["d/"][1]["mode"] == str(stat.S_IFDIR | 0o700)
    assert stat.S_ISDIR(stat_of(fs, "/d")["st_mode"])
    # an implied directory gets a marker carrying the change
    fake.seed("imp/x", b"1")
    fs.chown("/imp", 3, 4)
    assert (fake.objects["imp/"][1]["uid"], fake.objects["imp/"][1]["gid"]) == ("3", "4")
    assert stat_of(fs, "/imp")["st_uid"] == 3


def test_rename_flags(fake, make_fs):
    fake.seed("a", b"A", FILE_META)
    fake.seed("b", b"B")
    fs = make_fs(fake)
    with pytest.raises(errors.FsError) as e:
        fs.rename("/a", "/b", 2)           # RENAME_EXCHANGE
    assert e.value.errno == errno.EINVAL
    with pytest.raises(errors.FsError) as e:
        fs.rename("/a", "/b", 4)           # RENAME_WHITEOUT
    assert e.value.errno == errno.EINVAL
    with pytest.raises(errors.FsError) as e:
        fs.rename("/a", "/b", 1)           # RENAME_NOREPLACE onto an existing name
    assert e.value.errno == errno.EEXIST
    assert fake.objects["a"][0] == b"A" and fake.objects["b"][0] == b"B"
    fs.rename("/a", "/c", 1)
    assert "a" not in fake.objects and fake.objects["c"][0] == b"A"
    assert fake.objects["c"][1]["mode"] == FILE_META["mode"]
    fs.rename("/c", "/b")                  # replaces, keeping the source's metadata
    assert fake.objects["b"][0] == b"A" and fake.objects["b"][1]["uid"] == "1001"
    assert sorted(fake.objects) == ["b"]
    with pytest.raises(errors.NotFound):
        stat_of(fs, "/c")


def test_rmdir_enotempty_and_errors(fake, make_fs):
    fake.seed("d/", b"", {"mode": str(stat.S_IFDIR | 0o755)})
    fake.seed("d/sub/deep", b"x")          # only an implied directory below
    fake.seed("f", b"x")
    fs = make_fs(fake)
    for path, code in (("/d", errno.ENOTEMPTY), ("/f", errno.ENOTDIR), ("/nope", errno.ENOENT)):
        with pytest.raises(errors.FsError) as e:
            fs.rmdir(path)
        assert e.value.errno == code, path
    with pytest.raises(errors.FsError) as e:
        fs.mkdir("/d", 0o755, 0, 0)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(errors.FsError) as e:
        fs.mkdir("/f/x", 0o755, 0, 0)
    assert e.value.errno == errno.ENOTDIR
    del fake.objects["d/sub/deep"]
    fs.cache.invalidate_tree("/d")
    fs.rmdir("/d")
    assert "d/" not in fake.objects


def test_xattrs_user_only_and_other_namespaces_without_requests(fake, make_fs):
    fake.seed("f", b"payload", FILE_META)
    fs = make_fs(fake)
    fs.setxattr("/f", "user.k", b"v\0\xff", 0)
    assert decode_xattrs(fake.objects["f"][1]["xattr"]) == {"user.k": b"v\0\xff"}
    assert fs.getxattr("/f", "user.k") == b"v\0\xff" and fs.listxattr("/f") == ["user.k"]
    with pytest.raises(errors.FsError) as e:
        fs.setxattr("/f", "user.k", b"x", 1)    # XATTR_CREATE on an existing name
    assert e.value.errno == errno.EEXIST
    with pytest.raises(errors.FsError) as e:
        fs.setxattr("/f", "user.new", b"x", 2)  # XATTR_REPLACE on a missing name
    assert e.value.errno == errno.ENODATA
    n = fake.count()
    for name in ("security.selinux", "security.capability", "system.posix_acl_access", "trusted.x"):
        for call in (lambda: fs.getxattr("/f", name), lambda: fs.setxattr("/f", name, b"x", 0),
                     lambda: fs.removexattr("/f", name)):
            with pytest.raises(errors.FsError) as e:
                call()
            assert e.value.errno == errno.ENOTSUP
    assert fake.count() == n, "other namespaces are answered without a request"
    fs.removexattr("/f", "user.k")
    assert "xattr" not in fake.objects["f"][1] and fs.listxattr("/f") == []
    with pytest.raises(errors.FsError) as e:
        fs.removexattr("/f", "user.k")
    assert e.value.errno == errno.ENODATA
    assert fake.objects["f"][0] == b"payload"
