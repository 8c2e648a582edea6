"""The layout of one mount's cache_dir, in one place.

    cache_dir/            0700, one process at a time (``lock``)
        lock              flock'ed; says who holds it ("pid N, mounted on /mnt")
        journal/          one JSON record per upload not yet in the bucket (write/journal.py)
        staging/          the staging files those records name
        recovery/         bytes written that can never be uploaded as they were (kept for the user)
        blocks/           the disk block cache (data/blockcache.py)
        meta/             what this mount knows of keys it wrote (meta/known.py)

``journal/`` and ``recovery/`` are siblings: ``write/recovery.py`` finds the latter from
the former.  The mount, ``s3fuse resume`` and the tests all take these paths from here.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class CacheDir:
    root: str

    @property
    def journal(self) -> str:
        return os.path.join(self.root, "journal")

    @property
    def staging(self) -> str:
        return os.path.join(self.root, "staging")

    @property
    def recovery(self) -> str:
        return os.path.join(self.root, "recovery")

    @property
    def blocks(self) -> str:
        return os.path.join(self.root, "blocks")

    @property
    def meta(self) -> str:
        return os.path.join(self.root, "meta")

    def prepare(self):
        """Create the directories a writer needs (0700: staging files are the user's data)."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.makedirs(self.staging, mode=0o700, exist_ok=True)

    def lock(self, holder: str = ""):
        """One process per cache_dir (its journal and staging files are not shared); the
        lock file then says who holds it, so that a second process can name the first.
        Returns the open lock file (closing it releases the lock)."""
        return lock_cache_dir(self.root, holder)


def lock_cache_dir(cache_dir: str, holder: str = ""):
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
