"""The cache disk: writes that are whole or fail, holes punched in staging files, and
the free space the block cache leaves to staging and the journal (``-o cache_min_free``).

- ``pwrite_all`` / ``write_all`` are THE way bytes reach a file in cache_dir: a write may
  be short (a disk that fills in the middle of it takes what fits and returns the
  count); these write the rest or raise, never return having written less.  On ENOSPC
  they ask ``make_room(nbytes)`` (evict cached blocks, release uploaded staging ranges)
  and try again while it made some.
- ``DiskSpace`` is the free space of cache_dir's filesystem, shared by its users: the
  block cache keeps ``min_free`` bytes free (it evicts its oldest blocks for room, and
  stores no new block when it cannot), and staging and the journal, which may use
  everything, call ``make_room`` when a write finds the disk full: the block cache is
  expendable, written files are not.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from fractions import Fraction
from typing import Callable, Optional, Union

from .. import errors

log = logging.getLogger(__name__)

ROOM_TRIES = 4          # make_room calls one write may make (each must have freed something)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = None


def pwrite_all(fd: int, data, offset: int, make_room: Optional[Callable[[int], bool]] = None) -> int:
    """Write all of ``data`` at ``offset`` or raise (OSError, ``errors.ShortWrite``).
    Returns len(data)."""
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    done, total, tries = 0, len(view), 0
    while done < total:
        try:
            n = os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            if make_room is None or not errors.is_no_space(exc) or tries >= ROOM_TRIES:
                raise
            tries += 1
            if not make_room(total - done):
                raise
            continue
        if n <= 0:
            raise errors.ShortWrite(f"write of {total - done} bytes at offset {offset + done} wrote nothing")
        done += n
    return total


def write_all(fd: int, data, make_room: Optional[Callable[[int], bool]] = None) -> int:
    """``pwrite_all`` at the file's current offset (a file just opened: offset 0)."""
    return pwrite_all(fd, data, os.lseek(fd, 0, os.SEEK_CUR), make_room)


def write_file(path: str, data: bytes, fsync: bool, make_room: Optional[Callable[[int], bool]] = None):
    """Create or replace ``path`` with ``data`` in place (0600), written whole or the file
    removed and the error raised: a cut file is never left behind."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data, make_room)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)


def punch_hole(fd: int, offset: int, length: int):
    """Give the disk blocks of [offset, offset + length) back (they read as zeros; the
    file keeps its size).  Raises OSError (EOPNOTSUPP where the filesystem cannot)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def can_punch(directory: str) -> bool:
    """Whether files in ``directory`` can have holes punched (tmpfs, ext4, xfs, btrfs: yes)."""
    path = os.path.join(directory, f".punch-probe-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return False
    try:
        os.unlink(path)
        pwrite_all(fd, bytes(8192), 0)
        punch_hole(fd, 0, 4096)
        return True
    except OSError as exc:
        log.info("%s: holes cannot be punched (%s): uploaded ranges of a large file being written are "
                 "not given back to the disk", directory, exc)
        return False
    finally:
        os.close(fd)


MinFree = Union[int, Fraction]      # bytes, or a fraction of the filesystem's size


class DiskSpace:
    """Free space of the filesystem holding ``path`` (cache_dir) and who can make room.

    ``min_free``: what the block cache leaves free (``-o cache_min_free``, bytes or a
    fraction of the filesystem).  ``add_reclaimer(fn)``: ``fn(nbytes)`` frees about that
    many bytes and returns how many it freed (the block cache's eviction)."""

    def __init__(self, path: str, min_free: MinFree = Fraction(5, 100)):
        self.path = path
        st = os.statvfs(path)
        self.size = st.f_blocks * st.f_frsize
        self.min_free = int(min_free * self.size) if isinstance(min_free, Fraction) else int(min_free)
        self._reclaimers: list = []
        self._punch: Optional[bool] = None
        self.made_room = 0          # bytes freed for staging/journal writes that found the disk full

    def free(self) -> int:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def short_by(self, nbytes: int = 0) -> int:
        """How much is missing for ``nbytes`` more to leave ``min_free`` free."""
        return max(0, self.min_free + nbytes - self.free())

    def low(self) -> bool:
        return self.free() < self.min_free

    def add_reclaimer(self, fn: Callable[[int], int]):
        self._reclaimers.append(fn)

    def make_room(self, nbytes: int) -> int:
        """A staging or journal write of ``nbytes`` found the disk full: have the block
        cache give back enough for it and ``min_free`` more.  Returns bytes freed."""
        want = max(nbytes, self.short_by(nbytes))
        freed = 0
        for fn in self._reclaimers:
            if freed >= want:
                break
            try:
                freed += fn(want - freed)
            except Exception:
                log.warning("making room on the cache disk failed", exc_info=True)
        self.made_room += freed
        return freed

    def room_maker(self) -> Callable[[int], bool]:
        """``make_room`` for ``pwrite_all``: True if something was freed."""
        return lambda nbytes: self.make_room(nbytes) > 0

    def can_punch(self, directory: str) -> bool:
        if self._punch is None:
            self._punch = can_punch(directory)
        return self._punch
