"""Consistency between clients: two s3fuse mounts of one bucket on the same machine, each
with its own cache_dir (so nothing is shared but the bucket), on every test server.

A writes, overwrites, creates and deletes; B must see each change within the bound that
docs/SEMANTICS.md ("Consistency between clients") promises for B's TTL options, and must
never serve bytes of an older object version from its block cache or the kernel page
cache.  Every wait is measured: the test fails if B sees the change later than
TTL + SLACK, and prints how long it took."""
from __future__ import annotations

import errno
import os
import random
import time

import pytest

from ..support.probes import daemon_stats

MiB = 1 << 20
TTL = 2.0          # attr_ttl / dir_ttl / negative_ttl given to B
SLACK = 1.5        # scheduling, a HEAD and a listing on a loaded 2-core machine


def write(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def settle(check, limit: float, what: str, step: float = 0.1) -> float:
    """Poll ``check()`` until true; return the seconds it took.  Fails after ``limit``."""
    t0 = time.monotonic()
    while True:
        if check():
            took = time.monotonic() - t0
            print(f"\n{what}: {took:.2f} s")
            return took
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"{what}: not within {limit:.1f} s")
        time.sleep(step)


def exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except FileNotFoundError:
        return False


@pytest.fixture
def two(s3, bucket, mounter):
    """(A, B): A with default options, B with every TTL at TTL seconds."""
    def make(b_options=(f"attr_ttl={TTL:g}", f"dir_ttl={TTL:g}", f"negative_ttl={TTL:g}"), a_options=()):
        a = mounter(bucket, options=list(a_options), name="a")
        b = mounter(bucket, options=list(b_options), name="b")
        return a, b
    return make


def test_overwrite_seen_after_attr_ttl(s3, bucket, two):
    a, b = two()
    v1 = random.Random(1).randbytes(300_000)
    write(a.p("doc.bin"), v1)
    assert read(b.p("doc.bin")) == v1            # B caches attributes, blocks and pages of v1
    v2 = random.Random(2).randbytes(200_000)     # another size: stat shows the change too
    t_closed = time.monotonic()
    write(a.p("doc.bin"), v2)                    # durable when close returns
    assert s3.get_object(Bucket=bucket, Key="doc.bin")["Body"].read() == v2

    took = settle(lambda: read(b.p("doc.bin")) == v2, TTL + SLACK, "B reads the overwrite")
    assert time.monotonic() - t_closed <= TTL + SLACK + 1
    assert os.stat(b.p("doc.bin")).st_size == len(v2)
    # and it stays: no later read on B goes back to v1
    for _ in range(5):
        assert read(b.p("doc.bin")) == v2
    assert took <= TTL + SLACK


def test_attr_ttl_0_sees_the_new_version_at_the_next_open(s3, bucket, two):
    a, b = two(["attr_ttl=0"])
    write(a.p("doc.txt"), b"version one")
    assert read(b.p("doc.txt")) == b"version one"
    for i in range(2, 6):                        # no wait at all between A's close and B's open
        data = f"version {i} " .encode() * i
        write(a.p("doc.txt"), data)
        assert read(b.p("doc.txt")) == data, f"B's open right after A's close #{i}"
        assert os.stat(b.p("doc.txt")).st_size == len(data)


def test_same_size_overwrite_never_served_from_stale_blocks(s3, bucket, two):
    """The block cache key holds the ETag: an object replaced by one of the same size (and,
    the second time, the very same POSIX headers) is fetched again, never served from
    blocks or kernel pages of the old version."""
    a, b = two()
    size = 3 * MiB + 12345
    v1 = random.Random(11).randbytes(size)
    write(a.p("same.bin"), v1)
    assert read(b.p("same.bin")) == v1
    fetched = daemon_stats(b)["bytes_fetched"]
    assert fetched >= size
    assert read(b.p("same.bin")) == v1           # within the TTL: cached, nothing fetched
    assert daemon_stats(b)["bytes_fetched"] == fetched

    v2 = random.Random(12).randbytes(size)
    write(a.p("same.bin"), v2)
    settle(lambda: read(b.p("same.bin")) == v2, TTL + SLACK, "B reads the same-size overwrite")
    assert daemon_stats(b)["bytes_fetched"] >= fetched + size, "the new version was fetched"

    # Written behind s3fuse's back with identical size and headers: only the ETag differs.
    head = s3.head_object(Bucket=bucket, Key="same.bin")
    v3 = random.Random(13).randbytes(size)
    s3.put_object(Bucket=bucket, Key="same.bin", Body=v3, Metadata=head["Metadata"])
    assert s3.head_object(Bucket=bucket, Key="same.bin")["ETag"] != head["ETag"]
    settle(lambda: read(b.p("same.bin")) == v3, TTL + SLACK, "B reads a foreign same-size overwrite")
    assert os.stat(b.p("same.bin")).st_mtime_ns == os.stat(a.p("same.bin")).st_mtime_ns


def test_changed_while_open_on_b(s3, bucket, two):
    """B holds the file open: what B already read stays v1 (its blocks are v1's); a block
    not read yet cannot be fetched from v1 any more and fails with ESTALE - never v2
    bytes mixed into v1."""
    a, b = two(["block_size=1M", "readahead=1M"])
    size = 6 * MiB
    v1 = random.Random(21).randbytes(size)
    write(a.p("open.bin"), v1)
    fd = os.open(b.p("open.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == v1[:4096]
        write(a.p("open.bin"), random.Random(22).randbytes(size))
        assert os.pread(fd, 4096, 0) == v1[:4096]
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, size - 4096)
        assert info.value.errno == errno.ESTALE
    finally:
        os.close(fd)


def test_delete_seen_after_ttl(s3, bucket, two):
    a, b = two()
    os.mkdir(a.p("d"))
    write(a.p("d", "gone"), b"soon deleted")
    write(a.p("d", "stays"), b"stays")
    assert sorted(os.listdir(b.p("d"))) == ["gone", "stays"]
    assert read(b.p("d", "gone")) == b"soon deleted"
    os.unlink(a.p("d", "gone"))
    settle(lambda: not exists(b.p("d", "gone")), TTL + SLACK, "B's stat of the deleted file fails")
    settle(lambda: "gone" not in os.listdir(b.p("d")), TTL + SLACK, "B's listing drops the deleted file")
    with pytest.raises(FileNotFoundError):
        open(b.p("d", "gone"), "rb")
    assert os.listdir(b.p("d")) == ["stays"]


def test_delete_while_open_on_b(s3, bucket, two):
    """Deleted by A while B reads it: blocks B already has are still served; the rest
    cannot be fetched (the object is gone) and the read fails with ESTALE."""
    a, b = two(["block_size=1M", "readahead=1M"])
    data = random.Random(31).randbytes(4 * MiB)
    write(a.p("del.bin"), data)
    fd = os.open(b.p("del.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, 0) == data[:1000]
        os.unlink(a.p("del.bin"))
        assert os.pread(fd, 1000, 0) == data[:1000]
        with pytest.raises(OSError) as info:
            os.pread(fd, 1000, len(data) - 1000)
        assert info.value.errno == errno.ESTALE
    finally:
        os.close(fd)


def test_new_keys_appear_in_listings_after_dir_ttl(s3, bucket, two):
    a, b = two()
    os.mkdir(a.p("d"))
    write(a.p("d", "first"), b"1")
    assert os.listdir(b.p("d")) == ["first"]
    with pytest.raises(FileNotFoundError):        # remembered as missing on B (negative_ttl)
        os.stat(b.p("d", "later"))
    write(a.p("d", "later"), b"2")
    s3.put_object(Bucket=bucket, Key="d/foreign", Body=b"3")
    os.mkdir(a.p("d", "sub"))
    want = ["first", "foreign", "later", "sub"]
    settle(lambda: sorted(os.listdir(b.p("d"))) == want, TTL + SLACK, "B's listing shows the new keys")
    assert read(b.p("d", "later")) == b"2" and read(b.p("d", "foreign")) == b"3"
    assert os.path.isdir(b.p("d", "sub"))
    # a name B never looked up and never listed is found at once (a lookup asks S3)
    write(a.p("fresh"), b"fresh")
    assert read(b.p("fresh")) == b"fresh"


def test_new_name_is_found_before_the_listing_expires(s3, bucket, two):
    """B listed the directory (dir_ttl 60 s): a name A creates afterwards is found by name
    once the listing is older than negative_ttl (the miss is trusted that long only),
    while B's listing still shows the directory as it was until dir_ttl."""
    a, b = two(["attr_ttl=0", "dir_ttl=60", "negative_ttl=1"])
    write(a.p("old"), b"old")
    assert os.listdir(b.p("")) == ["old"]
    write(a.p("new"), b"new")
    settle(lambda: exists(b.p("new")), 1 + SLACK, "B finds a name created after its listing")
    assert read(b.p("new")) == b"new"


def test_last_close_wins(s3, bucket, two):
    """No locks between clients: two writers of one file, the last close is what stays."""
    ttl0 = ["attr_ttl=0", "dir_ttl=0", "negative_ttl=0"]
    a, b = two(ttl0, ttl0)
    write(a.p("both.txt"), b"seed")
    fa = open(a.p("both.txt"), "r+b")
    fb = open(b.p("both.txt"), "r+b")
    try:
        fa.write(b"from A, long text")
        fb.write(b"from B")
        fa.close()
        assert s3.get_object(Bucket=bucket, Key="both.txt")["Body"].read() == b"from A, long text"
        fb.close()
    finally:
        for f in (fa, fb):
            if not f.closed:
                f.close()
    assert s3.get_object(Bucket=bucket, Key="both.txt")["Body"].read() == b"from B"
    assert read(b.p("both.txt")) == b"from B"
    assert read(a.p("both.txt")) == b"from B"


def test_partial_write_over_an_object_changed_by_another_client(s3, bucket, two):
    """B opens v1 for update and changes a few bytes; A replaces the object meanwhile.  B's
    upload needs the rest of v1, which is gone: B's close fails with ESTALE (no mix of v1
    and v2 is ever uploaded, nothing is kept for a retry) and A's version stays."""
    a, b = two(["attr_ttl=0"])
    v1 = random.Random(41).randbytes(3 * MiB)
    write(a.p("rmw.bin"), v1)
    fb = open(b.p("rmw.bin"), "r+b")
    try:
        fb.seek(MiB)
        fb.write(b"B was here")
        v2 = random.Random(42).randbytes(3 * MiB)
        write(a.p("rmw.bin"), v2)
        with pytest.raises(OSError) as info:
            fb.close()
        assert info.value.errno == errno.ESTALE
    finally:
        if not fb.closed:
            try:
                fb.close()
            except OSError:
                pass
    assert s3.get_object(Bucket=bucket, Key="rmw.bin")["Body"].read() == v2
    assert read(b.p("rmw.bin")) == v2
    assert os.listdir(os.path.join(b.cache_dir, "staging")) == []
    assert [n for n in os.listdir(os.path.join(b.cache_dir, "journal")) if n.endswith(".json")] == []


def test_open_within_the_ttl_pins_the_old_version(s3, bucket, two):
    """Within B's attr_ttl after A's overwrite, a new open on B still pins the old version
    it knows: old bytes it has cached are served, a block it would have to fetch fails
    with ESTALE (the old version is gone) - still never new bytes under old attributes."""
    a, b = two([f"attr_ttl={TTL * 5:g}", "block_size=1M", "readahead=1M"])
    v1 = random.Random(51).randbytes(3 * MiB)
    write(a.p("pin.bin"), v1)
    fd = os.open(b.p("pin.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == v1[:4096]
    finally:
        os.close(fd)
    write(a.p("pin.bin"), random.Random(52).randbytes(3 * MiB))
    fd = os.open(b.p("pin.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == v1[:4096]
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, 3 * MiB - 4096)
        assert info.value.errno == errno.ESTALE
    finally:
        os.close(fd)
