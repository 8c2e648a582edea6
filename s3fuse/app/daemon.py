"""The mount daemon: set up the process (umask, allocator, open-file limit, logs,
SIGHUP), check the bucket, build the filesystem, mount it and serve until unmounted.
Mount failures are one line through the ready pipe (or stderr in the foreground)."""
from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import threading

from .. import __version__, logs, metrics
from ..config import MountConfig
from ..data.memory import tune_malloc
from ..errors import ConfigError
from ..fs import Filesystem
from ..fuse.binding import FUSE, describe
from ..fuse.operations import S3FuseOperations
from ..metrics import MetricsServer
from .connect import build_client, describe_error
from .statusfile import StatusWriter

log = logging.getLogger("s3fuse")

READY = b"READY\n"


def _tune_kernel_readahead(mountpoint: str, kib: int = 1024):
    """Raise the kernel read-ahead of the FUSE bdi so sequential reads arrive in large
    requests (root only; harmless when it fails)."""
    try:
        st = os.stat(mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(kib))
    except OSError:
        pass


def _reopen_log_on_sighup():
    """SIGHUP reopens the log (logrotate).  The signal is blocked in every thread (set
    before any thread exists, inherited by libfuse's workers) and taken by sigwait here,
    so libfuse's own SIGHUP handler (which would unmount) never runs."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    def loop():
        while True:
            signal.sigwait({signal.SIGHUP})
            try:
                logs.reopen()
                log.warning("SIGHUP: log file reopened")
            except Exception:       # the loop must outlive a failed reopen (a full disk...)
                log.error("SIGHUP: could not reopen the log file", exc_info=True)

    threading.Thread(target=loop, name="sighup", daemon=True).start()


def _raise_open_file_limit(want: int = 1 << 16):
    """Each file open or waiting for its upload (writeback) holds its staging file open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _metrics_server(cfg: MountConfig) -> MetricsServer:
    host, port = cfg.metrics
    try:
        return MetricsServer(host, port)
    except OSError as exc:
        raise ConfigError(f"metrics={host}:{port}: cannot listen there: {exc.strerror or exc}") from None


def _fuse_arguments(cfg: MountConfig) -> dict:
    fsname = cfg.bucket + (f":/{cfg.prefix}" if cfg.prefix else "")
    # nodev, nosuid: device nodes and set-id bits read from object headers (anyone who can
    # write the bucket sets them) are shown, never honoured.
    kwargs = dict(foreground=True, raw_fi=True, fsname=fsname, subtype="s3fuse", debug=cfg.debug,
                  nodev=True, nosuid=True)
    for flag in ("allow_other", "default_permissions", "ro"):
        if getattr(cfg, flag):
            kwargs[flag] = True
    return kwargs


def serve(cfg: MountConfig, ready_fd=None, supervised=None) -> int:
    """Check the bucket, mount, serve until unmounted.  Returns the exit code.
    ``supervised`` (a mount started again by app/supervisor.py): its ``status()`` goes
    into the status file, its ``before_mount()`` detaches the dead mount just before
    the new one is made (everything that can fail without a mount is done by then)."""
    os.umask(0o077)
    tune_malloc()       # freed data buffers go back to the system (data/memory.py)
    _raise_open_file_limit()
    logs.setup(cfg.log_file, cfg.log_level, foreground=cfg.foreground, debug=cfg.debug)
    _reopen_log_on_sighup()

    def fail(message: str) -> int:
        log.error("mount failed: %s", message)
        if ready_fd is not None:
            os.write(ready_fd, f"s3fuse: {message}\n".encode())
        else:
            sys.stderr.write(f"s3fuse: {message}\n")
        return 1

    endpoint = None
    try:
        if cfg.metrics:
            endpoint = _metrics_server(cfg)       # bound now: a taken port fails the mount
        client = build_client(cfg)
        client.probe()
        fs = Filesystem.for_mount(cfg, client)
    except ConfigError as exc:
        return fail(str(exc))
    except Exception as exc:  # one readable line, never a traceback to the user
        log.debug("mount check failed", exc_info=True)
        return fail(describe_error(exc, cfg))

    if endpoint is not None:
        metrics.REGISTRY.add_collector(metrics.mount_collector(fs, cfg.mountpoint, __version__, describe()))
        endpoint.start()
        log.warning("metrics at %s", endpoint.url)
    status = StatusWriter(cfg.mountpoint, lambda: dict(fs.stats(), metrics=endpoint and endpoint.url,
                                                       heal=supervised.status() if supervised else None))

    def on_init():
        status.start()
        fs.start_background(cfg.retry_interval)
        threading.Thread(target=_tune_kernel_readahead, args=(cfg.mountpoint,), daemon=True).start()
        if ready_fd is not None:
            os.write(ready_fd, READY)
            os.close(ready_fd)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)

    # The kernel may trust attributes and names as long as s3fuse itself would.
    fuse_config = dict(attr_timeout=cfg.attr_ttl, entry_timeout=cfg.attr_ttl,
                       negative_timeout=cfg.negative_ttl, hard_remove=1)
    ops = S3FuseOperations(fs, fuse_config, on_init=on_init)
    kwargs = _fuse_arguments(cfg)
    log.warning("mounting %s on %s", kwargs["fsname"], cfg.mountpoint)
    stderr_copy = None
    if ready_fd is not None:
        # libfuse reports mount errors on stderr: keep them to pass on if the mount fails.
        stderr_copy = os.path.join(cfg.cache_dir, ".fuse-stderr")
        fd = os.open(stderr_copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        if supervised is not None:
            supervised.before_mount()
        FUSE(ops, cfg.mountpoint, **kwargs)
    except Exception as exc:
        detail = ""
        if stderr_copy:
            with open(stderr_copy, errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip() and "max threads" not in ln]
            detail = f" ({lines[-1]})" if lines else ""
        return fail(f"FUSE mount of {cfg.mountpoint} failed: {exc}{detail}")
    finally:
        status.stop()
        if endpoint is not None:
            endpoint.stop()
        log.warning("unmounted %s", cfg.mountpoint)
    return 0
