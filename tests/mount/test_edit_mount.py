"""Edits in place through a real mount (issue 16): an existing multipart-sized object
opened for writing is staged sparsely, and at close only the changed parts are uploaded;
the others are copied on the server (UploadPartCopy pinned by the old ETag).  Each test
checks the bytes in the bucket and what went over the wire (``s3fuse status`` counters:
request bodies sent, object bytes received, parts and bytes copied)."""
from __future__ import annotations

import errno
import glob
import hashlib
import os
import random
import subprocess
import sys

import pytest

from s3fuse.app import statusfile as status

from ..support.faultproxy import FaultProxy, ProxiedServer
from ..support.mounts import Mount, unmount
from ..support.probes import journal_records, kill_daemon, server_parts, uploads_of, wait_for

MiB = 1 << 20
SIZE = 64 * MiB
PART = 8 * MiB          # the default part_size


def _object(s3, bucket, key, data: bytes):
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def _counters(m) -> dict:
    st = status.read(m.path)
    assert st is not None, "no status from the daemon"
    return {k: st[k] for k in ("bytes_sent", "bytes_received", "parts_copied", "bytes_copied", "parts_sent")}


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def _staging_bytes(m) -> int:
    """Disk blocks used by the staging files (sparse files count what they hold)."""
    total = 0
    for path in glob.glob(os.path.join(m.cache_dir, "staging", "*")):
        total += os.stat(path).st_blocks * 512
    return total


def _drain(m):
    """Wait for writeback uploads: fsync of the mount's root directory drains the queue."""
    fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("options", [[], ["writeback"]], ids=["durable", "writeback"])
def test_append_and_patch_upload_only_the_changed_parts(mounter, s3, bucket, options):
    """Append 1 MiB to a 64 MiB object and patch 4 KiB in its middle: the bucket holds the
    edited bytes, at most the two touched parts (plus what completes them) are sent, the
    rest is copied on the server; while open, reads see the old bytes where not written
    and staging holds about what was written.  With writeback, the same after the drain."""
    rng = random.Random(16)
    old = rng.randbytes(SIZE)
    _object(s3, bucket, "disk.img", old)
    m = mounter(bucket, options=options)
    tail, patch = rng.randbytes(MiB), rng.randbytes(4096)
    middle = SIZE // 2 + 12345
    before = _counters(m)
    with open(m.p("disk.img"), "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(tail)
        f.seek(middle)
        f.write(patch)
        f.flush()
        # reads of the open file: written bytes where written, the old version elsewhere
        assert os.pread(f.fileno(), 8192, middle - 4096) == old[middle - 4096:middle] + patch
        assert os.pread(f.fileno(), MiB, 3 * MiB) == old[3 * MiB:4 * MiB]
        assert os.pread(f.fileno(), 100, SIZE - 50) == old[-50:] + tail[:50]
        assert _staging_bytes(m) < 8 * MiB, "staging holds more than what was written"
    _drain(m)
    expected = bytearray(old + tail)
    expected[middle:middle + len(patch)] = patch
    body = s3.get_object(Bucket=bucket, Key="disk.img")["Body"].read()
    assert hashlib.md5(body).hexdigest() == hashlib.md5(expected).hexdigest()
    d = _delta(before, _counters(m))
    # the appended MiB is the last part, the patch is merged with its neighbours into one
    # part of at least 5 MiB (the minimum part size): about 6 MiB go up, not 65
    assert len(tail) + len(patch) <= d["bytes_sent"] <= 2 * PART + len(tail), d
    # the rest is copied on the server, in parts as large as copy_part_size allows
    assert d["bytes_copied"] >= SIZE - 2 * PART and d["parts_copied"] >= 2, d
    # the parts uploaded were completed from the old version: at most their bytes came down
    # (plus the reads above)
    assert d["bytes_received"] <= 3 * PART + 2 * MiB, d
    with open(m.p("disk.img"), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == hashlib.md5(expected).hexdigest()
    assert os.stat(m.p("disk.img")).st_size == len(expected)


def test_second_edit_of_the_same_open_file_sends_only_what_changed_after_the_first(mounter, s3, bucket):
    """fsync in the middle commits the first edit; the second commit copies from the new
    version and sends only its own part."""
    rng = random.Random(7)
    old = rng.randbytes(SIZE)
    _object(s3, bucket, "log.bin", old)
    m = mounter(bucket)
    first, second = rng.randbytes(4096), rng.randbytes(4096)
    with open(m.p("log.bin"), "r+b") as f:
        os.pwrite(f.fileno(), first, MiB)
        os.fsync(f.fileno())
        before = _counters(m)
        os.pwrite(f.fileno(), second, SIZE - PART - 100)
    d = _delta(before, _counters(m))
    assert d["bytes_sent"] <= 2 * PART, d
    expected = bytearray(old)
    expected[MiB:MiB + 4096] = first
    expected[SIZE - PART - 100:SIZE - PART - 100 + 4096] = second
    assert s3.get_object(Bucket=bucket, Key="log.bin")["Body"].read() == bytes(expected)


def test_truncate_then_append_copies_the_kept_prefix(mounter, s3, bucket):
    rng = random.Random(3)
    old = rng.randbytes(SIZE)
    _object(s3, bucket, "t.bin", old)
    m = mounter(bucket)
    tail = rng.randbytes(100)
    before = _counters(m)
    with open(m.p("t.bin"), "r+b") as f:
        f.truncate(40 * MiB + 7)
        f.seek(0, os.SEEK_END)
        f.write(tail)
    d = _delta(before, _counters(m))
    assert d["bytes_sent"] <= 2 * PART, d
    assert s3.get_object(Bucket=bucket, Key="t.bin")["Body"].read() == old[:40 * MiB + 7] + tail


def test_concurrent_overwrite_fails_the_edit_cleanly(mounter, s3, bucket):
    """Another client replaces the object while it is open for an edit: close fails
    (ESTALE: the version the edit was made on is gone), the other client's object is left
    whole (never a mix of two versions), and the bytes written are kept in recovery/."""
    rng = random.Random(11)
    old, theirs = rng.randbytes(SIZE), rng.randbytes(SIZE)
    _object(s3, bucket, "shared.bin", old)
    m = mounter(bucket)
    patch = b"ours" * 1024
    f = open(m.p("shared.bin"), "r+b", buffering=0)
    try:
        f.seek(5 * MiB)
        f.write(patch)
        _object(s3, bucket, "shared.bin", theirs)
    finally:
        with pytest.raises(OSError) as info:
            f.close()
    assert info.value.errno in (errno.ESTALE, errno.EIO), info.value
    assert s3.get_object(Bucket=bucket, Key="shared.bin")["Body"].read() == theirs
    kept = glob.glob(os.path.join(m.cache_dir, "recovery", "*shared.bin*"))
    assert kept, m.log()[-3000:]
    with open(kept[0], "rb") as r:
        assert os.pread(r.fileno(), len(patch), 5 * MiB) == patch
    assert "abandoned" in m.log()


EDITOR = r"""
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(0, os.SEEK_END)
    f.write(b"appended line\n")
"""


def test_sigkill_during_an_edit_resumes_without_copying_finished_parts(s3_server, s3, bucket, tmp_path):
    """close() of an append to a 64 MiB object copies 5 MiB parts one at a time through a
    proxy that delays every request; the daemon is SIGKILLed when the server holds >= 2
    parts.  The remount finishes the edit from the journal: the parts already copied are
    kept (not copied again), and the bucket holds the old bytes plus the appended line."""
    old = random.Random(5).randbytes(SIZE)
    _object(s3, bucket, "app.log", old)
    proxy = FaultProxy(s3_server.endpoint, lifetime=600)
    opts = ["copy_part_size=5M", "part_size=5M", "upload_threads=1"]
    m = Mount(ProxiedServer(s3_server, proxy), bucket, str(tmp_path), options=opts, name="edit")
    try:
        m.mount()
        proxy.set("delay", 150)
        editor = subprocess.Popen([sys.executable, "-c", EDITOR, m.p("app.log")], stderr=subprocess.PIPE)
        try:
            wait_for(lambda: len(server_parts(s3, bucket, "app.log")) >= 2, 120, ">= 2 parts on the server", 0.02)
            kill_daemon(m)
            on_server = len(server_parts(s3, bucket, "app.log"))
        finally:
            editor.wait(60)
            unmount(m.path)
        assert editor.returncode != 0, "the editor's close() was still uploading when the daemon died"
        records = [r for r in journal_records(m.cache_dir) if r["key"] == "app.log"]
        assert records and records[0]["plan"], records
        nparts = len(records[0]["plan"])
        assert on_server < nparts
        proxy.clear()
        m.mount()
        wait_for(lambda: not journal_records(m.cache_dir), 180, "the resumed edit to finish")
        assert s3.get_object(Bucket=bucket, Key="app.log")["Body"].read() == old + b"appended line\n"
        st = status.read(m.path)
        assert st["parts_reused"] >= on_server, st
        assert st["parts_copied"] + st["parts_sent"] <= nparts - on_server, st
        assert uploads_of(s3, bucket) == []
    finally:
        unmount(m.path)
        proxy.close()
