"""The FUSE binding: mfusepy (maintained fork, libfuse 3) when installed, else fusepy
(libfuse 2).  Both expose fusepy's Operations API; this module hides which one it is."""
import ctypes
import functools
import os
import threading
from ctypes.util import find_library

# mfusepy looks for libfuse 2 first; prefer libfuse 3 (1 MiB requests, partial utimens).
if not os.environ.get("FUSE_LIBRARY_PATH") and not os.environ.get("FUSE_LIBRARY_NAME") and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

try:
    import mfusepy as _fuse
    BINDING = "mfusepy"
except ImportError:  # pragma: no cover - exercised only where mfusepy is absent
    import fuse as _fuse
    BINDING = "fusepy"

from . import boundary, bufvec, pieces  # noqa: E402  (after the FUSE_LIBRARY_NAME choice above)
from .. import errors  # noqa: E402
from ..meta.attrs import xattr_name_stored  # noqa: E402
from ..data.valuefiles import FileRegion  # noqa: E402

_NOT_STORED = errors.errno_of(errors.NotSupported())

# read_buf with fd buffers (fuse/bufvec.py) where the struct layout is known: libfuse 3.0-3.16.
# S3FUSE_READ_BUF=0 keeps plain read (a comparison, or a kernel whose splice misbehaves).
READ_BUF = (bufvec.layout_known(getattr(_fuse, "fuse_version_major", 2), getattr(_fuse, "fuse_version_minor", 0))
            and os.environ.get("S3FUSE_READ_BUF", "1") != "0")

_thread_pinned = threading.local()


def _pin_thread_state():
    """Keep this thread's Python thread state alive between callbacks.

    libfuse calls back on its own worker threads; for such a thread ctypes creates a
    Python thread state at the start of every callback and destroys it at the end (its
    threading.local values, a _DummyThread, allocator state...).  One extra
    PyGILState_Ensure that is never released keeps the state for the life of the thread.
    libfuse >= 3.12 never ends idle workers by default (max_idle_threads unlimited), so
    at most max_threads states live this way; on libfuse 2 the loop has its own threads
    for the mount's lifetime too."""
    _thread_pinned.done = True
    ensure = ctypes.pythonapi.PyGILState_Ensure
    ensure.restype = ctypes.c_int
    ensure()


def _guarded(method):
    """The binding's own ctypes-level callbacks answer like the adapter's: an exception
    becomes its errno through ``boundary.to_errno`` (mfusepy would answer EINVAL)."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except _fuse.FuseOSError:
            raise                       # mfusepy's _wrapper answers -errno
        except Exception as exc:
            return -boundary.to_errno(name, args[:1], exc)
    return wrapper


class FUSE(_fuse.FUSE):
    """mfusepy drops the flags of libfuse 3's rename; pass them on so that flags S3 cannot
    honour (RENAME_EXCHANGE...) fail with a clear errno instead of being ignored.

    Names outside ``user.`` (security.selinux, system.posix_acl_access, the
    security.capability the kernel asks for before a write) are answered ENOTSUP right
    here, before any decoding, exception or logging, as they are never stored (the same
    answer as ``AttrOps.getxattr``, by the same rule: ``xattr_name_stored``).  Every
    override here is ``_guarded``: its exceptions go through the errno boundary too."""

    def _wrapper(self, func, *args, **kwargs):
        if not getattr(_thread_pinned, "done", False):
            _pin_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    if getattr(_fuse, "fuse_version_major", 2) == 3:
        @_guarded
        def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
            """readdir, and READDIRPLUS when the kernel asks for it: entries whose exact
            attributes are known go with them (FUSE_FILL_DIR_PLUS), so ``ls -l`` needs no
            LOOKUP per entry.  Entries given as {'st_mode': ...} only are sent plain.
            Every entry carries its offset: libfuse then sends what fits and asks again
            from there, instead of buffering the whole directory (``dirstream``).  (In
            READDIRPLUS libfuse counts a lookup of the entry that did not fit; that node
            then outlives the kernel's FORGET: a few bytes per READDIR, bounded by the
            directory's names.)"""
            plus = bool(flags & 1)                          # FUSE_READDIR_PLUS
            st = _fuse.c_stat()
            decoded = None if path is None else path.decode(self.encoding, self.errors)

            def take(name, attrs, next_offset):
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                fill = 0
                if plus and len(attrs) > 1:
                    _fuse.set_st_attrs(st, attrs, use_ns=self.use_ns)
                    fill = 2                                # FUSE_FILL_DIR_PLUS
                else:
                    st.st_mode = attrs["st_mode"]
                return filler(buf, name.encode(self.encoding, self.errors), st, next_offset, fill) == 0

            self.operations.readdir_at(decoded, fip.contents.fh, offset, take)
            return 0

    @_guarded
    def read(self, path, buf, size, offset, fip):
        """As fusepy's, but the answer is any buffer (bytes, bytearray, memoryview) or a list
        of them in order: each is copied into libfuse's buffer once (ctypes.memmove, which
        releases the GIL), never sliced or joined first.  A ``FileRegion`` (a block on the
        cache disk, where ``read_buf`` is not used) is preadv'd straight into it."""
        fh = fip.contents if self.raw_fi else fip.contents.fh
        data = self.operations.read(None if path is None else path.decode(self.encoding, self.errors),
                                    size, offset, fh)
        if not data:
            return 0
        at = ctypes.cast(buf, ctypes.c_void_p).value
        done = 0
        for piece, n in pieces.sized(data if type(data) is list else (data,), size):
            if type(piece) is FileRegion:
                got = os.preadv(piece.fd, [(ctypes.c_char * n).from_address(at + done)], piece.pos)
                if got != n:
                    raise errors.FsError(f"cache file read {got} of {n} bytes")
            else:
                ctypes.memmove(at + done, pieces.memmove_source(piece, n), n)
            done += n
        return done

    if READ_BUF:
        @_guarded
        def read_buf(self, path, bufpp, size, offset, fip):
            """read, answered as a fuse_bufvec: blocks cached on disk go to libfuse as fd
            buffers of their cache files, which libfuse reads (or splices) itself."""
            fh = fip.contents if self.raw_fi else fip.contents.fh
            pieces = self.operations.read_buf(None if path is None else path.decode(self.encoding, self.errors),
                                              size, offset, fh)
            return bufvec.answer(bufpp, pieces or [], size)

        def init_fuse_3(self, conn, config):
            """Splice writes on: libfuse then moves an fd buffer's pages to /dev/fuse without
            copying them through its own memory (it falls back to pread where a pipe
            cannot hold a whole reply)."""
            if conn and conn.contents.capable & bufvec.FUSE_CAP_SPLICE_WRITE:
                conn.contents.want |= bufvec.FUSE_CAP_SPLICE_WRITE
            if conn:
                conn.contents.max_read = self.max_read      # as the mount option (libfuse checks)
            return super().init_fuse_3(conn, config)

    def __init__(self, operations, mountpoint, **kwargs):
        """With ``read_buf``, reads are at most ``bufvec.splice_max_read()`` (mount option and
        init, both): their replies then fit libfuse's pipe and are spliced, not copied."""
        if READ_BUF:
            kwargs.setdefault("max_read", bufvec.splice_max_read())
        self.max_read = kwargs.get("max_read", 0)
        super().__init__(operations, mountpoint, **kwargs)

    @_guarded
    def write(self, path, buf, size, offset, fip):
        """As mfusepy's, but the data is a view of libfuse's buffer, not a bytes copy of it:
        ``OpenFile.write`` only hands it to pwrite (the staging file) and MD5, and keeps
        no reference after returning (the buffer is libfuse's again then).  Saves a
        1 MiB allocation per write and keeps memory out of the budget's blind spot."""
        fh = fip.contents if self.raw_fi else fip.contents.fh
        data = memoryview((ctypes.c_char * size).from_address(ctypes.cast(buf, ctypes.c_void_p).value)).cast("B")
        try:
            return self.operations.write(None if path is None else path.decode(self.encoding, self.errors),
                                         data, offset, fh)
        finally:
            data.release()

    @_guarded
    def getxattr(self, path, name, value, size, *args):
        if not xattr_name_stored(name):
            return -_NOT_STORED
        return super().getxattr(path, name, value, size, *args)

    if getattr(_fuse, "fuse_version_major", 2) == 3:
        @_guarded
        def truncate_fuse_3(self, path, length, fip):
            """mfusepy drops libfuse 3's file info here: ftruncate() of an open file whose
            name is gone (unlinked: path NULL) could not find its handle."""
            fh = None
            if fip:
                fh = fip.contents if self.raw_fi else fip.contents.fh
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return self.operations.truncate(decoded, length, fh)

        @_guarded
        def rename_fuse_3(self, old, new, flags):
            return self.operations.rename(old.decode(self.encoding, self.errors),
                                          new.decode(self.encoding, self.errors), flags)

FuseOSError = _fuse.FuseOSError
Operations = _fuse.Operations
fuse_get_context = _fuse.fuse_get_context
fuse_exit = getattr(_fuse, "fuse_exit", None)
LIBFUSE_MAJOR = getattr(_fuse, "fuse_version_major", 2)
LIBFUSE_MINOR = getattr(_fuse, "fuse_version_minor", 9)


def describe() -> str:
    return f"{BINDING} on libfuse {LIBFUSE_MAJOR}.{LIBFUSE_MINOR}"
