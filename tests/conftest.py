"""Fixtures: a real S3 server process, fresh buckets, and real FUSE mounts of them."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import boto3
import pytest
from botocore.config import Config

from .servers import MotoServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOUNT_HELPER = os.path.join(REPO, "mount.s3fuse")


@pytest.fixture(scope="session")
def s3_server():
    server = MotoServer().start()
    yield server
    server.stop()


def make_boto(server):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                        config=Config(s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required",
                                      max_pool_connections=32))


@pytest.fixture(scope="session")
def s3(s3_server):
    return make_boto(s3_server)


@pytest.fixture
def bucket(s3):
    name = "t-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    return name


def is_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def unmount(path: str, timeout: float = 30.0):
    if not is_mounted(path):
        return
    for cmd in (["fusermount3", "-u", path], ["fusermount", "-u", path], ["umount", path]):
        try:
            if subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0:
                break
        except (FileNotFoundError, subprocess.TimeoutExpired):
            continue
    deadline = time.monotonic() + timeout
    while is_mounted(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_mounted(path):
        subprocess.run(["umount", "-l", path], capture_output=True)


class Mount:
    def __init__(self, server, bucket, root, prefix="", options=(), name="mnt"):
        self.server, self.bucket, self.prefix = server, bucket, prefix
        self.path = os.path.join(root, name)
        self.cache_dir = os.path.join(root, name + "-cache")
        self.log_file = os.path.join(root, name + ".log")
        self.options = list(options)
        os.makedirs(self.path, exist_ok=True)

    def env(self):
        env = dict(os.environ)
        env.update(self.server.env())
        return env

    def args(self):
        opts = [f"endpoint={self.server.endpoint}", f"cache_dir={self.cache_dir}",
                f"log_file={self.log_file}", "log_level=info"] + self.options
        source = self.bucket + (f":/{self.prefix}" if self.prefix else "")
        return [sys.executable, MOUNT_HELPER, source, self.path, "-o", ",".join(opts)]

    def mount(self):
        proc = subprocess.run(self.args(), env=self.env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"mount failed: {proc.stderr}"
        assert is_mounted(self.path)
        return self

    def unmount(self):
        unmount(self.path)

    def log(self) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def daemon_pid(self):
        out = subprocess.run(["pgrep", "-f", f"mount.s3fuse .* {self.path} "], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        return pids[0] if pids else None

    def p(self, *parts) -> str:
        return os.path.join(self.path, *parts)


@pytest.fixture
def mounter(s3_server, tmp_path):
    """mounter(bucket, prefix="", options=()) -> a live Mount; all unmounted at teardown,
    and the test fails if a daemon logged a traceback it should not have."""
    mounts = []

    def make(bucket, prefix="", options=(), name=None):
        m = Mount(s3_server, bucket, str(tmp_path), prefix, options, name or f"mnt{len(mounts)}")
        mounts.append(m)
        return m.mount()

    yield make
    for m in mounts:
        m.unmount()
    for m in mounts:
        log = m.log()
        assert "failed unexpectedly" not in log, f"unexpected exception in {m.log_file}:\n{log[-4000:]}"
