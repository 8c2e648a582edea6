"""A versioned bucket as it was (#23 item 3), on moto with real versions: ``-o
snapshot=TIME`` shows for each key its newest version up to TIME (delete markers hide a
key, later keys are absent), reads exactly those bytes, refuses every write with EROFS,
keys its block cache by version (a live mount sharing the cache_dir never gets the
snapshot's bytes, nor the other way round), and fails at once on an unversioned bucket;
``s3fuse versions PATH`` lists a file's versions and restores one through a live mount."""
from __future__ import annotations

import datetime
import errno
import json
import os
import subprocess
import sys
import time

import diskcache
import pytest

from ..support.mounts import REPO, Mount, is_mounted

pytestmark = pytest.mark.servers("moto")

V1 = bytes(range(256)) * 1200            # 300 KiB: several blocks with block_size=64K
V2 = b"second version\n" * 1000
KEPT = os.urandom(70_000)
GONE = b"deleted after the snapshot\n"
FAST = ["block_size=64K", "attr_ttl=1", "dir_ttl=1", "negative_ttl=0.5"]


def _put(s3, bucket, key, body) -> str:
    return s3.put_object(Bucket=bucket, Key=key, Body=body)["VersionId"]


@pytest.fixture
def history(s3, bucket):
    """v1 of a.txt, dir/gone.txt, dir/kept.bin; the time; then a.txt v2, dir/gone.txt
    deleted, new.txt and newdir/x added.  Returns (time, version id of a.txt v1)."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = _put(s3, bucket, "a.txt", V1)
    _put(s3, bucket, "dir/gone.txt", GONE)
    _put(s3, bucket, "dir/kept.bin", KEPT)
    time.sleep(1.1)                      # LastModified may have whole seconds
    moment = time.time()
    time.sleep(1.1)
    _put(s3, bucket, "a.txt", V2)
    s3.delete_object(Bucket=bucket, Key="dir/gone.txt")
    _put(s3, bucket, "new.txt", b"new")
    _put(s3, bucket, "newdir/x", b"x")
    return moment, v1


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_snapshot_mount_shows_the_bucket_as_it_was(s3, bucket, history, mounter):
    moment, _ = history
    m = mounter(bucket, options=[f"snapshot={_iso(moment)}"] + FAST)
    assert sorted(os.listdir(m.path)) == ["a.txt", "dir"]
    assert sorted(os.listdir(m.p("dir"))) == ["gone.txt", "kept.bin"]
    assert os.stat(m.p("a.txt")).st_size == len(V1)
    assert _read(m.p("a.txt")) == V1
    assert _read(m.p("dir", "gone.txt")) == GONE
    assert _read(m.p("dir", "kept.bin")) == KEPT
    for later in ("new.txt", "newdir", "newdir/x"):
        assert not os.path.exists(m.p(later)), later
    # a ranged read in the middle is the same version
    with open(m.p("a.txt"), "rb") as f:
        f.seek(100_000)
        assert f.read(1000) == V1[100_000:101_000]
    # Unix seconds work as well
    m2 = mounter(bucket, options=[f"snapshot={moment!r}"] + FAST)
    assert _read(m2.p("a.txt")) == V1 and sorted(os.listdir(m2.path)) == ["a.txt", "dir"]


def test_every_write_on_a_snapshot_is_erofs(s3, bucket, history, mounter):
    moment, _ = history
    m = mounter(bucket, options=[f"snapshot={moment!r}"] + FAST)
    attempts = {
        "create": lambda: open(m.p("fresh.txt"), "wb"),
        "write": lambda: open(m.p("a.txt"), "r+b"),
        "truncate": lambda: os.truncate(m.p("a.txt"), 0),
        "mkdir": lambda: os.mkdir(m.p("d2")),
        "rmdir": lambda: os.rmdir(m.p("dir")),
        "unlink": lambda: os.unlink(m.p("a.txt")),
        "rename": lambda: os.rename(m.p("a.txt"), m.p("b.txt")),
        "symlink": lambda: os.symlink("a.txt", m.p("link")),
        "chmod": lambda: os.chmod(m.p("a.txt"), 0o600),
        "chown": lambda: os.chown(m.p("a.txt"), 1, 1),
        "utime": lambda: os.utime(m.p("a.txt"), (1, 1)),
        "setxattr": lambda: os.setxattr(m.p("a.txt"), "user.k", b"v"),
        "removexattr": lambda: os.removexattr(m.p("a.txt"), "user.k"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, name
    assert _read(m.p("a.txt")) == V1
    listed = s3.list_object_versions(Bucket=bucket)
    assert len(listed.get("Versions", [])) == 6 and len(listed.get("DeleteMarkers", [])) == 1


def test_the_block_cache_is_keyed_by_version(s3, bucket, history, mounter, tmp_path):
    """A live mount and a snapshot mount, one after the other on the same cache_dir:
    each reads its own version, from the same key and block indexes."""
    moment, v1 = history
    shared = [f"cache_dir={tmp_path / 'shared-cache'}"] + FAST
    live = mounter(bucket, options=shared, name="live")
    assert _read(live.p("a.txt")) == V2
    live.unmount()
    snap = mounter(bucket, options=shared + [f"snapshot={moment!r}"], name="snap")
    assert _read(snap.p("a.txt")) == V1
    assert _read(snap.p("a.txt")) == V1        # the second time from the cache
    snap.unmount()
    again = mounter(bucket, options=shared, name="again")
    assert _read(again.p("a.txt")) == V2
    again.unmount()
    with diskcache.Cache(str(tmp_path / "shared-cache" / "blocks")) as cache:
        keys = [k for k in cache.iterkeys() if "\0a.txt\0" in k]
    assert any(k.split("\0")[2].endswith("@" + v1) for k in keys), keys
    assert any("@" not in k.split("\0")[2] for k in keys), keys


def _failed_mount(s3_server, bucket, tmp_path, options):
    m = Mount(s3_server, bucket, str(tmp_path), options=options, name="bad")
    started = time.monotonic()
    proc = subprocess.run(m.args(), env=m.env(), capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - started, m


def test_an_unversioned_bucket_fails_the_mount_in_one_line(s3_server, bucket, tmp_path):
    proc, took, m = _failed_mount(s3_server, bucket, tmp_path, [f"snapshot={time.time() - 60!r}"])
    assert proc.returncode == 1 and not is_mounted(m.path)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not versioned" in lines[0] and bucket in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and took < 15


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", "-5", "nan", "2999-01-01T00:00:00Z"])
def test_a_bad_time_is_a_usage_error(s3_server, bucket, tmp_path, value):
    proc, _, m = _failed_mount(s3_server, bucket, tmp_path, [f"snapshot={value}"])
    assert proc.returncode == 2 and not is_mounted(m.path), proc.stderr
    assert proc.stderr.startswith("s3fuse: option snapshot:") and len(proc.stderr.strip().splitlines()) == 1


def _versions(*args):
    return subprocess.run([sys.executable, "-m", "s3fuse", "versions", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_versions_lists_and_restores_through_a_live_mount(s3, bucket, history, mounter):
    _, v1 = history
    m = mounter(bucket, options=FAST + ["attr_ttl=60", "dir_ttl=60"])
    assert _read(m.p("a.txt")) == V2             # the live version, now in the mount's caches
    assert os.stat(m.p("a.txt")).st_size == len(V2)
    proc = _versions(m.p("a.txt"), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["size"], r["latest"], r["delete_marker"]) for r in rows] == [(len(V2), True, False),
                                                                            (len(V1), False, False)]
    assert rows[1]["version_id"] == v1
    text = _versions(m.p("a.txt")).stdout
    assert v1 in text and "(latest)" in text

    proc = _versions(m.p("a.txt"), "--restore", v1)
    assert proc.returncode == 0, proc.stderr
    # the mount sees it at once, though its attribute and listing TTLs are a minute
    assert os.stat(m.p("a.txt")).st_size == len(V1)
    assert _read(m.p("a.txt")) == V1
    assert s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == V1
    assert len(json.loads(_versions(m.p("a.txt"), "--json").stdout)) == 3     # the restore is a new version

    # a deleted file: reached by its old path, through its directory
    rows = json.loads(_versions(m.p("dir", "gone.txt"), "--json").stdout)
    assert [r["delete_marker"] for r in rows] == [True, False]
    assert _versions(m.p("dir", "gone.txt"), "--restore", rows[0]["version_id"]).returncode == 1  # a marker
    proc = _versions(m.p("dir", "gone.txt"), "--restore", rows[1]["version_id"])
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 5
    while not os.path.exists(m.p("dir", "gone.txt")) and time.monotonic() < deadline:
        time.sleep(0.1)      # the kernel may remember the missing name for negative_ttl
    assert _read(m.p("dir", "gone.txt")) == GONE
    assert "gone.txt" in os.listdir(m.p("dir"))

    proc = _versions(m.p("a.txt"), "--restore", "no-such-version")
    assert proc.returncode == 1 and "s3fuse versions:" in proc.stderr


def test_a_snapshot_lists_versions_but_does_not_restore(s3, bucket, history, mounter):
    moment, v1 = history
    m = mounter(bucket, options=[f"snapshot={moment!r}"] + FAST)
    rows = json.loads(_versions(m.p("a.txt"), "--json").stdout)
    assert [r["version_id"] for r in rows][1] == v1
    proc = _versions(m.p("a.txt"), "--restore", v1)
    assert proc.returncode == 1 and "read-only" in proc.stderr
    assert s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == V2
