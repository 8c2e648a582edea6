"""Builds the collaborators of a mount (the one place that wires subsystems together)
and runs the local, network-free part of crash recovery before the mount goes live.

``build(cfg, client)`` returns ``Parts``; ``Filesystem`` and its operation classes
receive it and never construct a subsystem themselves.  ``Parts.close`` tears them down
in reverse order of dependency.
"""
from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from ..config import MountConfig
from ..data.blockcache import BlockCache
from ..data.memory import BufferPool, MemoryBudget, Share, accounted_limit
from ..data.reader import BlockFetcher
from ..errors import ConfigError
from ..meta.attrs import Defaults
from ..meta.cache import MetaCache
from ..meta.known import KnownMetadata
from ..meta.namespace import Namespace
from ..paths import KeyMapper
from ..write import recovery
from ..write.copy import TreeMover
from ..write.journal import Journal
from ..write.uploader import Uploader
from .commits import CommitScheduler
from .handles import HandleTable
from .prefetch import ListingReadAhead

log = logging.getLogger(__name__)


def lock_cache_dir(cache_dir: str, holder: str = ""):
    """One process per cache_dir (its journal and staging files are not shared).  The lock
    file then says who holds it (``holder``: what this process is, e.g. its mountpoint),
    so that a second process can name the first."""
    f = open(os.path.join(cache_dir, "lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip()[:300]
        f.close()
        raise ConfigError(f"cache_dir {cache_dir} is in use by another s3fuse process"
                          f"{' (' + other + ')' if other else ''}; give each mount its own cache_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}{', ' + holder if holder else ''}\n")
    f.flush()
    return f


def _warn_of_legacy_journal(cfg: MountConfig):
    """s3fuse before per-mount cache directories kept one journal in the cache root."""
    legacy = os.path.join(cfg.cache_root, "journal") if cfg.cache_root else None
    try:
        pending = legacy is not None and any(n.endswith(".json") for n in os.listdir(legacy))
    except OSError:
        pending = False
    if pending:
        log.warning("%s holds unfinished uploads of an older s3fuse (one cache for all mounts): finish "
                    "them with 's3fuse resume BUCKET -o cache_dir=%s' for the bucket they belong to",
                    legacy, cfg.cache_root)


@dataclass
class Parts:
    cfg: MountConfig
    client: object                 # s3.ObjectClient (or a test fake with its API)
    mapper: KeyMapper
    cache: MetaCache
    known: KnownMetadata
    ns: Namespace
    budget: MemoryBudget
    buffers: BufferPool
    blocks: BlockCache
    fetcher: BlockFetcher
    journal: Journal
    uploader: Uploader
    mover: TreeMover
    handles: HandleTable
    commits: CommitScheduler
    staging_dir: str
    recovery_dir: str
    lockfile: object = None
    writing_leftovers: list = field(default_factory=list)   # WRITING records found at start
    writeback: Optional[object] = None    # fs.writeback.Writeback with -o writeback (made by Filesystem)
    readahead: Optional[object] = None    # fs.prefetch.ListingReadAhead

    def close(self):
        if self.writeback is not None:
            self.writeback.close()
        self.uploader.close()
        self.mover.close()
        self.fetcher.close()
        self.ns.close()
        self.blocks.close()
        self.known.close()


def _read_path(cfg: MountConfig, client):
    """The memory budget and what draws from it on the read side (docs/design/memory.md):
    a quarter of the budget for blocks kept in memory, a quarter for blocks queued for the
    cache disk, a quarter for each reader's read-ahead window; upload parts take theirs
    from the same budget while they are sent, at most half of it (``Share``)."""
    budget = MemoryBudget(accounted_limit(cfg.max_memory), total=cfg.max_memory)
    buffers = BufferPool(budget, cfg.block_size)
    quarter = max(cfg.block_size, budget.limit // 4)
    blocks = BlockCache(os.path.join(cfg.cache_dir, "blocks"), cfg.cache_size, client.bucket,
                        memory=quarter, max_pending=max(2, quarter // cfg.block_size), pool=buffers)
    fetcher = BlockFetcher(client, blocks, cfg.block_size, threads=cfg.read_threads, pool=buffers,
                           window_cap=max(2, budget.limit // 2 // cfg.block_size))
    budget.add_reclaimer(blocks.reclaim)              # first the oldest in-memory blocks,
    budget.add_reclaimer(fetcher.reclaim_current)     # then the block each reader keeps
    return budget, buffers, blocks, fetcher


def build(cfg: MountConfig, client) -> Parts:
    os.makedirs(cfg.cache_dir, mode=0o700, exist_ok=True)
    lockfile = lock_cache_dir(cfg.cache_dir, f"mounted on {cfg.mountpoint}" if cfg.mountpoint else "")
    mapper = KeyMapper(cfg.prefix)
    file_mode, dir_mode = cfg.modes
    defaults = Defaults(uid=cfg.uid, gid=cfg.gid, file_mode=file_mode, dir_mode=dir_mode)
    cache = MetaCache(cfg.attr_ttl, cfg.dir_ttl, cfg.negative_ttl)
    known = KnownMetadata(os.path.join(cfg.cache_dir, "meta"), client.bucket)
    ns = Namespace(client, mapper, cache, known, defaults, exact=(cfg.meta == "exact"))
    budget, buffers, blocks, fetcher = _read_path(cfg, client)
    staging_dir = os.path.join(cfg.cache_dir, "staging")
    recovery_dir = os.path.join(cfg.cache_dir, "recovery")
    os.makedirs(staging_dir, mode=0o700, exist_ok=True)
    journal = Journal(os.path.join(cfg.cache_dir, "journal"))
    uploader = Uploader(client, journal, threads=cfg.upload_threads, part_size=cfg.part_size,
                        threshold=cfg.multipart_threshold, copy_part_size=cfg.copy_part_size,
                        budget=Share(budget, budget.limit // 2))

    def uploaded(entry, etag: str):
        """A resumed upload finished: what this mount knows of the key is new."""
        known.wrote(entry.key, etag, entry.metadata, entry.headers, uploader.window(entry))
        if entry.key.startswith(mapper.prefix):
            cache.invalidate(mapper.path(entry.key))

    commits = CommitScheduler(client, uploader, journal, recovery_dir, on_uploaded=uploaded)
    _warn_of_legacy_journal(cfg)
    closed, writing = recovery.sort_out(journal, staging_dir, recovery_dir)
    for entry in closed:
        commits.add_pending(entry)
    readahead = ListingReadAhead(cache, fetcher, mapper) if cfg.small_file_readahead else None
    return Parts(cfg=cfg, client=client, mapper=mapper, cache=cache, known=known, ns=ns,
                 budget=budget, buffers=buffers, blocks=blocks,
                 fetcher=fetcher, journal=journal, uploader=uploader, mover=TreeMover(client, journal.dir),
                 handles=HandleTable(), commits=commits, staging_dir=staging_dir, recovery_dir=recovery_dir,
                 lockfile=lockfile, writing_leftovers=writing, readahead=readahead)
