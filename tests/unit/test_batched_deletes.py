"""Deletes in writeback (issue #24 item 4, s3fuse/fs/deletes.py), without a mount: unlinks
batched into DeleteObjects, durable records, names hidden at once, new objects at a
deleted key surviving, per-key errors of the answer retried or reported."""
from __future__ import annotations

import os
import shutil
import threading

import pytest

from s3fuse import errors

from ..support.fakes import FakeS3


def _write(fs, path: str, data: bytes):
    fh = fs.create(path, 0o644, 0, 0, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fs.write(fh, data, 0)
    fs.flush(fh)
    fs.release(fh)


def _names(fs, path="/") -> set:
    return {n for n, _ in fs.readdir(path)} - {".", ".."}


def _seeded(n=50) -> FakeS3:
    c = FakeS3()
    for i in range(n):
        c.seed(f"d/f{i:03d}", b"x%d" % i)
    return c


def test_unlinks_are_one_request_hidden_at_once_and_durable(make_fs):
    c = _seeded()
    fs = make_fs(c, writeback=True)
    for i in range(50):
        fs.unlink(f"/d/f{i:03d}")
    # nothing sent yet (the worker is not started): every name is gone from the mount
    assert c.count("delete") == 0 and len(c.objects) == 50
    with pytest.raises(errors.NotFound):
        fs.getattr("/d/f007")
    assert _names(fs, "/d") == set()
    assert len(os.listdir(fs.parts.deletes.dir)) == 50        # one durable record per unlink
    fs.fsyncdir("/")
    assert c.objects == {} and c.count("delete_batch") == 1 and c.count("delete") == 0
    assert os.listdir(fs.parts.deletes.dir) == []


def test_records_of_a_killed_mount_hide_the_names_and_are_sent(make_fs, tmp_path):
    c = _seeded(5)
    fs = make_fs(c, writeback=True)
    fs.unlink("/d/f001")
    fs.unlink("/d/f002")
    # "killed" before anything was sent: the next mount finds the records (a copy of
    # them in its own cache_dir, as the first one still holds its lock)
    shutil.copytree(fs.parts.deletes.dir, tmp_path / "cache1" / "deletes")
    fs.parts.deletes.close()
    assert set(c.objects) == {f"d/f{i:03d}" for i in range(5)}
    fs2 = make_fs(c)                                             # a plain mount sends them too
    assert _names(fs2, "/d") == {"f000", "f003", "f004"}         # hidden before anything was sent
    with pytest.raises(errors.NotFound):
        fs2.getattr("/d/f001")
    fs2.start_background(retry_interval=60)
    assert fs2.parts.deletes.flush(timeout=10)
    assert set(c.objects) == {"d/f000", "d/f003", "d/f004"} and c.count("delete_batch") == 1


def test_a_new_file_after_rm_survives_the_delete(make_fs):
    c = _seeded(3)
    fs = make_fs(c, writeback=True)
    fs.unlink("/d/f001")
    _write(fs, "/d/f001", b"new")          # writeback: its upload queued
    fs.fsyncdir("/")
    assert c.objects["d/f001"][0] == b"new"
    assert fs.parts.deletes.status()["pending"] == 0


def test_a_delete_in_flight_is_waited_for_by_an_upload_of_its_key(make_fs):
    c = _seeded(3)
    fs = make_fs(c, writeback=True)
    entered, gate = threading.Event(), threading.Event()

    def block(method, detail):
        if method == "delete_batch":
            entered.set()
            assert gate.wait(20)
    c.block = block
    fs.unlink("/d/f001")
    flusher = threading.Thread(target=fs.parts.deletes.flush)
    flusher.start()
    assert entered.wait(10)
    _write(fs, "/d/f001", b"new")            # writeback: close returns, its upload is queued
    fsync = threading.Thread(target=fs.fsyncdir, args=("/",))
    fsync.start()
    fsync.join(0.5)
    assert fsync.is_alive(), "the upload waits for the delete in flight"
    assert c.objects["d/f001"][0] == b"x1"
    gate.set()
    for t in (flusher, fsync):
        t.join(10)
    assert c.objects["d/f001"][0] == b"new"


def test_rename_onto_a_pending_deleted_name_keeps_the_moved_file(make_fs):
    c = _seeded(3)
    fs = make_fs(c, writeback=True)
    fs.unlink("/d/f001")
    fs.rename("/d/f002", "/d/f001")
    fs.fsyncdir("/")
    assert set(c.objects) == {"d/f000", "d/f001"} and c.objects["d/f001"][0] == b"x2"


def test_rmdir_of_a_directory_whose_children_are_pending(make_fs):
    c = _seeded(20)
    c.seed("d/")
    fs = make_fs(c, writeback=True)
    for i in range(20):
        fs.unlink(f"/d/f{i:03d}")
    fs.rmdir("/d")
    assert c.objects == {} and c.count("delete_batch") == 1
    assert "d" not in _names(fs)


def test_per_key_errors_are_retried_or_reported(make_fs, monkeypatch):
    monkeypatch.setattr("s3fuse.fs.deletes.FIRST_RETRY", 0.05)
    c = _seeded(4)
    c.delete_errors = {"d/f001": ["InternalError", "SlowDown"], "d/f002": ["AccessDenied"],
                       "d/f003": ["NoSuchKey"]}
    fs = make_fs(c, writeback=True)
    for i in range(4):
        fs.unlink(f"/d/f{i:03d}")
    with pytest.raises(errors.WriteFailed) as e:
        fs.fsyncdir("/")
    assert "/d/f002" in str(e.value) and "f001" not in str(e.value)
    assert set(c.objects) == {"d/f002"}            # f001: tried 3 times; f002 refused for good
    assert c.count("delete_batch") == 3
    assert _names(fs, "/d") == {"f002"}            # the refused name shows again
    assert fs.getattr("/d/f002").size == 2
    assert os.listdir(fs.parts.deletes.dir) == []
    assert fs.parts.deletes.status()["refused"] == ["d/f002"]


def test_a_failed_request_keeps_every_key(make_fs, monkeypatch):
    monkeypatch.setattr("s3fuse.fs.deletes.FIRST_RETRY", 0.05)
    c = _seeded(3)
    c.fail["delete_batch"] = [errors.Unreachable("down")]
    fs = make_fs(c, writeback=True)
    for i in range(3):
        fs.unlink(f"/d/f{i:03d}")
    fs.fsyncdir("/")
    assert c.objects == {} and c.count("delete_batch") == 2


def test_without_writeback_an_unlink_deletes_at_once(make_fs):
    c = _seeded(2)
    fs = make_fs(c)
    fs.unlink("/d/f000")
    assert set(c.objects) == {"d/f001"} and c.count("delete") == 1


def test_mkdir_of_a_name_whose_file_delete_is_queued_shows_the_directory(make_fs):
    """rm d/a then mkdir d/a (found by the model test on a slowed writeback mount): the
    queued delete of the file "d/a" must not hide the new directory "d/a/"."""
    c = _seeded(1)
    c.seed("d/a", b"a file")
    fs = make_fs(c, writeback=True)
    fs.unlink("/d/a")
    fs.mkdir("/d/a", 0o755, 0, 0)
    assert fs.getattr("/d/a").is_dir
    assert "a" in _names(fs, "/d")
    fs.fsyncdir("/")
    assert "d/a" not in c.objects and "d/a/" in c.objects     # the file deleted, the directory kept
    assert fs.getattr("/d/a").is_dir
