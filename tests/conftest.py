"""Fixtures: a real S3 server process, fresh buckets, and real FUSE mounts of them.

Every test that uses ``s3_server`` (directly or through ``s3``, ``bucket``, ``mounter``)
runs once per server named in ``S3FUSE_TEST_SERVERS`` (default ``moto,rgw``): test ids
end in ``[moto]`` / ``[rgw]``, and pytest runs all of one server's tests before starting
the next, so one server process lives at a time.  ``@pytest.mark.servers("moto")`` pins a
test (or a module, with ``pytestmark``) to the servers named.

RGW needs the Ceph packages (tests/servers/install-rgw.sh, also run by
``scripts/install.sh --test``).  Without them the ``[rgw]`` tests are skipped with the
reason - except in CI (``CI=true``), where a missing RGW is a usage error.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import boto3
import pytest
from botocore.config import Config

from .servers import KINDS, make_server, rgw_missing_binaries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def pytest_configure(config):
    config.addinivalue_line("markers", "servers(*kinds): run only on these S3 test servers "
                                       "(moto, rgw); default: every server of S3FUSE_TEST_SERVERS")
    kinds = wanted_servers()
    if "rgw" in kinds and in_ci():
        missing = rgw_missing_binaries()
        if missing:
            raise pytest.UsageError(f"CI=true and S3FUSE_TEST_SERVERS includes rgw, but Ceph RGW is not "
                                    f"installed (missing {' '.join(missing)}): run scripts/install.sh --test")
    # `timeout`, CI runners and kill(1) send SIGTERM: turn it into KeyboardInterrupt so the
    # session's teardown still unmounts and stops the servers (Ceph daemons outlive us).
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, interrupt)


def pytest_generate_tests(metafunc):
    if "s3_server" not in metafunc.fixturenames:
        return
    kinds = wanted_servers()
    marker = metafunc.definition.get_closest_marker("servers")
    if marker is not None:
        kinds = [k for k in kinds if k in marker.args]
    metafunc.parametrize("s3_server", kinds, indirect=True, scope="session", ids=kinds)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """After pytest's own fixture-scope ordering: all tests of one server, then the next
    (a stable sort, so the order within a server and of server-less tests is kept).
    pytest's greedy ordering alone may switch servers back and forth, and each switch
    restarts the server."""
    kinds = wanted_servers()

    def rank(item):
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("s3_server") if callspec is not None else None
        return kinds.index(kind) if kind in kinds else 0
    items.sort(key=rank)


@pytest.fixture(scope="session")
def s3_server(request):
    """The S3 server of this test's parameter (``moto`` or ``rgw``), one per session."""
    kind = request.param
    if kind == "rgw":
        missing = rgw_missing_binaries()
        if missing:      # in CI this was already a usage error (pytest_configure)
            pytest.skip(f"Ceph RGW not installed (missing {' '.join(missing)}): run "
                        f"tests/servers/install-rgw.sh, or S3FUSE_TEST_SERVERS=moto")
    t0 = time.monotonic()
    server = make_server(kind).start()
    sys.stderr.write(f"\n[{kind} server at {server.endpoint}, started in {time.monotonic() - t0:.1f} s]\n")
    try:
        yield server
    finally:
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
        opts = [f"endpoint={self.server.endpoint}", f"log_file={self.log_file}", "log_level=info"] + \
            ([f"cache_dir={self.cache_dir}"] if self.cache_dir else []) + self.options
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
        # every request of the data path went through the transport (s3fuse/s3_stats.py logs each kind)
        assert "through botocore (" not in log, f"fallback to botocore in {m.log_file}:\n{log[-4000:]}"


@pytest.fixture
def make_fs(tmp_path):
    """``make_fs(client, **options)``: a Filesystem (no mount) around a fake client."""
    from s3fuse.config import MountConfig
    from s3fuse.fs import Filesystem
    made = []

    def make(client, **options):
        cfg = MountConfig(bucket=client.bucket, cache_dir=str(tmp_path / f"cache{len(made)}"), uid=0, gid=0,
                          **options)
        fs = Filesystem.for_mount(cfg, client)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.close()
