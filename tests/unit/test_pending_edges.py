"""Issue #22 (nothing lost at the edges), without a mount: a change made while the
upload of a sealed (writeback) file ends, and pending uploads - failed, kept in the
journal for a retry - against the operations that replace or remove their key.

Uploads are blocked or failed by the fake client (tests/fakes.py): the races are made
to happen, not waited for."""
from __future__ import annotations

import os
import stat
import threading
import time

import pytest

from s3fuse import errors

from s3fuse.write.openfile import OpenFile

from ..support.fakes import FakeS3


def _waiting(cond) -> int:
    """Threads waiting on a threading.Condition (CPython keeps them in ``_waiters``)."""
    return len(cond._waiters)


def _key_lock_users(fs, key: str) -> int:
    with fs.parts.commits._lock:
        slot = fs.parts.commits._key_locks.get(key)
        return slot[1] if slot else 0


def _wait_until(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class GatedPut:
    """FakeS3.block hook: the PutObject of ``key`` waits until ``gate`` is set."""

    def __init__(self, key: str):
        self.key = key
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, method, detail):
        if method == "put" and detail == self.key and not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(20), "the test never opened the gate"


def _write_file(fs, path: str, data: bytes, mode: int = 0o644):
    fh = fs.create(path, mode, 0, 0, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fs.write(fh, data, 0)
    fs.flush(fh)
    fs.release(fh)


def _widen_the_window(monkeypatch, changed: threading.Event):
    """Let go of the file's lock right before the bookkeeping of a finished upload, until
    ``changed`` is set (at most 1 s): a change that can get in between does, every time.
    Before the fix, the end of the upload and its bookkeeping were two steps and the lock
    was free between them; now a change waits for both (``_uploading`` stays set)."""
    booked = OpenFile._uploaded

    def widened(self, *args, **kwargs):
        state = self.lock._release_save()
        try:
            changed.wait(1.0)
        finally:
            self.lock._acquire_restore(state)
        return booked(self, *args, **kwargs)
    monkeypatch.setattr(OpenFile, "_uploaded", widened)


@pytest.mark.parametrize("change", ["append", "chmod"])
def test_a_change_while_a_sealed_upload_ends_is_not_dropped(make_fs, monkeypatch, change):
    """-o writeback: /f is closed, its upload runs (blocked in PutObject); an append (or a
    chmod) waits for it.  Once the upload is done the change must still be pending and
    reach the bucket with the next close.  Before the fix the upload's bookkeeping, done
    after the change, marked the file clean: the next close sealed nothing, and the
    appended bytes (the new mode) never reached the bucket though close returned 0."""
    fake = FakeS3()
    put = GatedPut("f")
    fake.block = put
    fs = make_fs(fake, writeback=True)
    _write_file(fs, "/f", b"hello")
    assert put.entered.wait(10), "the upload of the sealed file started"
    f = fs.parts.handles.live_file("/f")
    changed = threading.Event()
    _widen_the_window(monkeypatch, changed)
    failures = []

    def make_change():
        try:
            if change == "append":
                fh, _ = fs.open("/f", os.O_WRONLY)
                fs.write(fh, b" world", 5)
                changed.set()
                fs.flush(fh)
                fs.release(fh)
            else:
                fs.chmod("/f", 0o600)
                changed.set()
        except Exception as exc:          # pragma: no cover - reported below
            failures.append(exc)
            changed.set()

    t = threading.Thread(target=make_change)
    t.start()
    try:
        # the change waits for the upload: on the file's lock (a write), or on the key's
        # lock, which the upload holds (a chmod)
        _wait_until(lambda: _waiting(f._idle) >= 1 or _key_lock_users(fs, "f") >= 2,
                    "the change to wait for the upload")
    finally:
        put.gate.set()
        t.join(20)
    assert not failures, failures
    assert fs.parts.writeback.drain(20), "every closed file uploaded (s3fuse sync)"
    data, metadata, _ = fake.objects["f"]
    if change == "append":
        assert data == b"hello world", "the appended bytes reached the bucket"
    else:
        assert data == b"hello"
        assert int(metadata["mode"]) == stat.S_IFREG | 0o600, "the new mode reached the bucket"
    assert fs.getattr("/f").size == len(data)
    assert fs.parts.journal.count() == 0, "no record left behind"


# ---------------------------------------------------------------------------------------
# pending uploads (failed, kept for the retry) against unlink, rename over, symlink, ...
# ---------------------------------------------------------------------------------------
UPLOADS = ("put", "create_multipart", "upload_part", "complete_multipart")


class Outage:
    """FakeS3.fail_when hook: every upload request of the keys in ``keys`` fails."""

    def __init__(self, *keys):
        self.keys = set(keys)

    def __call__(self, method, detail):
        if method in UPLOADS and (detail in self.keys or method in ("upload_part", "complete_multipart")):
            return errors.Unreachable(f"{method} {detail}: injected outage")
        return None


def _close_with_failed_upload(fs, path: str, data: bytes):
    """Durable mode: the close of ``path`` fails (EIO), its upload kept for the retry."""
    fh, _ = fs.open(path, os.O_WRONLY | os.O_TRUNC) if fs.files.exists(path) else (fs.create(path, 0o644, 0, 0), 0)
    fs.write(fh, data, 0)
    with pytest.raises(errors.FsError):
        fs.flush(fh)
    fs.release(fh)


def _staged(fs) -> list:
    return sorted(os.listdir(fs.parts.staging_dir))


def test_unlink_cancels_a_failed_upload(make_fs):
    """A file whose upload failed (kept for the 30 s retry) is unlinked: the retry must not
    bring it back.  Before, only a later successful commit cancelled a pending upload."""
    fake = FakeS3()
    fake.seed("k", b"old version")
    fs = make_fs(fake)
    fake.fail_when = Outage("k")
    _close_with_failed_upload(fs, "/k", b"new version, upload failed")
    assert fs.retry_pending() == 1, "the upload is pending"
    fake.fail_when = None
    fs.unlink("/k")
    assert fs.retry_pending() == 0
    assert "k" not in fake.objects, "the unlinked file came back with the retry"
    assert fs.parts.journal.count() == 0 and _staged(fs) == []
    with pytest.raises(errors.NotFound):
        fs.getattr("/k")


def test_rename_over_a_failed_upload_wins(make_fs):
    """write-tmp-then-mv: /final's upload failed and waits for its retry; a new version is
    written to /tmp and renamed over /final.  The retry must not put the old one back."""
    fake = FakeS3()
    fake.seed("final", b"version 0")
    fs = make_fs(fake)
    fake.fail_when = Outage("final")
    _close_with_failed_upload(fs, "/final", b"version 1, upload failed")
    _write_file(fs, "/tmp", b"version 2")          # the server takes this one
    fake.fail_when = None
    fs.rename("/tmp", "/final")
    assert fs.retry_pending() == 0
    assert fake.objects["final"][0] == b"version 2", "the retry overwrote the renamed file"
    assert "tmp" not in fake.objects
    assert fs.parts.journal.count() == 0 and _staged(fs) == []


@pytest.mark.parametrize("replace", ["symlink", "mknod", "link"])
def test_a_new_object_at_an_unlinked_pending_key_wins(make_fs, replace):
    fake = FakeS3()
    fake.seed("k", b"old")
    fake.seed("other", b"the source of the link")
    fs = make_fs(fake)
    fake.fail_when = Outage("k")
    _close_with_failed_upload(fs, "/k", b"new, upload failed")
    # the pending file is what the mount shows: the name is taken
    with pytest.raises(errors.Exists):
        fs.symlink("/k", "target", 0, 0)
    fake.fail_when = None
    fs.unlink("/k")
    if replace == "symlink":
        fs.symlink("/k", "target", 0, 0)
        want = b"target"
    elif replace == "mknod":
        fs.mknod("/k", stat.S_IFIFO | 0o644, 0, 0, 0)
        want = b""
    else:
        fs.link("/k", "/other")
        want = b"the source of the link"
    assert fs.retry_pending() == 0
    assert fake.objects["k"][0] == want, f"the retry overwrote the {replace}"
    assert fs.parts.journal.count() == 0


def test_a_pending_upload_is_what_the_mount_shows(make_fs):
    """Until its retry lands, a file whose upload failed is seen with the content its
    close accepted: stat, read, listing, and a chmod or rename acts on that version."""
    fake = FakeS3()
    fake.seed("k", b"old")
    fs = make_fs(fake)
    fake.fail_when = Outage("k", "moved", "fresh")
    _close_with_failed_upload(fs, "/k", b"the new content")
    _close_with_failed_upload(fs, "/fresh", b"never uploaded")
    assert fs.getattr("/k").size == len(b"the new content")
    fh, _ = fs.open("/k", os.O_RDONLY)
    assert fs.read(fh, 100, 0) == b"the new content"
    fs.release(fh)
    assert "fresh" in [n for n, _ in fs.readdir("/")]
    fs.chmod("/k", 0o600)
    fs.rename("/k", "/moved")
    assert fs.getattr("/moved").size == len(b"the new content")
    fake.fail_when = None
    assert fs.retry_pending() == 0
    assert fake.objects["moved"][0] == b"the new content"
    assert int(fake.objects["moved"][1]["mode"]) == stat.S_IFREG | 0o600
    assert "k" not in fake.objects and fake.objects["fresh"][0] == b"never uploaded"
    assert fs.parts.journal.count() == 0 and _staged(fs) == []


def test_writeback_rename_over_a_failing_upload_drops_its_record(make_fs):
    """-o writeback: /final's upload fails (retried every few seconds); /tmp renamed over
    it.  The old version's record must go at once: a crash before the next retry would
    resume it over the renamed file.  And nothing of it may reach the bucket later."""
    fake = FakeS3()
    fake.seed("final", b"version 0")
    fs = make_fs(fake, writeback=True)
    fake.fail_when = Outage("final")
    _write_file(fs, "/final", b"version 1")       # close returns 0; the upload fails
    _wait_until(lambda: fs.stats()["writeback"]["failing"], "the failed upload")
    _write_file(fs, "/tmp", b"version 2")
    _wait_until(lambda: fake.objects.get("tmp", (None,))[0] == b"version 2", "the upload of /tmp")
    fs.rename("/tmp", "/final")
    records = [e.key for e in fs.parts.journal.entries()]
    assert "final" not in records, "the replaced version's record is still in the journal"
    fake.fail_when = None
    assert fs.parts.writeback.drain(20)
    assert fs.retry_pending() == 0
    assert fake.objects["final"][0] == b"version 2"
    assert "tmp" not in fake.objects


def _crashed_mount(tmp_path, fake, **options):
    """A writeback Filesystem on ``tmp_path/cache`` that will be abandoned like a killed
    daemon: ``crash(fs)`` stops its upload threads and frees the cache_dir lock, nothing
    drained or cleaned up."""
    from s3fuse.config import MountConfig
    from s3fuse.fs import Filesystem
    cfg = MountConfig(bucket=fake.bucket, cache_dir=str(tmp_path / "cache"), uid=0, gid=0, **options)
    return Filesystem.for_mount(cfg, fake), cfg


def _crash(fs):
    fs.parts.writeback.close()
    fs.parts.lockfile.close()


def test_after_a_crash_pending_uploads_are_what_the_mount_shows(tmp_path):
    """-o writeback: files closed (close returned 0), their uploads blocked, the daemon
    killed.  The next mount, with uploads still failing, shows the closed versions - size,
    bytes, listing, an edit in place's untouched bytes from the old version - and acts on
    them (rename, unlink), until the retry lands them.  Before, it showed the bucket's old
    versions (and no new file at all) until the retry happened to succeed."""
    MiB = 1 << 20
    fake = FakeS3()
    fake.seed("k", b"version 0")
    big = os.urandom(12 * MiB)
    fake.seed("big", big)
    fake.seed("gone", b"in the bucket")
    fs1, cfg = _crashed_mount(tmp_path, fake, writeback=True, part_size=5 * MiB)
    fake.fail_when = Outage("k", "fresh", "big", "gone", "renamed")
    _write_file(fs1, "/k", b"version 1, closed before the crash")
    _write_file(fs1, "/fresh", b"a new file")
    _write_file(fs1, "/gone", b"closed, then unlinked after the crash")
    fh, _ = fs1.open("/big", os.O_WRONLY)
    fs1.write(fh, b"PATCH", 7 * MiB)                # an edit in place of a large file
    fs1.flush(fh)
    fs1.release(fh)
    _wait_until(lambda: len(fs1.stats()["writeback"]["failing"]) == 4, "the failed uploads")
    _crash(fs1)
    patched = big[:7 * MiB] + b"PATCH" + big[7 * MiB + 5:]

    from s3fuse.fs import Filesystem
    fs = Filesystem.for_mount(cfg, fake)            # the next mount; uploads still fail
    try:
        assert fs.getattr("/k").size == len(b"version 1, closed before the crash")
        fh, _ = fs.open("/k", os.O_RDONLY)
        assert fs.read(fh, 100, 0) == b"version 1, closed before the crash"
        fs.release(fh)
        assert "fresh" in [n for n, _ in fs.readdir("/")]
        fh, _ = fs.open("/big", os.O_RDONLY)
        assert fs.read(fh, 20, 7 * MiB - 5) == patched[7 * MiB - 5:7 * MiB + 15]
        assert fs.read(fh, MiB, 0) == big[:MiB], "untouched bytes from the old version"
        fs.release(fh)
        fs.unlink("/gone")
        fs.rename("/fresh", "/renamed")
        assert fs.retry_pending() == 3, "still failing, still pending"
        fake.fail_when = None
        assert fs.retry_pending() == 0
        assert fake.objects["k"][0] == b"version 1, closed before the crash"
        assert fake.objects["renamed"][0] == b"a new file" and "fresh" not in fake.objects
        assert fs.parts.deletes.flush(timeout=10)      # writeback: the unlink's delete is queued (deletes.py)
        assert "gone" not in fake.objects, "the unlinked file came back"
        assert fake.objects["big"][0] == patched
        assert fs.parts.journal.count() == 0 and _staged(fs) == []
    finally:
        fs.close()
