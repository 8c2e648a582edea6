"""The snapshot view (s3/snapshot.py) and the versions of a file (fs/versions.py) on the
fake client: which version each key shows at a time, paging through versions that span
pages, listings kept for lookups, every change refused, and the reserved xattrs."""
from __future__ import annotations

import inspect

import pytest

from s3fuse import errors
from s3fuse.config import MountConfig, apply_option
from s3fuse.s3 import ObjectClient
from s3fuse.s3.snapshot import SnapshotClient, _ancestors, version_of

from ..support.fakes import FakeS3


def _bucket(page_size=1000) -> FakeS3:
    """t=10: a v1, d/x, d/y, gone; t=20: a v2, d/x deleted, gone deleted; t=30: new, d/z."""
    s3 = FakeS3(page_size=page_size)
    s3.versioning_status = "Enabled"
    s3.seed("a", b"one", mtime=10)
    s3.seed("d/x", b"x", mtime=10)
    s3.seed("d/y", b"y", mtime=10)
    s3.seed("gone", b"g", mtime=10)
    s3.seed("a", b"two!", mtime=20)
    for key in ("d/x", "gone"):
        s3.objects.pop(key)
        s3._add_version(key, 20)
    s3.seed("new", b"n", mtime=30)
    s3.seed("d/z", b"z", mtime=30)
    return s3


def _names(page):
    return sorted([o.key for o in page.objects] + page.prefixes)


@pytest.mark.parametrize("page_size", [1000, 1, 2])
def test_each_key_shows_its_newest_version_up_to_the_time(page_size):
    s3 = _bucket(page_size)
    at15 = SnapshotClient(s3, 15, ttl=0)
    assert _names(next(at15.list_all(""))) == ["a", "d/", "gone"]
    assert _names(next(at15.list_all("d/"))) == ["d/x", "d/y"]
    assert at15.get_range("a", 0, 10, at15.head("a").etag) == b"one"
    at25 = SnapshotClient(s3, 25, ttl=0)
    assert _names(next(at25.list_all(""))) == ["a", "d/"]
    assert _names(next(at25.list_all("d/"))) == ["d/y"]
    assert at25.head("a").size == 4
    for client, key in ((at25, "gone"), (at25, "new"), (at15, "d/z"), (SnapshotClient(s3, 5, ttl=0), "a")):
        with pytest.raises(errors.NotFound):
            client.head(key)
    assert _names(next(SnapshotClient(s3, 5, ttl=0).list_all(""))) == []


def test_a_snapshot_etag_names_its_version_and_the_read_uses_it():
    s3 = _bucket()
    snap = SnapshotClient(s3, 15, ttl=0)
    info = snap.head("a")
    v1 = s3.history["a"][-1].version_id
    assert version_of(info.etag) == v1 and info.etag.startswith(s3.history["a"][-1].etag + "@")
    assert snap.get_range("a", 1, 3) == b"ne"
    assert ("a", v1, 1, 3) in s3.details("get_version_range")
    assert s3.count("get_range") == 0 and s3.count("head") == 0


def test_a_kept_listing_answers_lookups_below_it_without_requests():
    s3 = _bucket()
    snap = SnapshotClient(s3, 15, ttl=60)
    list(snap.list_all(""))
    listed = s3.count("list_versions_page")
    assert _names(snap.list_page("d/", None, "/", 2)) == ["d/x", "d/y"]
    assert snap.list_page("a/", None, "/", 2).objects == []       # a lookup's directory probe
    assert snap.head("d/x").size == 1
    with pytest.raises(errors.NotFound):
        snap.head("d/z")
    assert s3.count("list_versions_page") == listed
    assert s3.count("head_version") == 1                           # the metadata of that version


def test_a_short_page_continues_after_its_last_entry():
    s3 = FakeS3()
    s3.versioning_status = "Enabled"
    for key in ("p/a", "p/b/1", "p/b/2", "p/c", "p/d"):
        s3.seed(key, b".", mtime=1)
    snap = SnapshotClient(s3, 5, ttl=0)
    first = snap.list_page("p/", None, "/", 2)
    assert _names(first) == ["p/a", "p/b/"] and first.next_token
    rest = snap.list_page("p/", first.next_token, "/", 10)
    assert _names(rest) == ["p/c", "p/d"] and rest.next_token is None


def test_ancestors():
    assert list(_ancestors("a/b/c")) == ["a/b/c", "a/b/", "a/", ""]
    assert list(_ancestors("a/b/")) == ["a/b/", "a/", ""]
    assert list(_ancestors("")) == [""]


def test_every_change_is_refused_and_every_client_method_is_there():
    snap = SnapshotClient(_bucket(), 15)
    public = {n for n, f in inspect.getmembers(ObjectClient, inspect.isfunction) if not n.startswith("_")}
    assert sorted(n for n in public if not hasattr(SnapshotClient, n)) == []
    for call in (lambda: snap.put("k", b""), lambda: snap.copy("a", "b"), lambda: snap.delete("a"),
                 lambda: snap.delete_many(["a"]), lambda: snap.create_multipart("k"),
                 lambda: snap.upload_part("k", "u", 1, b"", ""), lambda: snap.upload_part_copy("k", "u", 1, "a", 0, 1),
                 lambda: snap.complete_multipart("k", "u", []), lambda: snap.abort_multipart("k", "u"),
                 lambda: snap.copy_version("a", "v1", "a"), snap.create_bucket):
        with pytest.raises(errors.ReadOnly):
            call()


def test_an_unversioned_bucket_is_refused_at_probe():
    s3 = FakeS3()
    s3.probe = lambda: None
    with pytest.raises(errors.ConfigError, match="not versioned"):
        SnapshotClient(s3, 15).probe()
    s3.versioning_status = "Suspended"
    SnapshotClient(s3, 15).probe()


@pytest.mark.parametrize("text,expected", [("2026-01-01T00:00:00Z", 1767225600.0),
                                           ("2026-01-01T01:00:00+01:00", 1767225600.0),
                                           ("2026-01-01T00:00:00", 1767225600.0), ("1767225600.5", 1767225600.5)])
def test_snapshot_times(text, expected):
    cfg = MountConfig()
    if expected > __import__("time").time():
        pytest.skip("the machine's clock is before the example")
    apply_option(cfg, f"snapshot={text}")
    assert cfg.snapshot == expected


def test_versions_and_restore_through_the_xattrs(make_fs):
    s3 = _bucket()
    fs = make_fs(s3)
    lines = fs.getxattr("/a", "user.s3fuse.versions").decode().splitlines()
    assert [line.split("\t")[2:5] for line in lines] == [["4", "version", "latest"], ["3", "version", "-"]]
    v1 = lines[1].split("\t")[0]
    fs.setxattr("/a", "user.s3fuse.restore", v1.encode(), 0)
    assert s3.objects["a"][0] == b"one" and fs.getattr("/a").size == 3
    # a deleted file, through its directory
    gone = fs.getxattr("/", "user.s3fuse.versions:gone").decode().splitlines()
    assert [line.split("\t")[3] for line in gone] == ["delete-marker", "version"]
    with pytest.raises(errors.InvalidArgument):
        fs.setxattr("/", "user.s3fuse.restore:gone", gone[0].split("\t")[0].encode(), 0)
    fs.setxattr("/", "user.s3fuse.restore:gone", gone[1].split("\t")[0].encode(), 0)
    assert fs.getattr("/gone").size == 1
    with pytest.raises(errors.NotFound):
        fs.setxattr("/a", "user.s3fuse.restore", b"v999", 0)
    with pytest.raises(errors.IsADirectory):
        fs.getxattr("/d", "user.s3fuse.versions")
    # other names are extended attributes as before
    fs.setxattr("/a", "user.color", b"blue", 0)
    assert fs.getxattr("/a", "user.color") == b"blue"
    assert "user.s3fuse.versions" not in fs.listxattr("/a")


def test_a_file_open_for_writing_is_not_restored_under_it(make_fs):
    s3 = _bucket()
    fs = make_fs(s3)
    v1 = s3.history["a"][-1].version_id
    fh, _ = fs.open("/a", 2)        # O_RDWR
    fs.write(fh, b"local", 0)
    with pytest.raises(errors.Busy):
        fs.setxattr("/a", "user.s3fuse.restore", v1.encode(), 0)
    fs.release(fh)
    assert s3.objects["a"][0].startswith(b"local")
