"""Live status of a mount, published as a JSON file the ``s3fuse status`` command reads.

The daemon rewrites ``<runtime dir>/<hash of mountpoint>.json`` (atomically, 0600) every
``interval`` seconds: request counts, errors, cache size and hit rate, live uploads with
progress, pending journal entries.  No credentials are ever part of it.

The runtime directory is ``/run/s3fuse`` for root, ``$XDG_RUNTIME_DIR/s3fuse``, else
``/tmp/s3fuse-UID``.  In /tmp anyone may have made that name first (a directory of theirs,
or a symbolic link): it is used only if it is a directory of this user that nobody else can
enter (owner, mode 0700, not a link; checked on the open directory, whose descriptor every
later step goes through), else the mount runs without a status file and says so in its
log.  Files in it are written through a new temporary file (O_CREAT|O_EXCL|O_NOFOLLOW,
renamed into place) and read with O_NOFOLLOW: no link there makes s3fuse write or read
another file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time

log = logging.getLogger(__name__)


class UnsafeDirectory(OSError):
    """The runtime directory is not this user's alone."""


def runtime_dir() -> str:
    if os.geteuid() == 0:
        return "/run/s3fuse"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/s3fuse-{os.getuid()}"
    return os.path.join(base, "s3fuse") if os.environ.get("XDG_RUNTIME_DIR") else base


def status_path(mountpoint: str) -> str:
    digest = hashlib.sha1(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), digest + ".json")


def open_private_dir(path: str, create: bool = False) -> int:
    """A descriptor of the directory ``path`` (made 0700 first when ``create`` and missing),
    if it is this user's alone: not a symbolic link, owned by the effective uid, no access
    for group or others.  Raises ``UnsafeDirectory`` (saying why) or OSError (ENOENT...)."""
    if create:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeDirectory(f"{path} is a symbolic link, not a directory of this user") from None
        if isinstance(exc, NotADirectoryError):
            raise UnsafeDirectory(f"{path} is not a directory") from None
        raise
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    elif stat.S_IMODE(st.st_mode) & 0o077:
        problem = f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: others may enter it (0700 wanted)"
    if problem:
        os.close(fd)
        raise UnsafeDirectory(problem)
    return fd


def write_json_atomic(dir_fd: int, name: str, data: dict):
    """``name`` in the directory ``dir_fd`` replaced by ``data``: written to a new file
    (never an existing one, never through a link), then renamed over ``name``."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def _read_json(dir_fd: int, name: str):
    """The JSON of the regular file ``name`` in ``dir_fd`` (a link or a FIFO is not followed
    or waited for): raises OSError or ValueError."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{name} is not a regular file")
        return json.load(f)


class StatusWriter:
    def __init__(self, mountpoint: str, snapshot, interval: float = 0.5):
        self.path = status_path(mountpoint)
        self.mountpoint = mountpoint
        self._snapshot = snapshot
        self._interval = interval
        self._dir_fd = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self):
        directory = os.path.dirname(self.path)
        try:
            self._dir_fd = open_private_dir(directory, create=True)
        except OSError as exc:
            log.warning("no status file for this mount (s3fuse status will not show it): %s",
                        exc if isinstance(exc, UnsafeDirectory) else f"{directory}: {exc.strerror or exc}")
            return self
        self.write_now()
        self._thread.start()
        return self

    def write_now(self):
        if self._dir_fd is None:
            return
        try:
            data = self._snapshot()
            data.update(mountpoint=self.mountpoint, pid=os.getpid(), updated=time.time())
            write_json_atomic(self._dir_fd, os.path.basename(self.path), data)
        except Exception:
            log.warning("could not write status file %s", self.path, exc_info=True)

    def _run(self):
        while not self._stop.wait(self._interval):
            self.write_now()

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        fd, self._dir_fd = self._dir_fd, None
        if fd is None:
            return
        try:
            os.unlink(os.path.basename(self.path), dir_fd=fd)
        except OSError:
            pass
        os.close(fd)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return isinstance(pid, int)
    return True


def _open_runtime_dir():
    """The runtime directory's descriptor, or None (none yet, or not safe: said on stderr
    through the log's last-resort handler)."""
    try:
        return open_private_dir(runtime_dir())
    except UnsafeDirectory as exc:
        log.warning("not reading status files: %s", exc)
    except OSError:
        pass
    return None


def read_all() -> list:
    """The status of every live mount of this host (this user's runtime directory; root's
    is /run/s3fuse).  A file left by a daemon that died (SIGKILL) is skipped."""
    out = []
    dir_fd = _open_runtime_dir()
    if dir_fd is None:
        return out
    try:
        for name in sorted(os.listdir(dir_fd)):
            if name.endswith(".json") and not name.startswith("."):
                try:
                    entry = _read_json(dir_fd, name)
                except (OSError, ValueError):
                    continue
                if isinstance(entry, dict) and _alive(entry.get("pid")):
                    out.append(entry)
    finally:
        os.close(dir_fd)
    return out


def read(mountpoint: str):
    dir_fd = _open_runtime_dir()
    if dir_fd is None:
        return None
    try:
        return _read_json(dir_fd, os.path.basename(status_path(mountpoint)))
    except (OSError, ValueError):
        return None
    finally:
        os.close(dir_fd)
