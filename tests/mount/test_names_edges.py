"""Names that are not UTF-8 through a mount (#22): every way of making one answers
EILSEQ, nothing reaches the bucket, and the mount (and the next one) keeps working."""
from __future__ import annotations

import errno
import os

import pytest

BAD = b"caf\xe9.txt"        # latin-1: not UTF-8


def _errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return 0


def test_names_that_are_not_utf8_are_refused(mounter, s3, bucket):
    m = mounter(bucket)
    root = os.fsencode(m.path)
    with open(m.p("good.txt"), "wb") as f:
        f.write(b"good")
    bad = root + b"/" + BAD
    assert _errno_of(os.open, bad, os.O_CREAT | os.O_WRONLY, 0o644) == errno.EILSEQ
    assert _errno_of(os.mkdir, bad) == errno.EILSEQ
    assert _errno_of(os.symlink, b"good.txt", bad) == errno.EILSEQ
    assert _errno_of(os.rename, root + b"/good.txt", bad) == errno.EILSEQ
    assert _errno_of(os.link, root + b"/good.txt", bad) in (errno.EILSEQ, errno.EPERM, errno.ENOTSUP)
    assert _errno_of(os.stat, bad) == errno.ENOENT
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])) == ["good.txt"]
    with open(m.p("good.txt"), "rb") as f:
        assert f.read() == b"good"
    m.unmount()
    m.mount()                      # the next mount starts: nothing of the bad name was journaled
    assert os.listdir(m.path) == ["good.txt"]
    assert "failed unexpectedly" not in m.log()


@pytest.mark.parametrize("name", ["café.txt", "日本語/ファイル"])
def test_utf8_names_still_work(mounter, s3, bucket, name):
    m = mounter(bucket)
    os.makedirs(os.path.dirname(m.p(name)) or m.path, exist_ok=True)
    with open(m.p(name), "wb") as f:
        f.write(b"x")
    assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == b"x"
