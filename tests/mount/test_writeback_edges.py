"""Issue #22 (nothing lost at the edges), on a mount: changes made while a writeback
upload ends, the write-tmp-then-mv pattern over a file whose upload failed, and a mount
after a SIGKILL that shows the closed versions still waiting for their upload.  Requests
pass through the fault proxy (slowed, or uploads refused); the bucket is checked directly
(boto3, no proxy)."""
from __future__ import annotations

import errno
import os
import signal
import stat
import time

import pytest

from ..support.mounts import Mount
from ..support.faultproxy import ProxiedServer
from ..support.mounts import cleanup_dead_mount
from ..support.probes import journal_records, pid_alive, wait_for

pytestmark = pytest.mark.servers("moto")     # s3fuse's bookkeeping, not the server, is under test

BASE = ["log_level=info", "negative_ttl=60", "dir_ttl=60", "request_timeout=5", "retries=2", "retry_interval=1"]
UPLOADS = {"PUT", "POST"}         # PutObject, UploadPart, CopyObject / Create, CompleteMultipartUpload


@pytest.fixture
def mount(s3_server, proxy, bucket, tmp_path):
    """mount(options, name) -> a mount whose requests pass through the fault proxy."""
    mounts = []

    def make(extra=(), name="m"):
        m = Mount(ProxiedServer(s3_server, proxy), bucket, str(tmp_path), options=BASE + list(extra), name=name)
        mounts.append(m)
        m.mount()
        os.listdir(m.p())
        return m
    yield make
    proxy.clear()
    for m in mounts:
        m.unmount()
    for m in mounts:
        assert "failed unexpectedly" not in m.log(), m.log()[-4000:]


def write(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def body(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def mode(s3, bucket, key) -> int:
    return int(s3.head_object(Bucket=bucket, Key=key)["Metadata"]["mode"])


def sync(path: str):
    """s3fuse sync: an fsync of the mount's root waits for every closed file's upload."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_appends_and_chmods_while_uploads_end_reach_the_bucket(s3, bucket, mount, proxy):
    """-o writeback, every request slowed: files are closed, then appended to and chmodded
    while their uploads are in flight (the change waits for the upload to end).  After
    s3fuse sync the bucket has every appended byte and every mode."""
    m = mount(["writeback"])
    proxy.set("delay", 300)
    want = {}
    for i in range(4):
        write(m.p(f"f{i}"), b"first close %d\n" % i)
    time.sleep(0.1)                              # their uploads are running, slowly
    for i in range(4):
        with open(m.p(f"f{i}"), "ab") as f:
            f.write(b"appended while the upload ran\n")
        os.chmod(m.p(f"f{i}"), 0o600 if i % 2 else 0o640)
        want[f"f{i}"] = b"first close %d\nappended while the upload ran\n" % i
    sync(m.p())
    proxy.clear()
    for i in range(4):
        key = f"f{i}"
        assert body(s3, bucket, key) == want[key], key
        assert stat.S_IMODE(mode(s3, bucket, key)) == (0o600 if i % 2 else 0o640), key
        assert read(m.p(key)) == want[key]
    assert not journal_records(m.cache_dir)


@pytest.mark.parametrize("options", [[], ["writeback"]], ids=["durable", "writeback"])
def test_write_tmp_then_mv_over_a_file_whose_upload_failed(s3, bucket, mount, proxy, options):
    """The server refuses uploads while /final is rewritten (durable: its close fails with
    EIO, the upload kept for the retry every second; writeback: close returns 0, the
    upload retried); the server recovers, a new version is written to a temporary name and
    renamed over /final.  The retry must never put the failed version back."""
    m = mount(options)
    write(m.p("final"), b"version 0\n")
    sync(m.p())
    proxy.set("reset", methods=UPLOADS)
    fd = os.open(m.p("final"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"version 1: its upload failed\n")
    try:
        os.close(fd)
        assert options == ["writeback"], "a durable close whose upload failed returns EIO"
    except OSError as exc:
        assert exc.errno == errno.EIO and not options
    if not options:       # the release after the failed close tries once more, and keeps it
        wait_for(lambda: "release '/final': upload failed" in m.log(), 20, "the failed upload at release")
    assert read(m.p("final")) == b"version 1: its upload failed\n", "the mount shows what close accepted"
    proxy.clear()
    write(m.p(".final.tmp"), b"version 2\n")
    os.rename(m.p(".final.tmp"), m.p("final"))
    sync(m.p())
    time.sleep(3)                                # retries every second (retry_interval=1)
    assert body(s3, bucket, "final") == b"version 2\n", "the retry put the failed version back"
    assert body(s3, bucket, ".final.tmp") is None
    assert read(m.p("final")) == b"version 2\n"
    wait_for(lambda: not journal_records(m.cache_dir), 10, "no record left")


def test_after_sigkill_the_next_mount_shows_what_close_accepted(s3, bucket, mount, proxy):
    """-o writeback, the server refuses uploads: /doc (in the bucket as version 0) is
    rewritten and /new created, both closes return 0; the daemon is killed (SIGKILL).  The
    next mount, uploads still refused, shows the closed versions (stat, read, listing) -
    before, the old version and no /new - and they land once the server takes uploads."""
    m = mount(["writeback"])
    write(m.p("doc"), b"version 0\n")
    sync(m.p())
    proxy.set("reset", methods=UPLOADS)
    write(m.p("doc"), b"version 1, closed before the crash\n")
    write(m.p("new"), b"a new file, closed before the crash\n")
    wait_for(lambda: len([r for r in journal_records(m.cache_dir) if r["state"] == "closed"]) == 2, 10,
             "both closes recorded")
    pid = m.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, "the daemon to die")
    cleanup_dead_mount(m.path)
    again = mount(["writeback"], name="m")        # the same cache_dir; uploads still refused
    assert os.stat(again.p("doc")).st_size == len(b"version 1, closed before the crash\n")
    assert read(again.p("doc")) == b"version 1, closed before the crash\n"
    assert "new" in os.listdir(again.p())
    assert read(again.p("new")) == b"a new file, closed before the crash\n"
    assert body(s3, bucket, "doc") == b"version 0\n", "not uploaded yet (the server refuses)"
    proxy.clear()
    wait_for(lambda: body(s3, bucket, "doc") == b"version 1, closed before the crash\n" and
             body(s3, bucket, "new") == b"a new file, closed before the crash\n", 30, "the uploads to land")
    wait_for(lambda: not journal_records(again.cache_dir), 10, "no record left")
