"""Names that are not UTF-8 (#22): refused at creation, and a journal record holding one
(written by an older s3fuse) never stops a mount's recovery."""
from __future__ import annotations

import os

import pytest

from s3fuse import errors
from s3fuse.fs.cachedir import CacheDir
from s3fuse.paths import is_utf8
from s3fuse.write import recovery
from s3fuse.write.journal import CLOSED, WRITING, Entry, Journal

BAD = os.fsdecode(b"caf\xe9.txt")          # latin-1 bytes, as the kernel hands them over


def test_is_utf8():
    assert is_utf8("café.txt") and not is_utf8(BAD)


def test_the_not_utf8_kind_answers_eilseq():
    import errno
    assert errors.ERRNO[errors.NotUtf8Name][0] == errno.EILSEQ


@pytest.mark.parametrize("state", [WRITING, CLOSED])
def test_recovery_keeps_a_record_whose_key_is_not_utf8(tmp_path, state):
    """The old code raised UnicodeEncodeError in sort_out (every mount, s3fuse resume)."""
    layout = CacheDir(str(tmp_path))
    layout.prepare()
    journal = Journal(layout.journal)
    staging = os.path.join(layout.staging, "s1")
    with open(staging, "wb") as f:
        f.write(b"bytes of a bad name")
    journal.save(Entry(id="r1", key="dir/" + BAD, staging=staging, state=state, size=19))
    # a second, superseding close of the same key sends the first to recovery/ too
    if state == CLOSED:
        other = os.path.join(layout.staging, "s2")
        with open(other, "wb") as f:
            f.write(b"newer")
        journal.save(Entry(id="r2", key="dir/" + BAD, staging=other, state=CLOSED, size=5, created=1e12))
    closed, writing = recovery.sort_out(journal, layout.staging, layout.recovery)
    kept = os.listdir(layout.recovery)
    assert len(kept) == 1 and kept[0].endswith("dir%2Fcaf%E9.txt")
    with open(os.path.join(layout.recovery, kept[0]), "rb") as f:
        assert f.read() == b"bytes of a bad name"
    assert [e.id for e in writing] == ["r1"]
