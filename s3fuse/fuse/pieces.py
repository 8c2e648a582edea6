"""A read's answer as pieces: bytes, bytearrays, views and ``FileRegion``s (a block on the
cache disk), in order.  Both reply paths walk them the same way: ``binding.FUSE.read``
(copied into libfuse's buffer) and ``bufvec.answer`` (a fuse_bufvec for read_buf)."""
from __future__ import annotations

import ctypes

from .. import errors
from ..data.valuefiles import FileRegion


def sized(pieces: list, size: int):
    """Yield ``(piece, nbytes)``; an answer longer than the ``size`` asked for is a bug
    (FsError, EIO) rather than a reply libfuse would cut or overrun."""
    done = 0
    for piece in pieces:
        kind = type(piece)
        n = piece.size if kind is FileRegion else len(piece) if kind is bytes else memoryview(piece).nbytes
        done += n
        if done > size:
            raise errors.FsError(f"read of {size} bytes answered {done}")
        yield piece, n


def memmove_source(piece, n: int):
    """A memory piece as something ``ctypes.memmove`` copies from without a copy of its
    own where it can (a writable buffer is used in place; a read-only view is copied)."""
    if type(piece) is bytes:
        return piece
    view = memoryview(piece)
    if view.readonly:
        return bytes(view)
    return (ctypes.c_char * n).from_buffer(view)
