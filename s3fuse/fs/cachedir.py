"""The layout of one mount's cache_dir, in one place.

    cache_dir/            the user's alone, one process at a time (``lock``)
        lock              flock'ed; says who holds it ("pid N, mounted on /mnt")
        journal/          one JSON record per upload not yet in the bucket (write/journal.py)
        staging/          the staging files those records name
        recovery/         bytes written that can never be uploaded as they were (kept for the user)
        blocks/           the disk block cache (data/blockcache.py)
        meta/             what this mount knows of keys it wrote (meta/known.py)
        deletes/          one record per delete not yet sent (writeback: fs/deletes.py)

``journal/`` and ``recovery/`` are siblings: ``write/recovery.py`` finds the latter from
the former.  The mount, ``s3fuse resume`` and the tests all take these paths from here.

Modes: the directories s3fuse makes - a cache_dir that did not exist, the default one per
mount under the cache root, and the six below - are 0700.  A cache_dir given that exists
keeps its mode (``cache_dir=/var/tmp`` must not make /var/tmp 0700); it must belong to the
user and be writable by nobody else, or anyone could swap the journal or staging files
the mount uploads (a world-writable /tmp or /var/tmp is refused, naming a way out).
"""
from __future__ import annotations

import fcntl
import os
import stat
import time
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class CacheDir:
    root: str
    own: bool = False       # s3fuse's own directory (the default per mount): made 0700 even if it exists

    @classmethod
    def of(cls, cfg) -> "CacheDir":
        """The cache_dir of a ``MountConfig`` (its own when no ``cache_dir=`` was given)."""
        return cls(cfg.cache_dir, own=cfg.cache_root is not None)

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

    @property
    def deletes(self) -> str:
        return os.path.join(self.root, "deletes")

    def prepare_root(self):
        """The cache_dir itself: made 0700 when missing (its parents as ``makedirs`` makes
        them); one that exists keeps its mode unless it is s3fuse's ``own``.  Raises
        ConfigError for a cache_dir of another user or one others may write, OSError when
        it cannot be made."""
        root = self.root
        made = False
        if not os.path.lexists(root):
            os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
            try:
                os.mkdir(root, 0o700)
                made = True
            except FileExistsError:
                pass
        st = os.stat(root)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"cache_dir {root} is not a directory")
        if st.st_uid != os.geteuid():
            raise ConfigError(f"cache_dir {root} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): "
                              "its owner could change the journal and staging files this mount uploads; "
                              "give a directory of your own")
        if made or self.own:
            if mode != 0o700:
                os.chmod(root, 0o700)
        elif mode & 0o022:
            who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if mode & bit)
            raise ConfigError(f"cache_dir {root} is writable by {who} (mode {mode:04o}): the mount's journal and "
                              "staging files live there; give a directory only you can write (a new one is "
                              "made 0700), or chmod go-w it")

    def prepare(self):
        """The cache_dir and its six directories, made 0700 where missing; those that
        exist must be directories of this user (not links) and are made 0700 (staging
        files are the user's data, journal records say what to upload)."""
        self.prepare_root()
        for path in (self.journal, self.staging, self.recovery, self.blocks, self.meta, self.deletes):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else (
                    "not a directory" if not stat.S_ISDIR(st.st_mode) else f"a directory of uid {st.st_uid}")
                raise ConfigError(f"cache_dir {self.root}: {path} is {what}, not a directory of this user; "
                                  "remove it or give another cache_dir")
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(path, 0o700)

    def lock(self, holder: str = ""):
        """One process per cache_dir (its journal and staging files are not shared); the
        lock file then says who holds it, so that a second process can name the first.
        Returns the open lock file (closing it releases the lock)."""
        return lock_cache_dir(self.root, holder)


EXIT_GRACE = 30.0     # seconds a new mount waits for a holder that unmounted and is still exiting


def _mounted(path: str) -> bool:
    """``path`` is a mount point now (/proc/self/mounts escapes blanks as octal)."""
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f if len(line.split()) > 1]
    except OSError:
        return True
    return any(p.encode().decode("unicode_escape") == path for p in points)


def _unmounted_holder(text: str) -> bool:
    """The holder named ``text`` ("pid N, mounted on PATH") has unmounted: it is
    exiting (finishing its uploads, closing its caches) and lets the lock go soon."""
    _, sep, where = text.partition(", mounted on ")
    return bool(sep) and not _mounted(where.strip())


def lock_cache_dir(cache_dir: str, holder: str = ""):
    """``umount`` then ``mount`` at once works: a holder whose mount is gone is waited for
    (up to EXIT_GRACE); a holder still mounted fails the new mount at once."""
    fd = os.open(os.path.join(cache_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    f = os.fdopen(fd, "a+")
    deadline = time.monotonic() + EXIT_GRACE
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            f.seek(0)
            other = f.read().strip()[:300]
            if _unmounted_holder(other) and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            f.close()
            raise ConfigError(f"cache_dir {cache_dir} is in use by another s3fuse process"
                              f"{' (' + other + ')' if other else ''}; give each mount its own cache_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}{', ' + holder if holder else ''}\n")
    f.flush()
    return f
