"""The filesystem core without a mount: the handle table's lock rule, the bounded maps of a
long-lived mount, and the errno table."""
from __future__ import annotations

import errno
import os
import sys
import threading
import time

import pytest

from s3fuse import errors
from s3fuse.fs import handles

from ..support.fakes import FakeS3


def test_readdir_while_deferred_deletes_come_and_go(make_fs):
    """``readdir`` reads the deferred-delete map while ``release`` of other handles removes
    entries from it: it must take the table's lock (unguarded, the iteration fails with
    "dictionary changed size during iteration", which reaches ``ls`` as EIO)."""
    fake = FakeS3()
    for i in range(1000):
        fake.seed(f"f{i}", b"x")
    fs = make_fs(fake, attr_ttl=3600, dir_ttl=3600)
    # every file open for reading and unlinked: hidden, deleted at its last close
    fhs = []
    for i in range(1000):
        fh, _ = fs.open(f"/f{i}", os.O_RDONLY)
        fs.unlink(f"/f{i}")
        fhs.append(fh)
    failures = []
    stop = threading.Event()
    listing = threading.Event()

    def lister():
        try:
            while not stop.is_set():
                names = [n for n, _ in fs.readdir("/")]
                assert names[:2] == [".", ".."]
                listing.set()
        except Exception as exc:       # the bug: RuntimeError from the unguarded iteration
            failures.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=lister) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        listing.wait(10)
        for fh in fhs:                 # each release ends one deferred delete
            fs.release(fh)
            time.sleep(0.0002)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        sys.setswitchinterval(old)
    assert failures == []
    assert [n for n, _ in fs.readdir("/")] == [".", ".."]
    assert fake.objects == {}, "every deferred delete happened at its last close"


def test_kernel_cache_map_is_bounded(make_fs, monkeypatch):
    """A long-lived mount that reads many files keeps at most KERNEL_CACHE_ENTRIES ETags of
    what the kernel caches; a forgotten one only costs the kernel a re-read."""
    monkeypatch.setattr(handles, "KERNEL_CACHE_ENTRIES", 50)
    fake = FakeS3()
    for i in range(300):
        fake.seed(f"f{i}", b"data %d" % i)
    fs = make_fs(fake)
    table = fs.parts.handles
    keeps = []
    for i in range(300):
        fh, keep = fs.open(f"/f{i}", os.O_RDONLY)
        keeps.append(keep)
        fs.release(fh)
    assert table.kernel_cache_entries() == 50
    assert not any(keeps), "first opens never keep a cache"
    fh, keep = fs.open("/f299", os.O_RDONLY)
    assert keep, "a recent file of an unchanged ETag keeps its pages"
    fs.release(fh)
    fh, keep = fs.open("/f0", os.O_RDONLY)
    assert not keep, "an entry pushed out of the map means a re-read, never stale pages"
    fs.release(fh)


def test_key_locks_do_not_outlive_their_commits(make_fs):
    """One key lock per key with a commit running or waiting: after many files were written
    (each committed under its key's lock) none is left in the map."""
    fake = FakeS3()
    fs = make_fs(fake)
    commits = fs.parts.commits
    for i in range(200):
        fh = fs.create(f"/w{i}", 0o644, 0, 0)
        fs.write(fh, b"payload %d" % i, 0)
        fs.flush(fh)
        fs.release(fh)
    assert len(fake.objects) == 200
    assert commits.key_locks_held() == 0

    # while a commit waits for a key another commit holds, both share one lock entry
    held = threading.Event()
    release = threading.Event()

    def hold():
        with commits.key_lock("k"):
            held.set()
            release.wait(5)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    waiter = threading.Thread(target=lambda: commits.key_lock("k").__enter__())
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and commits.key_locks_held() == 1
    release.set()
    t.join(5)
    waiter.join(5)
    assert not waiter.is_alive()


@pytest.mark.parametrize("kind, code", [
    (errors.NotFound, errno.ENOENT), (errors.NoSuchBucket, errno.ENOENT), (errors.Exists, errno.EEXIST),
    (errors.NotEmpty, errno.ENOTEMPTY), (errors.ReadOnly, errno.EROFS), (errors.Stale, errno.ESTALE),
    (errors.ObjectChanged, errno.ESTALE), (errors.NotSupported, errno.ENOTSUP),
    (errors.NoSuchAttribute, errno.ENODATA), (errors.TooLarge, errno.EFBIG), (errors.Unreachable, errno.EIO),
    (errors.ServerBusy, errno.EIO), (errors.AccessDenied, errno.EACCES), (errors.NoCredentials, errno.EACCES),
    (errors.BadHandle, errno.EBADF), (errors.NameTooLong, errno.ENAMETOOLONG)])
def test_errno_table(kind, code):
    assert errors.errno_of(kind("x")) == code == kind("x").errno


def test_errno_of_local_failures_and_bugs():
    assert errors.errno_of(errors.WriteFailed("x", errno.ENOSPC)) == errno.ENOSPC
    assert errors.errno_of(errors.WriteFailed("x")) == errno.EIO
    assert errors.errno_of(OSError(errno.EDQUOT, "quota")) == errno.EDQUOT
    assert errors.errno_of(KeyError("a bug")) == errno.EIO, "never EINVAL by accident"


def test_small_files_opened_in_listing_order_are_fetched_ahead(make_fs):
    """cp -r / tar c pattern: after two opens in listing order the next small files are
    fetched in parallel, within the byte budget; a jump elsewhere fetches nothing more."""
    fake = FakeS3()
    for i in range(40):
        fake.seed(f"d/f{i:02d}", b"%d" % i * 100)
    fake.seed("d/zbig", b"x" * (5 << 20))          # beyond SMALL: never prefetched
    fs = make_fs(fake)
    names = [n for n, _ in fs.readdir("/d")][2:]
    assert names[:2] == ["f00", "f01"]

    def read(name):
        fh, _ = fs.open(f"/d/{name}", os.O_RDONLY)
        data = fs.read(fh, 1 << 20, 0)
        fs.release(fh)
        return bytes(data)

    read("f00")
    assert fake.count("get_range") == 1, "one open: no pattern yet"
    read("f01")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len({d[0] for d in fake.details("get_range")}) < 40:
        time.sleep(0.01)
    fetched = {d[0] for d in fake.details("get_range")}
    assert {f"d/f{i:02d}" for i in range(2, 40)} <= fetched, "the rest of the directory is fetched ahead"
    assert "d/zbig" not in fetched
    gets = fake.count("get_range")
    for i in range(2, 40):
        assert read(f"f{i:02d}") == b"%d" % i * 100
    assert fake.count("get_range") == gets, "every later open is served from the block cache"


def test_small_file_readahead_stops_when_the_pattern_breaks(make_fs):
    fake = FakeS3()
    for i in range(40):
        fake.seed(f"d/f{i:02d}", b"y" * 10)
    fs = make_fs(fake)
    list(fs.readdir("/d"))
    for name in ("f10", "f30", "f05", "f20"):          # random order: nothing ahead
        fh, _ = fs.open(f"/d/{name}", os.O_RDONLY)
        fs.read(fh, 100, 0)
        fs.release(fh)
    time.sleep(0.2)
    assert fake.count("get_range") == 4 and fs.parts.readahead.started == 0


def test_a_stale_listing_is_revalidated_by_one_list_not_per_name(make_fs):
    """Names missing from a listing older than negative_ttl: one LIST re-checks them all
    (an untar looks up one new name per file), and finds what another client added."""
    fake = FakeS3()
    fake.seed("d/a", b"a")
    fs = make_fs(fake, negative_ttl=0.2, dir_ttl=60)
    list(fs.readdir("/d"))
    fake.seed("d/new", b"by another client")
    time.sleep(0.3)
    before = (fake.count("list_page"), fake.count("head"))
    for i in range(20):
        with pytest.raises(errors.NotFound):
            fs.getattr(f"/d/missing{i}")
    assert fake.count("list_page") - before[0] == 1 and fake.count("head") == before[1], \
        "one LIST for twenty missing names, no HEAD"
    assert fs.getattr("/d/new").size == len(b"by another client")


def test_chmod_through_a_stale_cached_version_changes_the_current_one(make_fs):
    """A chmod reads the attributes from the cache (attr_ttl) and copies the object onto
    itself pinned to that version.  When the cached version is stale (the object replaced
    by another client, or - on this mount - a rename over it whose cache update had not
    landed yet), the pinned copy fails: the chmod must change the current version, and a
    name that is gone must answer ENOENT, never ESTALE (seen in CI as 'chmod f1: ESTALE')."""
    fake = FakeS3()
    fake.seed("a", b"old a")
    fake.seed("b", b"old b")
    fs = make_fs(fake, attr_ttl=3600, dir_ttl=3600)
    assert fs.getattr("/a").size == 5 and fs.getattr("/b").size == 5       # both cached
    fake.seed("a", b"the new a")          # replaced behind the cache's back
    fs.chmod("/a", 0o600)
    data, meta, _ = fake.objects["a"]
    assert data == b"the new a" and int(meta["mode"]) & 0o7777 == 0o600
    del fake.objects["b"]                 # deleted behind the cache's back
    with pytest.raises(errors.NotFound):
        fs.chmod("/b", 0o600)
