"""DirStream: entries handed out by offset as libfuse's READDIRs ask for them."""
import pytest

from s3fuse.fuse.dirstream import DirStream

NAMES = [f"n{i:04d}" for i in range(1000)]


class Lister:
    def __init__(self, names=NAMES, fail_at=None):
        self.names, self.fail_at, self.opens, self.pulled = names, fail_at, 0, 0

    def __call__(self):
        self.opens += 1
        return self._gen()

    def _gen(self):
        for i, n in enumerate(self.names):
            if i == self.fail_at:
                self.fail_at = None
                raise OSError("listing failed")
            self.pulled += 1
            yield n, {"st_mode": 0o100644}


def readdir(stream, offset, room):
    """One READDIR with room for ``room`` entries: [(name, next offset)]."""
    got = []

    def take(name, attrs, nxt):
        if len(got) == room:
            return False
        got.append((name, nxt))
        return True
    stream.serve(offset, take)
    return got


def read_all(stream, room=37):
    out, offset = [], 0
    while True:
        got = readdir(stream, offset, room)
        if not got:
            return out
        out += [n for n, _ in got]
        offset = got[-1][1]


def test_entries_come_in_order_with_offsets_and_one_listing():
    lister = Lister()
    s = DirStream(lister)
    assert read_all(s) == NAMES
    assert lister.opens == 1
    first = readdir(s, 0, 3)
    assert first == [("n0000", 1), ("n0001", 2), ("n0002", 3)]


def test_only_what_one_readdir_serves_is_kept():
    lister = Lister()
    s = DirStream(lister)
    readdir(s, 0, 10)
    readdir(s, 10, 10)
    assert len(s._window) <= 11 and lister.pulled <= 21, "never the whole directory"


def test_rewind_lists_again_and_seek_back_skips():
    names = list(NAMES)
    lister = Lister(names)
    s = DirStream(lister)
    readdir(s, 0, 100)
    names.append("n9999")                     # a new entry: rewinddir must show it
    assert read_all(s)[-1] == "n9999" and lister.opens == 2
    readdir(s, 0, 500)
    readdir(s, 500, 100)
    assert readdir(s, 250, 2) == [("n0250", 251), ("n0251", 252)]    # seekdir back
    assert readdir(s, 900, 1) == [("n0900", 901)]                   # seekdir forward


def test_an_error_mid_listing_does_not_end_the_directory_early():
    lister = Lister(fail_at=150)
    s = DirStream(lister)
    got = readdir(s, 0, 100)
    with pytest.raises(OSError):
        readdir(s, 100, 100)
    again = readdir(s, 100, 100)               # the kernel asks again from the same offset
    assert [n for n, _ in again] == NAMES[100:200]
    assert [n for n, _ in got] == NAMES[:100]


def test_close_closes_the_listing():
    lister = Lister()
    s = DirStream(lister)
    readdir(s, 0, 5)
    gen = s._entries
    s.close()
    assert gen.gi_frame is None and s._entries is None
