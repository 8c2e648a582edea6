"""The commands that do not mount: ``s3fuse status``, ``resume``, ``uploads``, ``demo``."""
from __future__ import annotations

import os
import sys
import threading
import time

from .cli import build_client, describe_error, parse_mount_args
from .errors import ConfigError


def demo(argv) -> int:
    from .demo import main as demo_main
    return demo_main(argv)


def status(argv) -> int:
    import json
    from . import status as status_files
    as_json = "--json" in argv
    targets = [a for a in argv if not a.startswith("-")]
    entries = [status_files.read(os.path.abspath(t)) for t in targets] if targets else status_files.read_all()
    entries = [e for e in entries if e]
    if targets and not entries:
        sys.stderr.write(f"s3fuse: no s3fuse mount at {targets[0]}\n")
        return 1
    if not entries and not as_json:
        print("no s3fuse mounts")
        return 0
    if as_json:
        print(json.dumps(entries if not targets else entries[0], indent=1, sort_keys=True))
        return 0
    from .progress import render_status
    for entry in entries:
        print(render_status(entry))
    return 0


def _offline_config(argv, name: str):
    """Parse 'BUCKET[:/PREFIX] [-o opts]' for commands that do not mount."""
    flags = [a for a in argv if a.startswith("--")]
    rest = [a for a in argv if not a.startswith("--")]
    if not rest or rest[0].startswith("-"):
        raise ConfigError(f"usage: s3fuse {name} BUCKET[:/PREFIX] [-o OPTIONS] {USAGE_FLAGS.get(name, '')}")
    cfg = parse_mount_args([rest[0], "/"] + rest[1:])
    return cfg, flags


class _Failed(Exception):
    """Already reported to the user; exit with ``code``."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _offline_client(argv, name: str):
    """(cfg, flags, checked client) for commands that talk to the bucket without mounting;
    problems are reported in one line and raised as _Failed."""
    try:
        cfg, flags = _offline_config(argv, name)
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\n")
        raise _Failed(2) from None
    try:
        client = build_client(cfg)
        client.probe()
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\n")
        raise _Failed(2) from None
    except Exception as exc:
        sys.stderr.write(f"s3fuse: {describe_error(exc, cfg)}\n")
        raise _Failed(1) from None
    return cfg, flags, client


USAGE_FLAGS = {"resume": "", "uploads": "[--abort] [--older-than=SECONDS] [--force]"}


def resume(argv) -> int:
    """Finish the uploads a crashed mount left in the journal, without mounting."""
    from .fs.parts import lock_cache_dir
    from .progress import ProgressBar
    from .write import recovery
    from .write.copy import TreeMover
    from .write.journal import Journal
    from .write.uploader import Uploader
    try:
        cfg, _, client = _offline_client(argv, "resume")
        lock = lock_cache_dir(cfg.cache_dir, "s3fuse resume")
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\n")
        return 2
    except _Failed as exc:
        return exc.code
    from . import logs
    logs.setup(cfg.log_file, cfg.log_level, foreground=True)
    journal = Journal(os.path.join(cfg.cache_dir, "journal"))
    staging = os.path.join(cfg.cache_dir, "staging")
    os.makedirs(staging, mode=0o700, exist_ok=True)
    closed, writing = recovery.sort_out(journal, staging, os.path.join(cfg.cache_dir, "recovery"))
    for entry in writing:
        recovery.abort_writing(client, journal, entry)
    TreeMover(client, journal.dir).recover()
    uploader = Uploader(client, journal, threads=cfg.upload_threads, part_size=cfg.part_size,
                        threshold=cfg.multipart_threshold, copy_part_size=cfg.copy_part_size)
    failed = 0
    for entry in closed:
        bar = ProgressBar(entry.key, entry.size)
        stop = threading.Event()

        def watch():
            last = 0
            while not stop.wait(0.2):
                live = [u for u in uploader.live() if u["key"] == entry.key]
                if live:
                    bar.update(live[0]["bytes_done"] - last)
                    last = live[0]["bytes_done"]
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        try:
            recovery.resume(uploader, journal, entry)
            bar.done = 0
            bar.update(entry.size)
        except Exception as exc:
            failed += 1
            sys.stderr.write(f"\ns3fuse: {entry.key}: {describe_error(exc, cfg)}\n")
        finally:
            stop.set()
            t.join()
            bar.close()
    uploader.close()
    lock.close()
    print(f"resumed {len(closed) - failed} upload(s), {failed} failed, {len(writing)} unfinished write(s) "
          f"moved to {os.path.join(cfg.cache_dir, 'recovery')}")
    return 1 if failed else 0


def uploads(argv) -> int:
    """List (and with --abort, abort) multipart uploads in progress under the prefix."""
    from .progress import ProgressBar
    from .write.journal import Journal
    try:
        cfg, flags, client = _offline_client(argv, "uploads")
    except _Failed as exc:
        return exc.code
    older = 0.0
    for f in flags:
        if f.startswith("--older-than="):
            older = float(f.split("=", 1)[1])
    prefix = (cfg.prefix + "/") if cfg.prefix else ""
    ours = set()
    jdir = os.path.join(cfg.cache_dir, "journal")
    if os.path.isdir(jdir):
        ours = {e.upload_id for e in Journal(jdir).entries() if e.upload_id}
    now = time.time()
    uploads = [u for u in client.list_uploads(prefix) if now - u[2] >= older]
    for key, upload_id, started in uploads:
        mark = " (in this cache_dir's journal: resumable)" if upload_id in ours else ""
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(started))}  {key}  {upload_id}{mark}")
    if "--abort" not in flags:
        print(f"{len(uploads)} upload(s) in progress" + ("; --abort to abort them" if uploads else ""))
        return 0
    victims = [u for u in uploads if u[1] not in ours or "--force" in flags]
    bar = ProgressBar("aborting", len(victims))
    for key, upload_id, _ in victims:
        client.abort_multipart(key, upload_id)
        bar.update(1)
    bar.close()
    print(f"aborted {len(victims)} upload(s)" + (f", kept {len(uploads) - len(victims)} resumable (--force aborts them)"
                                                 if len(victims) < len(uploads) else ""))
    return 0


def sync(argv) -> int:
    """Wait until every file closed on the mount is in S3 (writeback): an fsync of the
    mount's root directory, which s3fuse answers once its upload queue is empty (sync(1)
    and syncfs(2) do not reach FUSE daemons)."""
    targets = [a for a in argv if not a.startswith("-")]
    if len(targets) != 1:
        sys.stderr.write("usage: s3fuse sync MOUNTPOINT\n")
        return 2
    try:
        fd = os.open(targets[0], os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        sys.stderr.write(f"s3fuse sync: {targets[0]}: {exc.strerror}\n")
        return 1
    return 0


def install_helper(argv) -> int:
    """Write the mount(8) helpers (and the man page) for this Python and this s3fuse."""
    from .install import install
    try:
        opts = _flags(argv, ("--sbin-dir", "--man-dir"), ("--no-man",))
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\nusage: s3fuse install-helper [--sbin-dir=DIR] [--man-dir=DIR] "
                         "[--no-man]\n")
        return 2
    try:
        written = install(sbin_dir=opts.get("--sbin-dir", "/sbin"),
                          man_dir=None if opts.get("--no-man") else opts.get("--man-dir", "/usr/local/share/man"))
    except OSError as exc:
        sys.stderr.write(f"s3fuse: install-helper: {exc.filename or ''}: {exc.strerror or exc}\n")
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def man(argv) -> int:
    """The mount.s3fuse(8) man page as roff, on stdout or into --output=FILE."""
    from .manpage import render
    try:
        opts = _flags(argv, ("--output",), ())
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\nusage: s3fuse man [--output=FILE]\n")
        return 2
    if "--output" in opts:
        with open(opts["--output"], "w") as f:
            f.write(render())
    else:
        sys.stdout.write(render())
    return 0


def _flags(argv, valued: tuple, plain: tuple) -> dict:
    """--name=VALUE / --name VALUE for ``valued``, --flag for ``plain``; anything else is
    a ConfigError."""
    out, args = {}, list(argv)
    while args:
        arg = args.pop(0)
        name, eq, val = arg.partition("=")
        if name in valued:
            if not eq:
                if not args:
                    raise ConfigError(f"{name} needs a value")
                val = args.pop(0)
            out[name] = val
        elif arg in plain:
            out[arg] = True
        else:
            raise ConfigError(f"unknown argument {arg!r}")
    return out
