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
- mfusepy's own ``fuse_bufvec`` declares ``buf`` as a pointer; libfuse's is an array at
  the end of the struct, declared here per piece count.  The layout of ``fuse_buf`` is the
  one of libfuse 3.0-3.16 (``LAYOUT_KNOWN``); elsewhere the binding keeps plain ``read``.
"""
from __future__ import annotations

import ctypes
import threading

from .. import errors
from ..data.valuefiles import FileRegion

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


def _copy_to_malloc(piece, n: int) -> int:
    mem = _libc.malloc(max(1, n))
    if not mem:
        raise MemoryError(f"malloc({n}) for a read reply")
    if type(piece) is not bytes:
        view = memoryview(piece)
        piece = bytes(view) if view.readonly else (ctypes.c_char * n).from_buffer(view)
    ctypes.memmove(mem, piece, n)
    return mem


def answer(bufpp, pieces: list, size: int) -> int:
    """Point ``*bufpp`` at a new vector of ``pieces`` (at most ``size`` bytes); 0."""
    _held.pieces = None          # the last answer of this thread has been sent
    count = max(1, len(pieces))
    vector_type = _vector_type(count)
    address = _libc.calloc(1, ctypes.sizeof(vector_type))
    if not address:
        raise MemoryError("calloc for a read reply")
    vector = vector_type.from_address(address)
    vector.count = count
    done = 0
    try:
        for i, piece in enumerate(pieces):
            buf = vector.buf[i]
            n = len(piece) if type(piece) in (bytes, FileRegion) else memoryview(piece).nbytes
            if done + n > size:
                raise errors.FsError(f"read of {size} bytes answered {done + n}")
            buf.size = n
            if type(piece) is FileRegion:
                buf.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY
                buf.fd = piece.fd
                buf.pos = piece.pos
            else:
                buf.mem = _copy_to_malloc(piece, n)
            done += n
    except BaseException:
        for i in range(count):
            if vector.buf[i].mem:
                _libc.free(vector.buf[i].mem)
        _libc.free(address)
        raise
    _held.pieces = pieces        # regions stay open until libfuse has read them
    ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = address
    return 0
