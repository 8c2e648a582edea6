"""Writes to the cache disk are whole or fail (issue #22, items 3 and 4), below the FUSE
adapter: a fault-injecting disk (os.pwrite/os.write/open patched to write short or raise
ENOSPC), the journal keeping its old record, the block cache leaving ``min_free`` free and
giving way to staging, and a streamed writer releasing uploaded parts on a full disk."""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from fractions import Fraction

import pytest

from s3fuse import errors
from s3fuse.data import valuefiles as valuefiles_module
from s3fuse.data.blockcache import BlockCache
from s3fuse.data.diskspace import DiskSpace, pwrite_all, write_file
from s3fuse.data.reader import BlockFetcher, PinnedObject
from s3fuse.meta.attrs import MD5_HEADER, Attr
from s3fuse.meta.known import Known
from s3fuse.write import recovery
from s3fuse.write.journal import CLOSED, WRITING, Entry, Journal
from s3fuse.write.openfile import OpenFile
from s3fuse.write.uploader import Uploader

from ..support.fakes import FakeS3

MiB = 1 << 20
REAL_PWRITE = os.pwrite
REAL_WRITE = os.write


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class ShortDisk:
    """os.pwrite/os.write that write at most ``most`` bytes a call; after ``room`` bytes
    in all, ENOSPC (after a last short write, as a filling disk does).  ``fd_filter``
    limits the faults to some descriptors."""

    def __init__(self, most=1000, room=None, fd_filter=None):
        self.most, self.room, self.fd_filter = most, room, fd_filter
        self.written = 0
        self.calls = 0

    def _limit(self, fd, n):
        if self.fd_filter is not None and not self.fd_filter(fd):
            return n
        self.calls += 1
        n = min(n, self.most)
        if self.room is not None:
            left = self.room - self.written
            if left <= 0:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            n = min(n, left)
        self.written += n
        return n

    def pwrite(self, fd, data, offset):
        n = self._limit(fd, len(data))
        return REAL_PWRITE(fd, memoryview(data)[:n], offset)

    def write(self, fd, data):
        n = self._limit(fd, len(data))
        return REAL_WRITE(fd, memoryview(data)[:n])

    def install(self, monkeypatch):
        monkeypatch.setattr(os, "pwrite", self.pwrite)
        monkeypatch.setattr(os, "write", self.write)
        return self


class FakeSpace(DiskSpace):
    """A DiskSpace whose free space is what the test says (``free_fn``)."""

    def __init__(self, path, min_free, free_fn):
        super().__init__(str(path), min_free)
        self.free_fn = free_fn

    def free(self) -> int:
        return self.free_fn()


def usage(directory) -> int:
    total = 0
    for root, _, names in os.walk(directory):
        for n in names:
            try:
                total += os.stat(os.path.join(root, n)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class World:
    def __init__(self, tmp_path, space=None, part_size=5 * MiB, threads=4):
        self.tmp = tmp_path
        self.client = FakeS3()
        self.space = space
        self.journal = Journal(str(tmp_path / "journal"), space=space)
        self.uploader = Uploader(self.client, self.journal, threads=threads, part_size=part_size)
        self.blocks = BlockCache(str(tmp_path / "blocks"), 1 << 30, "fake")
        self.fetcher = BlockFetcher(self.client, self.blocks, MiB)
        self.staging = tmp_path / "staging"
        self.staging.mkdir(exist_ok=True)

    def new(self, key="f") -> OpenFile:
        attr = Attr(mode=stat.S_IFREG | 0o644, uid=0, gid=0, size=0, mtime_ns=time.time_ns())
        return OpenFile("/" + key, key, attr, str(self.staging), self.uploader, self.journal, fetcher=self.fetcher,
                        new=True, space=self.space)

    def open(self, key) -> OpenFile:
        data, meta, etag = self.client.objects[key]
        attr = Attr(mode=stat.S_IFREG | 0o644, uid=0, gid=0, size=len(data), mtime_ns=time.time_ns(), etag=etag)
        return OpenFile("/" + key, key, attr, str(self.staging), self.uploader, self.journal, fetcher=self.fetcher,
                        base=PinnedObject(key, etag, len(data)), origin=lambda: Known(dict(meta), {}, 0.0),
                        space=self.space)

    def close(self):
        self.uploader.close()
        self.fetcher.close()
        self.blocks.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def write_seq(f, data, chunk=128 << 10, start=0):
    for off in range(0, len(data), chunk):
        assert f.write(start + off, data[off:off + chunk]) == len(data[off:off + chunk])


# ---------------------------------------------------------------------------------------
# the one helper
# ---------------------------------------------------------------------------------------
class TestWriteAll:
    def test_short_writes_are_completed(self, tmp_path, monkeypatch):
        data = os.urandom(10_000)
        fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
        disk = ShortDisk(most=999).install(monkeypatch)
        assert pwrite_all(fd, data, 5) == len(data)
        monkeypatch.undo()
        os.close(fd)
        assert (tmp_path / "x").read_bytes() == bytes(5) + data
        assert disk.calls == 11

    def test_a_write_that_writes_nothing_raises(self, tmp_path, monkeypatch):
        fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
        monkeypatch.setattr(os, "pwrite", lambda fd, data, off: 0)
        with pytest.raises(errors.ShortWrite) as info:
            pwrite_all(fd, b"abc", 0)
        assert info.value.errno == errno.EIO
        os.close(fd)

    def test_a_full_disk_asks_for_room_and_writes_the_rest(self, tmp_path, monkeypatch):
        data = os.urandom(5000)
        fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
        disk = ShortDisk(most=10_000, room=3000).install(monkeypatch)
        asked = []

        def make_room(n):
            asked.append(n)
            disk.room = None          # room was made
            return True
        assert pwrite_all(fd, data, 0, make_room) == 5000
        assert asked == [2000], "asked for what was left to write"
        monkeypatch.undo()
        assert os.pread(fd, 6000, 0) == data
        # no room to be made: the ENOSPC is raised
        disk = ShortDisk(room=0).install(monkeypatch)
        with pytest.raises(OSError) as info:
            pwrite_all(fd, data, 0, lambda n: False)
        assert errors.is_no_space(info.value)
        monkeypatch.undo()
        os.close(fd)

    def test_write_file_leaves_no_cut_file(self, tmp_path, monkeypatch):
        ShortDisk(most=100, room=250).install(monkeypatch)
        with pytest.raises(OSError):
            write_file(str(tmp_path / "rec"), b"r" * 1000, fsync=False)
        monkeypatch.undo()
        assert not (tmp_path / "rec").exists()


# ---------------------------------------------------------------------------------------
# staging
# ---------------------------------------------------------------------------------------
class TestStaging:
    def test_a_short_staging_write_is_written_whole(self, world, monkeypatch):
        """A short os.pwrite used to be taken as whole: size and `present` said written, the
        staging file had zeros, and those zeros were uploaded as the file."""
        data = os.urandom(3 * MiB + 17)
        f = world.new()
        ShortDisk(most=4096, fd_filter=lambda fd: fd == f._fd).install(monkeypatch)
        for off in range(0, len(data), MiB):
            assert f.write(off, data[off:off + MiB]) == len(data[off:off + MiB])
        monkeypatch.undo()
        f.commit()
        body, meta, _ = world.client.objects["f"]
        assert body == data and meta[MD5_HEADER] == md5(data)
        f.discard()

    def test_a_disk_that_fills_mid_write_fails_the_file(self, world, monkeypatch):
        old = os.urandom(MiB)
        world.client.seed("f", old)
        f = world.open("f")
        f.truncate(0)
        disk = ShortDisk(most=1 << 30, room=300_000, fd_filter=lambda fd: fd == f._fd).install(monkeypatch)
        with pytest.raises(OSError) as info:
            write_seq(f, os.urandom(2 * MiB))
        assert info.value.errno == errno.ENOSPC and disk.written == 300_000
        monkeypatch.undo()
        with pytest.raises(errors.FsError) as info:
            f.commit()
        assert info.value.errno == errno.ENOSPC
        assert world.client.objects["f"][0] == old, "the object keeps its content"
        assert f.discard() is None

    def test_a_short_write_while_staging_old_bytes_for_an_upload(self, world, monkeypatch):
        """sparse.fill (the old version's bytes completing an upload) took short writes as
        whole: zeros in the new version."""
        old = os.urandom(3 * MiB)
        world.client.seed("f", old)
        f = world.open("f")
        f.write(MiB, b"patch")
        ShortDisk(most=50_000, fd_filter=lambda fd: fd == f._fd).install(monkeypatch)
        f.commit()
        monkeypatch.undo()
        assert world.client.objects["f"][0] == old[:MiB] + b"patch" + old[MiB + 5:]
        f.discard()

    def test_a_full_disk_evicts_cached_blocks_and_retries(self, tmp_path, monkeypatch):
        space = FakeSpace(tmp_path, 0, lambda: 1 << 30)
        w = World(tmp_path, space=space)
        try:
            evicted = []
            f = w.new()
            disk = ShortDisk(most=1 << 30, room=100_000, fd_filter=lambda fd: fd == f._fd).install(monkeypatch)

            def evict(n):
                evicted.append(n)
                disk.room = None
                return n
            space.add_reclaimer(evict)
            data = os.urandom(300_000)
            assert f.write(0, data) == len(data)
            monkeypatch.undo()
            assert evicted and f.failed is None
            f.commit()
            assert w.client.objects["f"][0] == data
            f.discard()
        finally:
            w.close()


# ---------------------------------------------------------------------------------------
# the journal
# ---------------------------------------------------------------------------------------
def record(j: Journal, **kw) -> Entry:
    e = Entry(id=j.new_id(), key="k", staging="/nowhere", state=CLOSED, size=123, parts={"1": ["a", "b"]}, **kw)
    j.save(e)
    return e


class TestJournal:
    def test_a_short_record_write_leaves_the_old_record(self, tmp_path, monkeypatch):
        """A record written short used to be fsynced and renamed over the good one."""
        j = Journal(str(tmp_path / "journal"))
        e = record(j)
        before = j.load(e.id)
        e.parts = {str(n): ["m" * 32, "e" * 34] for n in range(1, 60)}
        ShortDisk(most=512, room=600).install(monkeypatch)
        with pytest.raises(OSError):
            j.save(e)
        monkeypatch.undo()
        assert j.load(e.id) == before, "the record before the failed write"
        assert sorted(os.listdir(j.dir)) == [e.id + ".json"], "no cut tmp file left"

    def test_a_failed_in_place_record_leaves_nothing(self, tmp_path, monkeypatch):
        j = Journal(str(tmp_path / "journal"))
        e = Entry(id=j.new_id(), key="small", staging="/nowhere", state=CLOSED, size=5)
        ShortDisk(most=10, room=50).install(monkeypatch)
        with pytest.raises(OSError):
            j.save(e, durable=False)
        monkeypatch.undo()
        assert os.listdir(j.dir) == []

    def test_record_writes_get_room_from_the_block_cache(self, tmp_path, monkeypatch):
        space = FakeSpace(tmp_path, 0, lambda: 1 << 30)
        j = Journal(str(tmp_path / "journal"), space=space)
        disk = ShortDisk(most=1 << 20, room=10).install(monkeypatch)
        space.add_reclaimer(lambda n: setattr(disk, "room", None) or n)
        e = record(j)
        monkeypatch.undo()
        assert j.load(e.id).parts == {"1": ["a", "b"]}


# ---------------------------------------------------------------------------------------
# the block cache
# ---------------------------------------------------------------------------------------
def fill_cache(cache: BlockCache, blocks: int, size=MiB):
    data = {}
    for i in range(blocks):
        data[i] = bytearray(os.urandom(size))
        cache.put("obj", "etag", i, data[i])
        if i % 4 == 3:
            assert cache.flush(10)
    assert cache.flush(10)
    return data


class TestBlockCache:
    def test_a_value_file_cut_by_a_full_disk_is_removed(self, tmp_path, monkeypatch):
        real_open = open

        class FullFile:
            def __init__(self, f):
                self.f = f

            def write(self, chunk):
                self.f.write(chunk[:len(chunk) // 2])
                self.f.flush()
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        monkeypatch.setattr(valuefiles_module, "open", lambda *a, **k: FullFile(real_open(*a, **k)), raising=False)
        cache = BlockCache(str(tmp_path / "blocks"), 1 << 30, "b")
        try:
            cache.put("obj", "etag", 0, bytearray(os.urandom(MiB)))
            assert cache.flush(10)
            assert cache.not_cached == 1
            named, found = valuefiles_module.value_files(cache._cache)
            assert named == set() and found == set(), "no cut value file left behind"
        finally:
            cache.close()

    def test_the_cache_leaves_min_free_free(self, tmp_path):
        """cache_size (10G by default) ignored the disk: blocks filled it to the last byte."""
        capacity, min_free = 24 * MiB, 8 * MiB
        blocks_dir = tmp_path / "blocks"
        blocks_dir.mkdir()
        space = FakeSpace(tmp_path, min_free, lambda: capacity - usage(blocks_dir))
        cache = BlockCache(str(blocks_dir), 1 << 30, "b", max_pending=4, space=space)
        try:
            data = fill_cache(cache, 40)
            assert usage(blocks_dir) <= capacity - min_free + MiB
            assert cache.evicted >= 20
            assert cache._cache.get(cache._k("obj", "etag", 39)) == data[39], "the newest blocks stay"
            assert cache._cache.get(cache._k("obj", "etag", 0)) is None, "the oldest went"
        finally:
            cache.close()

    def test_no_room_caches_nothing_and_reads_go_on(self, tmp_path):
        space = FakeSpace(tmp_path, 8 * MiB, lambda: 4 * MiB)      # the disk is full of other things
        cache = BlockCache(str(tmp_path / "blocks"), 1 << 30, "b", memory=MiB, max_pending=2, space=space)
        try:
            fill_cache(cache, 6)
            assert cache.not_cached == 6 and cache.volume() < MiB
            named, found = valuefiles_module.value_files(cache._cache)
            assert found == set()
        finally:
            cache.close()

    def test_staging_gets_room_from_the_cache(self, tmp_path):
        blocks_dir = tmp_path / "blocks"
        blocks_dir.mkdir()
        space = FakeSpace(tmp_path, 0, lambda: 1 << 30)
        cache = BlockCache(str(blocks_dir), 1 << 30, "b", space=space)
        space.add_reclaimer(cache.evict)
        try:
            fill_cache(cache, 10)
            assert space.make_room(3 * MiB) >= 3 * MiB
            assert 6 * MiB <= usage(blocks_dir) <= 7 * MiB + 256 << 10
        finally:
            cache.close()


# ---------------------------------------------------------------------------------------
# a streamed writer on a full disk
# ---------------------------------------------------------------------------------------
@pytest.fixture
def full_world(tmp_path):
    """A world whose disk is always below min_free: a streamed writer releases what it
    uploaded."""
    space = FakeSpace(tmp_path, 64 * MiB, lambda: MiB)
    w = World(tmp_path, space=space)
    yield w
    w.close()


def wait_released(f, at_least, timeout=10):
    deadline = time.monotonic() + timeout
    while sum(e - s for s, e in f.release.ranges) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)


class TestRelease:
    def test_uploaded_parts_are_released_and_the_object_is_whole(self, full_world):
        w = full_world
        data = os.urandom(22 * MiB + 5)
        f = w.new()
        write_seq(f, data)
        released = sum(e - s for s, e in f.release.ranges)
        assert released >= 15 * MiB, f"only {released} bytes released"
        assert os.stat(f.staging).st_blocks * 512 <= len(data) - released + MiB
        assert f._stream.released, "the record lists the released ranges"
        f.commit()
        body, meta, _ = w.client.objects["f"]
        assert body == data and meta[MD5_HEADER] == md5(data)
        # the file is in the bucket: its bytes read from there, staging is empty
        assert f.read(0, 4096) == data[:4096] and f.read(20 * MiB, MiB) == data[20 * MiB:21 * MiB]
        assert os.stat(f.staging).st_blocks == 0
        f.discard()

    def test_a_read_of_a_released_range_fails_never_zeros(self, full_world):
        w = full_world
        data = os.urandom(12 * MiB)
        f = w.new()
        write_seq(f, data)
        assert f.release.ranges
        with pytest.raises(errors.ReleasedRead) as info:
            f.read(0, 4096)
        assert info.value.errno == errno.EIO
        assert f.read(11 * MiB, 4096) == data[11 * MiB:11 * MiB + 4096], "bytes still staged read fine"
        f.commit()
        assert f.read(0, 4096) == data[:4096]
        f.discard()

    def test_nothing_is_released_while_a_handle_can_read(self, full_world):
        w = full_world
        data = os.urandom(12 * MiB)
        f = w.new()
        f.release.readers(+1)
        write_seq(f, data)
        assert not f.release.ranges
        assert f.read(0, 12 * MiB) == data
        f.commit()
        assert w.client.objects["f"][0] == data
        f.discard()

    def test_changes_that_need_released_bytes_fail_the_file(self, full_world):
        w = full_world
        f = w.new()
        write_seq(f, os.urandom(12 * MiB))
        assert f.release.ranges
        start, end = list(f.release.ranges)[0]
        with pytest.raises(errors.Busy):
            f.detach_from_base(stop_stream=True)        # a rename while open: refused, nothing changed
        assert f.failed is None
        with pytest.raises(errors.StagingReleased) as info:
            f.write(start + 10, b"patch")
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(errors.FsError) as info:
            f.commit()
        assert info.value.errno == errno.ENOSPC
        assert "f" not in w.client.objects
        assert f.discard() is None
        assert w.client.uploads == {} and w.journal.entries() == []

    def test_a_truncate_above_a_released_range_fails_below_is_fine(self, full_world):
        w = full_world
        f = w.new()
        write_seq(f, os.urandom(12 * MiB))
        with pytest.raises(errors.StagingReleased):
            f.truncate(f.size)
        f.discard()
        g = w.new("g")
        write_seq(g, os.urandom(12 * MiB))
        assert g.release.ranges
        g.truncate(0)
        g.write(0, b"new content")
        g.commit()
        assert w.client.objects["g"][0] == b"new content"
        g.discard()

    def test_resume_of_a_released_upload(self, full_world, tmp_path):
        w = full_world
        data = os.urandom(17 * MiB)
        f = w.new()
        write_seq(f, data)
        assert f.release.ranges
        assert f.seal()                 # writeback close: CLOSED record, then the daemon dies
        [rec] = w.journal.entries()
        assert rec.state == CLOSED and rec.released and not rec.verify_md5
        j2 = Journal(w.journal.dir)     # the next mount
        closed, _ = recovery.sort_out(j2, str(w.staging), str(tmp_path / "recovery"))
        assert [e.id for e in closed] == [rec.id], "kept for resume, not sent to recovery/"
        up2 = Uploader(w.client, j2, part_size=5 * MiB)
        try:
            recovery.resume(up2, j2, closed[0])
        finally:
            up2.close()
        assert w.client.objects["f"][0] == data
        assert j2.entries() == []

    def test_a_released_upload_gone_from_the_server_is_abandoned(self, full_world, tmp_path):
        w = full_world
        f = w.new()
        write_seq(f, os.urandom(17 * MiB))
        assert f.seal()
        [rec] = w.journal.entries()
        w.client.uploads.clear()        # aborted by a lifecycle rule meanwhile
        up2 = Uploader(w.client, w.journal, part_size=5 * MiB)
        try:
            with pytest.raises(errors.UploadLost):
                recovery.resume(up2, w.journal, rec)
        finally:
            up2.close()
        assert "f" not in w.client.objects, "never an object with zeros for the released parts"
        assert w.journal.entries() == []
        assert os.listdir(os.path.join(os.path.dirname(w.journal.dir), "recovery"))

    def test_a_writing_record_recovered_says_what_it_lacks(self, full_world, tmp_path, caplog):
        w = full_world
        f = w.new()
        write_seq(f, os.urandom(12 * MiB))
        f.uploader.save_record(f._stream)
        [rec] = w.journal.entries()
        assert rec.state == WRITING and rec.released
        with caplog.at_level("WARNING"):
            recovery.sort_out(Journal(w.journal.dir), str(w.staging), str(tmp_path / "recovery"))
        assert "released from the full cache disk" in caplog.text


    def test_a_change_after_a_sealed_close_completes_its_upload_first(self, full_world):
        """Writeback: the released parts are only in the sealed record's upload; a later
        change of the file must not make a new record from a staging file that lacks them."""
        w = full_world
        data = os.urandom(12 * MiB)
        f = w.new()
        write_seq(f, data)
        assert f.release.ranges and f.seal()
        assert "f" not in w.client.objects
        f.write(len(data), b"more")         # the sealed upload completes first
        assert w.client.objects["f"][0] == data
        f.commit()
        assert w.client.objects["f"][0] == data + b"more"
        f.discard()


def test_a_rename_after_a_failed_close_of_a_released_file(make_fs, tmp_path):
    """close() failed (the server went away) with parts released: the rename uploads the
    file first, then moves it - never a record of the staging file's zeros under the new name."""
    c = FakeS3()
    fs = make_fs(c, part_size=5 * MiB)
    fs.parts.space = FakeSpace(tmp_path, 64 * MiB, lambda: MiB)
    fh = fs.create("/big", 0o644, 0, 0, os.O_WRONLY)
    data = os.urandom(12 * MiB)
    for off in range(0, len(data), 128 << 10):
        fs.write(fh, data[off:off + (128 << 10)], off)
    c.fail_when = lambda method, detail: errors.Unreachable("down") if method == "complete_multipart" else None
    with pytest.raises(errors.Unreachable):
        fs.flush(fh)
    c.fail_when = None
    fs.rename("/big", "/moved")
    fs.release(fh)
    assert c.objects["moved"][0] == data and "big" not in c.objects
    with pytest.raises(errors.StagingReleased):   # a write into a released range of a live stream
        g = fs.create("/other", 0o644, 0, 0, os.O_WRONLY)
        for off in range(0, len(data), 128 << 10):
            fs.write(g, data[off:off + (128 << 10)], off)
        fs.write(g, b"x", 0)
    with pytest.raises(errors.FsError) as info:
        fs.flush(g)
    assert info.value.errno == errno.ENOSPC
    fs.release(g)
    assert "other" not in c.objects


def test_min_free_as_a_percentage(tmp_path):
    space = DiskSpace(str(tmp_path), Fraction(5, 100))
    st = os.statvfs(tmp_path)
    assert space.min_free == st.f_blocks * st.f_frsize // 20
    assert DiskSpace(str(tmp_path), 123).min_free == 123
