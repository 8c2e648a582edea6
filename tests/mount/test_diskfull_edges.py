"""A full cache disk (issue #22, item 4), on a real mount whose cache_dir is a 64 MiB
tmpfs: reading an object twice the disk's size leaves room for writes (the block cache
keeps ``cache_min_free`` free and gives way to staging), a sequential copy larger than
the free space succeeds (uploaded parts are released from its staging file), edits of an
existing object work, and the mount stays fully usable."""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess

import pytest

from ..support.mounts import Mount, unmount
from ..support.probes import journal_records, wait_for
from ..support.probes import daemon_stats

pytestmark = pytest.mark.servers("moto")

MiB = 1 << 20
DISK = 64 * MiB


def free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def md5_of_file(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4 * MiB)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def body(s3, bucket, key) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def body_md5(s3, bucket, key) -> str:
    h = hashlib.md5()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(8 * MiB):
        h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def tiny_mount(s3_server, tmp_path):
    """tiny_mount(bucket, options=()) -> a Mount whose cache_dir is a 64 MiB tmpfs.  Torn
    down here in order: the FUSE mount first, then the tmpfs."""
    disk = tmp_path / "tiny-cache"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK // MiB}m,mode=0700", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    mounts = []

    def make(bucket, options=()):
        m = Mount(s3_server, bucket, str(tmp_path), options=["part_size=5M", *options], name=f"mnt{len(mounts)}")
        m.cache_dir = str(disk)
        mounts.append(m)
        return m.mount()
    try:
        yield make
    finally:
        for m in mounts:
            unmount(m.path)
        subprocess.run(["umount", str(disk)], capture_output=True)
        if subprocess.run(["mountpoint", "-q", str(disk)]).returncode == 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    for m in mounts:
        assert "failed unexpectedly" not in m.log(), m.log()[-4000:]


def usable(m, s3, bucket, name="usable.txt"):
    """Write, read back, list and remove a file: the mount works."""
    data = os.urandom(64 << 10)
    with open(m.p(name), "wb") as f:
        f.write(data)
    assert body(s3, bucket, name) == data
    with open(m.p(name), "rb") as f:
        assert f.read() == data
    assert name in os.listdir(m.path)
    os.unlink(m.p(name))


def test_a_big_read_leaves_room_for_writes_and_edits(s3, bucket, tiny_mount):
    """Before: cache_size (10G) ignored the disk: the read filled it with blocks, and every
    later write failed ENOSPC until someone deleted cache files by hand."""
    big = os.urandom(128 * MiB)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=big)
    doc = os.urandom(30 * MiB)
    s3.put_object(Bucket=bucket, Key="doc.bin", Body=doc)
    m = tiny_mount(bucket)
    assert md5_of_file(m.p("big.bin")) == hashlib.md5(big).hexdigest()
    del big
    left = free(m.cache_dir)
    # small writes, then a file larger than what the cache left free
    for i in range(8):
        with open(m.p(f"small{i}.txt"), "wb") as f:
            f.write(b"%d" % i * 4096)
    data = os.urandom(12 * MiB)
    with open(m.p("file.bin"), "wb") as f:
        f.write(data)
    assert [body(s3, bucket, f"small{i}.txt") for i in range(8)] == [b"%d" % i * 4096 for i in range(8)]
    assert body(s3, bucket, "file.bin") == data
    # an edit of an existing object: a patch in its middle and an append
    with open(m.p("doc.bin"), "r+b") as f:
        f.seek(10 * MiB)
        f.write(b"P" * 4096)
        f.seek(0, os.SEEK_END)
        f.write(b"A" * MiB)
    expected = doc[:10 * MiB] + b"P" * 4096 + doc[10 * MiB + 4096:] + b"A" * MiB
    assert body(s3, bucket, "doc.bin") == expected
    with open(m.p("doc.bin"), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == hashlib.md5(expected).hexdigest()
    assert journal_records(m.cache_dir) == []
    usable(m, s3, bucket)
    assert "No space left" not in m.log()
    st = daemon_stats(m)["cache"]
    assert st["min_free"] == DISK // 20
    assert st["evicted_for_room"] > 0, "the cache evicted its oldest blocks to keep min_free"
    assert left >= st["min_free"] - MiB, f"the read left {left} bytes free"


def test_a_copy_larger_than_the_free_space(s3, bucket, tiny_mount, tmp_path):
    """Before: staging kept every part already uploaded: a 100 MiB cp through a 64 MiB
    disk failed with ENOSPC."""
    src = tmp_path / "src.bin"
    data = os.urandom(100 * MiB)
    src.write_bytes(data)
    want = hashlib.md5(data).hexdigest()
    del data
    m = tiny_mount(bucket)
    cp = subprocess.run(["cp", str(src), m.p("copy.bin")], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert body_md5(s3, bucket, "copy.bin") == want
    head = s3.head_object(Bucket=bucket, Key="copy.bin")
    assert head["ContentLength"] == 100 * MiB and head["Metadata"]["s3fuse-md5"] == want
    assert "released from its staging file" in m.log()
    assert md5_of_file(m.p("copy.bin")) == want, "read back through the mount"
    wait_for(lambda: not os.listdir(os.path.join(m.cache_dir, "staging")), 10, "staging files removed")
    assert journal_records(m.cache_dir) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # a second copy while the cache holds what the read-back brought in
    cp = subprocess.run(["cp", str(src), m.p("copy2.bin")], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert body_md5(s3, bucket, "copy2.bin") == want
    usable(m, s3, bucket)


def test_a_reader_of_a_released_file_never_gets_zeros(s3, bucket, tiny_mount):
    """A handle opened while a large file is being written reads the bytes written, or
    EIO where they were released to the full disk - never zeros; after close, all."""
    m = tiny_mount(bucket)
    data = os.urandom(80 * MiB)
    fd = os.open(m.p("stream.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), MiB):
            assert os.pwrite(fd, data[off:off + MiB], off) == MiB
        rfd = os.open(m.p("stream.bin"), os.O_RDONLY)
        try:
            try:
                head = os.pread(rfd, 64 << 10, 0)
            except OSError as exc:
                head = exc
            assert isinstance(head, OSError) and head.errno == errno.EIO, "the first parts were released: EIO"
            assert os.pread(rfd, 64 << 10, len(data) - (64 << 10)) == data[-(64 << 10):]
        finally:
            os.close(rfd)
    finally:
        os.close(fd)                     # close(): the upload completes
    assert body_md5(s3, bucket, "stream.bin") == hashlib.md5(data).hexdigest()
    assert md5_of_file(m.p("stream.bin")) == hashlib.md5(data).hexdigest()
    usable(m, s3, bucket)
