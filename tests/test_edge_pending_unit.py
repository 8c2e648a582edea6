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

from s3fuse.write.openfile import OpenFile

from .fakes import FakeS3


def _waiting(cond) -> int:
    """Threads waiting on a threading.Condition (CPython keeps them in ``_waiters``)."""
    return len(cond._waiters)


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
    fh = fs.create(path, mode, 0, 0)
    fs.write(fh, data, 0)
    fs.flush(fh)
    fs.release(fh)


def _widen_the_window(monkeypatch, changed: threading.Event):
    """Let go of the file's lock right before the bookkeeping of a finished upload, until
    ``changed`` is set (at most 1 s): a change that can get in between does, every time.
    Before the fix, the end of the upload and its bookkeeping were two steps and the lock
    was free between them; now a change waits for both (``_uploading`` stays set)."""
    booked = OpenFile._uploaded

    def widened(self, entry, etag):
        state = self.lock._release_save()
        try:
            changed.wait(1.0)
        finally:
            self.lock._acquire_restore(state)
        return booked(self, entry, etag)
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
        _wait_until(lambda: _waiting(f._idle) >= 1, "the change to wait for the upload")
    finally:
        put.gate.set()
        t.join(20)
    assert not failures, failures
    fs.fsyncdir("/")                      # s3fuse sync: every closed file uploaded
    data, metadata, _ = fake.objects["f"]
    if change == "append":
        assert data == b"hello world", "the appended bytes reached the bucket"
    else:
        assert data == b"hello"
        assert int(metadata["mode"]) == stat.S_IFREG | 0o600, "the new mode reached the bucket"
    assert fs.getattr("/f").size == len(data)
    assert fs.parts.journal.count() == 0, "no record left behind"
