"""The block cache's value files: how diskcache writes and opens them (``WholeWriteDisk``),
an opened one (``CacheFile``), and the checks a crash makes necessary.

A value file is written once, completely, under a fresh random name and never changed
afterwards (a new block is a new file), so an open descriptor always reads the bytes it
was opened for, even after an eviction removed the name: that is what lets libfuse read
a cached block straight from its file (``CacheFile.region``, fuse/bufvec.py) after the
callback that opened it has returned.
"""
from __future__ import annotations

import io
import os
import threading
from typing import Optional

import diskcache


class CacheFile:
    """An open value file (read-only descriptor and size).  The descriptor is closed when
    the last reference goes (CPython frees at once): a reader keeps the file of its current
    block, and every region handed to libfuse keeps it until libfuse has read it."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size

    def __del__(self):
        try:
            os.close(self.fd)
        except OSError:
            pass

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def readinto(self, buf) -> int:
        return os.preadv(self.fd, [buf], 0)

    def region(self, lo: int, hi: int) -> "FileRegion":
        return FileRegion(self, lo, hi - lo)


class FileRegion:
    """Bytes [pos, pos + size) of a cache file, handed to libfuse unread (read_buf with an
    fd buffer: libfuse preads or splices them itself, no copy in the interpreter)."""

    __slots__ = ("file", "pos", "size")

    def __init__(self, file: CacheFile, pos: int, size: int):
        self.file = file
        self.pos = pos
        self.size = size

    def __len__(self) -> int:
        return self.size

    @property
    def fd(self) -> int:
        return self.file.fd

    def tobytes(self) -> bytes:
        return self.file.pread(self.size, self.pos)


def expected_size(filename: str) -> Optional[int]:
    """The length a value file was written with ('ab/cdef...-4194304.val'), None for
    names without it (caches written before the length was recorded)."""
    stem = os.path.basename(filename)[:-len(".val")]
    _, dash, size = stem.rpartition("-")
    return int(size) if dash and size.isdigit() else None


class WholeWriteDisk(diskcache.Disk):
    """Value files for blocks.  diskcache writes a bytes value by iterating an io.BytesIO,
    i.e. line by line (one write() per 256 bytes of random data), and calls makedirs
    before every file; this writes the value at once into one of 256 directories.  The
    file name carries the value's length, checked by ``fetch``."""

    _bad = threading.local()   # the last fetch of this thread found a short or missing file

    def filename(self, key=diskcache.core.UNKNOWN, value=diskcache.core.UNKNOWN):
        name = os.urandom(16).hex()
        size = f"-{len(value)}" if isinstance(value, (bytes, bytearray)) else ""
        filename = os.path.join(name[:2], name[2:] + size + ".val")
        return filename, os.path.join(self._directory, filename)

    def fetch(self, mode, filename, value, read):
        """As diskcache's, but ``read=True`` opens a value file as a ``CacheFile`` (a bare
        descriptor: no Python file object per cache hit), and a file whose length is not
        the one in its name is refused (``take_bad`` says which)."""
        self._bad.file = None
        if mode != diskcache.core.MODE_BINARY:
            return super().fetch(mode, filename, value, read)
        path = os.path.join(self._directory, filename)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._bad.file = filename
            raise
        opened = CacheFile(fd, os.fstat(fd).st_size)
        want = expected_size(filename)
        if want is not None and opened.size != want:
            self._bad.file = filename
            raise IOError(f"{filename}: {opened.size} bytes, written with {want}")
        return opened if read else opened.pread(opened.size, 0)

    def take_bad(self) -> Optional[str]:
        """The value file the last fetch of this thread found torn or missing (once)."""
        bad, self._bad.file = getattr(self._bad, "file", None), None
        return bad

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if type(value) is bytearray and len(value) >= self.min_file_size:
            # a block from a transport GET: a file like bytes (diskcache would pickle it)
            filename, full_path = self.filename(key, value)
            self._write(full_path, [value], "xb")
            return len(value), diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)

    def _write(self, full_path, iterator, mode, encoding=None):
        chunks = [iterator.getvalue()] if isinstance(iterator, io.BytesIO) else iterator
        try:
            f = open(full_path, mode, encoding=encoding)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(full_path), exist_ok=True)
            f = open(full_path, mode, encoding=encoding)
        size = 0
        try:
            with f:
                for chunk in chunks:
                    size += len(chunk)
                    f.write(chunk)      # buffered: the whole chunk, or an exception
        except BaseException:
            # a full disk: no row will name this file, and a cut file must not stay behind
            try:
                os.remove(full_path)
            except OSError:
                pass
            raise
        return size



def value_files(cache: diskcache.Cache) -> tuple:
    """(files the rows name, value files on disk): relative paths.  Rows first, so a file
    written between the two looks like an orphan only if its row is not committed yet."""
    # diskcache has no public call for the file names of its rows (Cache.check would
    # "fix" a short file by updating its row's size, i.e. serve it): its _sql, 5.x schema
    named = {row[0] for row in cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
    found = set()
    with os.scandir(cache.directory) as top:
        for sub in top:
            if len(sub.name) == 2 and sub.is_dir(follow_symlinks=False):
                with os.scandir(sub.path) as files:
                    found.update(f"{sub.name}/{f.name}" for f in files if f.name.endswith(".val"))
    return {n.replace(os.sep, "/") for n in named}, found


def sweep_orphans(cache: diskcache.Cache) -> int:
    """Remove value files no row names: a kill between writing a file and committing its
    row (or between a cull's commit and its file removals) leaves them, invisible to the
    size limit.  Runs in the writer thread before its first write, and one process holds
    a cache_dir (``fs.cachedir.lock_cache_dir``), so no file here is a write in progress."""
    named, found = value_files(cache)
    removed = 0
    for name in found - named:
        try:
            os.remove(os.path.join(cache.directory, name))
            removed += 1
        except OSError:
            pass
    return removed


