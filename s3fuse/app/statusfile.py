"""Live status of a mount, published as a JSON file the ``s3fuse status`` command reads.

The daemon rewrites ``<runtime dir>/<hash of mountpoint>.json`` (atomically, 0600) every
``interval`` seconds: request counts, errors, cache size and hit rate, live uploads with
progress, pending journal entries.  No credentials are ever part of it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time

log = logging.getLogger(__name__)


def runtime_dir() -> str:
    if os.geteuid() == 0:
        return "/run/s3fuse"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/s3fuse-{os.getuid()}"
    return os.path.join(base, "s3fuse") if os.environ.get("XDG_RUNTIME_DIR") else base


def status_path(mountpoint: str) -> str:
    digest = hashlib.sha1(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), digest + ".json")


def write_json_atomic(path: str, data: dict):
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class StatusWriter:
    def __init__(self, mountpoint: str, snapshot, interval: float = 0.5):
        self.path = status_path(mountpoint)
        self.mountpoint = mountpoint
        self._snapshot = snapshot
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.write_now()
        self._thread.start()
        return self

    def write_now(self):
        try:
            data = self._snapshot()
            data.update(mountpoint=self.mountpoint, pid=os.getpid(), updated=time.time())
            write_json_atomic(self.path, data)
        except Exception:
            log.warning("could not write status file %s", self.path, exc_info=True)

    def _run(self):
        while not self._stop.wait(self._interval):
            self.write_now()

    def stop(self):
        self._stop.set()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return isinstance(pid, int)
    return True


def read_all() -> list:
    """The status of every live mount of this host (this user's runtime directory; root's
    is /run/s3fuse).  A file left by a daemon that died (SIGKILL) is skipped."""
    out = []
    try:
        names = sorted(os.listdir(runtime_dir()))
    except OSError:
        return out
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(runtime_dir(), name)) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(entry, dict) and _alive(entry.get("pid")):
                out.append(entry)
    return out


def read(mountpoint: str):
    try:
        with open(status_path(mountpoint)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
