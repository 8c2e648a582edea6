"""Permanent refusals (#22 item 6): an upload S3 refuses for good (400 MetadataTooLarge,
InvalidArgument, EntityTooLarge...) is abandoned at once - its bytes kept in recovery/,
its record dropped, the close failing with the kind's errno - and never retried every
interval; transient failures still are.  And the retry loop survives a failed pass."""
from __future__ import annotations

import logging
import os
import time

import pytest

from s3fuse import errors
from s3fuse.s3.objects import error_kind

from ..support.fakes import FakeS3


@pytest.mark.parametrize("code, kind", [("MetadataTooLarge", errors.MetadataTooLarge),
                                        ("InvalidArgument", errors.Refused),
                                        ("KeyTooLongError", errors.Refused),
                                        ("EntityTooLarge", errors.TooLarge)])
def test_permanent_answers_are_kinds_that_never_complete(code, kind):
    made = error_kind(code, 400)
    assert made is kind and issubclass(made, errors.NeverCompletes)
    assert not issubclass(error_kind("SlowDown", 503), errors.NeverCompletes)
    assert not issubclass(error_kind("AccessDenied", 403), errors.NeverCompletes)   # credentials may come back


def _refuse(kind):
    def fail_when(method, detail):
        if method in ("put", "create_multipart", "upload_part", "complete_multipart"):
            return kind(f"{method} {detail}: 400 refused (injected)")
        return None
    return fail_when


@pytest.mark.parametrize("kind", [errors.MetadataTooLarge, errors.Refused])
def test_a_refused_upload_is_kept_in_recovery_and_not_retried(make_fs, kind):
    fake = FakeS3()
    fs = make_fs(fake)
    fake.fail_when = _refuse(kind)
    fh = fs.create("/f", 0o644, 0, 0)
    fs.write(fh, b"the bytes the user wrote", 0)
    with pytest.raises(kind):
        fs.flush(fh)
    fs.release(fh)
    calls = len(fake.calls)
    assert fs.retry_pending() == 0, "nothing left to retry"
    assert len(fake.calls) == calls, "no request sent again"
    assert fs.parts.journal.count() == 0
    kept = os.listdir(fs.parts.recovery_dir)
    assert len(kept) == 1
    with open(os.path.join(fs.parts.recovery_dir, kept[0]), "rb") as f:
        assert f.read() == b"the bytes the user wrote"
    assert "f" not in fake.objects


def test_a_transient_failure_is_still_retried(make_fs):
    fake = FakeS3()
    fs = make_fs(fake)
    fake.fail_when = _refuse(errors.Unreachable)
    fh = fs.create("/f", 0o644, 0, 0)
    fs.write(fh, b"later", 0)
    with pytest.raises(errors.Unreachable):
        fs.flush(fh)
    fs.release(fh)
    assert fs.retry_pending() == 1
    fake.fail_when = None
    assert fs.retry_pending() == 0 and fake.objects["f"][0] == b"later"


def test_the_retry_loop_survives_a_failed_pass(make_fs, monkeypatch, caplog):
    fs = make_fs(FakeS3())
    commits = fs.parts.commits
    passes = []

    def boom():
        passes.append(1)
        raise RuntimeError("a bug in one pass")
    monkeypatch.setattr(commits, "retry_pending", boom)
    with caplog.at_level(logging.ERROR):
        commits.start(0.01, lambda: (_ for _ in ()).throw(OSError("leftovers failed")))
        deadline = time.monotonic() + 5
        while len(passes) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        commits.stop()
    assert len(passes) >= 3, "the loop died after its first failed pass"
    assert "retries go on" in caplog.text and "a bug in one pass" in caplog.text


def test_sync_of_a_writeback_mount_names_a_file_refused_for_good(make_fs):
    """fsyncdir (``s3fuse sync``) returns - with an error naming the file - instead of
    waiting for an upload that can never land."""
    fake = FakeS3()
    fs = make_fs(fake, writeback=True)
    fake.fail_when = _refuse(errors.MetadataTooLarge)
    fh = fs.create("/big-meta", 0o644, 0, 0)
    fs.write(fh, b"x", 0)
    fs.flush(fh)                        # writeback: queued
    fs.release(fh)
    with pytest.raises(errors.WriteFailed) as exc:
        fs.fsyncdir("/")
    assert "/big-meta" in str(exc.value)
    assert len(os.listdir(fs.parts.recovery_dir)) == 1
    fs.fsyncdir("/")                    # nothing new failed since: a plain success
