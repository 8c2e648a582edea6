"""Builds the collaborators of a mount (the one place that wires subsystems together)
and runs the local, network-free part of crash recovery before the mount goes live.

``build(cfg, client)`` returns ``Parts``; ``Filesystem`` and its operation classes
receive it and never construct a subsystem themselves.  ``Parts.close`` tears them down
in reverse order of dependency.  ``build_writer`` is the write side alone (journal,
uploader under the memory budget, tree mover), for ``s3fuse resume`` as for the mount.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from ..config import MountConfig
from ..data.blockcache import BlockCache
from ..data.diskspace import DiskSpace
from ..data.memory import BufferPool, MemoryBudget, Share, accounted_limit
from ..data.reader import BlockFetcher
from ..meta.attrs import Defaults
from ..meta.cache import MetaCache
from ..meta.known import KnownMetadata
from ..meta.namespace import Namespace
from ..paths import KeyMapper
from ..write import recovery
from ..write.copy import TreeMover
from ..write.journal import Journal
from ..write.uploader import Uploader
from .cachedir import CacheDir
from .commits import CommitScheduler
from .deletes import DeleteQueue
from .handles import HandleTable
from .prefetch import ListingReadAhead

log = logging.getLogger(__name__)


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
    space: Optional[DiskSpace] = None      # free space of cache_dir's disk (-o cache_min_free)
    lockfile: object = None
    writing_leftovers: list = field(default_factory=list)   # WRITING records found at start
    writeback: Optional[object] = None    # fs.writeback.Writeback with -o writeback (made by Filesystem)
    readahead: Optional[object] = None    # fs.prefetch.ListingReadAhead
    deletes: Optional[DeleteQueue] = None  # deletes not sent yet (writeback's unlinks, an earlier mount's)

    def close(self):
        if self.deletes is not None:
            self.deletes.close()
        if self.writeback is not None:
            self.writeback.close()
        self.uploader.close()
        self.mover.close()
        self.fetcher.close()
        self.ns.close()
        self.blocks.close()
        self.known.close()


def _read_path(cfg: MountConfig, client, space: DiskSpace):
    """The memory budget and what draws from it on the read side (docs/design/memory.md):
    a quarter of the budget for blocks kept in memory, a quarter for blocks queued for the
    cache disk, at most half for one reader's read-ahead window; upload parts take theirs
    from the same budget while they are sent, at most half of it (``Share``)."""
    budget = MemoryBudget(accounted_limit(cfg.max_memory), total=cfg.max_memory)
    buffers = BufferPool(budget, cfg.block_size)
    quarter = max(cfg.block_size, budget.limit // 4)
    blocks = BlockCache(CacheDir(cfg.cache_dir).blocks, cfg.cache_size, client.bucket,
                        memory=quarter, max_pending=max(2, quarter // cfg.block_size), pool=buffers,
                        space=space)
    space.add_reclaimer(blocks.evict)                 # a full disk: written files come first
    fetcher = BlockFetcher(client, blocks, cfg.block_size, threads=cfg.read_threads, pool=buffers,
                           window_cap=max(2, budget.limit // 2 // cfg.block_size),
                           fill_limit=min(cfg.cache_size // 8, cfg.random_fill))
    budget.add_reclaimer(blocks.reclaim)              # first the oldest in-memory blocks,
    budget.add_reclaimer(fetcher.reclaim_current)     # then the block each reader keeps
    return budget, buffers, blocks, fetcher


@dataclass
class Writer:
    """The write side of a cache_dir: its journal, the uploader, the tree mover."""
    journal: Journal
    uploader: Uploader
    mover: TreeMover


def build_writer(cfg: MountConfig, client, budget: MemoryBudget, space: Optional[DiskSpace] = None) -> Writer:
    """Journal, uploader and mover of ``cfg.cache_dir``; upload parts hold at most half of
    ``budget`` while they are sent.  ``space``: the cache disk's (the journal's writes ask
    it for room when the disk is full)."""
    layout = CacheDir.of(cfg)
    layout.prepare()
    journal = Journal(layout.journal, space=space)
    uploader = Uploader(client, journal, threads=cfg.upload_threads, part_size=cfg.part_size,
                        threshold=cfg.multipart_threshold, copy_part_size=cfg.copy_part_size,
                        budget=Share(budget, budget.limit // 2))
    return Writer(journal, uploader, TreeMover(client, journal.dir))


def build(cfg: MountConfig, client) -> Parts:
    layout = CacheDir.of(cfg)
    layout.prepare()
    lockfile = layout.lock(f"mounted on {cfg.mountpoint}" if cfg.mountpoint else "")
    mapper = KeyMapper(cfg.prefix)
    file_mode, dir_mode = cfg.modes
    defaults = Defaults(uid=cfg.uid, gid=cfg.gid, file_mode=file_mode, dir_mode=dir_mode)
    cache = MetaCache(cfg.attr_ttl, cfg.dir_ttl, cfg.negative_ttl, cfg.meta_entries)
    known = KnownMetadata(layout.meta, client.bucket)
    ns = Namespace(client, mapper, cache, known, defaults, exact=(cfg.meta == "exact"))
    space = DiskSpace(layout.root, cfg.cache_min_free)
    budget, buffers, blocks, fetcher = _read_path(cfg, client, space)
    writer = build_writer(cfg, client, budget, space)
    journal, uploader = writer.journal, writer.uploader

    def uploaded(entry, etag: str):
        """A resumed upload finished: what this mount knows of the key is new."""
        known.wrote(entry.key, etag, entry.metadata, entry.headers, uploader.window(entry))
        if entry.key.startswith(mapper.prefix):
            cache.invalidate(mapper.path(entry.key))

    commits = CommitScheduler(client, uploader, journal, layout.recovery, on_uploaded=uploaded)
    # records of an earlier mount: hidden at once (a snapshot mount shows the past: none)
    deletes = DeleteQueue(client, layout.deletes) if cfg.snapshot is None else None
    if deletes is not None:
        commits.before_put = deletes.cancel
    _warn_of_legacy_journal(cfg)
    # A snapshot mount writes nothing: the journal of a live mount sharing its cache_dir
    # stays as it is, for that mount (or s3fuse resume) to finish.
    closed, writing = ([], []) if cfg.snapshot is not None else \
        recovery.sort_out(journal, layout.staging, layout.recovery)
    for entry in closed:
        commits.add_pending(entry)
    readahead = ListingReadAhead(cache, fetcher, mapper) if cfg.small_file_readahead else None
    return Parts(cfg=cfg, client=client, mapper=mapper, cache=cache, known=known, ns=ns,
                 budget=budget, buffers=buffers, blocks=blocks, space=space,
                 fetcher=fetcher, journal=journal, uploader=uploader, mover=writer.mover,
                 handles=HandleTable(), commits=commits, staging_dir=layout.staging, recovery_dir=layout.recovery,
                 lockfile=lockfile, writing_leftovers=writing, readahead=readahead, deletes=deletes)
