"""``s3fuse resume BUCKET[:/PREFIX] -o ...``: finish the uploads a crashed mount left in
its cache_dir's journal, without mounting (the same writer the mount builds)."""
from __future__ import annotations

import sys
import threading

from ... import logs
from ...errors import ConfigError
from ...data.memory import MemoryBudget, accounted_limit
from ...fs.builder import build_writer
from ...fs.cachedir import CacheDir
from ...fs.deletes import DeleteQueue
from ...write import recovery
from ..commandline import Parsed
from ..connect import CommandFailed, describe_error, offline_client
from ..progress import ProgressBar


def run(parsed: Parsed) -> int:
    try:
        cfg, client = offline_client(parsed)
        layout = CacheDir.of(cfg)
        layout.prepare()
        lock = layout.lock("s3fuse resume")
    except ConfigError as exc:
        sys.stderr.write(f"s3fuse: {exc}\n")
        return 2
    except CommandFailed as exc:
        return exc.code
    logs.setup(cfg.log_file, cfg.log_level, foreground=True)
    # the same writer the mount builds, under the same memory budget (-o max_memory)
    writer = build_writer(cfg, client, MemoryBudget(accounted_limit(cfg.max_memory), total=cfg.max_memory))
    journal, uploader = writer.journal, writer.uploader
    closed, writing = recovery.sort_out(journal, layout.staging, layout.recovery)
    for entry in writing:
        recovery.abort_writing(client, journal, entry)
    writer.mover.recover()
    # deletes first: an upload record of a key with a queued delete is the newer of the two
    deletes = DeleteQueue(client, layout.deletes)
    queued = deletes.status()["pending"]
    sent = deletes.flush("", timeout=600) if queued else True
    deletes.close()
    deletes_failed = not sent or bool(deletes.refused)
    if queued:
        print(f"sent {deletes.deleted} delete(s), {len(deletes.refused)} refused"
              f"{'' if sent else ', the rest still queued'}")
    failed = 0
    try:
        for entry in closed:
            if not _resume_one(uploader, journal, entry, cfg):
                failed += 1
    finally:
        uploader.close()
        writer.mover.close()
        lock.close()
    print(f"resumed {len(closed) - failed} upload(s), {failed} failed, {len(writing)} unfinished write(s) "
          f"moved to {layout.recovery}")
    return 1 if failed or deletes_failed else 0


def _resume_one(uploader, journal, entry, cfg) -> bool:
    """Resume one closed file's upload with a progress bar; False (reported) if it failed."""
    bar = ProgressBar(entry.key, entry.size)
    stop = threading.Event()

    def watch():
        last = 0
        while not stop.wait(0.2):
            live = [u for u in uploader.live() if u["key"] == entry.key]
            if live:
                bar.update(live[0]["bytes_done"] - last)
                last = live[0]["bytes_done"]
    watcher = threading.Thread(target=watch, daemon=True, name="s3fuse-resume-progress")
    watcher.start()
    try:
        recovery.resume(uploader, journal, entry)
        bar.done = 0
        bar.update(entry.size)
        return True
    except Exception as exc:
        sys.stderr.write(f"\ns3fuse: {entry.key}: {describe_error(exc, cfg)}\n")
        return False
    finally:
        stop.set()
        watcher.join()
        bar.close()
