"""Command line: ``mount.s3fuse SOURCE MOUNTPOINT [-o opts] [-f] [-d]`` and ``s3fuse ...``.

The mount daemonizes by default and exits 0 only once the mount is live: the child checks
the bucket, mounts, and reports "ready" (or one readable error line) through a pipe.  A
mount that cannot work exits non-zero within seconds and leaves no mount behind.
"""
from __future__ import annotations

import logging
import os
import select
import sys
import textwrap
import threading
import time

from . import __version__, errors
from .config import MountConfig, apply_option, options_help, parse_source, resolve_cache_dir, split_options
from .errors import ConfigError

log = logging.getLogger("s3fuse")

# The flags and commands, for --help and the man page (s3fuse/manpage.py) alike.
FLAGS = [
    ("-f", "stay in the foreground (log to stderr)"),
    ("-d", "debug: foreground, verbose logs, libfuse debug output"),
    ("-o OPTIONS", "comma-separated mount options (below)"),
    ("-h, --help", "this help"),
    ("--version", "print the version"),
]
COMMANDS = [
    ("status [MOUNTPOINT] [--json]", "live uploads (progress, rate, ETA), cache, requests, metrics endpoint; "
                                     "without MOUNTPOINT every s3fuse mount of the host"),
    ("sync MOUNTPOINT", "wait until every file closed on the mount is uploaded (-o writeback)"),
    ("resume BUCKET[:/PREFIX] -o ...", "finish a crashed mount's uploads without mounting"),
    ("uploads BUCKET[:/PREFIX] -o ... [--abort] [--older-than=SECONDS] [--force]",
     "list (and abort) stale multipart uploads under the prefix"),
    ("demo [MOUNTPOINT]", "start a local S3 server (moto) with a demo bucket and mount it"),
    ("install-helper [--sbin-dir=DIR] [--man-dir=DIR] [--no-man]",
     "write the mount(8) helpers /sbin/mount.s3fuse and /sbin/mount.fuse.s3fuse (they run this Python "
     "and this s3fuse) and the man page /usr/local/share/man/man8/mount.s3fuse.8"),
    ("man [--output=FILE]", "print the man page as roff (man -l FILE shows it)"),
]


def _usage_text() -> str:
    lines = ["usage: mount.s3fuse BUCKET[:/PREFIX] MOUNTPOINT [-o OPT[,OPT...]] [-f] [-d]",
             "       s3fuse BUCKET[:/PREFIX] MOUNTPOINT [...]     (same as mount.s3fuse)"]
    for synopsis, text in COMMANDS:
        lines.append(f"       s3fuse {synopsis}")
        lines += textwrap.wrap(text, 88, initial_indent=" " * 11, subsequent_indent=" " * 11)
    lines += ["", "Mount an S3 bucket (or a prefix of it) as a filesystem.  Credentials come from",
              "-o passwd_file=, -o profile=, or the standard AWS chain (AWS_ACCESS_KEY_ID/...",
              "environment variables, ~/.aws files, instance role).  man mount.s3fuse has it all.", ""]
    lines += [f"  {flag:<13} {text}" for flag, text in FLAGS]
    return "\n".join(lines + ["", "Mount options:"]) + "\n"


USAGE = _usage_text()

READY = b"READY\n"


def usage() -> str:
    return USAGE + options_help() + "\n"


def parse_mount_args(argv) -> MountConfig:
    cfg = MountConfig()
    positional, options = [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            sys.stdout.write(usage())
            raise SystemExit(0)
        if arg == "--version":
            print(f"s3fuse {__version__}")
            raise SystemExit(0)
        if arg == "-o":
            if not args:
                raise ConfigError("-o needs an option list")
            options.extend(split_options(args.pop(0)))
        elif arg.startswith("-o") and len(arg) > 2:
            options.extend(split_options(arg[2:]))
        elif arg == "-f":
            cfg.foreground = True
        elif arg == "-d":
            cfg.foreground = cfg.debug = True
        elif arg in ("-s", "-n", "-v", "--"):
            pass    # mount(8) helper flags: sloppy, no mtab, verbose
        elif arg.startswith("-") and len(arg) > 1:
            raise ConfigError(f"unknown argument {arg!r} (see --help)")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ConfigError("expected BUCKET[:/PREFIX] and MOUNTPOINT (see --help)")
    cfg.bucket, cfg.prefix = parse_source(positional[0])
    cfg.mountpoint = os.path.abspath(positional[1])
    for option in options:
        apply_option(cfg, option)
    if cfg.allow_other:
        cfg.default_permissions = True
    resolve_cache_dir(cfg)
    return cfg


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
    """Checks that need no network: mountpoint, cache dir, credentials file."""
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
        os.makedirs(cfg.cache_dir, mode=0o700, exist_ok=True)
        os.chmod(cfg.cache_dir, 0o700)
        probe = os.path.join(cfg.cache_dir, f".probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cache_dir {cfg.cache_dir} is not writable: {exc.strerror}") from None
    if cfg.log_file:
        try:
            with open(cfg.log_file, "a"):
                pass
        except OSError as exc:
            raise ConfigError(f"log_file {cfg.log_file}: {exc.strerror}") from None


def build_client(cfg: MountConfig, max_connections: int = 64):
    from .credentials import read_passwd_file
    from .s3 import ObjectClient
    from .sse import ObjectOptions
    access = secret = None
    if cfg.passwd_file:
        access, secret = read_passwd_file(cfg.passwd_file, cfg.bucket)
    return ObjectClient(cfg.bucket, endpoint=cfg.endpoint, region=cfg.region, profile=cfg.profile,
                        access_key=access, secret_key=secret, path_style=cfg.addressing_path_style,
                        max_connections=max_connections, max_attempts=cfg.retries,
                        connect_timeout=cfg.connect_timeout, read_timeout=cfg.request_timeout,
                        ca_bundle=cfg.ca_bundle, options=ObjectOptions.from_config(cfg))


def describe_error(exc: Exception, cfg: MountConfig) -> str:
    if isinstance(exc, errors.NoSuchBucket):
        return f"bucket {cfg.bucket!r} does not exist"
    if isinstance(exc, errors.AccessDenied):
        return f"access to bucket {cfg.bucket!r} denied: check the credentials ({exc})"
    if isinstance(exc, errors.Unreachable):
        return f"cannot reach the S3 endpoint {cfg.endpoint or '(AWS)'}: {exc}"
    if isinstance(exc, errors.NoCredentials):
        return "no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, -o profile= or -o passwd_file="
    return str(exc) or exc.__class__.__name__


def _tune_readahead(mountpoint: str, kib: int = 1024):
    """Raise the kernel read-ahead of the FUSE bdi so sequential reads arrive in large
    requests (root only; harmless when it fails)."""
    try:
        st = os.stat(mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(kib))
    except OSError:
        pass


def _reopen_log_on_sighup(logs):
    """SIGHUP reopens the log (logrotate).  The signal is blocked in every thread (set
    before any thread exists, inherited by libfuse's workers) and taken by sigwait here,
    so libfuse's own SIGHUP handler (which would unmount) never runs."""
    import signal
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    def loop():
        while True:
            signal.sigwait({signal.SIGHUP})
            logs.reopen()
            log.warning("SIGHUP: log file reopened")

    threading.Thread(target=loop, name="sighup", daemon=True).start()


def _raise_open_file_limit(want: int = 1 << 16):
    """Each file open or waiting for its upload (writeback) holds its staging file open."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run_daemon(cfg: MountConfig, ready_fd=None) -> int:
    """Check the bucket, mount, serve until unmounted.  Returns the exit code."""
    from . import logs
    from .fuse_binding import FUSE
    from .fuse_ops import S3FuseOperations
    from .data.memory import tune_malloc
    from .fs import Filesystem

    os.umask(0o077)
    tune_malloc()       # freed data buffers go back to the system (data/memory.py)
    _raise_open_file_limit()
    logs.setup(cfg.log_file, cfg.log_level, foreground=cfg.foreground, debug=cfg.debug)
    _reopen_log_on_sighup(logs)

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

    from .status import StatusWriter
    if endpoint is not None:
        from . import metrics
        from .fuse_binding import describe
        metrics.REGISTRY.add_collector(metrics.mount_collector(fs, cfg.mountpoint, __version__, describe()))
        endpoint.start()
        log.warning("metrics at %s", endpoint.url)
    status = StatusWriter(cfg.mountpoint, lambda: dict(fs.stats(), metrics=endpoint and endpoint.url))

    def on_init():
        status.start()
        fs.start_background()
        threading.Thread(target=_tune_readahead, args=(cfg.mountpoint,), daemon=True).start()
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
    fsname = cfg.bucket + (f":/{cfg.prefix}" if cfg.prefix else "")
    # nodev, nosuid: device nodes and set-id bits read from object headers (anyone who can
    # write the bucket sets them) are shown, never honoured.
    kwargs = dict(foreground=True, raw_fi=True, fsname=fsname, subtype="s3fuse", debug=cfg.debug,
                  nodev=True, nosuid=True)
    for flag in ("allow_other", "default_permissions", "ro"):
        if getattr(cfg, flag):
            kwargs[flag] = True
    log.warning("mounting %s on %s", fsname, cfg.mountpoint)
    stderr_copy = None
    if ready_fd is not None:
        # libfuse reports mount errors on stderr: keep them to pass on if the mount fails.
        stderr_copy = os.path.join(cfg.cache_dir, ".fuse-stderr")
        fd = os.open(stderr_copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    try:
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


def _metrics_server(cfg: MountConfig):
    from .metrics import MetricsServer
    host, port = cfg.metrics
    try:
        return MetricsServer(host, port)
    except OSError as exc:
        raise ConfigError(f"metrics={host}:{port}: cannot listen there: {exc.strerror or exc}") from None


def mount_main(argv) -> int:
    try:
        cfg = parse_mount_args(argv)
        check_local(cfg)
        if cfg.passwd_file:
            from .credentials import read_passwd_file
            read_passwd_file(cfg.passwd_file, cfg.bucket)
        from .sse import ObjectOptions
        ObjectOptions.from_config(cfg)        # the SSE-C key file: readable, 0600, 256 bits
        if cfg.ca_bundle and not os.path.isfile(cfg.ca_bundle):
            raise ConfigError(f"ca_bundle {cfg.ca_bundle}: no such file")
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\n")
        return 2
    if cfg.foreground:
        return run_daemon(cfg)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the daemon
        os.close(read_fd)
        os.setsid()
        code = 1
        try:
            code = run_daemon(cfg, write_fd)
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
            if received.startswith(READY):
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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    return mount_main(argv)


def _subcommand(name: str):
    def run(argv) -> int:
        from . import commands
        return getattr(commands, name)(argv)
    return run


SUBCOMMANDS = {name: _subcommand(name) for name in ("demo", "status", "resume", "uploads", "sync")}
SUBCOMMANDS["install-helper"] = _subcommand("install_helper")
SUBCOMMANDS["man"] = _subcommand("man")


if __name__ == "__main__":
    sys.exit(main())
