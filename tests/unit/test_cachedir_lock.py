"""One process per cache_dir: ``umount`` then ``mount`` at once must work (the old daemon
may still be exiting after its mount is gone), a cache_dir of a live mount must fail the
new mount at once."""
from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from s3fuse.errors import ConfigError
from s3fuse.fs.cachedir import lock_cache_dir


def _hold(cache_dir, text: str):
    f = open(os.path.join(cache_dir, "lock"), "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.seek(0)
    f.truncate()
    f.write(text + "\n")
    f.flush()
    return f


def test_a_holder_that_unmounted_is_waited_for(tmp_path):
    held = _hold(tmp_path, f"pid 1, mounted on {tmp_path}/gone")      # not a mount point: exiting
    threading.Timer(0.5, held.close).start()
    t0 = time.monotonic()
    got = lock_cache_dir(str(tmp_path), f"mounted on {tmp_path}/new")
    assert time.monotonic() - t0 >= 0.4
    got.seek(0)
    assert got.read() == f"pid {os.getpid()}, mounted on {tmp_path}/new\n"
    got.close()


def test_a_holder_still_mounted_fails_at_once(tmp_path):
    held = _hold(tmp_path, "pid 1, mounted on /")                      # "/" is mounted
    try:
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="in use by another s3fuse process"):
            lock_cache_dir(str(tmp_path))
        assert time.monotonic() - t0 < 2
    finally:
        held.close()
