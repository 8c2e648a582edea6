"""Thin fusepy Operations adapter over ``s3fuse.fs.Filesystem``.

Turns FUSE calls into Filesystem calls and Filesystem answers (``Attr``, ``StatFs``)
into fusepy's dicts.  Every callback runs inside ``_errno_boundary``, which times it
(``s3fuse.metrics``) and hands any exception to ``s3fuse.boundary.to_errno`` - the one place where an exception becomes an
errno (from the table in ``s3fuse.errors``).  Runs with ``raw_fi`` so open can set
keep_cache.
"""
from __future__ import annotations

import functools
import itertools
import time

from . import boundary
from .. import metrics
from .binding import READ_BUF, FuseOSError, Operations, fuse_get_context
from .dirstream import DirStream


def _errno_boundary(method):
    """Wrap one callback: exceptions become errnos (``boundary.to_errno``), and every
    call is counted with its latency (``metrics.FUSE_OPS``: two clock reads and two
    increments on this thread's own histogram row, no lock)."""
    name = method.__name__
    record = metrics.FUSE_OPS.recorder("read" if name == "read_buf" else name)   # one op for users
    clock = time.monotonic_ns

    @functools.wraps(method)
    def wrapper(self, *args):
        started = clock()
        try:
            return method(self, *args)
        except FuseOSError:
            raise
        except Exception as exc:
            raise FuseOSError(boundary.to_errno(name, args, exc)) from None
        finally:
            record(clock() - started)

    return wrapper


def _wrap_callbacks(cls):
    for attr, value in list(vars(cls).items()):
        if callable(value) and not attr.startswith("_"):
            setattr(cls, attr, _errno_boundary(value))
    return cls


def _fh(fi):
    return None if fi is None else fi.fh


def stat_dict(attr) -> dict:
    """An ``Attr`` as fusepy's stat dict (times in ns: ``use_ns``)."""
    return {
        "st_mode": attr.mode, "st_uid": attr.uid, "st_gid": attr.gid,
        "st_size": 4096 if attr.is_dir else attr.size,
        "st_nlink": 2 if attr.is_dir else attr.nlink,
        "st_mtime": attr.mtime_ns, "st_atime": attr.atime_ns or attr.mtime_ns,
        "st_ctime": attr.ctime_ns or attr.mtime_ns,
        "st_blksize": 1 << 20, "st_blocks": (attr.size + 511) // 512, "st_rdev": attr.rdev,
    }


def _entry_stat(entry) -> dict:
    """A readdir entry (an exact ``Attr``, or only a file type) as fusepy's stat dict."""
    return {"st_mode": entry} if isinstance(entry, int) else stat_dict(entry)


def _checked_entries(path, entries):
    """``entries`` with any exception raised while listing turned into its errno."""
    try:
        yield from entries
    except FuseOSError:
        raise
    except Exception as exc:
        raise FuseOSError(boundary.to_errno("readdir", (path,), exc)) from None


def _stat_entries(path, first, entries):
    """(name, stat dict) pairs of ``first`` and then ``entries``."""
    for name, entry in _checked_entries(path, itertools.chain((first,) if first is not None else (), entries)):
        yield name, _entry_stat(entry)


def statfs_dict(s) -> dict:
    return {"f_bsize": s.block_size, "f_frsize": s.block_size, "f_blocks": s.blocks, "f_bfree": s.blocks,
            "f_bavail": s.blocks, "f_files": s.files, "f_ffree": s.files, "f_favail": s.files,
            "f_namemax": s.name_max}


@_wrap_callbacks
class S3FuseOperations(Operations):
    use_ns = True
    flag_utime_omit_ok = True     # libfuse 2: pass UTIME_OMIT through (tar sets only mtime)

    def __init__(self, fs, fuse_config: dict, on_init=None):
        self.fs = fs
        self._fuse_config = fuse_config
        self._on_init = on_init
        self._dirs: dict = {}                  # opendir handle -> DirStream
        self._dir_ids = itertools.count(1)     # next() is atomic under the GIL

    # -- lifecycle ---------------------------------------------------------------------------
    def init_with_config(self, conn_info, config):
        if config is not None:
            for key, value in self._fuse_config.items():
                if hasattr(config, key):
                    setattr(config, key, value)
        if self._on_init:
            self._on_init()

    def init(self, path):   # fusepy / libfuse 2
        if self._on_init:
            self._on_init()

    def destroy(self, path):
        self.fs.close()

    # -- metadata ----------------------------------------------------------------------------
    def getattr(self, path, fi=None):
        return stat_dict(self.fs.getattr(path, _fh(fi)))

    def opendir(self, path):
        """A handle of its own per open directory: its READDIRs go on where the last
        one stopped (``dirstream``)."""
        fh = next(self._dir_ids)
        self._dirs[fh] = DirStream(functools.partial(self._entries, path), _entry_stat)
        return fh

    def releasedir(self, path, fh):
        stream = self._dirs.pop(fh, None)
        if stream is not None:
            stream.close()
        return 0

    def readdir(self, path, fh):
        """All entries as (name, stat dict, 0) (libfuse 2, tests): a generator, never a
        list of stat dicts (errors while it runs get their errno here too)."""
        entries = self.fs.readdir(path)
        first = next(entries, None)       # a missing directory fails in the boundary above
        return ((name, attrs, 0) for name, attrs in _stat_entries(path, first, entries))

    def readdir_at(self, path, fh, offset, take):
        """libfuse 3: the entries of handle ``fh`` from ``offset`` on, each given to
        ``take(name, stat dict, next offset)`` until it answers False (buffer full)."""
        stream = self._dirs.get(fh)
        if stream is None:                # not opened through opendir: list it whole
            stream = DirStream(functools.partial(self._entries, path), _entry_stat)
        stream.serve(offset, take)

    def _entries(self, path):
        return _checked_entries(path, self.fs.readdir(path))

    def readlink(self, path):
        return self.fs.readlink(path)

    def statfs(self, path):
        return statfs_dict(self.fs.statfs())

    def access(self, path, amode):
        self.fs.access(path, amode)
        return 0

    # -- data ----------------------------------------------------------------------------------
    def open(self, path, fi):
        fh, keep_cache = self.fs.open(path, fi.flags)
        fi.fh = fh
        fi.keep_cache = 1 if keep_cache else 0
        return 0

    def read(self, path, size, offset, fi):
        """A list of buffers (``Filesystem.read_pieces``): ``binding.FUSE.read`` copies
        them into libfuse's buffer one after the other."""
        return self.fs.read_pieces(fi.fh, size, offset, regions=True)

    if READ_BUF:
        def read_buf(self, path, size, offset, fi):
            """``read`` for libfuse 3's read_buf: blocks cached on disk come as
            ``FileRegion``s, which ``binding.FUSE.read_buf`` hands to libfuse unread."""
            return self.fs.read_pieces(fi.fh, size, offset, regions=True)

    def release(self, path, fi):
        self.fs.release(fi.fh)
        return 0

    def create(self, path, mode, fi):
        uid, gid, _ = fuse_get_context()
        fi.fh = self.fs.create(path, mode, uid, gid, fi.flags)
        return 0

    def write(self, path, data, offset, fi):
        return self.fs.write(fi.fh, data, offset)

    def truncate(self, path, length, fi=None):
        self.fs.truncate(path, length, _fh(fi))
        return 0

    def flush(self, path, fi):
        self.fs.flush(fi.fh)
        return 0

    def fsync(self, path, datasync, fi):
        self.fs.fsync(fi.fh)
        return 0

    def fsyncdir(self, path, datasync, fi):
        self.fs.fsyncdir(path)
        return 0

    # -- namespace ------------------------------------------------------------------------------
    def mkdir(self, path, mode):
        uid, gid, _ = fuse_get_context()
        self.fs.mkdir(path, mode, uid, gid)
        return 0

    def rmdir(self, path):
        self.fs.rmdir(path)
        return 0

    def unlink(self, path):
        self.fs.unlink(path)
        return 0

    def rename(self, old, new, flags=0):
        self.fs.rename(old, new, flags)
        return 0

    def mknod(self, path, mode, dev):
        uid, gid, _ = fuse_get_context()
        self.fs.mknod(path, mode, dev, uid, gid)
        return 0

    def symlink(self, target, source):
        """``ln -s source target``: create ``target`` pointing at ``source``."""
        uid, gid, _ = fuse_get_context()
        self.fs.symlink(target, source, uid, gid)
        return 0

    def link(self, target, source):
        """``ln source target``."""
        self.fs.link(target, source)
        return 0

    # -- attributes ----------------------------------------------------------------------------
    def chmod(self, path, mode):
        self.fs.chmod(path, mode)
        return 0

    def chown(self, path, uid, gid):
        self.fs.chown(path, uid, gid)
        return 0

    def utimens(self, path, times=None):
        self.fs.utimens(path, times)
        return 0

    def getxattr(self, path, name, position=0):
        return self.fs.getxattr(path, name)

    def listxattr(self, path):
        return self.fs.listxattr(path)

    def setxattr(self, path, name, value, options, position=0):
        self.fs.setxattr(path, name, value, options)
        return 0

    def removexattr(self, path, name):
        self.fs.removexattr(path, name)
        return 0
