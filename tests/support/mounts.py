"""Real FUSE mounts of a test server's bucket, and the settings of the test run.

``Mount`` runs the project's mount.s3fuse (the helper mount(8) runs) with a cache_dir and
log file of its own; ``unmount``/``cleanup_dead_mount`` take a mount down, also one whose
daemon died.  A ``Mount`` does not heal (``heal=0``) unless its options name ``heal``:
the tests that kill a daemon remount it themselves (tests/mount/test_heal.py tests
healing).  ``wanted_servers`` reads ``S3FUSE_TEST_SERVERS``; ``make_boto`` is the
test's own S3 client of a server (path-style, no extra checksums)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import boto3
import pytest
from botocore.config import Config

from .probes import pid_alive, wait_for
from .servers import KINDS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOUNT_HELPER = os.path.join(REPO, "mount.s3fuse")


def wanted_servers() -> list:
    kinds = [k.strip() for k in os.environ.get("S3FUSE_TEST_SERVERS", "moto,rgw").split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise pytest.UsageError(f"S3FUSE_TEST_SERVERS={os.environ.get('S3FUSE_TEST_SERVERS')!r}: "
                                f"expected a comma-separated list of {', '.join(KINDS)}")
    return kinds


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def make_boto(server):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                        config=Config(s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required",
                                      max_pool_connections=32))


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


def cleanup_dead_mount(path: str, timeout: float = 20.0):
    """A mount whose daemon died: fusermount3 -u, then umount -l if still there."""
    for cmd in (["fusermount3", "-u", path], ["fusermount", "-u", path], ["umount", path]):
        if not is_mounted(path):
            break
        try:
            subprocess.run(cmd, capture_output=True, timeout=timeout)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            continue
    if is_mounted(path):
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=timeout)
    wait_for(lambda: not is_mounted(path), timeout, f"{path} to be unmounted")


def _ppid(pid: int):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def mount_pids(path: str) -> list:
    """The processes of the mount on ``path`` (as ``pgrep -f 'mount.s3fuse .* PATH '``, read
    from /proc: a fork of the test would flush, hence upload, every FUSE file it holds open)."""
    pattern = re.compile(rf"mount\.(fuse\.)?s3fuse .* {re.escape(path)} ")
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if pattern.search(cmdline):
                pids.append(int(name))
    return sorted(pids)


def serving_pid(path: str):
    """The process serving the mount on ``path`` (under a supervisor: the supervisor's child)."""
    pids = mount_pids(path)
    served = [p for p in pids if _ppid(p) in pids]
    return (served or pids or [None])[0]


def kill_and_wait_for_heal(path: str, check, timeout: float = 30.0) -> float:
    """SIGKILL the process serving ``path``; wait until ``check()`` (a call through the mount)
    succeeds from a new serving process.  Returns the seconds it took."""
    dead = serving_pid(path)
    assert dead is not None and len(mount_pids(path)) == 2, f"no supervised mount on {path}: {mount_pids(path)}"
    os.kill(dead, signal.SIGKILL)
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        pid = serving_pid(path)
        if pid not in (None, dead):
            try:
                if check():
                    return time.monotonic() - t0
            except OSError as exc:
                last = exc
        time.sleep(0.2)
    raise AssertionError(f"{path} not serving again {timeout}s after SIGKILL of {dead} (last: {last!r})")


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
        heal = [] if any(o.split("=")[0] == "heal" for o in self.options) else ["heal=0"]
        opts = [f"endpoint={self.server.endpoint}", f"log_file={self.log_file}", "log_level=info"] + \
            ([f"cache_dir={self.cache_dir}"] if self.cache_dir else []) + heal + self.options
        source = self.bucket + (f":/{self.prefix}" if self.prefix else "")
        return [sys.executable, MOUNT_HELPER, source, self.path, "-o", ",".join(opts)]

    def mount(self):
        proc = subprocess.run(self.args(), env=self.env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"mount failed: {proc.stderr}"
        assert is_mounted(self.path)
        return self

    def unmount(self):
        """Unmount and wait (up to 30 s) until the daemon exited: the mountpoint goes from
        /proc/mounts before the daemon finished its shutdown (the deletes worker, the
        journal), which tests look at next."""
        pids = self._pids()
        unmount(self.path)
        deadline = time.monotonic() + 30
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)

    def log(self) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _pids(self) -> list:
        return mount_pids(self.path)

    def daemon_pid(self):
        """The process serving the mount (under a supervisor: the supervisor's child)."""
        return serving_pid(self.path)

    def supervisor_pid(self):
        """The supervisor of a healing mount (the first process of the mount's tree)."""
        pids = self._pids()
        return next((p for p in pids if _ppid(p) not in pids), None)

    def p(self, *parts) -> str:
        return os.path.join(self.path, *parts)
