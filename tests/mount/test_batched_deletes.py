"""Deletes in writeback (issue #24 item 4): with ``-o writeback`` unlinks are queued durably
in the cache_dir and sent as DeleteObjects of up to 1,000 keys (s3fuse/fs/deletes.py).
The bucket is checked directly (boto3); request counts come from the daemon's status."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys

import pytest

from ..support.faultproxy import FaultProxy, ProxiedServer
from ..support.mounts import Mount, cleanup_dead_mount
from ..support.probes import bucket_keys, delta, pid_alive, requests, wait_for

WB = ["writeback", "dir_ttl=60", "negative_ttl=60"]


def _seed(s3, bucket, prefix: str, n: int):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"{prefix}f{i:03d}", Body=b"%d" % i), range(n)))


def _sync(path: str):
    out = subprocess.run([sys.executable, "-m", "s3fuse", "sync", path], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.returncode == 0, out.stderr


@pytest.mark.servers("moto")
def test_rm_rf_of_300_files_is_a_few_delete_objects(s3, bucket, mounter):
    _seed(s3, bucket, "tree/", 300)
    s3.put_object(Bucket=bucket, Key="tree/sub/x", Body=b"x")
    m = mounter(bucket, options=WB)
    assert len(os.listdir(m.p("tree"))) == 301
    before = requests(m)
    subprocess.run(["rm", "-rf", m.p("tree")], check=True, timeout=120)
    assert not os.path.exists(m.p("tree"))
    assert bucket_keys(s3, bucket) == []          # rmdir sent what was queued below it
    sent = delta(requests(m), before)
    print("requests of rm -rf:", {op: n for op, n in sent.items() if n})
    assert sent.get("delete_object", 0) <= 3, sent     # the directories' markers at most
    assert 1 <= sent.get("delete_objects", 0) <= 8, sent      # a request per 2 s of rm at most


@pytest.mark.servers("moto")
def test_names_go_at_once_and_sync_sends_the_deletes(s3, bucket, mounter):
    _seed(s3, bucket, "d/", 20)
    m = mounter(bucket, options=WB)
    os.listdir(m.p("d"))
    for i in range(20):
        os.unlink(m.p("d", f"f{i:03d}"))
    assert os.listdir(m.p("d")) == []
    assert not os.path.exists(m.p("d", "f005"))
    _sync(m.path)
    assert bucket_keys(s3, bucket) == []


@pytest.mark.servers("moto")
@pytest.mark.parametrize("after", ["mount", "resume"])
def test_a_kill_after_rm_returned_still_deletes(s3, s3_server, bucket, tmp_path, after):
    _seed(s3, bucket, "k/", 50)
    proxy = FaultProxy(s3_server.endpoint)
    try:
        m = Mount(ProxiedServer(s3_server, proxy), bucket, str(tmp_path), options=WB + ["retries=1"],
                  name="wb").mount()
        try:
            os.listdir(m.p("k"))
            pid = m.daemon_pid()
            proxy.set("reset", methods={"POST"})         # no DeleteObjects gets through: kept queued
            # rm of the files, no rmdir (which would wait for them); killed once rm returned
            subprocess.run(f"rm -f {m.p('k')}/*", shell=True, check=True, timeout=120)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 10, "the daemon to die")
        finally:
            cleanup_dead_mount(m.path)
    finally:
        proxy.close()
    assert len(bucket_keys(s3, bucket)) == 50
    assert len(os.listdir(os.path.join(m.cache_dir, "deletes"))) == 50
    if after == "resume":
        env = dict(os.environ, PYTHONPATH=os.getcwd(), **s3_server.env())
        out = subprocess.run([sys.executable, "-m", "s3fuse", "resume", bucket, "-o",
                              f"endpoint={s3_server.endpoint},cache_dir={m.cache_dir}"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "sent 50 delete(s), 0 refused" in out.stdout
        assert bucket_keys(s3, bucket) == [] and os.listdir(os.path.join(m.cache_dir, "deletes")) == []
        return
    again = Mount(s3_server, bucket, str(tmp_path), options=["dir_ttl=60"], name="wb").mount()   # not writeback
    try:
        assert not os.path.exists(again.p("k", "f007"))     # hidden until sent, then gone
        wait_for(lambda: bucket_keys(s3, bucket) == [], 30, "the deletes of the killed mount")
        assert "50 delete(s) of an earlier mount" in again.log()
    finally:
        again.unmount()
    assert os.listdir(os.path.join(m.cache_dir, "deletes")) == []


@pytest.mark.servers("moto")
def test_a_file_written_after_rm_survives(s3, bucket, mounter):
    _seed(s3, bucket, "n/", 3)
    m = mounter(bucket, options=WB)
    os.listdir(m.p("n"))
    os.unlink(m.p("n", "f001"))
    with open(m.p("n", "f001"), "wb") as f:
        f.write(b"the new one")
    os.unlink(m.p("n", "f002"))
    os.symlink("f000", m.p("n", "f002"))             # a symlink onto a queued key
    _sync(m.path)
    assert s3.get_object(Bucket=bucket, Key="n/f001")["Body"].read() == b"the new one"
    assert s3.get_object(Bucket=bucket, Key="n/f002")["Body"].read() == b"f000"
    assert sorted(os.listdir(m.p("n"))) == ["f000", "f001", "f002"]


def test_rm_rf_on_every_server(s3, bucket, mounter):
    """The same DeleteObjects request on moto and RGW (Quiet mode, checksum as required)."""
    _seed(s3, bucket, "r/", 40)
    m = mounter(bucket, options=WB)
    subprocess.run(["rm", "-rf", m.p("r")], check=True, timeout=120)
    assert bucket_keys(s3, bucket) == []
    assert requests(m).get("delete_objects", 0) >= 1
