"""libfuse 3's ``read_buf`` answer: a ``struct fuse_bufvec`` built from a read's pieces.

A piece in memory (bytes, bytearray, a view) is copied into a malloc'ed buffer; a
``FileRegion`` (a block cached on disk, ``data/valuefiles.py``) becomes an fd buffer
(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK: libfuse preads it, or splices it to /dev/fuse when
splice writes are on), so its bytes never enter the interpreter.

Invariants (libfuse 3.14 ``fuse_lib_read``):
- libfuse frees the vector and every memory buffer with free() after its reply, so both
  come from libc's malloc here; fd buffers are not closed by libfuse.
- The reply is sent on the calling thread right after the callback returns, before that
  thread takes another request.  So the regions of one answer are kept (``_held``) until
  the next answer on the same thread: their descriptors stay open until libfuse has read
  them, and are closed when the last reference goes (a worker idle since keeps at most one
  read's files open).
- A reply with fd buffers that does not fit libfuse's per-thread pipe is copied by
  libfuse into a posix_memalign'ed buffer (pread, then writev).  A pipe holds 1 MiB
  (pipe-max-size) unless the daemon has CAP_SYS_RESOURCE, and a 1 MiB read needs a bit
  more, so the mount asks for reads of at most ``splice_max_read()`` (1 MiB - 32 KiB):
  every reply of fd buffers is then spliced (fio seq_read_4t_small 4150 -> 4500 MiB/s,
  peak RSS 49 -> 38 MiB).  Where a reply is still copied (more pieces, a smaller pipe),
  glibc keeps the holes those aligned buffers leave between other allocations (RSS grew
  from 60 to 160 MiB in 8 s of 4-thread 1 MiB reads); so free heap memory is given back
  (malloc_trim) at most every ``TRIM_EVERY`` seconds while fd replies are made.
- The pread of such a reply runs in libfuse after the callback returned, not inside it:
  no GIL to take back after the syscall.  That, not the splice, is most of the gain here
  (fio seq_read_4t: 3.8-4.2 GiB/s with regions preadv'd inside ``read``, 4.3-5.2 with
  ``read_buf``).
- mfusepy's own ``fuse_bufvec`` declares ``buf`` as a pointer; libfuse's is an array at
  the end of the struct, declared here per piece count.  The layout of ``fuse_buf`` is the
  one of libfuse 3.0-3.16 (``layout_known``); elsewhere the binding keeps plain ``read``
  (which preads regions into libfuse's buffer itself).
"""
from __future__ import annotations

import ctypes
import threading
import time

from ..data.valuefiles import FileRegion
from .pieces import memmove_source, sized

FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2
FUSE_BUF_FD_RETRY = 1 << 3
FUSE_CAP_SPLICE_WRITE = 1 << 7


class FuseBuf(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


_libc = ctypes.CDLL(None)
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]
_malloc_trim = getattr(_libc, "malloc_trim", None)     # glibc only
if _malloc_trim is not None:
    _malloc_trim.restype = ctypes.c_int
    _malloc_trim.argtypes = [ctypes.c_size_t]

TRIM_EVERY = 0.1
_trim = {"next": 0.0, "fd_answers": 0}

# libfuse splices a reply only if its pipe can hold it with room to spare: one page per
# iovec and buffer, plus one (fuse_send_data_iov: ``pagesize * (iov_count + buf->count
# + 1) + out->len``), else it preads the fd buffers into a posix_memalign'ed buffer and
# writes that (two copies more, and the RSS of those buffers).  The pipe cannot outgrow
# pipe-max-size (1 MiB by default) without CAP_SYS_RESOURCE, so a 1 MiB read never fits.
SPLICE_SLACK_PAGES = 8         # the header, the reply header and up to 5 pieces (1 MiB blocks: 2), one page each, + 1
_PAGE = 4096


def splice_max_read(pipe_max_path: str = "/proc/sys/fs/pipe-max-size") -> int:
    """The read size (``max_read``) whose replies fit libfuse's pipe: the smaller of 1 MiB
    and pipe-max-size, less ``SPLICE_SLACK_PAGES`` pages (1 MiB - 32 KiB by default)."""
    try:
        with open(pipe_max_path) as f:
            pipe_max = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pipe_max = 1 << 20
    limit = min(1 << 20, pipe_max) - SPLICE_SLACK_PAGES * _PAGE
    return max(32 * _PAGE, limit - limit % _PAGE)


def layout_known(major: int, minor: int) -> bool:
    """Whether ``FuseBuf`` is libfuse's ``struct fuse_buf`` (3.0-3.16)."""
    return major == 3 and minor < 17


_vector_types: dict = {}
_held = threading.local()


def _vector_type(count: int):
    """``struct fuse_bufvec`` with ``count`` buffers."""
    cls = _vector_types.get(count)
    if cls is None:
        cls = type(f"FuseBufvec{count}", (ctypes.Structure,), {"_fields_": [
            ("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
            ("buf", FuseBuf * max(1, count))]})
        _vector_types[count] = cls
    return cls


def _groups(pieces: list, size: int) -> list:
    """The pieces as libfuse buffers: each region alone, runs of memory pieces together
    (one buffer per run: a reply of one memory buffer is sent without another copy)."""
    groups, run = [], None
    for piece, n in sized(pieces, size):
        if type(piece) is FileRegion:
            groups.append(piece)
            run = None
        else:
            if run is None:
                run = []
                groups.append(run)
            run.append((piece, n))
    return groups


def _copy_to_malloc(run: list) -> tuple:
    """A run of memory pieces copied into one malloc'ed buffer: (address, size)."""
    total = sum(n for _, n in run)
    mem = _libc.malloc(max(1, total))
    if not mem:
        raise MemoryError(f"malloc({total}) for a read reply")
    at = mem
    for piece, n in run:
        ctypes.memmove(at, memmove_source(piece, n), n)
        at += n
    return mem, total


def answer(bufpp, pieces: list, size: int) -> int:
    """Point ``*bufpp`` at a new vector of ``pieces`` (at most ``size`` bytes); 0."""
    _held.pieces = None          # the last answer of this thread has been sent
    if _trim["fd_answers"] and _malloc_trim is not None:
        now = time.monotonic()
        if now >= _trim["next"]:
            _trim["next"], _trim["fd_answers"] = now + TRIM_EVERY, 0
            _malloc_trim(0)
    groups = _groups(pieces, size)
    count = max(1, len(groups))
    vector_type = _vector_type(count)
    address = _libc.calloc(1, ctypes.sizeof(vector_type))
    if not address:
        raise MemoryError("calloc for a read reply")
    vector = vector_type.from_address(address)
    vector.count = count
    try:
        for buf, group in zip(vector.buf, groups):
            if type(group) is FileRegion:
                buf.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY
                buf.fd, buf.pos, buf.size = group.fd, group.pos, group.size
                _trim["fd_answers"] += 1
            else:
                buf.mem, buf.size = _copy_to_malloc(group)
    except BaseException:
        for i in range(count):
            if vector.buf[i].mem:
                _libc.free(vector.buf[i].mem)
        _libc.free(address)
        raise
    _held.pieces = pieces        # regions stay open until libfuse has read them
    ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = address
    return 0
