"""POSIX semantics in plain Python: the filesystem the FUSE adapter exposes.

Testable without a mount.  Raises typed errors (``s3fuse.errors``); never touches errno
mapping or FUSE structures.  Subsystems: ``meta`` (attributes, listings), ``data``
(block cache, read-ahead), ``write`` (staging, journal, uploads).
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
from dataclasses import dataclass
from typing import Optional

from . import errors
from .config import MountConfig
from .data.blockcache import BlockCache
from .data.reader import BlockFetcher, PinnedObject, Reader
from .meta.attrs import Defaults
from .meta.cache import KnownMetadata, MetaCache
from .meta.namespace import Namespace
from .paths import KeyMapper

log = logging.getLogger(__name__)


@dataclass
class Handle:
    path: str
    flags: int
    reader: Optional[Reader] = None


class Filesystem:
    def __init__(self, cfg: MountConfig, client):
        self.cfg = cfg
        self.client = client
        self.mapper = KeyMapper(cfg.prefix)
        file_mode, dir_mode = cfg.modes
        self.defaults = Defaults(uid=cfg.uid, gid=cfg.gid, file_mode=file_mode, dir_mode=dir_mode)
        os.makedirs(cfg.cache_dir, mode=0o700, exist_ok=True)
        self.cache = MetaCache(cfg.attr_ttl, cfg.dir_ttl, cfg.negative_ttl)
        self.known = KnownMetadata(os.path.join(cfg.cache_dir, "meta"), client.bucket)
        self.ns = Namespace(client, self.mapper, self.cache, self.known, self.defaults,
                            exact=(cfg.meta == "exact"))
        self.blocks = BlockCache(os.path.join(cfg.cache_dir, "blocks"), cfg.cache_size, client.bucket)
        self.fetcher = BlockFetcher(client, self.blocks, cfg.block_size, threads=cfg.read_threads)
        self._handles: dict = {}
        self._fh_counter = itertools.count(1)
        self._lock = threading.Lock()          # leaf lock: guards _handles and _kernel_cached
        self._kernel_cached: dict = {}          # path -> etag the kernel page cache holds

    def close(self):
        self.fetcher.close()
        self.ns.close()
        self.blocks.close()
        self.known.close()

    # -- attributes and listings ---------------------------------------------------------
    def getattr(self, path: str, fh: Optional[int] = None) -> dict:
        return self.ns.lookup(path).to_stat()

    def readdir(self, path: str):
        listing = self.ns.list_dir(path)
        yield ".", stat.S_IFDIR
        yield "..", stat.S_IFDIR
        for name, is_dir in list(listing.entries.items()):
            yield name, (stat.S_IFDIR if is_dir else stat.S_IFREG)

    def readlink(self, path: str) -> str:
        attr = self.ns.lookup(path)
        if not attr.is_link:
            raise errors.FsError(path, errno.EINVAL)
        data = self.client.get_range(self.mapper.key(path), 0, attr.size or 4096) if attr.size else b""
        return data.decode("utf-8", "surrogateescape")

    def statfs(self) -> dict:
        block = 1 << 20
        total = 1 << 50   # 1 PiB: object storage has no meaningful limit; tools need room
        return {"f_bsize": block, "f_frsize": block, "f_blocks": total // block, "f_bfree": total // block,
                "f_bavail": total // block, "f_files": 1 << 32, "f_ffree": 1 << 32, "f_favail": 1 << 32,
                "f_namemax": 255}

    def access(self, path: str, mode: int):
        self.ns.lookup(path)

    # -- open / read / release --------------------------------------------------------------
    def open(self, path: str, flags: int):
        """Returns (fh, keep_kernel_cache)."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise errors.FsError(path, errno.EROFS)
        attr = self.ns.lookup(path)
        if attr.is_dir:
            raise errors.FsError(path, errno.EISDIR)
        obj = PinnedObject(self.mapper.key(path), attr.etag or "", attr.size)
        handle = Handle(path, flags, Reader(self.fetcher, obj, self.cfg.readahead // self.cfg.block_size))
        with self._lock:
            fh = next(self._fh_counter)
            self._handles[fh] = handle
            keep = self._kernel_cached.get(path) == obj.etag
            self._kernel_cached[path] = obj.etag
        return fh, keep

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise errors.FsError(f"bad file handle {fh}", errno.EBADF) from None

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handle(fh)
        return handle.reader.read(offset, size)

    def release(self, fh: int):
        with self._lock:
            self._handles.pop(fh, None)

    def stats(self) -> dict:
        return {"requests": dict(self.client.request_counts), "errors": self.client.error_count,
                "cache_hits": self.blocks.hits, "cache_misses": self.blocks.misses,
                "bytes_fetched": self.fetcher.bytes_fetched}
