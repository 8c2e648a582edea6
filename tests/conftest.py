"""Fixtures: a real S3 server process, fresh buckets, and real FUSE mounts of them.

Every test that uses ``s3_server`` (directly or through ``s3``, ``bucket``, ``mounter``)
runs once per server named in ``S3FUSE_TEST_SERVERS`` (default ``moto,rgw``): test ids
end in ``[moto]`` / ``[rgw]``, and pytest runs all of one server's tests before starting
the next, so one server process lives at a time.  ``@pytest.mark.servers("moto")`` pins a
test (or a module, with ``pytestmark``) to the servers named.

RGW needs the Ceph packages (tests/support/servers/install-rgw.sh, also run by
``scripts/install.sh --test``).  Without them the ``[rgw]`` tests are skipped with the
reason - except in CI (``CI=true``), where a missing RGW is a usage error.
"""
from __future__ import annotations

import signal
import sys
import time
import uuid

import pytest

from .support.mounts import Mount, in_ci, make_boto, wanted_servers
from .support.servers import make_server, rgw_missing_binaries


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
                        f"tests/support/servers/install-rgw.sh, or S3FUSE_TEST_SERVERS=moto")
    t0 = time.monotonic()
    server = make_server(kind).start()
    sys.stderr.write(f"\n[{kind} server at {server.endpoint}, started in {time.monotonic() - t0:.1f} s]\n")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(s3_server):
    return make_boto(s3_server)


@pytest.fixture
def bucket(s3):
    name = "t-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    return name


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
