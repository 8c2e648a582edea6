"""Issue 16: ``-o verify`` checks a whole sequential read against the object's MD5 header.

Unit: ``WholeReadDigest`` hashes in-order pieces, tolerates the kernel's slightly
out-of-order read-ahead, and gives up on a seek back.  Mount: an object whose bytes were
changed behind s3fuse's back (its ``x-amz-meta-s3fuse-md5`` kept) fails with EIO under
``-o verify`` (one error line; a re-read fetches again and fails again) and reads without
it; a correct object, and one written through the mount, read fine under ``-o verify``;
a non-sequential read of the bad object is not checked.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil

import pytest

from s3fuse import errors
from s3fuse.data.verify import WholeReadDigest

from ..support.fakes import FakeS3
from ..support.probes import daemon_stats

MIB = 1 << 20


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_digest_in_order_and_slightly_out_of_order():
    data = random.Random(1).randbytes(3 * MIB + 5)
    d = WholeReadDigest(len(data), md5(data).upper())
    step = 128 << 10
    pieces = [(o, data[o:o + step]) for o in range(0, len(data), step)]
    # read-ahead requests overtake each other in pairs
    for i in range(0, len(pieces) - 1, 2):
        pieces[i], pieces[i + 1] = pieces[i + 1], pieces[i]
    results = [d.feed(o, memoryview(p)) for o, p in pieces]
    assert [r for r in results if r is not None] == [md5(data)] and d.checked
    assert d.expected == md5(data)


def test_digest_gives_up_on_non_sequential_reads():
    data = random.Random(2).randbytes(MIB)
    d = WholeReadDigest(len(data), md5(data))
    assert d.feed(0, data[:4096]) is None
    assert d.feed(0, data[:4096]) is None          # a re-read: not one pass
    assert not d.active and d.feed(4096, data[4096:]) is None and not d.checked
    d = WholeReadDigest(len(data), md5(data))
    assert d.feed(512 << 10, data[512 << 10:]) is None     # a jump ahead, never filled
    assert d.feed(MIB - 1, data[-1:]) is None
    d = WholeReadDigest(len(data), md5(data))
    d.MAX_AHEAD = 256 << 10
    assert d.feed(300 << 10, data[300 << 10:310 << 10]) is None
    assert not d.active, "a piece beyond MAX_AHEAD of the next byte is no reordering"
    d = WholeReadDigest(len(data), md5(data))
    d.MAX_AHEAD = 64 << 10
    assert d.feed(128 << 10, data[128 << 10:256 << 10]) is None
    assert not d.active, "more out-of-order bytes than MAX_AHEAD is not a sequential read"


def test_filesystem_fails_the_completing_read_and_every_later_one(make_fs):
    """Through ``Filesystem`` (a fake S3): no request beyond a plain read's at open, EIO at
    the read that completes the file (blocks dropped), a quiet EIO for later reads of that
    handle; objects without the header and a mount without verify are not checked."""
    good = random.Random(6).randbytes(3 * MIB + 1)
    bad = random.Random(7).randbytes(3 * MIB + 1)
    fake = FakeS3()
    fake.seed("good", good, {"s3fuse-md5": md5(good)})
    fake.seed("bad", bad, {"s3fuse-md5": md5(good)})
    fake.seed("plain", bad)
    fs = make_fs(fake, verify=True)

    def read_through(path, step=MIB):
        fh, _ = fs.open(path, os.O_RDONLY)
        try:
            return b"".join(bytes(fs.read(fh, step, off)) for off in range(0, 3 * MIB + 1, step))
        finally:
            fs.release(fh)
    for path in ("/good", "/bad", "/plain"):
        fs.getattr(path)
    heads = fake.count("head")
    assert read_through("/good") == good and read_through("/plain") == bad
    assert fake.count("head") == heads, "the MD5 header came with the lookup's HEAD"
    fh, _ = fs.open("/bad", os.O_RDONLY)
    for off in range(0, 3 * MIB, MIB):
        assert bytes(fs.read(fh, MIB, off)) == bad[off:off + MIB]
    with pytest.raises(errors.ChecksumMismatch) as info:
        fs.read(fh, MIB, 3 * MIB)
    assert info.value.errno == errno.EIO and not errors.is_quiet(info.value)
    assert md5(bad) in str(info.value) and "dropped" in info.value.action
    assert not any(fs.parts.blocks.contains("bad", fake.objects["bad"][2], i) for i in range(4))
    with pytest.raises(errors.ChecksumFailedBefore) as info:
        fs.read(fh, MIB, 0)
    assert info.value.errno == errno.EIO and errors.is_quiet(info.value)
    fs.release(fh)
    plain = make_fs(fake)
    fh, _ = plain.open("/bad", os.O_RDONLY)
    assert b"".join(bytes(plain.read(fh, MIB, off)) for off in range(0, 3 * MIB + 1, MIB)) == bad


def read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def objects(s3, bucket):
    good = random.Random(3).randbytes(12 * MIB + 123)
    bad = random.Random(4).randbytes(12 * MIB + 123)
    s3.put_object(Bucket=bucket, Key="good.bin", Body=good, Metadata={"s3fuse-md5": md5(good)})
    # the header of one content on another: bytes changed behind s3fuse's back
    s3.put_object(Bucket=bucket, Key="bad.bin", Body=bad, Metadata={"s3fuse-md5": md5(good)})
    return good, bad


def test_verify_fails_a_whole_read_of_bytes_that_do_not_match_their_md5(s3, bucket, mounter, objects):
    good, bad = objects
    m = mounter(bucket, options=["verify"])
    assert read_all(m.p("good.bin")) == good
    with pytest.raises(OSError) as info:
        read_all(m.p("bad.bin"))
    assert info.value.errno == errno.EIO
    fetched = daemon_stats(m)["bytes_fetched"]
    lines = [line for line in m.log().splitlines() if "x-amz-meta-s3fuse-md5" in line]
    assert lines and "/bad.bin" in lines[0] and md5(bad) in lines[0] and md5(good) in lines[0] \
        and "dropped" in lines[0], lines
    # the blocks of that version were dropped: a re-read fetches again, and fails again
    with pytest.raises(OSError) as info:
        shutil.copyfile(m.p("bad.bin"), os.devnull)
    assert info.value.errno == errno.EIO
    assert daemon_stats(m)["bytes_fetched"] >= fetched + len(bad) - MIB
    lines = [line for line in m.log().splitlines() if "x-amz-meta-s3fuse-md5" in line]
    assert len(lines) == 2, "one line per failed whole read (the kernel's retries of the page are quiet)"
    # a read that does not start at 0 (beyond the reordering the check tolerates) is not checked;
    # (a seek back would not do: the kernel serves the pages read before from its cache)
    with open(m.p("bad.bin"), "rb", buffering=0) as f:
        f.seek(10 * MIB)
        tail = f.read(MIB)
        f.seek(0)
        whole = f.read()
    assert tail == bad[10 * MIB:11 * MIB] and whole == bad
    m.unmount()
    plain = mounter(bucket, name="plain")
    assert read_all(plain.p("bad.bin")) == bad, "without -o verify the bytes are served"


def test_verify_reads_what_the_mount_wrote(s3, bucket, mounter):
    data = random.Random(5).randbytes(20 * MIB + 7)    # multipart (8M parts): the ETag is no MD5
    w = mounter(bucket, name="writer")
    with open(w.p("written.bin"), "wb") as f:
        f.write(data)
    w.unmount()
    assert s3.head_object(Bucket=bucket, Key="written.bin")["Metadata"]["s3fuse-md5"] == md5(data)
    m = mounter(bucket, options=["verify"], name="reader")
    assert read_all(m.p("written.bin")) == data
    assert "x-amz-meta-s3fuse-md5" not in m.log()
