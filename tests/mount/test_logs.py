"""Logs people can act on: a failure is one line with the path, the S3 operation, its
status and what s3fuse did about it (retried, EIO returned, kept for resume); with
log_level=info every finished upload gets a summary line (size, parts, seconds, MiB/s).
The failures are real: the endpoint stops answering (tests/support/faultproxy.py) while a file
is closed, and a daemon is SIGKILLed while a multipart upload is under way."""
from __future__ import annotations

import errno
import os
import re
import signal
import subprocess

import pytest

from s3fuse import errors
from s3fuse.app import statusfile as status

from ..support.faultproxy import FaultProxy, ProxiedServer
from ..support.mounts import Mount, cleanup_dead_mount
from ..support.ops import finish_op, release, start_op, wait_ready
from ..support.probes import MiB, bucket_md5, journal_records, md5, pid_alive, scrape, value, wait_for

pytestmark = pytest.mark.servers("moto")     # s3fuse's own logging: one server is enough

OPTIONS = ["request_timeout=2", "retries=2", "part_size=5M", "log_level=info", "metrics=0"]
SUMMARY = re.compile(r"INFO .*upload of '(?P<key>[^']+)' done: (?P<size>\d+) bytes \([\d.]+ MiB\) in "
                     r"(?P<parts>\d+) parts?, (?P<secs>[\d.]+) s, (?P<rate>[\d.]+) MiB/s")

# open and write while the endpoint answers, close once the test has set the fault
HELD_WRITE = r"""
fd = os.open(args[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, read_all(args[1]))
hold()
try:
    os.close(fd)
    result = None
except OSError as exc:
    result = exc.errno
"""


@pytest.fixture
def proxied(s3_server, tmp_path):
    proxy = FaultProxy(s3_server.endpoint, lifetime=600)
    mounts = []

    def make(bucket, options=OPTIONS, name=None):
        m = Mount(ProxiedServer(s3_server, proxy), bucket, str(tmp_path), options=options,
                  name=name or f"lm{len(mounts)}")
        mounts.append(m)
        return m.mount()

    yield proxy, make
    proxy.clear()
    for m in mounts:
        pid = m.daemon_pid()
        m.unmount()
        if pid:
            wait_for(lambda: not pid_alive(pid), 60, "the daemon to exit after unmount", 0.1)
    proxy.close()


def lines_with(log: str, *words) -> list:
    return [ln for ln in log.splitlines() if all(w in ln for w in words)]


@pytest.mark.long(30)
def test_failed_upload_then_resumed_in_the_background(s3, bucket, proxied, tmp_path):
    """The endpoint resets every connection while a file is closed: the retry is logged,
    close() fails with EIO in one line naming the path, PutObject, the status, EIO and
    that the upload was kept; the same at release.  Once the endpoint answers again the
    background retry finishes it: a "resumed" line and the upload's summary line."""
    proxy, make = proxied
    m = make(bucket)
    url = status.read(m.path)["metrics"]
    data = os.urandom(123_457)
    (tmp_path / "acted.src").write_bytes(data)
    writer = start_op(HELD_WRITE, [m.p("acted.txt"), str(tmp_path / "acted.src")], hold=True)
    wait_ready(writer, 60, "writer")
    proxy.set("reset")
    release(writer)
    res = finish_op(writer, 120, "close under resets")
    assert res["ok"] and res["result"] == errno.EIO, res
    # release comes after close() returned: its own attempt, then the upload is pending
    wait_for(lambda: value(scrape(url), "s3fuse_uploads_pending") == 1, 30, "the pending upload")
    failed = scrape(url)
    log = m.log()

    retried = lines_with(log, "WARNING", "S3 PutObject failed (status unreachable, 1 attempt)", "'acted.txt'",
                         "retrying in", "(attempt 2 of 2)")
    assert retried, log[-3000:]
    flush = lines_with(log, "ERROR", "flush '/acted.txt' failed: S3 PutObject failed (status unreachable, "
                                     "2 attempts)", "EIO returned, upload kept in the journal for resume")
    assert len(flush) == 1, log[-3000:]
    at_release = lines_with(log, "ERROR", "release '/acted.txt': upload failed: S3 PutObject failed "
                                          "(status unreachable, 2 attempts)", "kept in the journal for resume")
    assert len(at_release) == 1, log[-3000:]
    assert "Traceback" not in log, "a failure is one line; tracebacks only at debug level"
    assert value(failed, "s3fuse_uploads_total", result="failed") == 2          # close, then release
    assert value(failed, "s3fuse_s3_requests_total", op="put_object", status="unreachable") == 4
    assert value(failed, "s3fuse_fuse_errors_total", op="flush", errno="EIO") == 1
    assert value(failed, "s3fuse_s3_retries_total", op="put_object") == 2
    assert value(failed, "s3fuse_journal_records") == 1
    assert bucket_md5(s3, bucket, "acted.txt") is None

    proxy.clear()                       # the endpoint is back: the retry every 30 s finishes it
    wait_for(lambda: bucket_md5(s3, bucket, "acted.txt"), 75, "the kept upload to reach the bucket", 0.5)
    assert bucket_md5(s3, bucket, "acted.txt")[0] == md5(data)
    wait_for(lambda: "resumed upload of 'acted.txt' completed" in m.log(), 10, "the resumed line")
    log = m.log()
    done = [SUMMARY.search(ln) for ln in lines_with(log, "upload of 'acted.txt' done")]
    assert len(done) == 1 and done[0], log[-3000:]
    assert int(done[0]["size"]) == len(data) and int(done[0]["parts"]) == 1
    after = scrape(url)
    assert value(after, "s3fuse_uploads_resumed_total") == 1
    assert value(after, "s3fuse_uploads_pending") == 0 and value(after, "s3fuse_journal_records") == 0
    assert not journal_records(m.cache_dir)


def test_interrupted_multipart_upload_resumed_by_the_next_mount(s3, bucket, proxied, tmp_path):
    """A daemon killed while a 30 MiB file's parts go up (each request held 250 ms by the
    proxy): the next mount logs how many parts the server already had, the summary line
    counts the parts sent before, and the object is complete."""
    proxy, make = proxied
    data = os.urandom(30 * MiB + 17)                 # 7 parts of 5 MiB
    src = tmp_path / "big.src"
    src.write_bytes(data)
    m = make(bucket, options=OPTIONS + ["upload_threads=1"], name="crash")
    proxy.set("delay", 250)
    cp = subprocess.Popen(["cp", str(src), m.p("big.bin")], stderr=subprocess.DEVNULL)

    def parts_recorded():
        return any(r["state"] == "closed" and len(r.get("parts", {})) >= 2 for r in journal_records(m.cache_dir))
    wait_for(parts_recorded, 120, "a closed record with parts on the server", 0.05)
    pid = m.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, "the daemon to die")
    cp.wait(60)
    cleanup_dead_mount(m.path)
    proxy.clear()

    m.mount()                                        # the same cache_dir and log: resume at start
    wait_for(lambda: bucket_md5(s3, bucket, "big.bin"), 120, "the resumed upload", 0.5)
    assert bucket_md5(s3, bucket, "big.bin")[0] == md5(data)
    wait_for(lambda: "resumed upload of 'big.bin' completed" in m.log(), 10, "the resumed line")
    log = m.log()
    kept = [re.search(r"resuming upload of 'big.bin': (\d+) of 7 parts already on the server", ln)
            for ln in log.splitlines()]
    kept = [int(k.group(1)) for k in kept if k]
    assert len(kept) == 1 and 2 <= kept[0] < 7, log[-3000:]
    done = [SUMMARY.search(ln) for ln in lines_with(log, "upload of 'big.bin' done")]
    assert len(done) == 1 and done[0], log[-3000:]
    assert int(done[0]["size"]) == len(data) and int(done[0]["parts"]) == 7
    assert f"({kept[0]} parts sent before" in lines_with(log, "upload of 'big.bin' done")[0]
    assert float(done[0]["rate"]) > 0
    assert not journal_records(m.cache_dir)


def test_describe_names_the_request_status_and_attempts():
    exc = errors.with_status(errors.ServerBusy("put 'a/b': 503 SlowDown"), 503)
    assert errors.describe(exc) == "put 'a/b': 503 SlowDown"          # not from a request yet
    exc.s3_op, exc.attempts = "PutObject", 5
    assert errors.describe(exc) == "S3 PutObject failed (status 503, 5 attempts): put 'a/b': 503 SlowDown"
    assert errors.describe(ValueError("bug")) == "bug"
