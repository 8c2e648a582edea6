"""``mount.s3fuse SOURCE MOUNTPOINT``: the checks that need no network, then the daemon.

The mount daemonizes by default and exits 0 only once the mount is live: the child checks
the bucket, mounts, and reports "ready" (or one readable error line) through a pipe.  With
``heal`` (the default) the child is a supervisor (supervisor.py) and its own child serves.  A
mount that cannot work exits non-zero within seconds and leaves no mount behind.
"""
from __future__ import annotations

import os
import select
import sys
import time

from ..config import MountConfig
from ..errors import ConfigError
from ..fs.cachedir import CacheDir
from . import daemon, supervisor
from .commandline import Parsed
from .connect import check_credentials_files, mount_config


def _is_mounted(path: str) -> bool:
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 1 and fields[1].replace("\\040", " ") == path:
                    return True
    except OSError:
        pass
    return False


def _below(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or inside it (symlinks resolved as far as they exist)."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf", encoding="utf-8", errors="replace") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def check_local(cfg: MountConfig):
    """Checks that need no network: mountpoint, cache dir, log file."""
    mp = cfg.mountpoint
    if cfg.allow_other and os.geteuid() != 0 and not _user_allow_other():
        raise ConfigError("allow_other for a user other than root needs the line 'user_allow_other' "
                          "in /etc/fuse.conf (add it as root)")
    if _is_mounted(mp):
        raise ConfigError(f"{mp} is already mounted")
    try:
        if not os.path.isdir(mp):
            raise ConfigError(f"mountpoint {mp} does not exist" if not os.path.exists(mp)
                              else f"mountpoint {mp} is not a directory")
    except OSError as exc:   # e.g. a dead FUSE mount (ENOTCONN)
        raise ConfigError(f"mountpoint {mp}: {exc.strerror}") from None
    # The staging area, journal and log must not live below the mountpoint: once mounted,
    # the daemon would write them through itself (and expose them in the bucket).
    for option, path in (("cache_dir", cfg.cache_dir), ("log_file", cfg.log_file)):
        if path and _below(path, mp):
            raise ConfigError(f"{option} {path} is inside the mountpoint {mp}")
    try:
        CacheDir.of(cfg).prepare_root()      # a cache_dir given keeps its mode (fs/cachedir.py)
        probe = os.path.join(cfg.cache_dir, f".probe-{os.getpid()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cache_dir {cfg.cache_dir} is not writable: {exc.strerror}") from None
    if cfg.log_file:
        try:
            with open(cfg.log_file, "a"):
                pass
        except OSError as exc:
            raise ConfigError(f"log_file {cfg.log_file}: {exc.strerror}") from None


def run(parsed: Parsed) -> int:
    try:
        cfg = mount_config(parsed)
        check_local(cfg)
        check_credentials_files(cfg)
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\n")
        return 2
    if cfg.foreground:
        return daemon.serve(cfg)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the daemon
        os.close(read_fd)
        os.setsid()
        code = 1
        try:
            if cfg.heal:        # a supervisor that mounts again when the serving process dies
                code = supervisor.Supervisor(cfg, write_fd).run()
            else:
                code = daemon.serve(cfg, write_fd)
        except BaseException as exc:   # a bug: say what it was in one line, not silently
            try:
                os.write(write_fd, f"s3fuse: internal error: {exc.__class__.__name__}: {exc}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(write_fd)
    return _wait_ready(read_fd, pid, cfg)


def _wait_ready(read_fd: int, pid: int, cfg: MountConfig, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    received = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_fd], [], [], 0.5)
        if ready:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            received += chunk
            if received.startswith(daemon.READY):
                return 0
    os.close(read_fd)
    message = received.decode(errors="replace").strip()
    if not message:
        message = f"s3fuse: the mount daemon for {cfg.mountpoint} exited before the mount was live"
        if time.monotonic() >= deadline:
            message = f"s3fuse: mount of {cfg.mountpoint} not live after {timeout:.0f}s; giving up"
            try:
                os.kill(pid, 15)
            except OSError:
                pass
    sys.stderr.write(message.splitlines()[-1] + "\n")
    try:
        os.waitpid(pid, 0)
    except OSError:
        pass
    return 1
