"""-o writeback: close() returns once the file is durable on local disk, uploads run in the
background.  One test per guarantee (s3fuse/fs/writeback.py), with the upload path slowed
or broken by the fault proxy and the bucket checked directly (boto3, no proxy)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ..support.faultproxy import ProxiedServer
from ..support.mounts import Mount, cleanup_dead_mount
from ..support.probes import bucket_keys, pid_alive, wait_for

pytestmark = pytest.mark.servers("moto")     # the queue's logic, not the server, is under test

BASE = ["writeback", "log_level=info", "negative_ttl=60", "dir_ttl=60", "request_timeout=10", "retries=2"]


@pytest.fixture
def wb(s3_server, proxy, bucket, tmp_path):
    """wb(options) -> a writeback mount whose requests pass through the fault proxy."""
    mounts = []

    def make(extra=(), name="wb"):
        m = Mount(ProxiedServer(s3_server, proxy), bucket, str(tmp_path), options=BASE + list(extra), name=name)
        mounts.append(m)
        m.mount()
        os.listdir(m.p())        # a fresh listing: new names need no lookup request
        return m
    yield make
    proxy.clear()
    for m in mounts:
        m.unmount()


def write(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def body(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def sync(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def status(m) -> dict:
    out = subprocess.run([sys.executable, "-m", "s3fuse", "status", m.path, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_close_returns_before_the_upload_and_the_mount_sees_pending_files(s3, bucket, wb, proxy):
    m = wb()
    proxy.set("delay", 2500)
    t0 = time.monotonic()
    for i in range(5):
        write(m.p(f"f{i}"), b"pending %d" % i)
    assert time.monotonic() - t0 < 2.0, "five closes did not wait for their uploads"
    assert not set(bucket_keys(s3, bucket)) & {f"f{i}" for i in range(5)}, "not uploaded yet"
    # this mount sees them at once: stat, read, listing
    assert sorted(os.listdir(m.p())) == [f"f{i}" for i in range(5)]
    assert os.stat(m.p("f3")).st_size == len(b"pending 3")
    t1 = time.monotonic()
    with open(m.p("f3"), "rb") as f:
        assert f.read() == b"pending 3"
    assert time.monotonic() - t1 < 1.0, "a read does not wait for the file's upload"
    wait_for(lambda: status(m).get("writeback", {}).get("pending_files", 0) >= 1, 5, "the queue in status")
    sync(m.p())                                   # s3fuse sync: every closed file uploaded
    for i in range(5):
        assert body(s3, bucket, f"f{i}") == b"pending %d" % i
    wait_for(lambda: status(m)["writeback"]["pending_files"] == 0, 5, "an empty queue in status (rewritten every 0.5 s)")


def test_fsync_waits_for_that_files_upload(s3, bucket, wb, proxy):
    m = wb()
    proxy.set("delay", 1500)
    with open(m.p("durable"), "wb") as f:
        f.write(b"must be in S3 when fsync returns")
        f.flush()
        os.fsync(f.fileno())
        assert body(s3, bucket, "durable") == b"must be in S3 when fsync returns"


@pytest.mark.long(22)
def test_sigkill_after_close_loses_nothing(s3_server, s3, bucket, wb, proxy, tmp_path):
    m = wb()
    proxy.set("blackhole")                        # no upload can finish
    files = {f"k{i}": os.urandom(1000 + i) for i in range(8)}
    files["big"] = os.urandom(12 << 20)           # a multipart one too
    for name, data in files.items():
        write(m.p(name), data)                    # every close returned success
    pid = m.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, "the daemon to die")
    cleanup_dead_mount(m.path)
    proxy.clear()
    again = Mount(s3_server, bucket, str(tmp_path), options=BASE, name="wb")     # same cache_dir, no proxy
    again.mount()
    try:
        wait_for(lambda: all(body(s3, bucket, k) == d for k, d in files.items()), 60,
                 "every closed file resumed from the journal")
    finally:
        again.unmount()


def test_unmount_waits_for_the_queue(s3, bucket, wb, proxy):
    m = wb()
    proxy.set("delay", 1500)
    for i in range(3):
        write(m.p(f"u{i}"), b"unmount %d" % i)
    pid = m.daemon_pid()
    m.unmount()
    wait_for(lambda: not pid_alive(pid), 60, "the daemon to finish its uploads and exit")
    for i in range(3):
        assert body(s3, bucket, f"u{i}") == b"unmount %d" % i
    assert "writeback: waiting for" in m.log(), "unmount says what it waits for"


def test_changes_to_a_pending_file_are_applied_in_order(s3, bucket, wb, proxy):
    m = wb()
    proxy.set("delay", 800)
    write(m.p("a"), b"v1")
    write(m.p("a"), b"v2")                        # overwrite while v1 may still be queued
    os.rename(m.p("a"), m.p("b"))                 # rename the pending file
    write(m.p("a"), b"v3")                        # a new file takes the old name
    write(m.p("gone"), b"deleted before its upload")
    os.unlink(m.p("gone"))
    write(m.p("c"), b"c1")
    os.unlink(m.p("b"))
    sync(m.p())
    time.sleep(1.0)                               # anything still in flight would land now
    keys = set(bucket_keys(s3, bucket))
    assert body(s3, bucket, "a") == b"v3"
    assert "b" not in keys and "gone" not in keys, f"a deleted file was brought back: {sorted(keys)}"
    assert body(s3, bucket, "c") == b"c1"


def test_rename_during_the_upload_of_an_edit_moves_the_new_content(s3, bucket, wb, proxy):
    """An existing file is edited and closed, and renamed while its upload to the old key
    is in flight (requests delayed): the rename waits for that upload and moves the new
    version; before, the name moved without its content (the bucket kept the replaced
    object under the new name, and a later edit of it failed with ESTALE)."""
    m = wb()
    write(m.p("a"), b"first file\n")
    os.symlink("a", m.p("l"))
    sync(m.p())
    proxy.set("delay", 400)
    fd = os.open(m.p("a"), os.O_WRONLY)
    os.pwrite(fd, b"\0", 0)
    os.close(fd)                                  # sealed, its upload queued
    time.sleep(0.1)                               # ... and running, slowly
    os.rename(m.p("a"), m.p("l"))                 # over the symlink
    fd = os.open(m.p("l"), os.O_WRONLY)
    os.pwrite(fd, b"F", 1)
    os.close(fd)
    sync(m.p())
    proxy.clear()
    assert body(s3, bucket, "l") == b"\0Frst file\n"
    assert body(s3, bucket, "a") is None
    with open(m.p("l"), "rb") as f:
        assert f.read() == b"\0Frst file\n"


def test_close_waits_when_the_queue_is_full(s3, bucket, wb, proxy):
    m = wb(["writeback_files=2", "writeback_threads=1"])
    proxy.set("delay", 1500)
    t0 = time.monotonic()
    write(m.p("q1"), b"1")
    write(m.p("q2"), b"2")
    fast = time.monotonic() - t0
    write(m.p("q3"), b"3")                        # two waiting: this close waits for a slot
    slow = time.monotonic() - t0 - fast
    assert fast < 1.0 and slow >= 1.0, (fast, slow)
    sync(m.p())
    assert [body(s3, bucket, k) for k in ("q1", "q2", "q3")] == [b"1", b"2", b"3"]


def test_a_failing_upload_is_retried_reported_and_never_dropped(s3, bucket, wb, proxy):
    m = wb()
    proxy.set("reset")                            # every request fails
    write(m.p("stubborn"), b"keep trying")
    wait_for(lambda: status(m)["writeback"]["failing"], 30, "the failure in status")
    failing = status(m)["writeback"]["failing"][0]
    assert failing["path"] == "/stubborn" and failing["attempts"] >= 1 and failing["error"]
    assert "writeback: upload of /stubborn failed" in m.log()
    with open(m.p("stubborn"), "rb") as f:
        assert f.read() == b"keep trying", "still readable on the mount"
    proxy.clear()
    wait_for(lambda: body(s3, bucket, "stubborn") == b"keep trying", 30, "the retry after the server came back")
    wait_for(lambda: not status(m)["writeback"]["failing"], 10, "the failure cleared from status")
