"""Mounts for pjdfstest runs: the test suite's own S3 servers and s3fuse mount
(tests/support/servers, tests/support/mounts.py), and s3fs-fuse with the options of bench/peers.py."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]


def _test_helpers():
    """The servers and mount helpers of the test suite (tests/support/servers, tests/support/mounts.py)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support import mounts
    from tests.support.servers import make_server
    return mounts, make_server


class S3fsMount:
    """s3fs-fuse on the same server, with the options of bench/peers.py (S3fsFs), plus
    allow_other (pjdfstest switches to other uids). Same interface as mounts.Mount."""

    def __init__(self, server, bucket, root, options=(), name="s3fs"):
        self.server, self.bucket = server, bucket
        self.path = os.path.join(root, name)
        self.cache_dir = os.path.join(root, name + "-cache")
        self.passwd = os.path.join(root, name + ".passwd")
        self.log_file = os.path.join(root, name + ".log")
        self.options = list(options)
        os.makedirs(self.path, exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)

    def mount(self):
        mounts, _ = _test_helpers()
        fd = os.open(self.passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.server.access_key}:{self.server.secret_key}\n")
        opts = [f"url={self.server.endpoint}", "use_path_request_style", "endpoint=us-east-1",
                f"passwd_file={self.passwd}", f"use_cache={self.cache_dir}"] + self.options
        with open(self.log_file, "w") as log:
            p = subprocess.run(["s3fs", self.bucket, self.path, "-o", ",".join(opts)],
                               stdout=log, stderr=subprocess.STDOUT, timeout=60)
        deadline = time.monotonic() + 30
        while not mounts.is_mounted(self.path) and time.monotonic() < deadline:
            time.sleep(0.1)
        if p.returncode != 0 or not mounts.is_mounted(self.path):
            raise RuntimeError(f"s3fs mount failed (exit {p.returncode}): {open(self.log_file).read()[-2000:]}")
        return self

    def unmount(self):
        mounts, _ = _test_helpers()
        mounts.unmount(self.path)

    def daemon_pid(self):
        out = subprocess.run(["pgrep", "-f", f"^s3fs {self.bucket} {self.path} "], capture_output=True, text=True)
        pids = [int(x) for x in out.stdout.split()]
        return pids[0] if pids else None


def _wait_exit(pid: Optional[int], timeout: float = 30.0):
    """Wait for a mount daemon to exit after its unmount (it may still write its log)."""
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


MOUNT_KINDS = ("s3fuse", "s3fs")


def make_mount(kind: str, server, bucket: str, root: str, options=(), helper: Optional[str] = None):
    """A mount (not mounted yet) of bucket: s3fuse (the project's mount.s3fuse, or helper:
    the mount.s3fuse of another checkout, which imports its own s3fuse package) or s3fs."""
    mounts, _ = _test_helpers()
    options = ["allow_other"] + list(options)
    if kind == "s3fuse":
        m = mounts.Mount(server, bucket, root, options=options, name="s3fuse")
        if helper:
            project_args = m.args
            m.args = lambda: [sys.executable, os.path.abspath(helper)] + project_args()[2:]
        return m
    if kind == "s3fs":
        return S3fsMount(server, bucket, root, options=options)
    raise ValueError(f"unknown mount kind {kind!r} (known: {', '.join(MOUNT_KINDS)})")


@contextlib.contextmanager
def started_server(kind: str):
    _, make_server = _test_helpers()
    t0 = time.monotonic()
    server = make_server(kind).start()
    sys.stderr.write(f"[{kind} server at {server.endpoint}, started in {time.monotonic() - t0:.1f} s]\n")
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def mounted(kind: str, server, root: str, options=(), helper: Optional[str] = None):
    mounts, _ = _test_helpers()
    bucket = "pjd-" + uuid.uuid4().hex[:12]
    mounts.make_boto(server).create_bucket(Bucket=bucket)
    m = make_mount(kind, server, bucket, root, options, helper)
    m.mount()
    pid = m.daemon_pid()
    try:
        yield m
    finally:
        m.unmount()
        _wait_exit(pid)
