"""-o metrics=ADDR:PORT: the Prometheus endpoint of a mount, its counters against what
the bucket shows during a real copy, the exposition format, the option, the cost per
FUSE callback, and ``s3fuse status`` listing every mount of the host."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time

import pytest

from s3fuse.fuse import boundary, operations as fuse_ops
from s3fuse import config, errors, metrics
from s3fuse.app import statusfile as status
from s3fuse.fuse.binding import FuseOSError

from ..support.mounts import REPO, Mount
from ..support.probes import bucket_keys, parse_metrics, scrape, value, wait_for
from ..support.report import report

MiB = 1 << 20


# -- the option ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [("9101", ("127.0.0.1", 9101)), (":9101", ("127.0.0.1", 9101)),
                                        ("0.0.0.0:9101", ("0.0.0.0", 9101)), ("[::1]:80", ("::1", 80)),
                                        ("localhost:0", ("localhost", 0))])
def test_metrics_option_defaults_to_loopback(text, want):
    cfg = config.MountConfig()
    config.apply_option(cfg, f"metrics={text}")
    assert cfg.metrics == want


@pytest.mark.parametrize("text", ["", "abc", "70000", "1.2.3.4:", "a b:80", "-1"])
def test_metrics_option_rejects_what_cannot_listen(text):
    with pytest.raises(errors.ConfigError, match="metrics"):
        config.apply_option(config.MountConfig(), f"metrics={text}")


def test_taken_port_fails_the_mount_in_one_line(s3_server, bucket, tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        m = Mount(s3_server, bucket, str(tmp_path), options=[f"metrics={port}"])
        proc = subprocess.run(m.args(), env=m.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and f"metrics=127.0.0.1:{port}" in proc.stderr, proc.stderr


# -- the registry --------------------------------------------------------------------------
def test_exposition_format_counters_histograms_collectors():
    reg = metrics.Registry()
    c = reg.counter("t_requests_total", "requests", ("op", "status"))
    c.inc("get", "200")
    c.inc("get", "200", n=2)
    c.inc('we"ird\\', "503")
    h = reg.add(metrics.OpHistograms("t_seconds", "latency", buckets=(0.001, 0.01)))
    record = h.recorder("read")
    for ns in (500_000, 2_000_000, 2_000_000, 50_000_000):
        record(ns)
    reg.add_collector(lambda: [("t_gauge", "gauge", "g", 7), ("t_info", "gauge", "i", [({"a": "x"}, 1)])])
    s = parse_metrics(reg.exposition())
    assert value(s, "t_requests_total", op="get", status="200") == 3
    assert value(s, "t_requests_total", op='we\\"ird\\\\', status="503") == 1
    assert value(s, "t_seconds_bucket", op="read", le="0.001") == 1
    assert value(s, "t_seconds_bucket", op="read", le="0.01") == 3        # cumulative
    assert value(s, "t_seconds_bucket", op="read", le="+Inf") == 4
    assert value(s, "t_seconds_count", op="read") == 4
    assert value(s, "t_seconds_sum", op="read") == pytest.approx(0.0545)
    assert value(s, "t_gauge") == 7 and value(s, "t_info", a="x") == 1


def test_histogram_counts_every_call_from_many_threads():
    """Each thread writes its own shard: no increment is lost without a lock."""
    import threading
    h = metrics.OpHistograms("t_seconds", "latency")
    record = h.recorder("getattr")
    threads = [threading.Thread(target=lambda: [record(1000) for _ in range(20000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.count("getattr") == 160000


def test_errors_are_counted_by_operation_and_errno():
    before = metrics.FUSE_ERRORS.get("unlink", "ENOENT"), metrics.FUSE_ERRORS.get("write", "EIO")
    assert boundary.to_errno("unlink", ("/x",), errors.NotFound("x")) > 0
    assert boundary.to_errno("write", ("/y",), errors.with_status(errors.ServerBusy("put 'y': 503"), 503)) > 0
    assert metrics.FUSE_ERRORS.get("unlink", "ENOENT") == before[0] + 1
    assert metrics.FUSE_ERRORS.get("write", "EIO") == before[1] + 1


def test_cost_per_fuse_callback(request):
    """The timing and counting added to every FUSE callback: measured against the same
    errno boundary without them, on a callback that does nothing."""
    class Ops:
        def getattr(self, path, fh=None):
            return None

    def bare_boundary(method):
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self, *args):
            try:
                return method(self, *args)
            except FuseOSError:
                raise
            except Exception as exc:
                raise FuseOSError(boundary.to_errno(name, args, exc)) from None
        return wrapper

    ops, n = Ops(), 200_000
    timed, plain = fuse_ops._errno_boundary(Ops.getattr), bare_boundary(Ops.getattr)
    before = metrics.FUSE_OPS.count("getattr")

    def best(fn):
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(ops, "/x")
            runs.append((time.perf_counter() - t0) / n)
        return min(runs)
    extra = best(timed) - best(plain)
    assert metrics.FUSE_OPS.count("getattr") - before == 5 * n
    report(request.config, f"metrics cost per FUSE callback: {extra * 1e9:.0f} ns "
                           f"(two monotonic_ns reads, a bisect, two increments on the thread's own row)")
    assert extra < 5e-6, f"{extra * 1e9:.0f} ns per callback"


# -- a real mount --------------------------------------------------------------------------
def _metrics_url(mountpoint: str) -> str:
    entry = status.read(mountpoint)
    assert entry and entry.get("metrics"), entry
    return entry["metrics"]


def test_counters_follow_the_bucket_during_a_copy(mounter, s3, bucket, tmp_path, request):
    """`cp -r` of 40 small files and one multipart file into the mount while the endpoint
    is scraped: at every scrape the PutObjects counted are no more than the objects the
    bucket holds right after, and no fewer than it held right before (the copy is
    sequential); at the end the counts equal the files (and the directory marker), parts
    and bytes copied."""
    src = tmp_path / "src"
    src.mkdir()
    sizes = [(i * 7919) % (200 * 1000) + 1 for i in range(40)]
    for i, size in enumerate(sizes):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(size))
    big = 12 * MiB + 3                                   # 3 parts of 5 MiB
    (src / "big.bin").write_bytes(os.urandom(big))
    total = sum(sizes) + big
    m = mounter(bucket, options=["metrics=127.0.0.1:0", "part_size=5M"])
    url = _metrics_url(m.path)
    start = scrape(url)
    assert value(start, "s3fuse_info", bucket=bucket, mountpoint=m.path) == 1

    cp = subprocess.Popen(["cp", "-r", str(src), m.p("dst")])
    checks = 0
    while cp.poll() is None:
        before = len(bucket_keys(s3, bucket))
        puts = value(scrape(url), "s3fuse_s3_requests_total", op="put_object", status="200")
        after = len(bucket_keys(s3, bucket))
        assert before - 1 <= puts <= after, (before, puts, after)   # -1: the big file is no PutObject
        checks += 1
        time.sleep(0.05)
    assert cp.wait() == 0
    end = scrape(url)
    keys = bucket_keys(s3, bucket, "dst/")
    assert len(keys) == 42 and "dst/" in keys         # mkdir's directory marker is a PutObject too

    def moved(name, **labels):
        return value(end, name, **labels) - value(start, name, **labels)
    assert moved("s3fuse_s3_requests_total", op="put_object", status="200") == 41
    assert moved("s3fuse_s3_requests_total", op="create_multipart_upload", status="200") == 1
    assert moved("s3fuse_s3_requests_total", op="upload_part", status="200") == 3
    assert moved("s3fuse_s3_requests_total", op="complete_multipart_upload", status="200") == 1
    assert moved("s3fuse_s3_sent_bytes_total") >= total
    assert moved("s3fuse_uploads_total", result="ok") == 41
    assert moved("s3fuse_uploaded_bytes_total") == total
    assert moved("s3fuse_uploads_total", result="failed") == 0
    assert value(end, "s3fuse_journal_records") == 0 and value(end, "s3fuse_uploads_pending") == 0
    assert moved("s3fuse_journal_writes_total") >= 41
    assert moved("s3fuse_fuse_op_seconds_count", op="create") == 41
    assert moved("s3fuse_fuse_op_seconds_count", op="write") >= 41
    assert moved("s3fuse_fuse_op_seconds_count", op="flush") >= 41
    assert moved("s3fuse_fuse_op_seconds_bucket", op="create", le="+Inf") == 41
    assert moved("s3fuse_fuse_op_seconds_sum", op="flush") > 0
    # cp looks each new name up first: ENOENT, counted by errno
    assert moved("s3fuse_fuse_errors_total", errno="ENOENT") >= 1

    # reads: an object the mount never saw misses the block cache and comes down
    s3.put_object(Bucket=bucket, Key="seeded.bin", Body=os.urandom(3 * MiB))
    with open(m.p("seeded.bin"), "rb") as f:
        assert len(f.read()) == 3 * MiB
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)    # drop the kernel's pages
    read1 = scrape(url)
    assert value(read1, "s3fuse_cache_fetched_bytes_total") - value(end, "s3fuse_cache_fetched_bytes_total") \
        >= 3 * MiB
    assert value(read1, "s3fuse_s3_received_bytes_total") - value(end, "s3fuse_s3_received_bytes_total") >= 3 * MiB
    assert value(read1, "s3fuse_s3_requests_total", op="get_object", status="206") >= 1
    # blocks reach the disk behind the reads (the block cache's writer thread)
    wait_for(lambda: value(scrape(url), "s3fuse_cache_bytes") >= 3 * MiB, 30, "the blocks on disk")
    with open(m.p("seeded.bin"), "rb") as f:
        assert len(f.read()) == 3 * MiB
    read2 = scrape(url)
    assert value(read2, "s3fuse_cache_hits_total") > value(read1, "s3fuse_cache_hits_total")
    assert value(read2, "s3fuse_s3_received_bytes_total") == value(read1, "s3fuse_s3_received_bytes_total")
    report(request.config, f"metrics: {checks} scrapes during a copy of 41 files ({total / MiB:.1f} MiB)")


def test_status_without_argument_lists_every_mount(mounter, s3, bucket, tmp_path):
    """Two mounts (one with metrics): `s3fuse status` lists both, a status file left by a
    daemon that died is not listed, and --json gives every entry."""
    a = mounter(bucket, options=["metrics=0"], name="a")
    b = mounter(bucket, prefix="sub", name="b")
    stale = status.status_path(str(tmp_path / "gone"))
    with open(stale, "w") as f:
        json.dump({"mountpoint": str(tmp_path / "gone"), "pid": 2 ** 22 + 12345, "bucket": "x"}, f)
    try:
        run = [sys.executable, "-m", "s3fuse", "status"]
        text = subprocess.run(run, capture_output=True, text=True, cwd=REPO, timeout=30).stdout
        assert f"{a.path}: bucket {bucket}" in text and f"{b.path}: bucket {bucket} prefix sub" in text
        assert str(tmp_path / "gone") not in text     # (other mounts of the host are listed too)
        assert f"metrics: {_metrics_url(a.path)}" in text
        listed = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True, cwd=REPO,
                                           timeout=30).stdout)
        assert {a.path, b.path} <= {e["mountpoint"] for e in listed}
        assert str(tmp_path / "gone") not in {e["mountpoint"] for e in listed}
    finally:
        os.unlink(stale)
