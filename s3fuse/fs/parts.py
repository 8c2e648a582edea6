"""Builds the collaborators of a mount (the one place that wires subsystems together)
and runs the local, network-free part of crash recovery before the mount goes live.

``build(cfg, client)`` returns ``Parts``; ``Filesystem`` and its operation classes
receive it and never construct a subsystem themselves.  ``Parts.close`` tears them down
in reverse order of dependency.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field

from ..config import MountConfig
from ..data.blockcache import BlockCache
from ..data.reader import BlockFetcher
from ..errors import ConfigError
from ..meta.attrs import Defaults
from ..meta.cache import KnownMetadata, MetaCache
from ..meta.namespace import Namespace
from ..paths import KeyMapper
from ..write import recovery
from ..write.copy import TreeMover
from ..write.journal import Journal
from ..write.uploader import Uploader
from .commits import CommitScheduler
from .handles import HandleTable


def lock_cache_dir(cache_dir: str):
    """One process per cache_dir (its journal and staging files are not shared)."""
    f = open(os.path.join(cache_dir, "lock"), "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ConfigError(f"cache_dir {cache_dir} is in use by another s3fuse process") from None
    return f


@dataclass
class Parts:
    cfg: MountConfig
    client: object                 # s3.ObjectClient (or a test fake with its API)
    mapper: KeyMapper
    cache: MetaCache
    known: KnownMetadata
    ns: Namespace
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

    def close(self):
        self.uploader.close()
        self.mover.close()
        self.fetcher.close()
        self.ns.close()
        self.blocks.close()
        self.known.close()


def build(cfg: MountConfig, client) -> Parts:
    os.makedirs(cfg.cache_dir, mode=0o700, exist_ok=True)
    lockfile = lock_cache_dir(cfg.cache_dir)
    mapper = KeyMapper(cfg.prefix)
    file_mode, dir_mode = cfg.modes
    defaults = Defaults(uid=cfg.uid, gid=cfg.gid, file_mode=file_mode, dir_mode=dir_mode)
    cache = MetaCache(cfg.attr_ttl, cfg.dir_ttl, cfg.negative_ttl)
    known = KnownMetadata(os.path.join(cfg.cache_dir, "meta"), client.bucket)
    ns = Namespace(client, mapper, cache, known, defaults, exact=(cfg.meta == "exact"))
    blocks = BlockCache(os.path.join(cfg.cache_dir, "blocks"), cfg.cache_size, client.bucket)
    fetcher = BlockFetcher(client, blocks, cfg.block_size, threads=cfg.read_threads)
    staging_dir = os.path.join(cfg.cache_dir, "staging")
    recovery_dir = os.path.join(cfg.cache_dir, "recovery")
    os.makedirs(staging_dir, mode=0o700, exist_ok=True)
    journal = Journal(os.path.join(cfg.cache_dir, "journal"))
    uploader = Uploader(client, journal, threads=cfg.upload_threads, part_size=cfg.part_size,
                        threshold=cfg.multipart_threshold)

    def uploaded(key: str, etag: str, metadata: dict):
        """A resumed upload finished: what this mount knows of the key is new."""
        known.put(key, etag, metadata)
        if key.startswith(mapper.prefix):
            cache.invalidate(mapper.path(key))

    commits = CommitScheduler(client, uploader, journal, recovery_dir, on_uploaded=uploaded)
    closed, writing = recovery.sort_out(journal, staging_dir, recovery_dir)
    for entry in closed:
        commits.add_pending(entry)
    return Parts(cfg=cfg, client=client, mapper=mapper, cache=cache, known=known, ns=ns, blocks=blocks,
                 fetcher=fetcher, journal=journal, uploader=uploader, mover=TreeMover(client, journal.dir),
                 handles=HandleTable(), commits=commits, staging_dir=staging_dir, recovery_dir=recovery_dir,
                 lockfile=lockfile, writing_leftovers=writing)
