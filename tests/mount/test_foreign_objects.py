"""Objects written by other clients (boto3 here, standing in for aws-cli, s3cmd, rclone,
backup tools), read through a real mount on every test server: multipart objects, objects
without POSIX metadata, awkward key names, very deep keys, a key ``x`` next to keys under
``x/``, empty objects and ``dir/`` markers with a body.  The rules checked here are the
ones docs/SEMANTICS.md states under "Names" and "Objects written by other tools"."""
from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import time

import pytest

from ..support.probes import delta, put_many, requests, s3fs_meta

MiB = 1 << 20


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def multipart_put(s3, bucket, key, parts, metadata=None):
    """Upload ``parts`` (a list of bytes) as one multipart object; returns its ETag."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata or {})
    done = []
    for n, body in enumerate(parts, 1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=n,
                              Body=body)["ETag"]
        done.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": done})
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


# ---------------------------------------------------------------------------------------
# multipart objects
# ---------------------------------------------------------------------------------------
def test_multipart_objects_read_and_stat(s3, bucket, mounter):
    rng = random.Random(7)
    parts = [rng.randbytes(5 * MiB), rng.randbytes(5 * MiB), rng.randbytes(5 * MiB), rng.randbytes(777_777)]
    data = b"".join(parts)
    plain_etag = multipart_put(s3, bucket, "mp/plain.bin", parts)
    meta = s3fs_meta(stat.S_IFREG | 0o640, 1234, 5678, "1600000000.25")
    posix_etag = multipart_put(s3, bucket, "mp/posix.bin", parts[:2], meta)
    assert plain_etag.endswith("-4") and posix_etag.endswith("-2"), (plain_etag, posix_etag)
    last_modified = s3.head_object(Bucket=bucket, Key="mp/plain.bin")["LastModified"].timestamp()

    m = mounter(bucket, options=["block_size=1M"])
    assert sorted(os.listdir(m.p("mp"))) == ["plain.bin", "posix.bin"]
    st = os.stat(m.p("mp", "plain.bin"))
    assert st.st_size == len(data) and st.st_mode == stat.S_IFREG | 0o644 and st.st_uid == os.getuid()
    assert abs(st.st_mtime - last_modified) < 1
    st = os.stat(m.p("mp", "posix.bin"))
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_size) == (stat.S_IFREG | 0o640, 1234, 5678, 10 * MiB)
    assert st.st_mtime_ns == 1_600_000_000_250_000_000

    # sequential, whole
    assert hashlib.md5(read(m.p("mp", "plain.bin"))).hexdigest() == hashlib.md5(data).hexdigest()
    assert read(m.p("mp", "posix.bin")) == b"".join(parts[:2])
    # random reads across part and block boundaries, on a fresh mount (cold block cache)
    m2 = mounter(bucket, options=["block_size=1M"], name="cold")
    fd = os.open(m2.p("mp", "plain.bin"), os.O_RDONLY)
    try:
        for off in (5 * MiB - 3, 10 * MiB - 100_000, 15 * MiB - 1, len(data) - 10, 1):
            assert os.pread(fd, 200_000, off) == data[off:off + 200_000], off
        assert os.pread(fd, 10, len(data)) == b""
    finally:
        os.close(fd)
    # the blocks are cached under the multipart ETag: a remount on the same cache reads no GET
    m2.unmount()
    m3 = mounter(bucket, options=["block_size=1M"], name="cold")
    before = requests(m3)
    fd = os.open(m3.p("mp", "plain.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, 200_000, 5 * MiB - 3) == data[5 * MiB - 3:5 * MiB - 3 + 200_000]
    finally:
        os.close(fd)
    assert delta(requests(m3), before)["get_object"] == 0


# ---------------------------------------------------------------------------------------
# no POSIX metadata: the mount defaults
# ---------------------------------------------------------------------------------------
def test_objects_without_posix_metadata_get_defaults(s3, bucket, mounter):
    put_many(s3, bucket, [("bare.txt", b"bare", None), ("d1/d2/deeper.txt", b"deeper", None),
                          ("other-meta", b"x", {"color": "blue", "s3cmd-attrs": "uid:5/gid:6/mode:33261"}),
                          ("marker/", b"", None)])
    lm = s3.head_object(Bucket=bucket, Key="bare.txt")["LastModified"].timestamp()
    marker_lm = s3.head_object(Bucket=bucket, Key="marker/")["LastModified"].timestamp()
    time.sleep(1.2)                     # the mount time is now later than any LastModified
    for options, fmode, dmode, uid, gid in (([], 0o644, 0o755, os.getuid(), os.getgid()),
                                            (["umask=077", "uid=321", "gid=654"], 0o600, 0o700, 321, 654)):
        m = mounter(bucket, options=options)
        for path, mode in (("bare.txt", fmode), ("d1/d2/deeper.txt", fmode), ("other-meta", fmode),
                           ("d1", dmode | stat.S_IFDIR), ("d1/d2", dmode | stat.S_IFDIR),
                           ("marker", dmode | stat.S_IFDIR)):
            st = os.stat(m.p(path))
            if not stat.S_ISDIR(mode):
                mode |= stat.S_IFREG
            assert (st.st_mode, st.st_uid, st.st_gid) == (mode, uid, gid), (options, path)
        st = os.stat(m.p("bare.txt"))
        assert abs(st.st_mtime - lm) < 1 and st.st_atime == st.st_mtime == st.st_ctime
        assert os.listxattr(m.p("other-meta")) == []       # foreign headers are not xattrs
        # directories without an mtime header (implied, or a bare marker): the mount time
        for d in ("d1", "marker"):
            assert os.stat(m.p(d)).st_mtime > marker_lm + 1, d
        m.unmount()


# ---------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------
AWKWARD = ["with space", "plus+sign", "a+b c", "per%cent", "per%20cent", "pct%2Fslash", "ünïcødé",
           "日本語", "emoji 😀", "q?m&a=1#frag", "semi;colon,comma", "quote'\"", "star*", "[brackets]",
           "tilde~", "=equals", "at@sign", "dollar$", "back\\slash"]


def test_awkward_key_names(s3, bucket, mounter):
    """Read, list, cold lookup (fresh mount, no listing), and then chmod + rename through the
    mount: CopySource and Prefix must carry these names intact to the server."""
    items = [(f"names/{n}", n.encode(), None) for n in AWKWARD]
    items += [(f"names/{n} dir/{n}", b"inside " + n.encode(), None) for n in AWKWARD[:6]]
    put_many(s3, bucket, items)
    m = mounter(bucket)
    assert sorted(os.listdir(m.p("names"))) == sorted(AWKWARD + [f"{n} dir" for n in AWKWARD[:6]])
    for n in AWKWARD:
        assert read(m.p("names", n)) == n.encode(), n
    for n in AWKWARD[:6]:
        assert os.listdir(m.p("names", f"{n} dir")) == [n]
        assert read(m.p("names", f"{n} dir", n)) == b"inside " + n.encode()

    cold = mounter(bucket, name="cold")
    for n in AWKWARD:
        assert os.stat(cold.p("names", n)).st_size == len(n.encode()), n
        assert stat.S_ISDIR(os.stat(cold.p("names", f"{n} dir")).st_mode) if n in AWKWARD[:6] else True
    with pytest.raises(FileNotFoundError):
        os.stat(cold.p("names", "per cent"))        # %20 is not decoded

    for n in AWKWARD:
        os.chmod(m.p("names", n), 0o600)            # metadata copy of the object onto itself
        os.rename(m.p("names", n), m.p("names", n + ".moved"))
    keys = {o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="names/")
            for o in p.get("Contents", [])}
    for n in AWKWARD:
        key = f"names/{n}.moved"
        assert key in keys and f"names/{n}" not in keys, n
        obj = s3.get_object(Bucket=bucket, Key=key)
        assert obj["Body"].read() == n.encode() and int(obj["Metadata"]["mode"]) & 0o777 == 0o600, n


def test_very_deep_keys(s3, bucket, mounter):
    depth = 40
    dirs = [f"level-{i:02d}-{'d' * 12}" for i in range(depth)]      # 21 bytes each
    deep = "/".join(dirs)
    put_many(s3, bucket, [(f"{deep}/leaf.txt", b"at the bottom", None),
                          (f"{'/'.join(dirs[:20])}/middle.txt", b"half way", None)])
    assert len(deep) > 800
    m = mounter(bucket)
    # a cold lookup of the leaf: every level is found by lookups alone
    assert read(m.p(*dirs, "leaf.txt")) == b"at the bottom"
    walked = [(root[len(m.path):], sorted(ds), sorted(fs)) for root, ds, fs in os.walk(m.path)]
    assert len(walked) == depth + 1
    for i, (root, ds, fs) in enumerate(walked):
        assert ds == ([dirs[i]] if i < depth else []), root
        assert fs == (["middle.txt"] if i == 20 else ["leaf.txt"] if i == depth else []), root
    assert read(m.p(*dirs[:20], "middle.txt")) == b"half way"
    # written through the mount, 45 levels down (a 900-byte key) ...
    more = [f"new{i}" for i in range(5)]
    os.makedirs(m.p(*dirs, *more))
    with open(m.p(*dirs, *more, "w.txt"), "wb") as f:
        f.write(b"written deep")
    key = "/".join(dirs + more + ["w.txt"])
    assert 850 < len(key) < 1024
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"written deep"
    # ... and past S3's 1024-byte key limit: refused locally
    with pytest.raises(OSError) as info:
        open(m.p(*dirs, *more, "x" * (1030 - len(key))), "wb").close()
    assert info.value.errno == errno.ENAMETOOLONG


# ---------------------------------------------------------------------------------------
# a key x and keys under x/: the directory wins
# ---------------------------------------------------------------------------------------
def test_file_and_directory_of_the_same_name(s3, bucket, mounter):
    put_many(s3, bucket, [
        ("x", b"the object x", None), ("x/inner", b"inner", None),                # object + implied dir
        ("y", b"the object y", None), ("y/", b"", s3fs_meta(stat.S_IFDIR | 0o711)),  # object + marker only
        ("sub/z", b"the object z", None), ("sub/z/deep/er", b"er", None),          # one level down
    ])
    # 1. direct lookups first, on a fresh mount with no listing (the HEAD of the object and
    #    the directory probe race: the directory must win every time)
    m = mounter(bucket)
    for path in ("x", "y", "sub/z"):
        assert stat.S_ISDIR(os.stat(m.p(path)).st_mode), path
    assert stat.S_IMODE(os.stat(m.p("y")).st_mode) == 0o711
    with pytest.raises(IsADirectoryError):
        open(m.p("x"), "rb")
    assert read(m.p("x", "inner")) == b"inner"
    assert os.listdir(m.p("y")) == []
    # 2. listings first, on another fresh mount
    m2 = mounter(bucket, name="listing")
    assert sorted(os.listdir(m2.path)) == ["sub", "x", "y"]       # each name once
    assert os.listdir(m2.p("sub")) == ["z"]
    for path in ("x", "y", "sub/z"):
        assert stat.S_ISDIR(os.stat(m2.p(path)).st_mode), path
    assert os.listdir(m2.p("sub", "z")) == ["deep"]
    assert "hidden by the directory of the same name" in m2.log()
    # the hidden objects are untouched in the bucket
    assert s3.get_object(Bucket=bucket, Key="x")["Body"].read() == b"the object x"
    # once the directory is gone, the object shows again (after the listing TTL)
    m3 = mounter(bucket, options=["attr_ttl=0", "dir_ttl=0", "negative_ttl=0"], name="ttl0")
    os.unlink(m3.p("x", "inner"))
    st = os.stat(m3.p("x"))
    assert stat.S_ISREG(st.st_mode) and st.st_size == len(b"the object x")
    assert read(m3.p("x")) == b"the object x"


# ---------------------------------------------------------------------------------------
# empty objects and markers
# ---------------------------------------------------------------------------------------
def test_zero_byte_objects_are_empty_files(s3, bucket, mounter):
    put_many(s3, bucket, [("empty", b"", None), ("d/empty.txt", b"", None),
                          ("d/inner/", b"", None)])
    # older s3fs-fuse / other tools: a directory as an object without the slash
    s3.put_object(Bucket=bucket, Key="old-style-dir", Body=b"", ContentType="application/x-directory",
                  Metadata=s3fs_meta(stat.S_IFDIR | 0o755))
    m = mounter(bucket)
    assert sorted(os.listdir(m.path)) == ["d", "empty", "old-style-dir"]
    assert sorted(os.listdir(m.p("d"))) == ["empty.txt", "inner"]
    for path in ("empty", "d/empty.txt", "old-style-dir"):
        st = os.stat(m.p(path))
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0, path
        assert read(m.p(path)) == b"", path
    assert stat.S_ISDIR(os.stat(m.p("d", "inner")).st_mode)
    assert os.listdir(m.p("d", "inner")) == []
    # a read at any offset of an empty object needs no GET (servers answer 416 to it)
    before = requests(m)
    fd = os.open(m.p("empty"), os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == b"" and os.pread(fd, 100, 5000) == b""
    finally:
        os.close(fd)
    assert delta(requests(m), before)["get_object"] == 0
    # and an empty file written through the mount is an empty object, not a marker
    open(m.p("d", "made-empty"), "wb").close()
    head = s3.head_object(Bucket=bucket, Key="d/made-empty")
    assert head["ContentLength"] == 0


def test_directory_marker_with_a_body(s3, bucket, mounter):
    """Some tools write ``dir/`` objects with content.  s3fuse: still a directory (its
    POSIX headers apply, the body is ignored and never shown); rmdir deletes it."""
    s3.put_object(Bucket=bucket, Key="fat/", Body=b"some tool's notes about this folder",
                  Metadata=s3fs_meta(stat.S_IFDIR | 0o750, 42, 43))
    s3.put_object(Bucket=bucket, Key="fatfull/", Body=b"x" * 1000)
    s3.put_object(Bucket=bucket, Key="fatfull/child", Body=b"child")
    s3.put_object(Bucket=bucket, Key="filemode/", Body=b"body", Metadata=s3fs_meta(stat.S_IFREG | 0o640))
    for name in ("direct", "listing"):
        m = mounter(bucket, name=name)
        if name == "listing":
            assert sorted(os.listdir(m.path)) == ["fat", "fatfull", "filemode"]
        st = os.stat(m.p("fat"))
        assert (st.st_mode, st.st_uid, st.st_gid) == (stat.S_IFDIR | 0o750, 42, 43), name
        assert os.listdir(m.p("fat")) == []
        assert os.listdir(m.p("fatfull")) == ["child"]
        assert os.stat(m.p("filemode")).st_mode == stat.S_IFDIR | 0o640, "a marker is a directory"
        with pytest.raises(IsADirectoryError):
            open(m.p("fat"), "rb")
    os.rmdir(m.p("fat"))
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="fat/")
    with pytest.raises(OSError) as info:
        os.rmdir(m.p("fatfull"))
    assert info.value.errno == errno.ENOTEMPTY


def test_transport_signs_awkward_keys(s3_server, s3, bucket):
    """s3fuse's own SigV4 requests (s3fuse/transport.py: HEAD, PutObject, UploadPart, DeleteObject) for
    the names above, straight against the server: each must be accepted as signed."""
    from s3fuse.s3.objects import content_md5 as md5_b64
    from s3fuse.s3 import ObjectClient

    client = ObjectClient(bucket, endpoint=s3_server.endpoint, access_key=s3_server.access_key,
                          secret_key=s3_server.secret_key)
    lean = client._fast
    assert lean is not None, "every endpoint uses the transport"
    for i, name in enumerate(AWKWARD + ["dir with space/sub+dir/" + AWKWARD[-1], "(parens)!'*"]):
        body = f"lean {i}".encode()
        etag, _ = lean.put(name, body, md5_b64(body), {"mode": "33188", "mtime": "1600000000"},
                           {"content-type": "text/plain"})
        assert etag == hashlib.md5(body).hexdigest(), name
        status, headers = lean.head(name)
        assert status == 200 and headers["etag"].strip('"') == etag, name
        assert headers["x-amz-meta-mode"] == "33188" and headers["content-type"] == "text/plain", name
        got = s3.get_object(Bucket=bucket, Key=name)
        assert got["Body"].read() == body and got["Metadata"]["mtime"] == "1600000000", name
    assert lean.head("no such key")[0] == 404
    # DeleteObject: signed like the rest; a key that is not there is no error (as in S3)
    for name in AWKWARD[:3] + ["(parens)!'*", "no such key"]:
        lean.delete(name)
        assert lean.head(name)[0] == 404, name
    # UploadPart: the query string (partNumber, uploadId) is signed too
    key = "mp parts/ü+%.bin"
    upload_id = client.create_multipart(key)
    part = random.Random(3).randbytes(5 * MiB)
    etag, _ = lean.put(key, part, md5_b64(part), query={"partNumber": "1", "uploadId": upload_id})
    assert etag == hashlib.md5(part).hexdigest()
    client.complete_multipart(key, upload_id, [(1, etag)])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == part
    assert client.transport_stats()["fallback_total"] == 0
